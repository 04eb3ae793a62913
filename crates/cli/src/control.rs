//! The control socket: JSON lines over a Unix socket, in the spirit of
//! QEMU's QMP `device_add`/`device_del`. One request per line, one reply
//! per request; a malformed request gets an error reply and the daemon
//! carries on.
//!
//! ```text
//! {"cmd":"add","domid":1,"index":2,"sink":"pty"}   -> {"ok":true,"index":2}
//! {"cmd":"del","domid":1,"index":2}                -> {"ok":true}
//! {"cmd":"list"}                                   -> {"ok":true,"consoles":[...]}
//! {"cmd":"stats"}                                  -> {"ok":true,"consoles":[...]}
//! {"cmd":"reopen-logs"}                            -> {"ok":true}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use console::backend::{BackendHandle, ConsoleInfo};
use console::sink::SinkSpec;
use platform::DomId;
use serde::{Deserialize, Serialize};

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Add {
        domid: u16,
        #[serde(default)]
        index: Option<u32>,
        #[serde(default)]
        sink: Option<String>,
    },
    Del {
        domid: u16,
        index: u32,
    },
    List,
    Stats,
    ReopenLogs,
}

/// One console in `list`/`stats` replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleRow {
    pub domid: u16,
    pub index: u32,
    pub connected: bool,
    pub sink: String,
    pub tty: Option<String>,
    pub log: Option<String>,
    pub buffered: usize,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub dropped: u64,
    pub bad_index_events: u64,
    pub backlog_events: u64,
    pub backlog_ms: u64,
    pub throttled_ms: u64,
}

impl From<&ConsoleInfo> for ConsoleRow {
    fn from(c: &ConsoleInfo) -> ConsoleRow {
        ConsoleRow {
            domid: c.id.domid.0,
            index: c.id.devid,
            connected: c.connected,
            sink: c.sink.clone(),
            tty: c.tty.as_ref().map(|p| p.display().to_string()),
            log: c.log.as_ref().map(|p| p.display().to_string()),
            buffered: c.buffered,
            bytes_out: c.counters.bytes_out,
            bytes_in: c.counters.bytes_in,
            dropped: c.counters.dropped,
            bad_index_events: c.counters.bad_index_events,
            backlog_events: c.counters.backlog_events,
            backlog_ms: c.counters.backlog_ns / 1_000_000,
            throttled_ms: c.counters.throttled_ns / 1_000_000,
        }
    }
}

/// One reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consoles: Option<Vec<ConsoleRow>>,
}

impl Reply {
    fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    fn error(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(e.into()),
            ..Reply::default()
        }
    }
}

/// Carries out one request line.
pub fn handle_line(backend: &BackendHandle, line: &str) -> Reply {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Reply::error(format!("bad request: {e}")),
    };
    match req {
        Request::Add { domid, index, sink } => {
            let sink = match sink.as_deref().unwrap_or("pty").parse::<SinkSpec>() {
                Ok(s) => s,
                Err(e) => return Reply::error(e.to_string()),
            };
            match backend.plug(DomId(domid), index, sink) {
                Ok(i) => Reply {
                    index: Some(i),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e),
            }
        }
        Request::Del { domid, index } => match backend.unplug(DomId(domid), index) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e),
        },
        Request::List | Request::Stats => match backend.list() {
            Ok(list) => Reply {
                consoles: Some(list.iter().map(ConsoleRow::from).collect()),
                ..Reply::ok()
            },
            Err(e) => Reply::error(e),
        },
        Request::ReopenLogs => match backend.reopen_logs() {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e),
        },
    }
}

/// Serves the control socket at `path` on its own threads.
pub fn serve(path: &Path, backend: Arc<BackendHandle>) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let backend = backend.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_connection(conn, &backend));
            }
        })?;
    Ok(())
}

fn serve_connection(conn: UnixStream, backend: &BackendHandle) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    // A line longer than this is not a request we make sense of.
    let reader = BufReader::new(std::io::Read::take(conn, 1 << 20));
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = handle_line(backend, &line);
        let text = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        if writeln!(out, "{text}").is_err() {
            return;
        }
    }
}

/// Sends one request and returns the reply (for `xen-console ctl`).
pub fn request(path: &Path, req: &Request) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(path)?;
    let text = serde_json::to_string(req).map_err(std::io::Error::other)?;
    writeln!(s, "{text}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_json_lines() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"add","domid":3,"sink":"file:/tmp/x"}"#).unwrap();
        assert_eq!(
            r,
            Request::Add {
                domid: 3,
                index: None,
                sink: Some("file:/tmp/x".into())
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"reopen-logs"}"#).unwrap();
        assert_eq!(r, Request::ReopenLogs);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"add","domid":70000}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"del","domid":1}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"cmd":"add","domid":1,"sinc":"pty"}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
    }

    #[test]
    fn replies_leave_out_what_they_do_not_carry() {
        assert_eq!(
            serde_json::to_string(&Reply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
