//! The request handler: XenStore semantics with no I/O.
//!
//! [`Core::handle`] takes one request from one connection and queues the
//! replies and watch events it causes in [`Core::out`], and anything the I/O
//! layer must do (close a connection, open a domain's socket) in
//! [`Core::effects`]. Every request gets exactly one reply that echoes its
//! `req_id` and `tx_id`. Nothing a client sends can panic the handler.

use std::collections::{HashMap, HashSet};

use super::quota::Quotas;
use super::tree::{Node, Tree};
use super::txn::Txn;
use super::watch::{Event, Watch, WatchTable};
use super::ConnId;
use crate::errno::XsErrno;
use crate::path;
use crate::perms::{Access, DomId, Perms, DOMID_FIRST_RESERVED};
use crate::wire::{self, Message, MsgType, PAYLOAD_MAX};

/// Special watch paths (`@` paths), each with permissions of its own.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// What the I/O layer must do besides sending messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Close this connection (its domain was released).
    Close(ConnId),
    /// A domain was introduced: it may now connect as itself.
    Introduced(DomId),
    /// A domain was released.
    Released(DomId),
}

#[derive(Debug)]
struct Conn {
    domid: DomId,
    privileged: bool,
    txns: HashMap<u32, Txn>,
    next_tx: u32,
    watches: usize,
}

#[derive(Debug, Default)]
struct Domain {
    /// Set by SET_TARGET: this domain acts with `target`'s permissions too.
    target: Option<DomId>,
}

/// Who is asking, resolved once per request.
#[derive(Debug, Clone, Copy)]
struct Caller {
    domid: DomId,
    privileged: bool,
    target: Option<DomId>,
}

impl Caller {
    fn access(&self, perms: &Perms) -> Access {
        if self.privileged {
            Access::Both
        } else {
            perms.access_for(self.domid, self.target)
        }
    }

    fn owns(&self, perms: &Perms) -> bool {
        self.privileged || perms.owner() == self.domid || Some(perms.owner()) == self.target
    }
}

type XsResult<T> = Result<T, XsErrno>;

/// The whole store: nodes, connections, watches, domains.
#[derive(Debug)]
pub struct Core {
    tree: Tree,
    conns: HashMap<ConnId, Conn>,
    watches: WatchTable,
    domains: HashMap<DomId, Domain>,
    specials: HashMap<&'static str, Perms>,
    /// Domains the hypervisor has, introduced or not (see `domain_exists`).
    existing: HashSet<DomId>,
    quotas: Quotas,
    /// Messages to send, in order.
    pub out: Vec<(ConnId, Message)>,
    /// Other work for the I/O layer.
    pub effects: Vec<Effect>,
    /// Messages that must follow the current reply (WATCH's first event).
    after_reply: Vec<(ConnId, Message)>,
}

