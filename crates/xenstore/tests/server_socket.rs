//! The server over real Unix sockets: framing, hostile clients, isolation
//! between connections, domain sockets.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use xenstore::server::{ServerConfig, ServerHandle};
use xenstore::wire::{Header, Message, MsgType, PAYLOAD_MAX};

fn server(dir: &Path) -> ServerHandle {
    let mut cfg = ServerConfig::new(dir.join("socket"));
    cfg.domain_socket_dir = Some(dir.join("domains"));
    ServerHandle::spawn(cfg).expect("server starts")
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn send(s: &mut UnixStream, ty: MsgType, req_id: u32, payload: &[u8]) {
    s.write_all(&Message::new(ty, req_id, 0, payload.to_vec()).encode())
        .unwrap();
}

/// Reads exactly one message, leaving any that follow in the socket.
fn recv(s: &mut UnixStream) -> Message {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).expect("read reply header");
    let h = Header::decode(&head);
    assert!(h.len as usize <= PAYLOAD_MAX);
    let mut payload = vec![0u8; h.len as usize];
    s.read_exact(&mut payload).expect("read reply payload");
    Message {
        msg_type: h.msg_type,
        req_id: h.req_id,
        tx_id: h.tx_id,
        payload,
    }
}

fn request(s: &mut UnixStream, ty: MsgType, payload: &[u8]) -> Message {
    send(s, ty, 7, payload);
    let m = recv(s);
    assert_eq!(m.req_id, 7);
    m
}

/// True once the peer has closed: read returns 0 (or a reset).
fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn oversized_message_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    let mut good = connect(h.socket_path());
    let mut bad = connect(h.socket_path());
    let header = Header {
        msg_type: MsgType::Write as u32,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    };
    bad.write_all(&header.encode()).unwrap();
    assert!(closed_by_server(&mut bad));
    let r = request(&mut good, MsgType::Write, b"/still/fine\0yes");
    assert_eq!(r.payload, b"OK\0");
}

#[test]
fn short_header_then_hangup_leaves_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    {
        let mut s = connect(h.socket_path());
        s.write_all(&[2, 0, 0]).unwrap();
    }
    {
        // A whole header but half a payload.
        let mut s = connect(h.socket_path());
        let header = Header {
            msg_type: MsgType::Read as u32,
            req_id: 1,
            tx_id: 0,
            len: 100,
        };
        s.write_all(&header.encode()).unwrap();
        s.write_all(b"/to").unwrap();
    }
    let mut s = connect(h.socket_path());
    assert_eq!(request(&mut s, MsgType::Read, b"/tool\0").payload, b"");
}

#[test]
fn request_split_into_single_bytes_is_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    let mut s = connect(h.socket_path());
    let bytes = Message::new(MsgType::Write, 3, 0, b"/slow\0drip".to_vec()).encode();
    for b in bytes {
        s.write_all(&[b]).unwrap();
    }
    let r = recv(&mut s);
    assert_eq!((r.req_id, r.payload.as_slice()), (3, &b"OK\0"[..]));
}

#[test]
fn pipelined_requests_are_answered_in_order_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    let mut s = connect(h.socket_path());
    let mut batch = Vec::new();
    for i in 0..200u32 {
        let payload = format!("/p/{i}\0{i}");
        Message::new(MsgType::Write, i, 0, payload.into_bytes()).encode_into(&mut batch);
    }
    s.write_all(&batch).unwrap();
    for i in 0..200u32 {
        let r = recv(&mut s);
        assert_eq!((r.req_id, r.payload.as_slice()), (i, &b"OK\0"[..]));
    }
}

#[test]
fn domain_socket_appears_on_introduce_and_acts_as_that_domain() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    let mut dom0 = connect(h.socket_path());
    let r = request(
        &mut dom0,
        MsgType::Introduce,
        b"5\x00 4096\x00 3\x00".as_slice(),
    );
    // Spaces are not digits: refused, and no socket appears.
    assert_eq!(r.msg_type, MsgType::Error as u32);
    assert_eq!(
        request(&mut dom0, MsgType::Introduce, b"5\x004096\x003\x00").payload,
        b"OK\0"
    );
    let path = h.domain_socket_path(5).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "domain socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut guest = connect(&path);
    let r = request(&mut guest, MsgType::Read, b"/tool\0");
    assert_eq!(r.payload, b"EACCES\0");
    let r = request(&mut guest, MsgType::GetDomainPath, b"5\0");
    assert_eq!(r.payload, b"/local/domain/5\0");
    // Releasing the domain closes its connection and removes its socket.
    assert_eq!(
        request(&mut dom0, MsgType::Release, b"5\0").payload,
        b"OK\0"
    );
    assert!(closed_by_server(&mut guest));
    assert!(!path.exists());
}

#[test]
fn connect_as_gives_an_unforgeable_guest_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    h.introduce(9).unwrap();
    let mut g = h.connect_as(9).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = request(&mut g, MsgType::Write, b"/local/domain/0/x\0v");
    assert_eq!(r.payload, b"EACCES\0");
    let r = request(&mut g, MsgType::IsDomainIntroduced, b"9\0");
    assert_eq!(r.payload, b"EACCES\0");
}

#[test]
fn client_that_never_reads_cannot_stall_others() {
    let dir = tempfile::tempdir().unwrap();
    let h = server(dir.path());
    let mut hog = connect(h.socket_path());
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Requests whose replies it never reads: the server stops reading it
    // once its queue is over bound, and its writes then block.
    let one = Message::new(MsgType::Read, 1, 0, b"/tool\0".to_vec()).encode();
    let burst: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 20_000)
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if hog.write_all(&burst).is_err() {
            break;
        }
    }
    let mut other = connect(h.socket_path());
    let t = Instant::now();
    assert_eq!(request(&mut other, MsgType::Read, b"/tool\0").payload, b"");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "neighbour was stalled"
    );
}
