//! Model-based property test of the XenStore protocol core.
//!
//! A deliberately naive reference model, written from the C xenstored 4.17
//! fact sheet rather than from the server's code, runs the same random
//! request sequence as [`Core`]. Every reply (type and payload) must agree,
//! and so must every watch event delivered to dom0.
//!
//! Modelled: permissions (owner, default, per-domain entries, privileged
//! dom0, ENOENT/EACCES from the nearest existing ancestor, creator becomes
//! owner, SET_PERMS rules), WRITE, MKDIR, RM, READ, DIRECTORY, GET_PERMS,
//! transactions (copy of a node on its first touch, including absence;
//! commit fails with EAGAIN iff a touched node's generation changed; events
//! queued until commit), and dom0's watches (subtree match, exact match for
//! the descendants an RM deletes, initial event).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;
use xenstore::server::{Core, Quotas};
use xenstore::wire::{Message, MsgType};

/// Connections as (conn id, domid). Index 0 is dom0 and privileged; the
/// others are unprivileged, introduced domains.
const CONNS: [(u64, u16); 3] = [(1, 0), (2, 1), (3, 2)];
/// Introduced domains. Domain 3 is never introduced.
const DOMAINS: [u16; 3] = [0, 1, 2];
static PATHS: [&str; 11] = [
    "/",
    "/a",
    "/a/b",
    "/a/b/c",
    "/x",
    "/tool",
    "/local/domain/1",
    "/local/domain/1/d",
    "/local/domain/1/d/e",
    "/local/domain/2/d",
    "rel",
];
static WATCH_PATHS: [&str; 6] = ["/", "/a", "/a/b", "/a/b/c", "/local/domain/1", "/x"];
static TOKENS: [&str; 2] = ["t1", "t2"];
static VALUES: [&str; 3] = ["", "v1", "v2"];
static LETTERS: [char; 4] = ['n', 'r', 'w', 'b'];
/// A transaction id no connection ever gets.
const BOGUS_TX: u32 = 4242;
/// The driver starts no more transactions than this per connection, far
/// below the transaction quota.
const MAX_OPEN_TXNS: usize = 4;

const R: u8 = 1;
const W: u8 = 2;
const OWNER: u8 = 4;

/// `(letter, domid)`; entry 0 is the owner and the default for others.
type Perm = (char, u16);
/// A reply: its payload, or an error name.
type Reply = Result<Vec<u8>, &'static str>;
/// A watch event as (path, token).
type Event = (String, String);

// --- the reference model ------------------------------------------------

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    perms: Vec<Perm>,
    children: Vec<String>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Txn {
    /// Generation of each touched node at its first touch (None: absent).
    seen: BTreeMap<String, Option<u64>>,
    /// The transaction's private copy of each touched node.
    view: BTreeMap<String, Option<Node>>,
    /// Nodes the transaction changed.
    dirty: BTreeSet<String>,
    /// Queued events, one per node: (path, subtree match or exact match).
    events: Vec<(String, bool)>,
    /// The view became inconsistent (a node and its parent copied at
    /// different times disagree). C xenstored then answers from its
    /// corruption paths; such a transaction is bound to fail with EAGAIN,
    /// so its replies are not compared.
    doomed: bool,
}

/// Which view a request works on: a connection, maybe inside a transaction.
#[derive(Clone, Copy)]
struct Ctx {
    conn: usize,
    tx: Option<u32>,
}

struct Model {
    store: BTreeMap<String, Node>,
    next_gen: u64,
    txns: BTreeMap<(usize, u32), Txn>,
    next_tx: [u32; 3],
    /// dom0's watches as (path, token), all absolute.
    watches: Vec<(String, String)>,
    /// Events delivered to dom0 by the current request.
    events: Vec<Event>,
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn basename(p: &str) -> &str {
    &p[p.rfind('/').map_or(0, |i| i + 1)..]
}

fn join(p: &str, name: &str) -> String {
    if p == "/" {
        format!("/{name}")
    } else {
        format!("{p}/{name}")
    }
}

fn absolute(path: &str, domid: u16) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/local/domain/{domid}/{path}")
    }
}

/// True if a change to `node` fires a subtree watch on `watch`.
fn at_or_below(node: &str, watch: &str) -> bool {
    watch == "/" || node == watch || node.strip_prefix(watch).is_some_and(|r| r.starts_with('/'))
}