impl Core {
    pub fn new(quotas: Quotas) -> Core {
        let mut domains = HashMap::new();
        domains.insert(0, Domain::default());
        let specials = [INTRODUCE_DOMAIN, RELEASE_DOMAIN]
            .into_iter()
            .map(|p| (p, Perms::owned_by(0, Access::None)))
            .collect();
        Core {
            tree: Tree::new(),
            conns: HashMap::new(),
            watches: WatchTable::default(),
            domains,
            specials,
            existing: HashSet::new(),
            quotas,
            out: Vec::new(),
            effects: Vec::new(),
            after_reply: Vec::new(),
        }
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Registers a connection. Privileged connections (dom0's socket) skip
    /// permission checks and quotas.
    pub fn connect(&mut self, id: ConnId, domid: DomId, privileged: bool) {
        self.conns.insert(
            id,
            Conn {
                domid,
                privileged,
                txns: HashMap::new(),
                next_tx: 1,
                watches: 0,
            },
        );
    }

    /// Forgets a connection: its watches go and its open transactions are
    /// dropped uncommitted.
    pub fn disconnect(&mut self, id: ConnId) {
        if self.conns.remove(&id).is_some() {
            self.watches.remove_conn(id);
        }
    }

    pub fn is_privileged(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.privileged)
    }

    pub fn is_introduced(&self, domid: DomId) -> bool {
        self.domains.contains_key(&domid)
    }

    /// Tells the store that a domain exists in the hypervisor before it is
    /// introduced. C xenstored asks Xen this when a permission names a
    /// domain; the toolstack writes a new domain's nodes, owned by it,
    /// before it introduces the domain.
    pub fn domain_exists(&mut self, domid: DomId) {
        self.existing.insert(domid);
    }

    /// Introduces a domain on the toolstack's behalf (what INTRODUCE does).
    /// Introducing a known domain again changes nothing and fires nothing.
    pub fn introduce(&mut self, domid: DomId) {
        if self.domains.contains_key(&domid) {
            return;
        }
        self.domains.insert(domid, Domain::default());
        self.effects.push(Effect::Introduced(domid));
        self.fire_special(INTRODUCE_DOMAIN);
    }

    /// Handles one request from `conn`.
    pub fn handle(&mut self, conn: ConnId, msg: &Message) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let caller = Caller {
            domid: c.domid,
            privileged: c.privileged,
            target: self.domains.get(&c.domid).and_then(|d| d.target),
        };
        let reply = match self.dispatch(conn, caller, msg) {
            Ok(payload) => Message {
                msg_type: msg.msg_type,
                req_id: msg.req_id,
                tx_id: msg.tx_id,
                payload,
            },
            Err(e) => Message::error_reply(msg.req_id, msg.tx_id, e),
        };
        self.out.push((conn, reply));
        self.out.append(&mut self.after_reply);
    }

