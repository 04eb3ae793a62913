//! Behaviour of the protocol core, request by request, against C
//! xenstored's rules. No sockets: requests go straight into [`Core`].

use super::core::{Core, Effect};
use super::quota::Quotas;
use super::ConnId;
use crate::errno::XsErrno;
use crate::wire::{Message, MsgType};

const DOM0: ConnId = 1;

struct Harness {
    core: Core,
    next_req: u32,
}

/// What one request produced: its reply and every event sent anywhere.
struct Outcome {
    reply: Message,
    events: Vec<(ConnId, String, String)>,
}

impl Outcome {
    fn ok(&self) -> &[u8] {
        assert_ne!(
            self.reply.msg_type,
            MsgType::Error as u32,
            "error {:?}",
            self.err_name()
        );
        &self.reply.payload
    }

    fn err_name(&self) -> String {
        String::from_utf8_lossy(&self.reply.payload)
            .trim_end_matches('\0')
            .to_owned()
    }

    fn err(&self) -> XsErrno {
        assert_eq!(
            self.reply.msg_type,
            MsgType::Error as u32,
            "expected an error"
        );
        XsErrno::from_name(&self.err_name()).expect("known errno")
    }
}

fn payload(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

impl Harness {
    fn new() -> Harness {
        Harness::with_quotas(Quotas::default())
    }

    fn with_quotas(q: Quotas) -> Harness {
        let mut core = Core::new(q);
        core.connect(DOM0, 0, true);
        Harness { core, next_req: 1 }
    }

    /// Connects `conn` as unprivileged domain `domid`, introducing it.
    fn guest(&mut self, conn: ConnId, domid: u16) {
        self.core.introduce(domid);
        self.core.connect(conn, domid, false);
        self.core.out.clear();
        self.core.effects.clear();
    }

    fn raw(&mut self, conn: ConnId, ty: u32, tx: u32, body: Vec<u8>) -> Outcome {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = Message {
            msg_type: ty,
            req_id,
            tx_id: tx,
            payload: body,
        };
        self.core.handle(conn, &msg);
        let out = std::mem::take(&mut self.core.out);
        let mut reply = None;
        let mut events = Vec::new();
        for (c, m) in out {
            if m.msg_type == MsgType::WatchEvent as u32 {
                let s = String::from_utf8_lossy(&m.payload).into_owned();
                let mut it = s.split('\0');
                let p = it.next().unwrap_or_default().to_owned();
                let t = it.next().unwrap_or_default().to_owned();
                events.push((c, p, t));
            } else {
                assert_eq!(c, conn, "a reply went to another connection");
                assert!(reply.is_none(), "two replies to one request");
                assert_eq!((m.req_id, m.tx_id), (req_id, tx), "ids not echoed");
                reply = Some(m);
            }
        }
        Outcome {
            reply: reply.expect("no reply"),
            events,
        }
    }

    fn req(&mut self, conn: ConnId, ty: MsgType, tx: u32, parts: &[&str]) -> Outcome {
        self.raw(conn, ty as u32, tx, payload(parts))
    }

    fn write(&mut self, conn: ConnId, tx: u32, path: &str, value: &str) -> Outcome {
        let mut body = payload(&[path]);
        body.extend_from_slice(value.as_bytes());
        self.raw(conn, MsgType::Write as u32, tx, body)
    }

    fn read(&mut self, conn: ConnId, tx: u32, path: &str) -> Outcome {
        self.req(conn, MsgType::Read, tx, &[path])
    }

    fn perms(&mut self, conn: ConnId, path: &str, perms: &[&str]) -> Outcome {
        let mut parts = vec![path];
        parts.extend_from_slice(perms);
        self.req(conn, MsgType::SetPerms, 0, &parts)
    }

    fn start(&mut self, conn: ConnId) -> u32 {
        let o = self.req(conn, MsgType::TransactionStart, 0, &[""]);
        String::from_utf8_lossy(o.ok())
            .trim_end_matches('\0')
            .parse()
            .expect("tx id")
    }

    fn end(&mut self, conn: ConnId, tx: u32, commit: bool) -> Outcome {
        self.req(
            conn,
            MsgType::TransactionEnd,
            tx,
            &[if commit { "T" } else { "F" }],
        )
    }
}

// --- nodes -------------------------------------------------------------

#[test]
fn write_creates_parents_and_read_returns_raw_value() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/a/b/c", "v\0with nul").ok();
    assert_eq!(h.read(DOM0, 0, "/a/b/c").ok(), b"v\0with nul");
    assert_eq!(h.read(DOM0, 0, "/a/b").ok(), b"");
    assert_eq!(h.req(DOM0, MsgType::Directory, 0, &["/a"]).ok(), b"b\0");
}

