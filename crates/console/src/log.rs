//! [`GuestLog`]: the per-guest log file xenconsoled keeps
//! (`<log-dir>/guest-<name>.log`), written before the bytes are consumed
//! from the ring so that a backend killed at any moment loses nothing the
//! guest wrote.
//!
//! Options as xenconsoled's: a `[YYYY-MM-DD HH:MM:SS] ` prefix at the start
//! of each line (`--timestamp`), and ESC bytes written as `.`
//! (`--replace-escape`) so a log cannot drive the terminal that views it.
//! `reopen` supports log rotation: move the file, send SIGHUP.
//!
//! Exactly once across a crash: beside each log a small position file
//! (`.<log name>.pos`) records, after every chunk, the log's length and the
//! ring index the chunk ended at, before the chunk is consumed from the
//! ring. A restarted backend ([`GuestLog::recover`]) cuts off a chunk that
//! reached the log but not the position file (the ring still has it), and
//! skips a chunk that reached both but was not consumed. Nothing is lost,
//! nothing is written twice.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How a log writes what the guest printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStyle {
    pub timestamps: bool,
    pub replace_escape: bool,
}

pub struct GuestLog {
    path: PathBuf,
    file: File,
    style: LogStyle,
    at_line_start: bool,
    scratch: Vec<u8>,
    /// Bytes in the file, as far as we wrote them.
    len: u64,
    pos: Option<PosFile>,
}

/// The position file: magic, domid, log length, ring index.
struct PosFile {
    file: File,
    domid: u16,
}

const POS_MAGIC: &[u8; 4] = b"XCP1";

/// What the position file said: after `log_len` bytes of log, the ring's
/// consumer index was (to be) `ring_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub domid: u16,
    pub log_len: u64,
    pub ring_index: u32,
}

fn pos_path(log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    log.with_file_name(format!(".{name}.pos"))
}

impl PosFile {
    fn read(path: &Path) -> Option<LogPosition> {
        let b = std::fs::read(path).ok()?;
        if b.len() != 18 || &b[..4] != POS_MAGIC {
            return None;
        }
        Some(LogPosition {
            domid: u16::from_le_bytes([b[4], b[5]]),
            log_len: u64::from_le_bytes(b[6..14].try_into().ok()?),
            ring_index: u32::from_le_bytes(b[14..18].try_into().ok()?),
        })
    }

    fn write(&self, log_len: u64, ring_index: u32) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 18];
        b[..4].copy_from_slice(POS_MAGIC);
        b[4..6].copy_from_slice(&self.domid.to_le_bytes());
        b[6..14].copy_from_slice(&log_len.to_le_bytes());
        b[14..18].copy_from_slice(&ring_index.to_le_bytes());
        self.file.write_all_at(&b, 0)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