    fn dispatch(&mut self, conn: ConnId, caller: Caller, msg: &Message) -> XsResult<Vec<u8>> {
        // C xenstored's order: unknown type, privilege, transaction id.
        let Some(kind) = msg.kind() else {
            return Err(XsErrno::NoSys);
        };
        if privileged_only(kind) {
            require_privileged(caller)?;
        }
        let ignores_tx = matches!(kind, MsgType::Watch | MsgType::Unwatch);
        if !ignores_tx && msg.tx_id != 0 {
            let open = self
                .conns
                .get(&conn)
                .is_some_and(|c| c.txns.contains_key(&msg.tx_id));
            if !open {
                return Err(XsErrno::NoEnt);
            }
        }
        match kind {
            MsgType::Directory
            | MsgType::DirectoryPart
            | MsgType::Read
            | MsgType::GetPerms
            | MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::SetPerms => self.node_request(conn, caller, kind, msg),
            MsgType::Watch => self.watch(conn, caller, &msg.payload),
            MsgType::Unwatch => self.unwatch(conn, caller, &msg.payload),
            MsgType::TransactionStart => self.transaction_start(conn, caller, msg.tx_id),
            MsgType::TransactionEnd => self.transaction_end(conn, msg),
            MsgType::Introduce => self.introduce_request(caller, &msg.payload),
            MsgType::Release => self.release(caller, &msg.payload),
            MsgType::IsDomainIntroduced => {
                require_privileged(caller)?;
                let [d] = args(&msg.payload)?;
                let yes = self.domains.contains_key(&parse_domid(d)?);
                Ok(if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            MsgType::GetDomainPath => {
                let [d] = args(&msg.payload)?;
                Ok(wire::nul_terminated(&path::domain_path(
                    parse_domid(d)?.into(),
                )))
            }
            MsgType::SetTarget => self.set_target(caller, &msg.payload),
            MsgType::Resume => {
                require_privileged(caller)?;
                let [d] = args(&msg.payload)?;
                self.known_domain(parse_domid(d)?)?;
                Ok(ok())
            }
            MsgType::ResetWatches => {
                self.watches.remove_conn(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.watches = 0;
                    c.txns.clear();
                }
                Ok(ok())
            }
            MsgType::Control => self.control(caller, &msg.payload),
            MsgType::WatchEvent
            | MsgType::Error
            | MsgType::GetFeature
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota => Err(XsErrno::NoSys),
        }
    }

    /// Runs a node operation inside the request's transaction, if any.
    fn node_request(
        &mut self,
        conn: ConnId,
        caller: Caller,
        kind: MsgType,
        msg: &Message,
    ) -> XsResult<Vec<u8>> {
        let mut txn = match msg.tx_id {
            0 => None,
            id => {
                let c = self.conns.get_mut(&conn).ok_or(XsErrno::Inval)?;
                Some((id, c.txns.remove(&id).ok_or(XsErrno::NoEnt)?))
            }
        };
        let mut ctx = Ctx {
            tree: &mut self.tree,
            txn: txn.as_mut().map(|(_, t)| t),
            caller,
            quotas: &self.quotas,
            specials: &mut self.specials,
            domains: &self.domains,
            existing: &self.existing,
            events: Vec::new(),
        };
        let result = ctx.run(kind, &msg.payload);
        let events = std::mem::take(&mut ctx.events);
        match txn {
            Some((id, mut t)) => {
                t.events.extend(events);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.txns.insert(id, t);
                }
            }
            None => self.fire(events),
        }
        result
    }

    fn watch(&mut self, conn: ConnId, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        let [raw, token] = args(payload)?;
        let abs = self.checked_path(caller, raw, true)?;
        if self.watches.contains(&abs, conn, token) {
            return Err(XsErrno::Exist);
        }
        let c = self.conns.get_mut(&conn).ok_or(XsErrno::Inval)?;
        if !c.privileged && c.watches >= self.quotas.watches {
            return Err(XsErrno::TooBig);
        }
        c.watches += 1;
        let relative = !matches!(raw.first(), Some(b'/') | Some(b'@'));
        let watch = Watch {
            conn,
            token: token.to_vec(),
            relative_to: relative.then(|| path::domain_path(caller.domid.into())),
        };
        self.watches.add(abs, watch);
        let shown = String::from_utf8_lossy(raw);
        self.after_reply
            .push((conn, Message::watch_event(&shown, token)));
        Ok(ok())
    }

    fn unwatch(&mut self, conn: ConnId, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        let [raw, token] = args(payload)?;
        let abs = self.checked_path(caller, raw, true)?;
        if !self.watches.remove(&abs, conn, token) {
            return Err(XsErrno::NoEnt);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watches = c.watches.saturating_sub(1);
        }
        Ok(ok())
    }

    fn transaction_start(&mut self, conn: ConnId, caller: Caller, tx_id: u32) -> XsResult<Vec<u8>> {
        if tx_id != 0 {
            return Err(XsErrno::Busy);
        }
        let c = self.conns.get_mut(&conn).ok_or(XsErrno::Inval)?;
        if !caller.privileged && c.txns.len() >= self.quotas.transactions {
            return Err(XsErrno::NoSpc);
        }
        let mut id = c.next_tx;
        while id == 0 || c.txns.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.txns.insert(id, Txn::default());
        Ok(wire::nul_terminated(&id.to_string()))
    }

    fn transaction_end(&mut self, conn: ConnId, msg: &Message) -> XsResult<Vec<u8>> {
        let [arg] = args(&msg.payload)?;
        let commit = match arg {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsErrno::Inval),
        };
        let c = self.conns.get_mut(&conn).ok_or(XsErrno::Inval)?;
        let txn = c.txns.remove(&msg.tx_id).ok_or(XsErrno::NoEnt)?;
        if !commit {
            return Ok(ok());
        }
        if txn.failed {
            return Err(XsErrno::NoMem);
        }
        if !txn.is_current(&self.tree) {
            return Err(XsErrno::Again);
        }
        let events = txn.apply(&mut self.tree);
        self.fire(events);
        Ok(ok())
    }

    fn introduce_request(&mut self, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        require_privileged(caller)?;
        let [d, gfn, port] = args(payload)?;
        let domid = parse_domid(d)?;
        parse_number::<u64>(gfn)?;
        if parse_number::<u32>(port)? == 0 {
            return Err(XsErrno::Inval);
        }
        self.introduce(domid);
        Ok(ok())
    }

    fn release(&mut self, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        require_privileged(caller)?;
        let [d] = args(payload)?;
        let domid = parse_domid(d)?;
        if domid == 0 {
            return Err(XsErrno::Inval);
        }
        self.known_domain(domid)?;
        self.release_domain(domid);
        Ok(ok())
    }