fn letter_bits(c: char) -> u8 {
    match c {
        'r' => R,
        'w' => W,
        'b' => R | W,
        _ => 0,
    }
}

/// `perm_for_conn` (§1).
fn access(conn: usize, perms: &[Perm]) -> u8 {
    let domid = CONNS[conn].1;
    if conn == 0 || perms[0].1 == domid {
        return R | W | OWNER;
    }
    let entry = perms[1..]
        .iter()
        .find(|p| p.1 == domid)
        .unwrap_or(&perms[0]);
    letter_bits(entry.0)
}

fn ok() -> Reply {
    Ok(b"OK\0".to_vec())
}

impl Model {
    fn new() -> Model {
        let mut m = Model {
            store: BTreeMap::new(),
            next_gen: 1,
            txns: BTreeMap::new(),
            next_tx: [1; 3],
            watches: Vec::new(),
            events: Vec::new(),
        };
        let node = |children: &[&str]| Node {
            value: Vec::new(),
            perms: vec![('n', 0)],
            children: children.iter().map(|c| c.to_string()).collect(),
            generation: 0,
        };
        m.put(Ctx { conn: 0, tx: None }, "/", Some(node(&["tool"])));
        m.put(
            Ctx { conn: 0, tx: None },
            "/tool",
            Some(node(&["xenstored"])),
        );
        m.put(
            Ctx { conn: 0, tx: None },
            "/tool/xenstored",
            Some(node(&[])),
        );
        m
    }

    fn open_txns(&self, conn: usize) -> Vec<u32> {
        self.txns
            .keys()
            .filter(|k| k.0 == conn)
            .map(|k| k.1)
            .collect()
    }

    /// Reads a node; inside a transaction the first touch copies it from
    /// the live store (absence included) and later touches see that copy.
    fn get(&mut self, ctx: Ctx, path: &str) -> Option<Node> {
        let live = self.store.get(path).cloned();
        let Some(tx) = ctx.tx else { return live };
        let t = self.txns.get_mut(&(ctx.conn, tx)).expect("open txn");
        t.seen
            .entry(path.to_owned())
            .or_insert(live.as_ref().map(|n| n.generation));
        t.view.entry(path.to_owned()).or_insert(live).clone()
    }

    /// Writes (Some) or deletes (None) a node. Every global write gets a
    /// new generation.
    fn put(&mut self, ctx: Ctx, path: &str, node: Option<Node>) {
        match ctx.tx {
            None => match node {
                Some(mut n) => {
                    n.generation = self.next_gen;
                    self.next_gen += 1;
                    self.store.insert(path.to_owned(), n);
                }
                None => {
                    self.store.remove(path);
                }
            },
            Some(tx) => {
                self.get(ctx, path);
                let t = self.txns.get_mut(&(ctx.conn, tx)).expect("open txn");
                t.view.insert(path.to_owned(), node);
                t.dirty.insert(path.to_owned());
            }
        }
    }

    /// Fires (or, in a transaction, queues) a change to `path` (§5).
    fn fire(&mut self, ctx: Ctx, path: &str, subtree: bool) {
        match ctx.tx {
            None => {
                for (w, token) in &self.watches {
                    if w == path || (subtree && at_or_below(path, w)) {
                        self.events.push((path.to_owned(), token.clone()));
                    }
                }
            }
            Some(tx) => {
                let t = self.txns.get_mut(&(ctx.conn, tx)).expect("open txn");
                match t.events.iter_mut().find(|e| e.0 == path) {
                    Some(e) => e.1 |= subtree,
                    _ => t.events.push((path.to_owned(), subtree)),
                }
            }
        }
    }

