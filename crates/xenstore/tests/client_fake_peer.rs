//! The client against a scripted peer on the other end of a real socket.
//!
//! Each test's peer runs in a thread and plays xenstored for exactly the
//! requests the test makes; it panics (failing the test at `join`) on
//! anything unexpected. Every blocking step has a timeout: the peer's reads
//! time out after [`LIMIT`], and the client's calls after [`LIMIT`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use xenstore::client::{Client, Error, WatchEvent, XenStore, TRANSACTION_ATTEMPTS};
use xenstore::wire::{FrameDecoder, Message, MsgType, PAYLOAD_MAX};
use xenstore::{Access, Perm, Perms, XsErrno};

const LIMIT: Duration = Duration::from_secs(10);

/// The server side of the connection.
struct Peer {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl Peer {
    /// The next request, or `None` when the client closed the connection.
    fn recv(&mut self) -> Option<Message> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            let n = self.stream.read(&mut buf).expect("peer read timed out");
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    fn expect(&mut self, op: MsgType) -> Message {
        let m = self.recv().expect("client closed early");
        assert_eq!(m.kind(), Some(op), "payload {:?}", m.payload);
        m
    }

    fn send(&mut self, m: &Message) {
        self.stream.write_all(&m.encode()).unwrap();
    }

    fn reply(&mut self, req: &Message, payload: &[u8]) {
        let kind = req.kind().unwrap();
        self.send(&Message::new(kind, req.req_id, req.tx_id, payload.to_vec()));
    }

    fn ack(&mut self, req: &Message) {
        self.reply(req, b"OK\0");
    }

    fn error(&mut self, req: &Message, errno: XsErrno) {
        self.send(&Message::error_reply(req.req_id, req.tx_id, errno));
    }

    fn event(&mut self, path: &str, token: &[u8]) {
        self.send(&Message::watch_event(path, token));
    }
}

/// A client and its peer, the peer's script running in a thread.
fn with_peer<T: Send + 'static>(
    script: impl FnOnce(Peer) -> T + Send + 'static,
) -> (Client, JoinHandle<T>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(LIMIT)).unwrap();
    let peer = Peer {
        stream: theirs,
        decoder: FrameDecoder::new(PAYLOAD_MAX),
    };
    let client = Client::from_unix_stream(ours).unwrap();
    client.set_timeout(LIMIT).unwrap();
    (client, thread::spawn(move || script(peer)))
}

fn fd_readable(fd: &impl std::os::fd::AsFd, wait: Duration) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let ts = rustix::time::Timespec::try_from(wait).unwrap();
    poll(&mut fds, Some(&ts)).unwrap() == 1
}

#[test]
fn replies_are_matched_by_req_id_when_answered_out_of_order() {
    let (client, peer) = with_peer(|mut p| {
        let reqs: Vec<Message> = (0..3).map(|_| p.expect(MsgType::Read)).collect();
        for r in reqs.iter().rev() {
            let value = [b"value of ", &r.payload[..r.payload.len() - 1]].concat();
            p.reply(r, &value);
        }
    });
    thread::scope(|s| {
        let readers: Vec<_> = ["/a", "/b", "/c"]
            .into_iter()
            .map(|path| {
                let client = &client;
                s.spawn(move || (path, client.read(path).unwrap()))
            })
            .collect();
        for r in readers {
            let (path, value) = r.join().unwrap();
            assert_eq!(value, format!("value of {path}").into_bytes());
        }
    });
    peer.join().unwrap();
}