/// `[YYYY-MM-DD HH:MM:SS] ` for the current UTC time.
fn stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "[{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}] ",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl GuestLog {
    pub fn open(path: impl Into<PathBuf>, style: LogStyle) -> io::Result<GuestLog> {
        let path = path.into();
        let file = open_append(&path)?;
        let len = file.metadata()?.len();
        let mut log = GuestLog {
            path,
            file,
            style,
            at_line_start: true,
            scratch: Vec::new(),
            len,
            pos: None,
        };
        if style.timestamps {
            log.file
                .write_all(format!("{}Logfile Opened\n", stamp()).as_bytes())?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps a position file for `domid`'s ring beside the log, and
    /// returns what the last one said (if it was for this domain and this
    /// file) so the caller can [`GuestLog::recover`].
    pub fn track_position(&mut self, domid: u16) -> io::Result<Option<LogPosition>> {
        let path = pos_path(&self.path);
        let last = PosFile::read(&path).filter(|p| p.domid == domid && p.log_len <= self.len);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&path)?;
        self.pos = Some(PosFile { file, domid });
        Ok(last)
    }

    /// After a restart: given what the position file said and the ring's
    /// consumer index now, cuts off log bytes the ring still holds and
    /// returns how many bytes of the ring to consume without logging.
    pub fn recover(
        &mut self,
        last: LogPosition,
        out_cons: u32,
        out_pending: usize,
    ) -> io::Result<usize> {
        if self.len > last.log_len {
            // The log got a chunk the position file never recorded: the
            // ring was not consumed either, so it will be written again.
            self.file.set_len(last.log_len)?;
            self.len = last.log_len;
        }
        let ahead = last.ring_index.wrapping_sub(out_cons) as usize;
        // Recorded but not consumed: skip it (it is in the log).
        Ok(if ahead <= out_pending { ahead } else { 0 })
    }

    /// Records that everything logged so far ends at ring index
    /// `ring_index`; call before consuming it.
    pub fn commit(&mut self, ring_index: u32) -> io::Result<()> {
        match &self.pos {
            Some(p) => p.write(self.len, ring_index),
            None => Ok(()),
        }
    }

    /// Appends guest output; returns once it is in the file.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.style.timestamps && !self.style.replace_escape {
            self.file.write_all(data)?;
            self.len += data.len() as u64;
            return Ok(());
        }
        self.scratch.clear();
        for &b in data {
            if self.style.timestamps {
                // xenconsoled drops a CR that directly follows a newline.
                if b == b'\r' && self.at_line_start {
                    continue;
                }
                if self.at_line_start {
                    self.scratch.extend_from_slice(stamp().as_bytes());
                    self.at_line_start = false;
                }
            }
            self.scratch
                .push(if self.style.replace_escape && b == 0x1b {
                    b'.'
                } else {
                    b
                });
            if b == b'\n' {
                self.at_line_start = true;
            }
        }
        self.file.write_all(&self.scratch)?;
        self.len += self.scratch.len() as u64;
        Ok(())
    }

    /// Opens the path again (after an external rotation moved the file).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        self.at_line_start = true;
        if self.style.timestamps {
            self.file
                .write_all(format!("{}Logfile Opened\n", stamp()).as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_log_appends_bytes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("guest-a.log");
        let mut log = GuestLog::open(&p, LogStyle::default()).unwrap();
        log.write(b"one\r\n\x1b[1mtwo").unwrap();
        log.write(b"\x00\xff").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one\r\n\x1b[1mtwo\x00\xff");
    }

    #[test]
    fn timestamps_prefix_each_line_and_escapes_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("guest-b.log");
        let style = LogStyle {
            timestamps: true,
            replace_escape: true,
        };
        let mut log = GuestLog::open(&p, style).unwrap();
        log.write(b"boot\n\r\x1b[0mok").unwrap();
        log.write(b" done\n").unwrap();
        let text = String::from_utf8(std::fs::read(&p).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert!(lines[0].ends_with("] Logfile Opened"));
        assert!(
            lines[1].starts_with('[') && lines[1].ends_with("] boot"),
            "{text:?}"
        );
        assert!(lines[2].ends_with("] .[0mok done"), "{text:?}");
        assert_eq!(
            lines[1].find(']'),
            Some(20),
            "stamp is [YYYY-MM-DD HH:MM:SS]"
        );
    }

    #[test]
    fn reopen_after_rotation_starts_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("guest-c.log");
        let mut log = GuestLog::open(&p, LogStyle::default()).unwrap();
        log.write(b"old\n").unwrap();
        std::fs::rename(&p, dir.path().join("guest-c.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(b"new\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new\n");
        assert_eq!(
            std::fs::read(dir.path().join("guest-c.log.1")).unwrap(),
            b"old\n"
        );
    }

    #[test]
    fn recovery_cuts_an_unrecorded_chunk_and_skips_a_recorded_unconsumed_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("guest-r.log");
        let mut log = GuestLog::open(&p, LogStyle::default()).unwrap();
        assert_eq!(log.track_position(4).unwrap(), None);
        log.write(b"line 1\n").unwrap();
        log.commit(7).unwrap();
        // Crash after writing the next chunk but before recording it.
        log.write(b"line 2\n").unwrap();
        drop(log);
        let mut log = GuestLog::open(&p, LogStyle::default()).unwrap();
        let last = log.track_position(4).unwrap().expect("position");
        assert_eq!(
            last,
            LogPosition {
                domid: 4,
                log_len: 7,
                ring_index: 7
            }
        );
        // The ring was consumed up to 7; "line 2\n" is still pending.
        assert_eq!(log.recover(last, 7, 7).unwrap(), 0);
        assert_eq!(std::fs::read(&p).unwrap(), b"line 1\n");
        // Crash after recording a chunk but before consuming it.
        log.write(b"line 2\n").unwrap();
        log.commit(14).unwrap();
        drop(log);
        let mut log = GuestLog::open(&p, LogStyle::default()).unwrap();
        let last = log.track_position(4).unwrap().expect("position");
        assert_eq!(log.recover(last, 7, 7).unwrap(), 7, "skip what is logged");
        assert_eq!(std::fs::read(&p).unwrap(), b"line 1\nline 2\n");
        // Another domain's position is not used.
        drop(log);
        let mut other = GuestLog::open(&p, LogStyle::default()).unwrap();
        assert_eq!(other.track_position(5).unwrap(), None);
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_516), (2026, 3, 4));
    }
}