    /// `get_node` with `errno_from_parents` (§1).
    fn check(&mut self, ctx: Ctx, path: &str, need: u8) -> Result<Node, &'static str> {
        let err = match self.get(ctx, path) {
            Some(n) if access(ctx.conn, &n.perms) & need == need => return Ok(n),
            Some(_) => "EACCES",
            None => "ENOENT",
        };
        let mut p = path;
        loop {
            p = parent(p);
            if let Some(a) = self.get(ctx, p) {
                let granted = access(ctx.conn, &a.perms) & need != 0;
                return Err(if granted { err } else { "EACCES" });
            }
        }
    }

    /// Creates `path` and its missing ancestors, which copy the perms of
    /// the nearest existing ancestor, owned by an unprivileged creator (§1).
    fn create(&mut self, ctx: Ctx, path: &str, value: &[u8]) -> Result<(), &'static str> {
        let mut missing = vec![path.to_owned()];
        let base = loop {
            let p = parent(missing.last().expect("nonempty")).to_owned();
            match self.get(ctx, &p) {
                Some(n) => break n,
                None => missing.push(p),
            }
        };
        let mut perms = base.perms;
        if ctx.conn != 0 {
            perms[0].1 = CONNS[ctx.conn].1;
        }
        for m in missing.iter().rev() {
            let mut par = self.get(ctx, parent(m)).expect("parent exists");
            if par.children.iter().any(|c| c == basename(m)) {
                return self.doom(ctx);
            }
            par.children.push(basename(m).to_owned());
            self.put(ctx, parent(m), Some(par));
            let node = Node {
                value: if m == path {
                    value.to_vec()
                } else {
                    Vec::new()
                },
                perms: perms.clone(),
                children: Vec::new(),
                generation: 0,
            };
            self.put(ctx, m, Some(node));
        }
        Ok(())
    }

    fn write(&mut self, ctx: Ctx, path: &str, value: &[u8]) -> Reply {
        match self.check(ctx, path, W) {
            Ok(mut n) => {
                n.value = value.to_vec();
                self.put(ctx, path, Some(n));
            }
            Err("ENOENT") => self.create(ctx, path, value)?,
            Err(e) => return Err(e),
        }
        self.fire(ctx, path, true);
        ok()
    }

    fn mkdir(&mut self, ctx: Ctx, path: &str) -> Reply {
        match self.check(ctx, path, W) {
            Ok(_) => return ok(),
            Err("ENOENT") => self.create(ctx, path, b"")?,
            Err(e) => return Err(e),
        }
        self.fire(ctx, path, true);
        ok()
    }

    /// Deletes `path`'s subtree post-order; descendants fire exact events.
    fn remove_tree(&mut self, ctx: Ctx, path: &str) -> Result<(), &'static str> {
        let Some(node) = self.get(ctx, path) else {
            return self.doom(ctx);
        };
        for c in &node.children {
            let cp = join(path, c);
            self.remove_tree(ctx, &cp)?;
            self.fire(ctx, &cp, false);
        }
        self.put(ctx, path, None);
        Ok(())
    }

    /// Marks the transaction's view inconsistent (see `Txn::doomed`).
    fn doom<T>(&mut self, ctx: Ctx) -> Result<T, &'static str> {
        let tx = ctx.tx.expect("the live store is always consistent");
        self.txns.get_mut(&(ctx.conn, tx)).expect("open txn").doomed = true;
        Err("EIO")
    }

    /// §2.
    fn rm(&mut self, ctx: Ctx, path: &str) -> Reply {
        match self.check(ctx, path, W) {
            Ok(_) if path == "/" => Err("EINVAL"),
            Ok(_) => {
                let Some(mut par) = self.get(ctx, parent(path)) else {
                    return self.doom(ctx);
                };
                if !par.children.iter().any(|c| c == basename(path)) {
                    return self.doom(ctx);
                }
                self.remove_tree(ctx, path)?;
                par.children.retain(|c| c != basename(path));
                self.put(ctx, parent(path), Some(par));
                self.fire(ctx, path, true);
                ok()
            }
            Err("ENOENT") if self.get(ctx, parent(path)).is_some() => ok(),
            Err(e) => Err(e),
        }
    }

    /// §1, SET_PERMS checks in 4.17 order.
    fn set_perms(&mut self, ctx: Ctx, path: &str, perms: &[Perm]) -> Reply {
        if !DOMAINS.contains(&perms[0].1) {
            return Err("ENOENT");
        }
        let mut n = self.check(ctx, path, W | OWNER)?;
        if ctx.conn != 0 && n.perms[0].1 != perms[0].1 {
            return Err("EPERM");
        }
        n.perms = perms.to_vec();
        self.put(ctx, path, Some(n));
        self.fire(ctx, path, true);
        ok()
    }

    /// §6: commit iff no touched node's generation changed.
    fn commit(&mut self, t: Txn) -> Reply {
        let conflict = t
            .seen
            .iter()
            .any(|(p, g)| self.store.get(p).map(|n| n.generation) != *g);
        assert!(conflict || !t.doomed, "an inconsistent view committed");
        if conflict {
            return Err("EAGAIN");
        }
        let global = Ctx { conn: 0, tx: None };
        for p in &t.dirty {
            self.put(global, p, t.view[p].clone());
        }
        for (p, subtree) in &t.events {
            self.fire(global, p, *subtree);
        }
        ok()
    }

    /// Handles one request; returns the reply and the events dom0 got.
    fn handle(&mut self, conn: usize, tx: u32, op: &Op) -> (Reply, Vec<Event>) {
        self.events.clear();
        let reply = self.dispatch(conn, tx, op);
        let mut events = std::mem::take(&mut self.events);
        // An event identical to one still queued is dropped (§5); nothing
        // stays queued between requests here.
        let mut queued = BTreeSet::new();
        events.retain(|e| queued.insert(e.clone()));
        (reply, events)
    }

    fn dispatch(&mut self, conn: usize, tx: u32, op: &Op) -> Reply {
        let watch_op = matches!(op, Op::Watch(..) | Op::Unwatch(..));
        if !watch_op && tx != 0 && !self.txns.contains_key(&(conn, tx)) {
            return Err("ENOENT");
        }
        let ctx = Ctx {
            conn,
            tx: (tx != 0).then_some(tx),
        };
        let abs = |p: &str| absolute(p, CONNS[conn].1);
        match op {
            Op::Read(p) => Ok(self.check(ctx, &abs(p), R)?.value),
            Op::Directory(p) => {
                let n = self.check(ctx, &abs(p), R)?;
                Ok(n.children
                    .iter()
                    .flat_map(|c| [c.as_bytes(), b"\0"])
                    .flatten()
                    .copied()
                    .collect())
            }
            Op::GetPerms(p) => {
                let n = self.check(ctx, &abs(p), R)?;
                Ok(n.perms
                    .iter()
                    .map(|(c, d)| format!("{c}{d}\0"))
                    .collect::<String>()
                    .into_bytes())
            }
            Op::Write(p, v) => self.write(ctx, &abs(p), v.as_bytes()),
            Op::Mkdir(p) => self.mkdir(ctx, &abs(p)),
            Op::Rm(p) => self.rm(ctx, &abs(p)),
            Op::SetPerms(p, perms) => self.set_perms(ctx, &abs(p), perms),
            Op::Start if tx != 0 => Err("EBUSY"),
            Op::Start => {
                let id = self.next_tx[conn];
                self.next_tx[conn] += 1;
                self.txns.insert((conn, id), Txn::default());
                Ok(format!("{id}\0").into_bytes())
            }
            Op::End(_) if tx == 0 => Err("ENOENT"),
            Op::End(commit) => {
                let t = self.txns.remove(&(conn, tx)).expect("checked");
                if *commit {
                    self.commit(t)
                } else {
                    ok()
                }
            }
            Op::Watch(p, token) => {
                let w = (p.to_string(), token.to_string());
                if self.watches.contains(&w) {
                    return Err("EEXIST");
                }
                self.watches.push(w.clone());
                self.events.push(w);
                ok()
            }
            Op::Unwatch(p, token) => {
                let w = (p.to_string(), token.to_string());
                let before = self.watches.len();
                self.watches.retain(|x| *x != w);
                if self.watches.len() == before {
                    Err("ENOENT")
                } else {
                    ok()
                }
            }
        }
    }
}