#[test]
fn many_threads_share_one_client() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 25;
    let (client, peer) = with_peer(|mut p| {
        // Each round every thread has one request in flight; answer them in
        // reverse arrival order.
        for _ in 0..ROUNDS {
            let reqs: Vec<Message> = (0..THREADS).map(|_| p.expect(MsgType::Read)).collect();
            for r in reqs.iter().rev() {
                p.reply(r, &r.payload);
            }
        }
    });
    let barrier = std::sync::Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (client, barrier) = (&client, &barrier);
            s.spawn(move || {
                for i in 0..ROUNDS {
                    barrier.wait();
                    let path = format!("/t{t}/n{i}");
                    let expect = [path.as_bytes(), b"\0"].concat();
                    assert_eq!(client.read(&path).unwrap(), expect);
                }
            });
        }
    });
    peer.join().unwrap();
}

#[test]
fn watch_events_interleaved_with_replies_are_queued_in_order() {
    let (client, peer) = with_peer(|mut p| {
        let w = p.expect(MsgType::Watch);
        assert_eq!(w.payload, b"/w\0tok\0");
        p.event("/w", b"tok");
        p.ack(&w);
        let r = p.expect(MsgType::Read);
        p.event("/w/x", b"tok");
        p.reply(&r, b"v");
        p.event("/w/y", b"tok");
        assert!(p.recv().is_none());
    });
    let events = client.watch_events();
    assert!(!fd_readable(&events, Duration::ZERO));

    client.watch("/w", "tok").unwrap();
    assert_eq!(client.read("/w/x").unwrap(), b"v");

    assert!(fd_readable(&events, LIMIT));
    let ev = |path: &str| WatchEvent {
        path: path.into(),
        token: b"tok".to_vec(),
    };
    assert_eq!(events.try_recv().unwrap(), Some(ev("/w")));
    assert_eq!(events.recv_timeout(LIMIT).unwrap(), Some(ev("/w/x")));
    assert_eq!(events.recv_timeout(LIMIT).unwrap(), Some(ev("/w/y")));
    assert_eq!(events.try_recv().unwrap(), None);
    assert!(!fd_readable(&events, Duration::ZERO));
    drop(client);
    peer.join().unwrap();
}

#[test]
fn connection_closed_mid_call_fails_pending_and_later_calls_with_closed() {
    let (client, peer) = with_peer(|mut p| {
        p.expect(MsgType::Read);
        // Dropping the peer closes the socket with the request unanswered.
    });
    let events = client.watch_events();
    let start = Instant::now();

    assert!(matches!(client.read("/a"), Err(Error::Closed)));
    assert!(matches!(client.write("/a", b"x"), Err(Error::Closed)));
    assert!(start.elapsed() < LIMIT);
    assert!(fd_readable(&events, LIMIT));
    assert!(matches!(events.recv_timeout(LIMIT), Err(Error::Closed)));
    peer.join().unwrap();
}

#[test]
fn stalled_server_times_out_and_late_reply_is_discarded() {
    let (client, peer) = with_peer(|mut p| {
        let slow = p.expect(MsgType::Read);
        let fast = p.expect(MsgType::Read);
        p.reply(&slow, b"late");
        p.reply(&fast, b"fast");
    });
    client.set_timeout(Duration::from_millis(200)).unwrap();
    let start = Instant::now();

    let err = client.read("/slow").unwrap_err();

    assert!(
        matches!(&err, Error::Timeout { op: MsgType::Read, path } if path == "/slow"),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < LIMIT);
    client.set_timeout(LIMIT).unwrap();
    assert_eq!(client.read("/fast").unwrap(), b"fast");
    peer.join().unwrap();
}