#[test]
fn relative_paths_resolve_under_the_callers_domain() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "backend/x", "1").ok();
    assert_eq!(h.read(DOM0, 0, "/local/domain/0/backend/x").ok(), b"1");
}

#[test]
fn directory_lists_children_in_creation_order() {
    let mut h = Harness::new();
    for n in ["z", "a", "m"] {
        h.write(DOM0, 0, &format!("/d/{n}"), "").ok();
    }
    assert_eq!(
        h.req(DOM0, MsgType::Directory, 0, &["/d"]).ok(),
        b"z\0a\0m\0"
    );
}

#[test]
fn rm_is_recursive_and_tolerates_a_missing_node_with_a_parent() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/a/b/c", "1").ok();
    h.req(DOM0, MsgType::Rm, 0, &["/a/b"]).ok();
    assert_eq!(h.read(DOM0, 0, "/a/b/c").err(), XsErrno::NoEnt);
    assert_eq!(h.req(DOM0, MsgType::Directory, 0, &["/a"]).ok(), b"");
    h.req(DOM0, MsgType::Rm, 0, &["/a/missing"]).ok();
    assert_eq!(
        h.req(DOM0, MsgType::Rm, 0, &["/nope/missing"]).err(),
        XsErrno::NoEnt
    );
    assert_eq!(h.req(DOM0, MsgType::Rm, 0, &["/"]).err(), XsErrno::Inval);
}

#[test]
fn mkdir_of_existing_node_is_ok_and_keeps_its_value() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/a", "keep").ok();
    h.req(DOM0, MsgType::Mkdir, 0, &["/a"]).ok();
    assert_eq!(h.read(DOM0, 0, "/a").ok(), b"keep");
}

#[test]
fn directory_too_big_for_one_reply_is_e2big_and_directory_part_pages_it() {
    let mut h = Harness::new();
    let names: Vec<String> = (0..300)
        .map(|i| format!("child-with-a-long-name-{i:04}"))
        .collect();
    for n in &names {
        h.write(DOM0, 0, &format!("/big/{n}"), "").ok();
    }
    assert_eq!(
        h.req(DOM0, MsgType::Directory, 0, &["/big"]).err(),
        XsErrno::TooBig
    );
    let mut all = Vec::new();
    let mut generation = None;
    loop {
        let off = all.len().to_string();
        let o = h.req(DOM0, MsgType::DirectoryPart, 0, &["/big", &off]);
        let body = o.ok().to_vec();
        assert!(body.len() <= 4096);
        let nul = body.iter().position(|&b| b == 0).unwrap();
        let g = String::from_utf8_lossy(&body[..nul]).into_owned();
        assert_eq!(*generation.get_or_insert(g.clone()), g, "generation moved");
        let chunk = &body[nul + 1..];
        if chunk.ends_with(b"\0\0") || chunk == b"\0" {
            all.extend_from_slice(&chunk[..chunk.len() - 1]);
            break;
        }
        all.extend_from_slice(chunk);
    }
    let got: Vec<String> = all
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert_eq!(got, names);
}

// --- permissions ---------------------------------------------------------

#[test]
fn guest_cannot_see_whether_unreadable_nodes_exist() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/secret/x", "1").ok();
    // Existing node without read access: EACCES.
    assert_eq!(h.read(10, 0, "/secret/x").err(), XsErrno::Acces);
    // Missing node under an unreadable ancestor: EACCES, not ENOENT.
    assert_eq!(h.read(10, 0, "/secret/y").err(), XsErrno::Acces);
    // Missing node under a readable ancestor: ENOENT.
    h.perms(DOM0, "/secret", &["n0", "r5"]).ok();
    assert_eq!(h.read(10, 0, "/secret/y").err(), XsErrno::NoEnt);
}