// --- requests and the real server ----------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Read(String),
    Write(String, &'static str),
    Mkdir(String),
    Rm(String),
    Directory(String),
    GetPerms(String),
    SetPerms(String, Vec<Perm>),
    Start,
    End(bool),
    Watch(&'static str, &'static str),
    Unwatch(&'static str, &'static str),
}

/// Which transaction id a request carries.
#[derive(Clone, Copy, Debug)]
enum TxSel {
    Outside,
    /// One of the connection's open transactions (none open: 0).
    Open(usize),
    Bogus,
}

#[derive(Clone, Debug)]
struct Step {
    conn: usize,
    tx: TxSel,
    op: Op,
}

fn step(conn: usize, op: Op) -> Step {
    Step {
        conn,
        tx: TxSel::Outside,
        op,
    }
}

impl Op {
    fn msg_type(&self) -> MsgType {
        match self {
            Op::Read(_) => MsgType::Read,
            Op::Write(..) => MsgType::Write,
            Op::Mkdir(_) => MsgType::Mkdir,
            Op::Rm(_) => MsgType::Rm,
            Op::Directory(_) => MsgType::Directory,
            Op::GetPerms(_) => MsgType::GetPerms,
            Op::SetPerms(..) => MsgType::SetPerms,
            Op::Start => MsgType::TransactionStart,
            Op::End(_) => MsgType::TransactionEnd,
            Op::Watch(..) => MsgType::Watch,
            Op::Unwatch(..) => MsgType::Unwatch,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let strings = |parts: &[&str]| -> Vec<u8> {
            parts
                .iter()
                .flat_map(|p| [p.as_bytes(), b"\0"])
                .flatten()
                .copied()
                .collect()
        };
        match self {
            Op::Read(p) | Op::Mkdir(p) | Op::Rm(p) | Op::Directory(p) | Op::GetPerms(p) => {
                strings(&[p.as_str()])
            }
            Op::Write(p, v) => [strings(&[p.as_str()]), v.as_bytes().to_vec()].concat(),
            Op::SetPerms(p, perms) => {
                let perms: Vec<String> = perms.iter().map(|(c, d)| format!("{c}{d}")).collect();
                let mut parts = vec![p.as_str()];
                parts.extend(perms.iter().map(String::as_str));
                strings(&parts)
            }
            Op::Start => strings(&[""]),
            Op::End(commit) => strings(&[if *commit { "T" } else { "F" }]),
            Op::Watch(p, t) | Op::Unwatch(p, t) => strings(&[p, t]),
        }
    }
}

struct Server {
    core: Core,
    next_req: u32,
}

impl Server {
    fn new() -> Server {
        let mut core = Core::new(Quotas::default());
        core.connect(CONNS[0].0, CONNS[0].1, true);
        for &(id, domid) in &CONNS[1..] {
            core.introduce(domid);
            core.connect(id, domid, false);
        }
        core.out.clear();
        core.effects.clear();
        Server { core, next_req: 1 }
    }