#[test]
fn oversized_request_is_refused_without_sending() {
    let (client, peer) = with_peer(|mut p| {
        let first = p.expect(MsgType::Write);
        assert_eq!(first.payload.len(), PAYLOAD_MAX);
        p.ack(&first);
    });
    let path = "/big";
    let fits = vec![b'x'; PAYLOAD_MAX - path.len() - 1];

    let err = client
        .write(path, &[fits.as_slice(), b"!"].concat())
        .unwrap_err();

    assert!(
        matches!(
            err,
            Error::TooBig {
                op: MsgType::Write,
                len: 4097,
                max: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.errno(), Some(XsErrno::TooBig));
    client.write(path, &fits).unwrap();
    peer.join().unwrap();
}

#[test]
fn device_transport_limits_requests_to_4080_bytes() {
    // A FIFO opened read-write loops every request back as its own "reply",
    // which is enough to drive the file-based transport end to end.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("xenbus");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .unwrap();
    let client = Client::open_path(&fifo).unwrap();
    client.set_timeout(LIMIT).unwrap();
    let path = "/d";
    let fits = vec![b'x'; 4080 - path.len() - 1];

    let err = client
        .write(path, &[fits.as_slice(), b"!"].concat())
        .unwrap_err();

    assert!(matches!(err, Error::TooBig { max: 4080, .. }), "{err}");
    client.write(path, &fits).unwrap();
}

#[test]
fn nul_in_path_or_token_is_refused_without_sending() {
    let (client, peer) = with_peer(|mut p| {
        assert!(p.recv().is_none(), "nothing may reach the server");
    });
    assert_eq!(
        client.read("/a\0b").unwrap_err().errno(),
        Some(XsErrno::Inval)
    );
    assert_eq!(
        client.watch("/a", "t\0k").unwrap_err().errno(),
        Some(XsErrno::Inval)
    );
    drop(client);
    peer.join().unwrap();
}

#[test]
fn directory_falls_back_to_directory_part_and_restarts_on_generation_change() {
    let (client, peer) = with_peer(|mut p| {
        let d = p.expect(MsgType::Directory);
        assert_eq!(d.payload, b"/big\0");
        p.error(&d, XsErrno::TooBig);
        let parts: [(&[u8], &[u8]); 4] = [
            (b"/big\x000\0", b"1\0a\0b\0"),
            (b"/big\x004\0", b"2\0c\0\0"), // generation moved: restart
            (b"/big\x000\0", b"2\0a\0b\0"),
            (b"/big\x004\0", b"2\0c\0\0"),
        ];
        for (request, reply) in parts {
            let r = p.expect(MsgType::DirectoryPart);
            assert_eq!(r.payload, request);
            p.reply(&r, reply);
        }
    });

    assert_eq!(client.directory("/big").unwrap(), ["a", "b", "c"]);
    peer.join().unwrap();
}

#[test]
fn directory_part_of_empty_node_and_unsupported_server() {
    let (client, peer) = with_peer(|mut p| {
        let d = p.expect(MsgType::Directory);
        p.error(&d, XsErrno::TooBig);
        let r = p.expect(MsgType::DirectoryPart);
        p.reply(&r, b"7\0\0");
        let d = p.expect(MsgType::Directory);
        p.error(&d, XsErrno::TooBig);
        let r = p.expect(MsgType::DirectoryPart);
        p.error(&r, XsErrno::NoSys);
    });

    assert!(client.directory("/empty").unwrap().is_empty());
    let err = client.directory("/old").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Xs {
                op: MsgType::Directory,
                errno: XsErrno::TooBig,
                ..
            }
        ),
        "{err}"
    );
    peer.join().unwrap();
}

#[test]
fn plain_directory_reply_lists_child_names() {
    let (client, peer) = with_peer(|mut p| {
        let d = p.expect(MsgType::Directory);
        p.reply(&d, b"console\0vbd\0");
    });
    assert_eq!(client.directory("device").unwrap(), ["console", "vbd"]);
    peer.join().unwrap();
}