    /// Forgets a domain: its connections close, the nodes it owns go (C
    /// xenstored does this unless run with `--keep-orphans`), and
    /// `@releaseDomain` fires.
    pub fn release_domain(&mut self, domid: DomId) {
        self.existing.remove(&domid);
        if domid == 0 || self.domains.remove(&domid).is_none() {
            return;
        }
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid == domid)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.disconnect(id);
            self.effects.push(Effect::Close(id));
        }
        let mut owned = self.tree.paths_owned_by(domid);
        owned.sort_by_key(String::len);
        let root = Caller {
            domid: 0,
            privileged: true,
            target: None,
        };
        let mut ctx = Ctx {
            tree: &mut self.tree,
            txn: None,
            caller: root,
            quotas: &self.quotas,
            specials: &mut self.specials,
            domains: &self.domains,
            existing: &self.existing,
            events: Vec::new(),
        };
        for p in owned {
            if ctx.tree.get(&p).is_some() {
                let _ = ctx.rm_subtree(&p);
            }
        }
        let events = std::mem::take(&mut ctx.events);
        self.fire(events);
        self.fire_special(RELEASE_DOMAIN);
        self.effects.push(Effect::Released(domid));
    }

    fn set_target(&mut self, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        require_privileged(caller)?;
        let [d, t] = args(payload)?;
        let (domid, target) = (parse_domid(d)?, parse_domid(t)?);
        self.known_domain(target)?;
        let dom = self.domains.get_mut(&domid).ok_or(XsErrno::NoEnt)?;
        dom.target = Some(target);
        Ok(ok())
    }

    fn control(&mut self, caller: Caller, payload: &[u8]) -> XsResult<Vec<u8>> {
        require_privileged(caller)?;
        let (parts, _) = wire::split_strings(payload);
        match parts.first().copied() {
            Some(b"check") => Ok(ok()),
            Some(b"quota") => {
                let q = &self.quotas;
                let text = format!(
                    "nodes: {}\nwatches: {}\ntransactions: {}\ntransaction-nodes: {}\nnode-permissions: {}\npath-length: {}\nnode-size: {}\n",
                    q.nodes, q.watches, q.transactions, q.transaction_nodes, q.node_permissions, q.path_length, q.node_size
                );
                Ok(wire::nul_terminated(&text))
            }
            Some(b"help") => Ok(wire::nul_terminated("check\nquota\nhelp\n")),
            _ => Err(XsErrno::Inval),
        }
    }

    fn known_domain(&self, domid: DomId) -> XsResult<()> {
        if self.domains.contains_key(&domid) {
            Ok(())
        } else {
            Err(XsErrno::NoEnt)
        }
    }

    fn checked_path(&self, caller: Caller, raw: &[u8], allow_special: bool) -> XsResult<String> {
        checked_path(caller, &self.quotas, raw, allow_special)
    }

    fn fire_special(&mut self, name: &'static str) {
        let perms = self
            .specials
            .get(name)
            .cloned()
            .unwrap_or_else(|| Perms::owned_by(0, Access::None));
        self.fire(vec![Event {
            path: name.to_owned(),
            perms: vec![perms],
            exact: true,
        }]);
    }

    /// Queues watch events for every watcher allowed to see them.
    /// Queues watch events for every watcher allowed to see them: one that
    /// may read the node (under any of the event's permissions) or, as in C
    /// xenstored, its parent as the store now has it. An event identical to
    /// one already queued by this request for the same watcher is dropped.
    fn fire(&mut self, events: Vec<Event>) {
        let first_new = self.out.len();
        for e in &events {
            let parent_perms = path::parent(&e.path)
                .and_then(|q| self.tree.get(q))
                .map(|n| &n.perms);
            for (w, shown) in self.watches.matching(e) {
                let Some(c) = self.conns.get(&w.conn) else {
                    continue;
                };
                let watcher = Caller {
                    domid: c.domid,
                    privileged: c.privileged,
                    target: self.domains.get(&c.domid).and_then(|d| d.target),
                };
                let visible = e
                    .perms
                    .iter()
                    .chain(parent_perms)
                    .any(|p| watcher.access(p).can_read());
                if !visible {
                    continue;
                }
                let msg = Message::watch_event(shown, &w.token);
                let duplicate = self.out[first_new..]
                    .iter()
                    .any(|(to, m)| *to == w.conn && m.payload == msg.payload);
                if !duplicate {
                    self.out.push((w.conn, msg));
                }
            }
        }
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

/// Requests only the control domain may make (`XS_FLAG_PRIV`).
fn privileged_only(kind: MsgType) -> bool {
    matches!(
        kind,
        MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::IsDomainIntroduced
            | MsgType::Resume
            | MsgType::SetTarget
    )
}

fn require_privileged(caller: Caller) -> XsResult<()> {
    if caller.privileged {
        Ok(())
    } else {
        Err(XsErrno::Acces)
    }
}

/// Exactly `N` NUL-terminated strings and nothing after them.
fn args<const N: usize>(payload: &[u8]) -> XsResult<[&[u8]; N]> {
    let (parts, tail) = wire::split_strings(payload);
    if !tail.is_empty() {
        return Err(XsErrno::Inval);
    }
    parts.try_into().map_err(|_| XsErrno::Inval)
}

fn parse_number<T: std::str::FromStr>(raw: &[u8]) -> XsResult<T> {
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return Err(XsErrno::Inval);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(XsErrno::Inval)
}

fn parse_domid(raw: &[u8]) -> XsResult<DomId> {
    let n: u32 = parse_number(raw)?;
    if n >= DOMID_FIRST_RESERVED {
        return Err(XsErrno::Inval);
    }
    DomId::try_from(n).map_err(|_| XsErrno::Inval)
}

fn checked_path(
    caller: Caller,
    quotas: &Quotas,
    raw: &[u8],
    allow_special: bool,
) -> XsResult<String> {
    let abs = path::canonicalize(&path::domain_path(caller.domid.into()), raw, allow_special)?;
    if !caller.privileged && path::quota_length(&abs) > quotas.path_length {
        return Err(XsErrno::Inval);
    }
    Ok(abs)
}

/// One node operation, on the store or inside a transaction.
struct Ctx<'a> {
    tree: &'a mut Tree,
    txn: Option<&'a mut Txn>,
    caller: Caller,
    quotas: &'a Quotas,
    specials: &'a mut HashMap<&'static str, Perms>,
    domains: &'a HashMap<DomId, Domain>,
    existing: &'a HashSet<DomId>,
    events: Vec<Event>,
}