    /// Sends one request; returns the reply as (type, payload) and the
    /// events dom0 got.
    fn handle(&mut self, conn: usize, tx: u32, op: &Op) -> ((u32, Vec<u8>), Vec<Event>) {
        let req_id = self.next_req;
        self.next_req += 1;
        let msg = Message::new(op.msg_type(), req_id, tx, op.payload());
        self.core.handle(CONNS[conn].0, &msg);
        self.core.effects.clear();
        let mut reply = None;
        let mut events = Vec::new();
        for (to, m) in std::mem::take(&mut self.core.out) {
            if m.msg_type == MsgType::WatchEvent as u32 {
                assert_eq!(to, CONNS[0].0, "only dom0 has watches");
                if matches!(op, Op::Watch(..)) {
                    assert!(reply.is_some(), "WATCH's first event before its reply");
                }
                let s = String::from_utf8(m.payload).expect("utf-8 event");
                let mut it = s.split('\0');
                let path = it.next().unwrap_or_default().to_owned();
                let token = it.next().unwrap_or_default().to_owned();
                events.push((path, token));
            } else {
                assert_eq!(to, CONNS[conn].0, "reply to the wrong connection");
                assert!(reply.is_none(), "two replies to one request");
                assert_eq!((m.req_id, m.tx_id), (req_id, tx), "ids not echoed");
                reply = Some((m.msg_type, m.payload));
            }
        }
        (reply.expect("a reply"), events)
    }
}

fn expected_wire(op: &Op, reply: &Reply) -> (u32, Vec<u8>) {
    match reply {
        Ok(payload) => (op.msg_type() as u32, payload.clone()),
        Err(name) => (MsgType::Error as u32, format!("{name}\0").into_bytes()),
    }
}

fn show(reply: &(u32, Vec<u8>)) -> String {
    let kind = MsgType::from_raw(reply.0).map_or("?".into(), |t| format!("{t:?}"));
    format!("{kind} {:?}", String::from_utf8_lossy(&reply.1))
}

/// Sends one request to both; describes any divergence.
fn compare(
    model: &mut Model,
    server: &mut Server,
    conn: usize,
    tx: u32,
    op: &Op,
    at: &str,
) -> Result<(), String> {
    let (want, mut want_events) = model.handle(conn, tx, op);
    let want = expected_wire(op, &want);
    let (got, mut got_events) = server.handle(conn, tx, op);
    let at = format!("{at} (conn {conn}, tx {tx}, {op:?})");
    let doomed = model.txns.get(&(conn, tx)).is_some_and(|t| t.doomed);
    if got != want && !doomed {
        return Err(format!(
            "{at}: server replied {}, model {}",
            show(&got),
            show(&want)
        ));
    }
    want_events.sort();
    got_events.sort();
    if got_events != want_events {
        return Err(format!(
            "{at}: dom0 got events {got_events:?}, model {want_events:?}"
        ));
    }
    Ok(())
}

/// Runs `steps` on both; returns a description of the first divergence.
fn run(steps: &[Step]) -> Result<(), String> {
    let mut model = Model::new();
    let mut server = Server::new();
    let setup = [
        step(0, Op::Write("/local/domain/1".into(), "")),
        step(0, Op::SetPerms("/local/domain/1".into(), vec![('n', 1)])),
        step(0, Op::Write("/local/domain/2".into(), "")),
        step(0, Op::SetPerms("/local/domain/2".into(), vec![('n', 2)])),
    ];
    let labelled = (setup
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("setup {i}"), s)))
    .chain(
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("step {i}"), s)),
    );
    for (at, s) in labelled {
        let open = model.open_txns(s.conn);
        let tx = match s.tx {
            TxSel::Outside => 0,
            TxSel::Open(_) if open.is_empty() => 0,
            TxSel::Open(i) => open[i % open.len()],
            TxSel::Bogus => BOGUS_TX,
        };
        if matches!(s.op, Op::Start) && tx == 0 && open.len() >= MAX_OPEN_TXNS {
            continue;
        }
        compare(&mut model, &mut server, s.conn, tx, &s.op, &at)?;
    }
    // Finally dom0 reads back every node the model has, and every path.
    let paths: BTreeSet<String> = model
        .store
        .keys()
        .cloned()
        .chain(PATHS.iter().map(|p| absolute(p, 0)))
        .collect();
    for p in paths {
        for op in [
            Op::Read(p.clone()),
            Op::Directory(p.clone()),
            Op::GetPerms(p),
        ] {
            compare(&mut model, &mut server, 0, 0, &op, "final check")?;
        }
    }
    Ok(())
}