/// Plays TRANSACTION_START with ids from 1, acks WRITEs in the transaction,
/// and answers `verdicts[i]` to the i-th commit.
fn transaction_server(mut p: Peer, verdicts: Vec<Option<XsErrno>>) -> Vec<u32> {
    let mut write_tx_ids = Vec::new();
    for (i, verdict) in verdicts.into_iter().enumerate() {
        let start = p.expect(MsgType::TransactionStart);
        assert_eq!((start.tx_id, &start.payload[..]), (0, &b"\0"[..]));
        let id = u32::try_from(i).unwrap() + 1;
        p.reply(&start, format!("{id}\0").as_bytes());
        let w = p.expect(MsgType::Write);
        write_tx_ids.push(w.tx_id);
        p.ack(&w);
        let end = p.expect(MsgType::TransactionEnd);
        assert_eq!((end.tx_id, &end.payload[..]), (id, &b"T\0"[..]));
        match verdict {
            Some(errno) => p.error(&end, errno),
            None => p.ack(&end),
        }
    }
    write_tx_ids
}

#[test]
fn transaction_helper_retries_whole_body_on_eagain_then_commits() {
    let verdicts = vec![Some(XsErrno::Again), Some(XsErrno::Again), None];
    let (client, peer) = with_peer(move |p| transaction_server(p, verdicts));
    let runs = AtomicU32::new(0);

    let value = client
        .transaction(|tx| {
            runs.fetch_add(1, Ordering::Relaxed);
            tx.write("/x", b"1")?;
            Ok::<_, Error>(tx.id())
        })
        .unwrap();

    assert_eq!(value, 3);
    assert_eq!(runs.load(Ordering::Relaxed), 3);
    assert_eq!(peer.join().unwrap(), [1, 2, 3]);
}

#[test]
fn transaction_helper_gives_up_after_bounded_attempts() {
    let n = usize::try_from(TRANSACTION_ATTEMPTS).unwrap();
    let (client, peer) = with_peer(move |p| transaction_server(p, vec![Some(XsErrno::Again); n]));
    let runs = AtomicU32::new(0);

    let err = client
        .transaction(|tx| {
            runs.fetch_add(1, Ordering::Relaxed);
            tx.write("/x", b"1")
        })
        .unwrap_err();

    assert_eq!(err.errno(), Some(XsErrno::Again));
    assert_eq!(runs.load(Ordering::Relaxed), TRANSACTION_ATTEMPTS);
    assert_eq!(peer.join().unwrap().len(), n);
}

#[test]
fn failing_body_and_dropped_transaction_abort_without_retry() {
    let (client, peer) = with_peer(|mut p| {
        for id in [5u32, 6] {
            let start = p.expect(MsgType::TransactionStart);
            p.reply(&start, format!("{id}\0").as_bytes());
            let r = p.expect(MsgType::Read);
            assert_eq!(r.tx_id, id);
            p.error(&r, XsErrno::NoEnt);
            let end = p.expect(MsgType::TransactionEnd);
            assert_eq!((end.tx_id, &end.payload[..]), (id, &b"F\0"[..]));
            p.ack(&end);
        }
    });

    let err = client.transaction(|tx| tx.read("/missing")).unwrap_err();
    assert!(err.is_not_found());
    {
        let tx = client.transaction_start().unwrap();
        assert!(!tx.exists("/missing").unwrap());
    }
    peer.join().unwrap();
}

#[test]
fn error_reply_carries_errno_operation_and_path() {
    let (client, peer) = with_peer(|mut p| {
        let r = p.expect(MsgType::Read);
        p.error(&r, XsErrno::Acces);
        let r = p.expect(MsgType::Read);
        p.error(&r, XsErrno::NoEnt);
        let r = p.expect(MsgType::Read);
        p.reply(&r, b"");
    });

    let err = client.read("/local/domain/3/x").unwrap_err();
    assert!(
        matches!(&err, Error::Xs { op: MsgType::Read, path, errno: XsErrno::Acces }
            if path == "/local/domain/3/x"),
        "{err}"
    );
    assert!(!client.exists("/gone").unwrap());
    assert!(client.exists("/empty").unwrap());
    peer.join().unwrap();
}