#[test]
fn read_only_console_dir_stops_guest_writes_but_not_reads() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5/console/tty", "").ok();
    h.perms(DOM0, "/local/domain/5/console", &["n0", "r5"]).ok();
    h.perms(DOM0, "/local/domain/5/console/tty", &["n0", "r5"])
        .ok();
    assert_eq!(h.read(10, 0, "console/tty").ok(), b"");
    assert_eq!(
        h.write(10, 0, "console/tty", "/dev/evil").err(),
        XsErrno::Acces
    );
    // Creating a new node needs write access on the nearest ancestor.
    assert_eq!(
        h.write(10, 0, "console/output", "file:/etc/shadow").err(),
        XsErrno::Acces
    );
    assert_eq!(
        h.req(10, MsgType::Rm, 0, &["console/tty"]).err(),
        XsErrno::Acces
    );
}

#[test]
fn node_created_by_guest_is_owned_by_guest_and_inherits_the_rest() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n5", "r0"]).ok();
    h.write(10, 0, "data/a/b", "x").ok();
    let p = h.req(DOM0, MsgType::GetPerms, 0, &["/local/domain/5/data/a"]);
    assert_eq!(p.ok(), b"n5\0r0\0");
}

#[test]
fn only_the_owner_changes_perms_and_guests_cannot_give_nodes_away() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.guest(11, 6);
    h.write(DOM0, 0, "/shared", "").ok();
    h.perms(DOM0, "/shared", &["n5", "b6"]).ok();
    assert_eq!(
        h.perms(11, "/shared", &["n5", "b6", "r7"]).err(),
        XsErrno::Acces
    );
    assert_eq!(h.perms(10, "/shared", &["n6"]).err(), XsErrno::Perm);
    h.perms(10, "/shared", &["n5", "r6"]).ok();
    assert_eq!(h.write(11, 0, "/shared", "x").err(), XsErrno::Acces);
}

#[test]
fn set_perms_needs_an_existing_owner_domain_and_valid_entries() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/a", "").ok();
    assert_eq!(h.perms(DOM0, "/a", &["n42"]).err(), XsErrno::NoEnt);
    assert_eq!(h.perms(DOM0, "/a", &["x0"]).err(), XsErrno::Inval);
    assert_eq!(
        h.req(DOM0, MsgType::SetPerms, 0, &["/a"]).err(),
        XsErrno::Inval
    );
}

#[test]
fn device_model_gets_its_targets_access_after_set_target() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.guest(12, 7);
    h.write(DOM0, 0, "/local/domain/5/x", "1").ok();
    h.perms(DOM0, "/local/domain/5/x", &["n5"]).ok();
    assert_eq!(h.read(12, 0, "/local/domain/5/x").err(), XsErrno::Acces);
    h.req(DOM0, MsgType::SetTarget, 0, &["7", "5"]).ok();
    assert_eq!(h.read(12, 0, "/local/domain/5/x").ok(), b"1");
}

#[test]
fn privileged_requests_are_refused_to_guests() {
    let mut h = Harness::new();
    h.guest(10, 5);
    for (ty, args) in [
        (MsgType::Introduce, vec!["9", "1", "1"]),
        (MsgType::Release, vec!["5"]),
        (MsgType::IsDomainIntroduced, vec!["5"]),
        (MsgType::SetTarget, vec!["5", "0"]),
        (MsgType::Resume, vec!["5"]),
        (MsgType::Control, vec!["check"]),
    ] {
        assert_eq!(h.req(10, ty, 0, &args).err(), XsErrno::Acces, "{ty:?}");
    }
    assert_eq!(
        h.req(10, MsgType::GetDomainPath, 0, &["5"]).ok(),
        b"/local/domain/5\0"
    );
}

// --- quotas --------------------------------------------------------------

#[test]
fn guest_node_quota_answers_enospc() {
    let mut h = Harness::with_quotas(Quotas {
        nodes: 3,
        ..Quotas::default()
    });
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n5"]).ok();
    h.write(10, 0, "a", "").ok();
    h.write(10, 0, "b", "").ok();
    assert_eq!(h.write(10, 0, "c", "").err(), XsErrno::NoSpc);
    // dom0 is not bound by it.
    h.write(DOM0, 0, "/local/domain/5/c", "").ok();
}