impl Ctx<'_> {
    fn run(&mut self, kind: MsgType, payload: &[u8]) -> XsResult<Vec<u8>> {
        let result = self.run_op(kind, payload);
        let limit = self.quotas.transaction_nodes;
        let privileged = self.caller.privileged;
        match self.txn.as_deref_mut() {
            Some(t) if !privileged && t.touched() > limit => {
                t.failed = true;
                Err(XsErrno::NoSpc)
            }
            _ => result,
        }
    }

    fn run_op(&mut self, kind: MsgType, payload: &[u8]) -> XsResult<Vec<u8>> {
        match kind {
            MsgType::Read => {
                let [raw] = args(payload)?;
                let p = self.path(raw)?;
                Ok(self.get_node(&p, Want::Read)?.value.clone())
            }
            MsgType::Directory => {
                let [raw] = args(payload)?;
                let p = self.path(raw)?;
                let node = self.get_node(&p, Want::Read)?;
                if node.children_len() > PAYLOAD_MAX {
                    return Err(XsErrno::TooBig);
                }
                Ok(children_wire(node))
            }
            MsgType::DirectoryPart => self.directory_part(payload),
            MsgType::GetPerms => self.get_perms(payload),
            MsgType::Write => self.write(payload),
            MsgType::Mkdir => {
                let [raw] = args(payload)?;
                let p = self.path(raw)?;
                self.write_node(&p, None).map(|()| ok())
            }
            MsgType::Rm => self.rm(payload),
            MsgType::SetPerms => self.set_perms(payload),
            _ => Err(XsErrno::NoSys),
        }
    }

    fn path(&self, raw: &[u8]) -> XsResult<String> {
        checked_path(self.caller, self.quotas, raw, false)
    }

    /// The node at `p` as this operation sees it.
    fn lookup(&mut self, p: &str) -> Option<&Node> {
        let Ctx { tree, txn, .. } = self;
        match txn.as_deref_mut() {
            Some(t) => t.entry(tree, p).node.as_ref(),
            None => tree.get(p),
        }
    }

    /// C xenstored's rule for a failed lookup: the real error only if the
    /// nearest existing ancestor grants the caller the access it wanted,
    /// else `EACCES`, so a domain learns nothing about nodes it cannot see.
    fn hide(&mut self, p: &str, errno: XsErrno, want: Want) -> XsErrno {
        let caller = self.caller;
        let mut cur = path::parent(p);
        while let Some(q) = cur {
            if let Some(n) = self.lookup(q) {
                return if want.allowed(caller.access(&n.perms)) {
                    errno
                } else {
                    XsErrno::Acces
                };
            }
            cur = path::parent(q);
        }
        errno
    }

    fn get_node(&mut self, p: &str, want: Want) -> XsResult<&Node> {
        let caller = self.caller;
        let access = self.lookup(p).map(|n| caller.access(&n.perms));
        match access {
            None => Err(self.hide(p, XsErrno::NoEnt, want)),
            Some(a) if !want.allowed(a) => {
                // C xenstored consults the ancestors here too, which
                // matters inside a transaction: it touches them.
                self.hide(p, XsErrno::Acces, want);
                Err(XsErrno::Acces)
            }
            Some(_) => self.lookup(p).ok_or(XsErrno::NoEnt),
        }
    }

    fn owned(&self, domid: DomId) -> usize {
        let base = self.tree.owned_by(domid);
        let delta = self
            .txn
            .as_deref()
            .and_then(|t| t.owned_delta.get(&domid).copied())
            .unwrap_or(0);
        base.saturating_add_signed(delta)
    }

    /// C xenstored's node-size quota: its record (a 24-byte header, 8 bytes
    /// a permission, the value and the children list) must stay under it.
    fn check_size(&self, node: &Node) -> XsResult<()> {
        let record = 24 + 8 * node.perms.entries().len() + node.value.len() + node.children_len();
        if !self.caller.privileged && record >= self.quotas.node_size {
            return Err(XsErrno::NoSpc);
        }
        Ok(())
    }

    /// Stores a node, in the transaction's copy if there is one.
    fn put(&mut self, p: &str, node: Node) {
        self.set(p, Some(node));
    }

    /// Removes exactly one node (not its children).
    fn del(&mut self, p: &str) {
        self.set(p, None);
    }

    fn set(&mut self, p: &str, node: Option<Node>) {
        let Ctx { tree, txn, .. } = self;
        match (txn.as_deref_mut(), node) {
            (Some(t), node) => {
                let e = t.entry(tree, p);
                let old_owner = e.node.as_ref().map(|n| n.perms.owner());
                let new_owner = node.as_ref().map(|n| n.perms.owner());
                e.node = node;
                e.dirty = true;
                adjust(&mut t.owned_delta, old_owner, new_owner);
            }
            (None, Some(n)) => tree.insert(p.to_owned(), n),
            (None, None) => {
                tree.remove(p);
            }
        }
    }

    /// Queues a watch event for the node at `p` (fired now, or at commit).
    fn event(&mut self, p: &str, perms: Vec<Perms>, exact: bool) {
        self.events.push(Event {
            path: p.to_owned(),
            perms,
            exact,
        });
    }

    fn write(&mut self, payload: &[u8]) -> XsResult<Vec<u8>> {
        let nul = payload.iter().position(|&b| b == 0).ok_or(XsErrno::Inval)?;
        let p = self.path(&payload[..nul])?;
        self.write_node(&p, Some(payload[nul + 1..].to_vec()))?;
        Ok(ok())
    }

    /// WRITE (`value` set) or MKDIR (`None`: leave an existing node alone).
    fn write_node(&mut self, p: &str, value: Option<Vec<u8>>) -> XsResult<()> {
        let existing = self.lookup(p).is_some();
        if !existing {
            let err = self.hide(p, XsErrno::NoEnt, Want::Write);
            if err != XsErrno::NoEnt {
                return Err(err);
            }
            return self.create(p, value.unwrap_or_default());
        }
        let mut node = self.get_node(p, Want::Write)?.clone();
        let Some(value) = value else {
            return Ok(());
        };
        node.value = value;
        self.check_size(&node)?;
        let perms = node.perms.clone();
        self.put(p, node);
        self.event(p, vec![perms], false);
        Ok(())
    }

    /// Creates `p` and any missing ancestors. New nodes inherit their
    /// parent's permissions; an unprivileged creator becomes their owner.
    fn create(&mut self, p: &str, value: Vec<u8>) -> XsResult<()> {
        let mut missing = vec![p.to_owned()];
        let mut cur = path::parent(p).ok_or(XsErrno::Inval)?.to_owned();
        while self.lookup(&cur).is_none() {
            let up = path::parent(&cur).ok_or(XsErrno::Inval)?.to_owned();
            missing.push(std::mem::replace(&mut cur, up));
        }
        let mut parent = self.lookup(&cur).cloned().ok_or(XsErrno::NoEnt)?;
        if !self.caller.access(&parent.perms).can_write() {
            return Err(XsErrno::Acces);
        }
        if !self.caller.privileged
            && self.owned(self.caller.domid) + missing.len() > self.quotas.nodes
        {
            return Err(XsErrno::NoSpc);
        }
        let mut perms = parent.perms.clone();
        if !self.caller.privileged {
            perms.set_owner(self.caller.domid);
        }
        missing.reverse();
        let mut staged = Vec::with_capacity(missing.len() + 1);
        parent.children.push(path::basename(&missing[0]).to_owned());
        staged.push((cur, parent));
        for (i, m) in missing.iter().enumerate() {
            let mut node = Node::new(perms.clone());
            match missing.get(i + 1) {
                Some(next) => node.children.push(path::basename(next).to_owned()),
                None => node.value = value.clone(),
            }
            staged.push((m.clone(), node));
        }
        for (_, n) in &staged {
            self.check_size(n)?;
        }
        for (q, n) in staged {
            self.put(&q, n);
        }
        self.event(p, vec![perms], false);
        Ok(())
    }

    fn rm(&mut self, payload: &[u8]) -> XsResult<Vec<u8>> {
        let [raw] = args(payload)?;
        let p = self.path(raw)?;
        if self.lookup(&p).is_none() {
            let err = self.hide(&p, XsErrno::NoEnt, Want::Write);
            let parent_exists = path::parent(&p).is_some_and(|q| self.lookup(q).is_some());
            return match err {
                XsErrno::NoEnt if parent_exists => Ok(ok()),
                e => Err(e),
            };
        }
        self.get_node(&p, Want::Write)?;
        if p == "/" {
            return Err(XsErrno::Inval);
        }
        self.rm_subtree(&p)?;
        Ok(ok())
    }

    /// Removes `p` and everything below it, unlinking it from its parent.
    fn rm_subtree(&mut self, p: &str) -> XsResult<()> {
        let parent_path = path::parent(p).ok_or(XsErrno::Inval)?;
        let mut parent = self.lookup(parent_path).cloned().ok_or(XsErrno::NoEnt)?;
        self.delete_below(p);
        let node = self.lookup(p).cloned().ok_or(XsErrno::NoEnt)?;
        self.del(p);
        let name = path::basename(p);
        parent.children.retain(|c| c != name);
        self.put(parent_path, parent);
        self.event(p, vec![node.perms], false);
        Ok(())
    }

    /// Deletes the descendants of `p`, deepest first, each firing the
    /// watches set exactly on it.
    fn delete_below(&mut self, p: &str) {
        let children = self
            .lookup(p)
            .map(|n| n.children.clone())
            .unwrap_or_default();
        for c in children {
            let cp = path::join(p, &c);
            self.delete_below(&cp);
            if let Some(n) = self.lookup(&cp).cloned() {
                self.del(&cp);
                self.event(&cp, vec![n.perms], true);
            }
        }
    }

    fn get_perms(&mut self, payload: &[u8]) -> XsResult<Vec<u8>> {
        let [raw] = args(payload)?;
        let p = checked_path(self.caller, self.quotas, raw, true)?;
        if let Some(perms) = self.specials.get(p.as_str()) {
            if !self.caller.access(perms).can_read() {
                return Err(XsErrno::Acces);
            }
            return Ok(perms.to_wire());
        }
        if p.starts_with('@') {
            return Err(XsErrno::NoEnt);
        }
        Ok(self.get_node(&p, Want::Read)?.perms.to_wire())
    }

    fn set_perms(&mut self, payload: &[u8]) -> XsResult<Vec<u8>> {
        let (parts, tail) = wire::split_strings(payload);
        if !tail.is_empty() || parts.len() < 2 {
            return Err(XsErrno::Inval);
        }
        let p = checked_path(self.caller, self.quotas, parts[0], true)?;
        if !self.caller.privileged && parts.len() - 1 > self.quotas.node_permissions {
            return Err(XsErrno::NoSpc);
        }
        let perms = Perms::parse_list(parts[1..].iter().copied())?;
        if !self.domains.contains_key(&perms.owner()) && !self.existing.contains(&perms.owner()) {
            return Err(XsErrno::NoEnt);
        }
        if p.starts_with('@') {
            return self.set_special_perms(&p, perms);
        }
        let mut node = self.get_node(&p, Want::Write)?.clone();
        if !self.caller.owns(&node.perms) {
            // C xenstored asks for WRITE|OWNER in one lookup, so a refusal
            // consults the ancestors (and a transaction touches them).
            self.hide(&p, XsErrno::Acces, Want::Write);
            return Err(XsErrno::Acces);
        }
        if !self.caller.privileged && perms.owner() != node.perms.owner() {
            return Err(XsErrno::Perm);
        }
        let old = std::mem::replace(&mut node.perms, perms.clone());
        self.put(&p, node);
        self.event(&p, vec![old, perms], false);
        Ok(ok())
    }

    fn set_special_perms(&mut self, p: &str, perms: Perms) -> XsResult<Vec<u8>> {
        let Some(cur) = self.specials.get_mut(p) else {
            return Err(XsErrno::NoEnt);
        };
        if !self.caller.privileged {
            return Err(XsErrno::Acces);
        }
        *cur = perms;
        Ok(ok())
    }

    fn directory_part(&mut self, payload: &[u8]) -> XsResult<Vec<u8>> {
        let [raw, off] = args(payload)?;
        let p = self.path(raw)?;
        let offset: usize = parse_number(off)?;
        let node = self.get_node(&p, Want::Read)?;
        let all = children_wire(node);
        let mut reply = wire::nul_terminated(&node.generation.to_string());
        if offset > all.len() {
            return Err(XsErrno::Inval);
        }
        // Whole names only, and room for the final empty string.
        let room = PAYLOAD_MAX - reply.len() - 1;
        let rest = &all[offset..];
        let mut take = 0;
        for name in rest.split_inclusive(|&b| b == 0) {
            if take + name.len() > room {
                break;
            }
            take += name.len();
        }
        reply.extend_from_slice(&rest[..take]);
        if take == rest.len() {
            reply.push(0);
        }
        Ok(reply)
    }
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Read,
    Write,
}

impl Want {
    fn allowed(self, a: Access) -> bool {
        match self {
            Want::Read => a.can_read(),
            Want::Write => a.can_write(),
        }
    }
}

fn children_wire(node: &Node) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.children_len());
    for c in &node.children {
        out.extend_from_slice(c.as_bytes());
        out.push(0);
    }
    out
}

fn adjust(delta: &mut HashMap<DomId, isize>, old: Option<DomId>, new: Option<DomId>) {
    if let Some(o) = old {
        *delta.entry(o).or_default() -= 1;
    }
    if let Some(n) = new {
        *delta.entry(n).or_default() += 1;
    }
}