// --- generators -----------------------------------------------------------

fn perm() -> impl Strategy<Value = Perm> {
    (select(&LETTERS[..]), 0u16..4)
}

fn op() -> impl Strategy<Value = Op> {
    let path = || select(&PATHS[..]).prop_map(String::from);
    prop_oneof![
        3 => path().prop_map(Op::Read),
        5 => (path(), select(&VALUES[..])).prop_map(|(p, v)| Op::Write(p, v)),
        2 => path().prop_map(Op::Mkdir),
        2 => path().prop_map(Op::Rm),
        2 => path().prop_map(Op::Directory),
        1 => path().prop_map(Op::GetPerms),
        3 => (path(), proptest::collection::vec(perm(), 1..4)).prop_map(|(p, perms)| Op::SetPerms(p, perms)),
        3 => Just(Op::Start),
    ]
}

fn tx_sel() -> impl Strategy<Value = TxSel> {
    prop_oneof![
        5 => Just(TxSel::Outside),
        8 => (0usize..4).prop_map(TxSel::Open),
        1 => Just(TxSel::Bogus),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0usize..3, tx_sel(), op()).prop_map(|(conn, tx, op)| Step { conn, tx, op }),
        // Ending mostly names an open transaction.
        1 => (0usize..3, prop_oneof![9 => (0usize..4).prop_map(TxSel::Open), 1 => Just(TxSel::Outside)], any::<bool>())
            .prop_map(|(conn, tx, commit)| Step { conn, tx, op: Op::End(commit) }),
        // Watches are dom0's, on absolute paths; their tx id is ignored.
        2 => (tx_sel(), select(&WATCH_PATHS[..]), select(&TOKENS[..]), any::<bool>()).prop_map(
            |(tx, p, t, unwatch)| Step {
                conn: 0,
                tx,
                op: if unwatch { Op::Unwatch(p, t) } else { Op::Watch(p, t) },
            }
        ),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step_strategy(), 1..60)
}