#[test]
fn guest_node_size_watch_and_perm_quotas() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n5"]).ok();
    assert_eq!(
        h.write(10, 0, "big", &"x".repeat(2048)).err(),
        XsErrno::NoSpc
    );
    h.write(10, 0, "ok", &"x".repeat(2000)).ok();
    assert_eq!(
        h.perms(10, "ok", &["n5", "r1", "r2", "r3", "r4", "r6"])
            .err(),
        XsErrno::NoSpc
    );
    for i in 0..128 {
        h.req(10, MsgType::Watch, 0, &["ok", &format!("t{i}")]).ok();
    }
    assert_eq!(
        h.req(10, MsgType::Watch, 0, &["ok", "one-more"]).err(),
        XsErrno::TooBig
    );
}

#[test]
fn guest_path_length_quota_counts_after_the_domain_prefix() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n5"]).ok();
    let fits = "a".repeat(2048);
    let too_long = "a".repeat(2049);
    assert_eq!(h.write(10, 0, &too_long, "").err(), XsErrno::Inval);
    assert_ne!(h.write(10, 0, &fits, "").err(), XsErrno::Inval);
}

// --- watches -------------------------------------------------------------

#[test]
fn watch_replies_ok_then_fires_once_with_its_own_path() {
    let mut h = Harness::new();
    let o = h.req(DOM0, MsgType::Watch, 0, &["/w", "tok"]);
    assert_eq!(o.ok(), b"OK\0");
    assert_eq!(o.events, vec![(DOM0, "/w".into(), "tok".into())]);
    assert_eq!(
        h.req(DOM0, MsgType::Watch, 0, &["/w", "tok"]).err(),
        XsErrno::Exist
    );
    assert_eq!(
        h.req(DOM0, MsgType::Unwatch, 0, &["/w", "other"]).err(),
        XsErrno::NoEnt
    );
    h.req(DOM0, MsgType::Unwatch, 0, &["/w", "tok"]).ok();
    assert!(h.write(DOM0, 0, "/w", "x").events.is_empty());
}

#[test]
fn changes_fire_watches_at_and_above_with_the_changed_path() {
    let mut h = Harness::new();
    h.req(DOM0, MsgType::Watch, 0, &["/a", "above"]);
    h.req(DOM0, MsgType::Watch, 0, &["/a/b/c/d", "below"]);
    let o = h.write(DOM0, 0, "/a/b/c", "1");
    assert_eq!(o.events, vec![(DOM0, "/a/b/c".into(), "above".into())]);
}

#[test]
fn removing_a_subtree_reports_each_watched_descendant_and_the_top() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/a/b/c", "1").ok();
    h.req(DOM0, MsgType::Watch, 0, &["/a/b/c", "leaf"]);
    h.req(DOM0, MsgType::Watch, 0, &["/a/b/zz", "never-existed"]);
    h.req(DOM0, MsgType::Watch, 0, &["/", "root"]);
    let o = h.req(DOM0, MsgType::Rm, 0, &["/a/b"]);
    assert_eq!(
        o.events,
        vec![
            (DOM0, "/a/b/c".into(), "leaf".into()),
            (DOM0, "/a/b".into(), "root".into())
        ]
    );
}

#[test]
fn relative_watch_reports_relative_paths() {
    let mut h = Harness::new();
    let o = h.req(DOM0, MsgType::Watch, 0, &["backend", "t"]);
    assert_eq!(o.events, vec![(DOM0, "backend".into(), "t".into())]);
    let o = h.write(DOM0, 0, "/local/domain/0/backend/console/1", "");
    assert_eq!(
        o.events,
        vec![(DOM0, "backend/console/1".into(), "t".into())]
    );
}

