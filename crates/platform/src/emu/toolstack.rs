//! The XenStore side of the emulated toolstack, written the way libxl
//! writes it (`libxl_create.c`, `libxl_console.c`, `libxl_device.c`).
//!
//! Every node a guest must not change is created with its final
//! permissions in the same transaction that creates it, so no guest can
//! race a value in between. The primary console directory is read-only to
//! the guest as a whole (XSA-57); secondary consoles get a guest-owned
//! frontend directory whose `limit`, `type`, `output`, `tty` and `name` are
//! read-only to the guest, and a backend directory the guest may only read.

use xenstore::client::{Client, Error, Transaction, XenStore};
use xenstore::{Access, Perm, Perms};

use super::hypervisor::StartInfo;
use crate::types::DomId;

/// libxl's `LIBXL_XENCONSOLE_LIMIT`.
pub const CONSOLE_LIMIT: &str = "1048576";

fn perms(entries: &[(Access, DomId)]) -> Perms {
    Perms::new(entries.iter().map(|(a, d)| Perm::new(*a, d.0)).collect())
        .unwrap_or_else(|_| Perms::owned_by(0, Access::None))
}

/// Owned by dom0, readable by the guest: what the guest may not change.
fn read_only_to(guest: DomId) -> Perms {
    perms(&[(Access::None, DomId::DOM0), (Access::Read, guest)])
}

/// Owned by the guest, readable by dom0.
fn guest_owned(guest: DomId) -> Perms {
    perms(&[(Access::None, guest), (Access::Read, DomId::DOM0)])
}

fn put(tx: &Transaction<'_>, path: &str, value: &str, p: &Perms) -> Result<(), Error> {
    tx.write(path, value.as_bytes())?;
    tx.set_perms(path, p)
}

/// What `xen-init-dom0` writes.
pub fn init_dom0(store: &Client) -> Result<(), Error> {
    store.transaction(|tx| {
        tx.write("/local/domain/0/name", b"Domain-0")?;
        tx.write("/local/domain/0/domid", b"0")
    })
}

/// Writes a new domain's directory and primary console, then introduces it.
pub fn build_domain(store: &Client, d: DomId, name: &str, si: StartInfo) -> Result<(), Error> {
    let dom = format!("/local/domain/{d}");
    let ro = read_only_to(d);
    store.transaction(|tx| {
        put(tx, &dom, "", &perms(&[(Access::None, d)]))?;
        put(tx, &format!("{dom}/name"), name, &ro)?;
        put(tx, &format!("{dom}/domid"), &d.to_string(), &ro)?;
        for sub in ["device", "control", "data"] {
            put(
                tx,
                &format!("{dom}/{sub}"),
                "",
                &perms(&[(Access::None, d)]),
            )?;
        }
        let con = format!("{dom}/console");
        put(tx, &con, "", &ro)?;
        for (node, value) in [
            ("ring-ref", si.console_gfn.to_string()),
            ("port", si.console_port.to_string()),
            ("limit", CONSOLE_LIMIT.to_owned()),
            ("type", "xenconsoled".to_owned()),
            ("output", "pty".to_owned()),
            ("tty", String::new()),
        ] {
            put(tx, &format!("{con}/{node}"), &value, &ro)?;
        }
        Ok(())
    })?;
    store.introduce(d.0, si.console_gfn.0, si.console_port.0)
}

/// RM answers ENOENT when even the parent is missing; gone is gone.
fn rm_if_present(tx: &Transaction<'_>, path: &str) -> Result<(), Error> {
    match tx.rm(path) {
        Err(e) if e.errno() == Some(xenstore::XsErrno::NoEnt) => Ok(()),
        r => r,
    }
}

/// Removes a domain's nodes and releases it (`@releaseDomain` fires).
pub fn release_domain(store: &Client, d: DomId) -> Result<(), Error> {
    store.transaction(|tx| {
        rm_if_present(tx, &format!("/local/domain/{d}"))?;
        rm_if_present(tx, &format!("/local/domain/0/backend/console/{d}"))
    })?;
    match store.release(d.0) {
        Err(e) if e.errno() == Some(xenstore::XsErrno::NoEnt) => Ok(()),
        r => r,
    }
}

/// A secondary console as `xl` configures one (`channel` / extra console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSpec {
    pub devid: u32,
    /// Which daemon serves it: `xenconsoled` or `ioemu`.
    pub kind: String,
    pub output: Option<String>,
    pub name: Option<String>,
}

impl ConsoleSpec {
    /// Parses `devid=N [type=T] [output=O] [name=N]`.
    pub fn from_words(words: &[&str]) -> Result<ConsoleSpec, String> {
        let mut spec = ConsoleSpec {
            devid: 0,
            kind: "xenconsoled".into(),
            output: None,
            name: None,
        };
        for w in words {
            match w.split_once('=') {
                Some(("devid", v)) => {
                    spec.devid = v.parse().map_err(|_| format!("bad devid {v:?}"))?
                }
                Some(("type", v)) => spec.kind = v.to_owned(),
                Some(("output", v)) => spec.output = Some(v.to_owned()),
                Some(("name", v)) => spec.name = Some(v.to_owned()),
                _ => return Err(format!("bad console option {w:?}")),
            }
        }
        if spec.devid == 0 {
            return Err("a secondary console needs devid >= 1".into());
        }
        Ok(spec)
    }

    pub fn to_words(&self) -> String {
        let mut s = format!("devid={} type={}", self.devid, self.kind);
        if let Some(o) = &self.output {
            s.push_str(&format!(" output={o}"));
        }
        if let Some(n) = &self.name {
            s.push_str(&format!(" name={n}"));
        }
        s
    }
}

/// Writes a secondary console's backend and frontend directories.
pub fn add_console(store: &Client, d: DomId, spec: &ConsoleSpec) -> Result<(), Error> {
    let be = format!("/local/domain/0/backend/console/{d}/{}", spec.devid);
    let fe = format!("/local/domain/{d}/device/console/{}", spec.devid);
    let ro = read_only_to(d);
    let fe_perms = guest_owned(d);
    store.transaction(|tx| {
        put(tx, &be, "", &ro)?;
        for (node, value) in [
            ("frontend", fe.clone()),
            ("frontend-id", d.to_string()),
            ("online", "1".into()),
            ("state", "1".into()),
            ("protocol", "vt100".into()),
        ] {
            put(tx, &format!("{be}/{node}"), &value, &ro)?;
        }
        put(tx, &fe, "", &fe_perms)?;
        for (node, value) in [
            ("backend", be.clone()),
            ("backend-id", "0".into()),
            ("state", "1".into()),
            ("protocol", "vt100".into()),
        ] {
            put(tx, &format!("{fe}/{node}"), &value, &fe_perms)?;
        }
        let mut read_only = vec![
            ("limit", CONSOLE_LIMIT.to_owned()),
            ("type", spec.kind.clone()),
            ("tty", String::new()),
        ];
        if let Some(o) = &spec.output {
            read_only.push(("output", o.clone()));
        }
        if let Some(n) = &spec.name {
            read_only.push(("name", n.clone()));
        }
        for (node, value) in read_only {
            put(tx, &format!("{fe}/{node}"), &value, &ro)?;
        }
        Ok(())
    })
}
