//! Our client against our server, over real sockets: node operations,
//! watches, transactions under contention, and each error the client must
//! surface.

use std::sync::Arc;
use std::time::Duration;

use xenstore::client::{Client, Error, XenStore};
use xenstore::server::{ServerConfig, ServerHandle};
use xenstore::{Access, Perm, Perms, XsErrno};

const WAIT: Duration = Duration::from_secs(10);

fn setup() -> (tempfile::TempDir, ServerHandle, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("socket"));
    cfg.domain_socket_dir = Some(dir.path().join("domains"));
    let h = ServerHandle::spawn(cfg).unwrap();
    let c = Client::connect_unix(h.socket_path()).unwrap();
    c.set_timeout(WAIT).unwrap();
    (dir, h, c)
}

fn guest(h: &ServerHandle, domid: u16) -> Client {
    h.introduce(domid).unwrap();
    let c = Client::from_unix_stream(h.connect_as(domid).unwrap()).unwrap();
    c.set_timeout(WAIT).unwrap();
    c
}

#[test]
fn node_operations_round_trip() {
    let (_d, _h, c) = setup();
    c.write("/vm/1/name", b"guest").unwrap();
    assert_eq!(c.read("/vm/1/name").unwrap(), b"guest");
    c.mkdir("/vm/1/device").unwrap();
    assert_eq!(c.directory("/vm/1").unwrap(), vec!["name", "device"]);
    assert!(c.exists("/vm/1/device").unwrap());
    c.rm("/vm/1").unwrap();
    assert!(!c.exists("/vm/1").unwrap());
    assert_eq!(c.get_domain_path(3).unwrap(), "/local/domain/3");
}

#[test]
fn perms_round_trip_and_bind_a_guest() {
    let (_d, h, c) = setup();
    let g = guest(&h, 4);
    c.write("/local/domain/4/console/tty", b"").unwrap();
    let ro = Perms::new(vec![Perm::new(Access::None, 0), Perm::new(Access::Read, 4)]).unwrap();
    c.set_perms("/local/domain/4/console", &ro).unwrap();
    c.set_perms("/local/domain/4/console/tty", &ro).unwrap();
    assert_eq!(c.get_perms("/local/domain/4/console").unwrap(), ro);
    assert_eq!(g.read("console/tty").unwrap(), b"");
    let err = g.write("console/tty", b"x").unwrap_err();
    assert_eq!(err.errno(), Some(XsErrno::Acces));
}

#[test]
fn every_error_comes_back_typed() {
    let (_d, h, c) = setup();
    let g = guest(&h, 6);
    let cases: Vec<(Error, XsErrno)> = vec![
        (c.read("/missing").unwrap_err(), XsErrno::NoEnt),
        (g.read("/tool").unwrap_err(), XsErrno::Acces),
        (c.read("/bad path").unwrap_err(), XsErrno::Inval),
        (g.introduce(9, 1, 1).unwrap_err(), XsErrno::Acces),
        (c.release(77).unwrap_err(), XsErrno::NoEnt),
        (c.unwatch("/x", "never").unwrap_err(), XsErrno::NoEnt),
    ];
    for (err, want) in cases {
        assert_eq!(err.errno(), Some(want), "{err}");
    }
    c.watch("/x", "dup").unwrap();
    assert_eq!(
        c.watch("/x", "dup").unwrap_err().errno(),
        Some(XsErrno::Exist)
    );
}

#[test]
fn watch_events_arrive_in_order_between_replies() {
    let (_d, _h, c) = setup();
    let events = c.watch_events();
    c.watch("/w", "tok").unwrap();
    let first = events.recv_timeout(WAIT).unwrap().expect("initial event");
    assert_eq!(
        (first.path.as_str(), first.token.as_slice()),
        ("/w", &b"tok"[..])
    );
    for i in 0..50 {
        c.write(&format!("/w/{i}"), b"v").unwrap();
    }
    for i in 0..50 {
        let e = events.recv_timeout(WAIT).unwrap().expect("event");
        assert_eq!(e.path, format!("/w/{i}"));
    }
    c.unwatch("/w", "tok").unwrap();
    c.write("/w/after", b"").unwrap();
    assert!(events
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
}

#[test]
fn watcher_on_another_connection_sees_committed_changes_only() {
    let (_d, h, c) = setup();
    let watcher = Client::connect_unix(h.socket_path()).unwrap();
    let events = watcher.watch_events();
    watcher.watch("/t", "w").unwrap();
    events.recv_timeout(WAIT).unwrap().expect("initial event");
    let tx = c.transaction_start().unwrap();
    tx.write("/t/a", b"1").unwrap();
    assert!(events
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    tx.commit().unwrap();
    let e = events.recv_timeout(WAIT).unwrap().expect("event at commit");
    assert_eq!(e.path, "/t/a");
}

#[test]
fn concurrent_increments_from_many_connections_lose_nothing() {
    let (_d, h, c) = setup();
    c.write("/counter", b"0").unwrap();
    let socket = Arc::new(h.socket_path().to_path_buf());
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let c = Client::connect_unix(&*socket).unwrap();
                c.set_timeout(WAIT).unwrap();
                for _ in 0..50 {
                    c.transaction(|tx| -> Result<(), Error> {
                        let v: u64 = String::from_utf8_lossy(&tx.read("/counter")?)
                            .parse()
                            .unwrap();
                        tx.write("/counter", (v + 1).to_string().as_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.read("/counter").unwrap(), b"300");
}

#[test]
fn conflicting_commit_is_eagain_and_applies_nothing() {
    let (_d, h, c) = setup();
    let other = Client::connect_unix(h.socket_path()).unwrap();
    c.write("/k", b"a").unwrap();
    let tx = c.transaction_start().unwrap();
    assert_eq!(tx.read("/k").unwrap(), b"a");
    tx.write("/k2", b"side effect").unwrap();
    other.write("/k", b"b").unwrap();
    assert_eq!(tx.commit().unwrap_err().errno(), Some(XsErrno::Again));
    assert!(!c.exists("/k2").unwrap());
}

#[test]
fn special_watches_follow_domains() {
    let (_d, h, c) = setup();
    let events = c.watch_events();
    c.watch("@introduceDomain", "in").unwrap();
    c.watch("@releaseDomain", "out").unwrap();
    events.recv_timeout(WAIT).unwrap().unwrap();
    events.recv_timeout(WAIT).unwrap().unwrap();
    c.introduce(12, 0xfeff, 1).unwrap();
    assert_eq!(
        events.recv_timeout(WAIT).unwrap().unwrap().path,
        "@introduceDomain"
    );
    assert!(c.is_domain_introduced(12).unwrap());
    c.release(12).unwrap();
    assert_eq!(
        events.recv_timeout(WAIT).unwrap().unwrap().path,
        "@releaseDomain"
    );
    assert!(!c.is_domain_introduced(12).unwrap());
    drop(h);
}

#[test]
fn large_directory_is_read_through_directory_part() {
    let (_d, _h, c) = setup();
    let names: Vec<String> = (0..400)
        .map(|i| format!("node-with-a-rather-long-name-{i:05}"))
        .collect();
    c.transaction(|tx| -> Result<(), Error> {
        for n in &names {
            tx.write(&format!("/big/{n}"), b"")?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(c.directory("/big").unwrap(), names);
}

#[test]
fn client_sees_closed_when_the_server_goes_away() {
    let (_d, h, c) = setup();
    c.write("/x", b"1").unwrap();
    h.shutdown().unwrap();
    let err = c.read("/x").unwrap_err();
    assert!(matches!(err, Error::Closed | Error::Io { .. }), "{err:?}");
}