#[test]
fn guests_see_events_only_for_nodes_they_may_read() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5/pub", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n0", "r5"]).ok();
    h.req(10, MsgType::Watch, 0, &["/local/domain/5", "t"]);
    h.write(DOM0, 0, "/local/domain/5/hidden", "").ok();
    let o = h.perms(DOM0, "/local/domain/5/hidden", &["n0"]);
    // Still visible: the parent is readable.
    assert_eq!(o.events.len(), 1);
    h.write(DOM0, 0, "/other/x", "").ok();
    h.req(10, MsgType::Watch, 0, &["/other/x", "u"]);
    let o = h.write(DOM0, 0, "/other/x", "secret");
    assert!(
        o.events.is_empty(),
        "guest saw an event on an unreadable node"
    );
}

#[test]
fn special_watches_fire_for_privileged_watchers_only() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.req(DOM0, MsgType::Watch, 0, &["@introduceDomain", "i"]);
    h.req(DOM0, MsgType::Watch, 0, &["@releaseDomain", "r"]);
    h.req(10, MsgType::Watch, 0, &["@introduceDomain", "guest"]);
    let o = h.req(DOM0, MsgType::Introduce, 0, &["7", "1234", "3"]);
    assert_eq!(
        o.events,
        vec![(DOM0, "@introduceDomain".into(), "i".into())]
    );
    assert_eq!(h.core.effects, vec![Effect::Introduced(7)]);
    assert_eq!(
        h.req(DOM0, MsgType::IsDomainIntroduced, 0, &["7"]).ok(),
        b"T\0"
    );
    let o = h.req(DOM0, MsgType::Release, 0, &["7"]);
    assert_eq!(o.events, vec![(DOM0, "@releaseDomain".into(), "r".into())]);
    assert_eq!(
        h.req(DOM0, MsgType::IsDomainIntroduced, 0, &["7"]).ok(),
        b"F\0"
    );
    assert_eq!(
        h.req(DOM0, MsgType::Release, 0, &["7"]).err(),
        XsErrno::NoEnt
    );
}

#[test]
fn releasing_a_domain_closes_its_connections_and_removes_what_it_owns() {
    let mut h = Harness::new();
    h.guest(10, 5);
    h.write(DOM0, 0, "/local/domain/5/x", "").ok();
    h.perms(DOM0, "/local/domain/5", &["n5"]).ok();
    h.core.effects.clear();
    h.req(DOM0, MsgType::Release, 0, &["5"]).ok();
    assert!(h.core.effects.contains(&Effect::Close(10)));
    assert_eq!(h.read(DOM0, 0, "/local/domain/5").err(), XsErrno::NoEnt);
    h.read(DOM0, 0, "/local/domain").ok();
}

// --- transactions --------------------------------------------------------

#[test]
fn transaction_sees_its_first_read_not_later_outside_writes_and_conflicts() {
    let mut h = Harness::new();
    h.write(DOM0, 0, "/t", "a").ok();
    let tx = h.start(DOM0);
    assert_eq!(h.read(DOM0, tx, "/t").ok(), b"a");
    h.write(DOM0, 0, "/t", "b").ok();
    assert_eq!(h.read(DOM0, tx, "/t").ok(), b"a");
    h.write(DOM0, tx, "/t", "c").ok();
    assert_eq!(h.end(DOM0, tx, true).err(), XsErrno::Again);
    assert_eq!(h.read(DOM0, 0, "/t").ok(), b"b");
}