/// 8192 cases take about a second in release mode; `PROPTEST_CASES`
/// overrides for a deeper search.
fn config() -> ProptestConfig {
    let default = if cfg!(debug_assertions) { 1024 } else { 8192 };
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// C xenstored's behaviour throughout.
    #[test]
    fn server_agrees_with_the_model(steps in steps()) {
        if let Err(e) = run(&steps) {
            prop_assert!(false, "{}", e);
        }
    }
}

// --- divergences the model once found, one request sequence each ----------

/// Runs `steps` (conn, tx, op) on a fresh server; returns the last reply
/// and the events dom0 got from it.
fn replay(steps: &[(usize, u32, Op)]) -> (String, Vec<Event>) {
    let mut server = Server::new();
    let mut last = None;
    for (conn, tx, op) in steps {
        let (reply, events) = server.handle(*conn, *tx, op);
        last = Some((show(&reply), events));
    }
    last.expect("at least one step")
}

fn w(path: &str, value: &'static str) -> Op {
    Op::Write(path.into(), value)
}

/// §1 `get_node`: refusing an existing node reads its parent
/// (`errno_from_parents`), and §6: a transaction's first read of a node
/// records its generation. So a change to the parent meanwhile makes the
/// commit fail.
#[test]
fn refused_existing_node_touches_its_parent_in_a_transaction() {
    let (reply, _) = replay(&[
        (1, 0, Op::Start),
        (1, 1, Op::Read("/tool".into())), // EACCES; C reads "/" too
        (0, 0, w("/", "changed")),
        (1, 1, Op::End(true)),
    ]);
    assert_eq!(reply, show(&(MsgType::Error as u32, b"EAGAIN\0".to_vec())));
}

/// §5/§6: inside a transaction WRITE and SET_PERMS only queue the event;
/// C touches nothing but the node itself. A sibling created meanwhile
/// changes only the parent, so the commit succeeds.
#[test]
fn writing_an_existing_node_in_a_transaction_does_not_touch_its_parent() {
    for op in [w("/a/b", "2"), Op::SetPerms("/a/b".into(), vec![('r', 0)])] {
        let (reply, _) = replay(&[
            (0, 0, w("/a/b", "1")),
            (0, 0, Op::Start),
            (0, 1, op),
            (0, 0, w("/a/c", "")), // creates a sibling: "/a" changes
            (0, 1, Op::End(true)),
        ]);
        assert_eq!(
            reply,
            show(&(MsgType::TransactionEnd as u32, b"OK\0".to_vec()))
        );
    }
}

/// §5: changes inside a transaction are queued per node, so a node
/// written twice fires once at commit.
#[test]
fn a_transaction_fires_one_event_per_node() {
    let (reply, events) = replay(&[
        (0, 0, Op::Watch("/a", "t1")),
        (0, 0, Op::Start),
        (0, 1, w("/a", "1")),
        (0, 1, w("/a", "2")),
        (0, 1, Op::End(true)),
    ]);
    assert_eq!(
        reply,
        show(&(MsgType::TransactionEnd as u32, b"OK\0".to_vec()))
    );
    assert_eq!(events, vec![("/a".to_owned(), "t1".to_owned())]);
}

/// §5 `send_event`: an event identical to one still queued for the
/// connection is dropped. Two watches with one token that both match a
/// change produce the same event twice.
#[test]
fn identical_queued_events_are_sent_once() {
    let (reply, events) = replay(&[
        (0, 0, Op::Watch("/", "t1")),
        (0, 0, Op::Watch("/a", "t1")),
        (0, 0, w("/a/b", "")),
    ]);
    assert_eq!(reply, show(&(MsgType::Write as u32, b"OK\0".to_vec())));
    assert_eq!(events, vec![("/a/b".to_owned(), "t1".to_owned())]);
}

/// §1: SET_PERMS needs WRITE|OWNER in one `get_node`; a non-owner's
/// refusal goes through `errno_from_parents`, so a transaction touches the
/// parent and conflicts with a change to it.
#[test]
fn refused_set_perms_touches_the_parent_in_a_transaction() {
    let (reply, _) = replay(&[
        (0, 0, Op::SetPerms("/tool".into(), vec![('w', 0)])),
        (2, 0, Op::Start),
        (2, 1, Op::SetPerms("/tool".into(), vec![('n', 0)])), // EACCES: not the owner
        (0, 0, w("/", "changed")),
        (2, 1, Op::End(true)),
    ]);
    assert_eq!(reply, show(&(MsgType::Error as u32, b"EAGAIN\0".to_vec())));
}