#[test]
fn requests_use_the_xs_wire_layout() {
    let expected: Vec<(MsgType, &'static [u8], &'static [u8])> = vec![
        (MsgType::Write, b"data/x\0a\0b", b"OK\0"),
        (MsgType::Mkdir, b"/m\0", b"OK\0"),
        (MsgType::Rm, b"/m\0", b"OK\0"),
        (MsgType::SetPerms, b"/m\0b0\0r5\0", b"OK\0"),
        (MsgType::GetPerms, b"/m\0", b"n0\0r5\0"),
        (MsgType::Unwatch, b"@releaseDomain\0t\0", b"OK\0"),
        (MsgType::Introduce, b"5\x00123456789\x007\0", b"OK\0"),
        (MsgType::IsDomainIntroduced, b"5\0", b"T\0"),
        (MsgType::IsDomainIntroduced, b"6\0", b"F\0"),
        (MsgType::GetDomainPath, b"5\0", b"/local/domain/5\0"),
        (MsgType::SetTarget, b"5\x002\0", b"OK\0"),
        (MsgType::Release, b"5\0", b"OK\0"),
        (MsgType::ResetWatches, b"\0", b"OK\0"),
    ];
    let script = expected.clone();
    let (client, peer) = with_peer(move |mut p| {
        for (op, request, reply) in script {
            let r = p.expect(op);
            assert_eq!((r.tx_id, &r.payload[..]), (0, request), "{op:?}");
            p.reply(&r, reply);
        }
    });

    client.write("data/x", b"a\0b").unwrap();
    client.mkdir("/m").unwrap();
    client.rm("/m").unwrap();
    let perms = Perms::new(vec![Perm::new(Access::Both, 0), Perm::new(Access::Read, 5)]).unwrap();
    client.set_perms("/m", &perms).unwrap();
    assert_eq!(client.get_perms("/m").unwrap().to_string(), "n0,r5");
    client.unwatch("@releaseDomain", b"t").unwrap();
    client.introduce(5, 123_456_789, 7).unwrap();
    assert!(client.is_domain_introduced(5).unwrap());
    assert!(!client.is_domain_introduced(6).unwrap());
    assert_eq!(client.get_domain_path(5).unwrap(), "/local/domain/5");
    client.set_target(5, 2).unwrap();
    client.release(5).unwrap();
    client.reset_watches().unwrap();
    peer.join().unwrap();
}

#[test]
fn reply_of_the_wrong_type_is_a_protocol_error() {
    let (client, peer) = with_peer(|mut p| {
        let r = p.expect(MsgType::Read);
        p.send(&Message::new(MsgType::Write, r.req_id, 0, b"OK\0".to_vec()));
    });
    assert!(matches!(client.read("/a"), Err(Error::Protocol(_))));
    peer.join().unwrap();
}

#[test]
fn oversized_reply_frame_closes_the_connection() {
    let (client, peer) = with_peer(|mut p| {
        let r = p.expect(MsgType::Read);
        let mut header = Message::new(MsgType::Read, r.req_id, 0, Vec::new()).encode();
        header[12..16].copy_from_slice(&5000u32.to_le_bytes());
        p.stream.write_all(&header).unwrap();
        assert!(p.recv().is_none(), "client must hang up");
    });
    assert!(matches!(client.read("/a"), Err(Error::Closed)));
    peer.join().unwrap();
}

#[test]
fn drop_closes_the_socket_and_watch_handles_see_closed() {
    let (client, peer) = with_peer(|mut p| {
        p.event("/early", b"t");
        let r = p.expect(MsgType::Read);
        p.reply(&r, b"v");
        p.recv()
    });
    let events = client.watch_events();
    assert_eq!(client.read("/a").unwrap(), b"v");
    let start = Instant::now();

    drop(client);

    assert!(start.elapsed() < LIMIT);
    assert_eq!(peer.join().unwrap(), None, "peer sees end of stream");
    assert_eq!(events.recv_timeout(LIMIT).unwrap().unwrap().path, "/early");
    assert!(matches!(events.try_recv(), Err(Error::Closed)));
}