#[test]
fn committed_transaction_applies_all_and_fires_events_only_at_commit() {
    let mut h = Harness::new();
    h.req(DOM0, MsgType::Watch, 0, &["/t", "w"]);
    let tx = h.start(DOM0);
    let o = h.write(DOM0, tx, "/t/a", "1");
    assert!(o.events.is_empty());
    h.write(DOM0, tx, "/t/b", "2").ok();
    h.req(DOM0, MsgType::Rm, tx, &["/t/a"]).ok();
    assert_eq!(h.read(DOM0, 0, "/t/b").err(), XsErrno::NoEnt);
    let o = h.end(DOM0, tx, true);
    o.ok();
    // One event per node touched, as C xenstored queues them.
    let mut paths: Vec<&str> = o.events.iter().map(|(_, p, _)| p.as_str()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/t/a", "/t/b"]);
    assert_eq!(h.read(DOM0, 0, "/t/b").ok(), b"2");
    assert_eq!(h.req(DOM0, MsgType::Directory, 0, &["/t"]).ok(), b"b\0");
}

#[test]
fn aborted_transaction_changes_nothing() {
    let mut h = Harness::new();
    let tx = h.start(DOM0);
    h.write(DOM0, tx, "/t", "1").ok();
    h.end(DOM0, tx, false).ok();
    assert_eq!(h.read(DOM0, 0, "/t").err(), XsErrno::NoEnt);
    assert_eq!(h.end(DOM0, tx, true).err(), XsErrno::NoEnt);
}

#[test]
fn transaction_ids_are_per_connection_and_checked() {
    let mut h = Harness::new();
    h.core.connect(2, 0, true);
    let tx = h.start(DOM0);
    assert_eq!(tx, 1);
    assert_eq!(h.read(2, tx, "/tool").err(), XsErrno::NoEnt);
    assert_eq!(h.read(DOM0, 99, "/tool").err(), XsErrno::NoEnt);
    assert_eq!(
        h.req(DOM0, MsgType::TransactionStart, tx, &[""]).err(),
        XsErrno::Busy
    );
    assert_eq!(
        h.req(DOM0, MsgType::TransactionEnd, tx, &["X"]).err(),
        XsErrno::Inval
    );
    h.end(DOM0, tx, false).ok();
}

#[test]
fn guest_transaction_limits() {
    let mut h = Harness::with_quotas(Quotas {
        transactions: 2,
        transaction_nodes: 4,
        ..Quotas::default()
    });
    h.guest(10, 5);
    let a = h.start(10);
    h.start(10);
    assert_eq!(
        h.req(10, MsgType::TransactionStart, 0, &[""]).err(),
        XsErrno::NoSpc
    );
    for i in 0..3 {
        let _ = h.read(10, a, &format!("/n{i}"));
    }
    assert_eq!(h.read(10, a, "/n3").err(), XsErrno::NoSpc);
    assert_eq!(h.end(10, a, true).err(), XsErrno::NoMem);
}

#[test]
fn disconnect_drops_open_transactions_and_watches() {
    let mut h = Harness::new();
    h.core.connect(2, 0, true);
    let tx = h.start(2);
    h.write(2, tx, "/t", "1").ok();
    h.req(2, MsgType::Watch, 0, &["/t", "w"]);
    h.core.disconnect(2);
    let o = h.write(DOM0, 0, "/t", "2");
    assert!(o.events.is_empty());
    assert_eq!(h.read(DOM0, 0, "/t").ok(), b"2");
}

// --- malformed requests -------------------------------------------------

#[test]
fn malformed_requests_get_xen_errors() {
    let mut h = Harness::new();
    // Unknown and client-forbidden types.
    for ty in [20, 15, 16, 27, 0xffff, 999_999] {
        assert_eq!(
            h.raw(DOM0, ty, 0, b"/a\0".to_vec()).err(),
            XsErrno::NoSys,
            "type {ty}"
        );
    }
    // Missing NUL, extra strings, bad characters, too long.
    assert_eq!(
        h.raw(DOM0, MsgType::Read as u32, 0, b"/tool".to_vec())
            .err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.req(DOM0, MsgType::Read, 0, &["/tool", "x"]).err(),
        XsErrno::Inval
    );
    assert_eq!(h.read(DOM0, 0, "/a b").err(), XsErrno::Inval);
    assert_eq!(h.read(DOM0, 0, "/a//b").err(), XsErrno::Inval);
    assert_eq!(
        h.read(DOM0, 0, &format!("/{}", "a".repeat(3072))).err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.raw(DOM0, MsgType::Write as u32, 0, b"/no-nul".to_vec())
            .err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.req(DOM0, MsgType::Watch, 0, &["/a"]).err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.req(DOM0, MsgType::GetDomainPath, 0, &["x"]).err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.req(DOM0, MsgType::Introduce, 0, &["9", "1", "0"]).err(),
        XsErrno::Inval
    );
    assert_eq!(
        h.req(DOM0, MsgType::Introduce, 0, &["99999", "1", "1"])
            .err(),
        XsErrno::Inval
    );
    // Binary junk anywhere in a request.
    assert_eq!(
        h.raw(DOM0, MsgType::Read as u32, 0, vec![0xff, 0xfe, 0])
            .err(),
        XsErrno::Inval
    );
}
