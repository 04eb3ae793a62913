//! `struct xencons_interface`: the console ring page a guest shares with its
//! console backend (Xen `public/io/console.h`).
//!
//! | offset | size | field        | written by |
//! |-------:|-----:|--------------|------------|
//! | 0      | 1024 | `in`         | backend (input for the guest) |
//! | 1024   | 2048 | `out`        | guest (console output) |
//! | 3072   | 4    | `in_cons`    | guest |
//! | 3076   | 4    | `in_prod`    | backend |
//! | 3080   | 4    | `out_cons`   | backend |
//! | 3084   | 4    | `out_prod`   | guest |
//! | 3088   | 1    | `connection` | backend (0 connected, 1 disconnected; Xen 4.21+) |
//!
//! Invariants every function here keeps:
//! * Indices are free-running `u32`s that wrap at 2^32. A slot is
//!   `idx & (size - 1)`, computed only at the moment of copying, so the raw
//!   values can be checked against each other.
//! * The fill level of a ring is `prod.wrapping_sub(cons)`. Anything above the
//!   ring's size means the page is corrupt — the guest owns the page and can
//!   write every byte of it, our own indices included — and the call fails
//!   with [`RingError::BadIndices`] before any data or index is read or
//!   written. Both indices are re-read and re-checked on every call: nothing
//!   read from the page earlier is trusted.
//! * Ordering: the peer's index is loaded with `Acquire` before the data it
//!   covers is touched; our own index is stored with `Release` after the copy
//!   (Xen's "indices, barrier, data" and "data, barrier, index"). Notifying
//!   the event channel afterwards is the caller's job.
//! * The two rings are independent: corruption of one does not stop the
//!   other.

use std::fmt;
use std::sync::atomic::Ordering;

use platform::{AccessError, MappedPages};

/// Size of the page the interface lives in.
pub const RING_PAGE_SIZE: usize = 4096;
/// `in[]`: backend → guest bytes.
pub const IN_OFFSET: usize = 0;
pub const IN_SIZE: usize = 1024;
/// `out[]`: guest → backend bytes.
pub const OUT_OFFSET: usize = 1024;
pub const OUT_SIZE: usize = 2048;
pub const IN_CONS_OFFSET: usize = 3072;
pub const IN_PROD_OFFSET: usize = 3076;
pub const OUT_CONS_OFFSET: usize = 3080;
pub const OUT_PROD_OFFSET: usize = 3084;
/// `connection` (Xen 4.21+, commit `ddc2dd12644b`): right after the indices,
/// so a zeroed page of an older toolstack reads as connected.
pub const CONNECTION_OFFSET: usize = 3088;
/// `XENCONSOLE_CONNECTED`.
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// `XENCONSOLE_DISCONNECTED`: what new domain builders write.
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

// The masks below are only right for power-of-two rings laid out back to back.
const _: () = assert!(IN_SIZE.is_power_of_two() && OUT_SIZE.is_power_of_two());
const _: () = assert!(IN_OFFSET + IN_SIZE == OUT_OFFSET);
const _: () = assert!(OUT_OFFSET + OUT_SIZE == IN_CONS_OFFSET);
const _: () = assert!(IN_CONS_OFFSET + 4 == IN_PROD_OFFSET);
const _: () = assert!(IN_PROD_OFFSET + 4 == OUT_CONS_OFFSET);
const _: () = assert!(OUT_CONS_OFFSET + 4 == OUT_PROD_OFFSET);
const _: () = assert!(OUT_PROD_OFFSET + 4 == CONNECTION_OFFSET);
const _: () = assert!(CONNECTION_OFFSET < RING_PAGE_SIZE);

/// One of the two rings of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ring {
    /// `in`: the backend produces, the guest consumes.
    In,
    /// `out`: the guest produces, the backend consumes.
    Out,
}

impl Ring {
    /// Bytes in the ring's data array.
    pub const fn size(self) -> usize {
        match self {
            Ring::In => IN_SIZE,
            Ring::Out => OUT_SIZE,
        }
    }

    const fn data_offset(self) -> usize {
        match self {
            Ring::In => IN_OFFSET,
            Ring::Out => OUT_OFFSET,
        }
    }

    const fn cons_offset(self) -> usize {
        match self {
            Ring::In => IN_CONS_OFFSET,
            Ring::Out => OUT_CONS_OFFSET,
        }
    }

    const fn prod_offset(self) -> usize {
        match self {
            Ring::In => IN_PROD_OFFSET,
            Ring::Out => OUT_PROD_OFFSET,
        }
    }

    fn size_u32(self) -> u32 {
        len_u32(self.size())
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ring::In => "in",
            Ring::Out => "out",
        })
    }
}

/// The `connection` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Connected,
    Disconnected,
    /// Neither value Xen defines (a guest scribbled on it).
    Other(u8),
}

impl From<u8> for Connection {
    fn from(v: u8) -> Connection {
        match v {
            XENCONSOLE_CONNECTED => Connection::Connected,
            XENCONSOLE_DISCONNECTED => Connection::Disconnected,
            v => Connection::Other(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// `prod - cons` exceeds the ring size: the page is corrupt or hostile.
    #[error("the {ring} ring's indices are corrupt: prod {prod} and cons {cons} are more than the ring size apart")]
    BadIndices { ring: Ring, prod: u32, cons: u32 },
    #[error("a {len}-byte mapping cannot hold the {RING_PAGE_SIZE}-byte console ring page")]
    MappingTooSmall { len: usize },
    #[error("cannot consume {n} bytes of the out ring: only {pending} are pending")]
    ConsumeBeyondPending { n: usize, pending: usize },
    /// Unreachable once `new` checked size and write access; kept so that
    /// a bug shows as an error rather than a panic.
    #[error("the console ring page is mapped read-only")]
    ReadOnly,
    #[error("access to the console ring page failed")]
    Access(#[from] AccessError),
}

pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// Which index of a ring this side writes.
#[derive(Clone, Copy)]
enum Role {
    Producer,
    Consumer,
}

/// Both indices of one ring, checked against each other.
#[derive(Clone, Copy)]
struct Indices {
    prod: u32,
    cons: u32,
}

impl Indices {
    fn fill(self) -> u32 {
        self.prod.wrapping_sub(self.cons)
    }
}

/// Saturating, because every length here is then bounded by a ring size.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn as_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The ring operations both views share; `role` says which index is ours.
fn load_indices(pages: &MappedPages, ring: Ring, role: Role) -> Result<Indices> {
    let (prod_order, cons_order) = match role {
        // Acquire on the peer's index: its data (or its having finished
        // reading our data) must be visible before we touch the array.
        Role::Producer => (Ordering::Relaxed, Ordering::Acquire),
        Role::Consumer => (Ordering::Acquire, Ordering::Relaxed),
    };
    let cons = pages.load_u32(ring.cons_offset(), cons_order)?;
    let prod = pages.load_u32(ring.prod_offset(), prod_order)?;
    let idx = Indices { prod, cons };
    if idx.fill() > ring.size_u32() {
        return Err(RingError::BadIndices { ring, prod, cons });
    }
    Ok(idx)
}

/// Where `len` bytes starting at index `start` lie: (position, bytes before
/// the end of the array). The rest, if any, continues at position 0.
fn span(ring: Ring, start: u32, len: usize) -> (usize, usize) {
    let pos = as_usize(start & (ring.size_u32() - 1));
    (pos, len.min(ring.size() - pos))
}

fn copy_from_ring(pages: &MappedPages, ring: Ring, start: u32, dst: &mut [u8]) -> Result<()> {
    let (pos, first) = span(ring, start, dst.len());
    let (head, tail) = dst.split_at_mut(first);
    pages.read_into(ring.data_offset() + pos, head)?;
    pages.read_into(ring.data_offset(), tail)?;
    Ok(())
}

fn copy_to_ring(pages: &MappedPages, ring: Ring, start: u32, src: &[u8]) -> Result<()> {
    let (pos, first) = span(ring, start, src.len());
    let (head, tail) = src.split_at(first);
    pages.write_from(ring.data_offset() + pos, head)?;
    pages.write_from(ring.data_offset(), tail)?;
    Ok(())
}

/// Copies what fits of `src` into `ring` and publishes the producer index.
fn produce(pages: &MappedPages, ring: Ring, src: &[u8]) -> Result<usize> {
    let idx = load_indices(pages, ring, Role::Producer)?;
    let n = (ring.size_u32() - idx.fill()).min(len_u32(src.len()));
    if n == 0 {
        return Ok(0);
    }
    copy_to_ring(pages, ring, idx.prod, &src[..as_usize(n)])?;
    // Release: the bytes must be visible before the index that covers them.
    pages.store_u32(
        ring.prod_offset(),
        idx.prod.wrapping_add(n),
        Ordering::Release,
    )?;
    Ok(as_usize(n))
}

/// Copies up to `dst.len()` pending bytes of `ring`; returns them and the
/// indices they were read at. Consumes nothing.
fn peek(pages: &MappedPages, ring: Ring, dst: &mut [u8]) -> Result<(usize, Indices)> {
    let idx = load_indices(pages, ring, Role::Consumer)?;
    let n = idx.fill().min(len_u32(dst.len()));
    copy_from_ring(pages, ring, idx.cons, &mut dst[..as_usize(n)])?;
    Ok((as_usize(n), idx))
}

/// Advances the consumer index of `ring` by `n`, which must be pending.
fn consume(pages: &MappedPages, ring: Ring, n: usize) -> Result<()> {
    let idx = load_indices(pages, ring, Role::Consumer)?;
    let pending = as_usize(idx.fill());
    if n > pending {
        return Err(RingError::ConsumeBeyondPending { n, pending });
    }
    if n == 0 {
        return Ok(());
    }
    // Release: our reads of the slots complete before the producer may
    // reuse them.
    let cons = idx.cons.wrapping_add(len_u32(n));
    pages.store_u32(ring.cons_offset(), cons, Ordering::Release)?;
    Ok(())
}

/// Both sides write to the page (data and their own index).
fn check_mapping(pages: &MappedPages) -> Result<()> {
    if pages.len() < RING_PAGE_SIZE {
        return Err(RingError::MappingTooSmall { len: pages.len() });
    }
    if !pages.is_writable() {
        return Err(RingError::ReadOnly);
    }
    Ok(())
}

/// The backend's view of a console ring page: consumes `out`, produces `in`.
#[derive(Debug)]
pub struct ConsoleRing {
    pages: MappedPages,
}

impl ConsoleRing {
    /// Takes the mapped ring page (writable, at least [`RING_PAGE_SIZE`] bytes).
    pub fn new(pages: MappedPages) -> Result<ConsoleRing> {
        check_mapping(&pages)?;
        Ok(ConsoleRing { pages })
    }

    /// The raw page (tests and tools that need to look underneath).
    pub fn pages(&self) -> &MappedPages {
        &self.pages
    }

    pub fn into_pages(self) -> MappedPages {
        self.pages
    }

    /// Bytes of guest output waiting in `out`.
    pub fn out_pending(&self) -> Result<usize> {
        let idx = load_indices(&self.pages, Ring::Out, Role::Consumer)?;
        Ok(as_usize(idx.fill()))
    }

    /// Copies up to `dst.len()` bytes of pending output (across the wrap)
    /// without consuming them; [`consume_out`](Self::consume_out) once they
    /// are safely stored.
    pub fn read_out(&self, dst: &mut [u8]) -> Result<usize> {
        Ok(peek(&self.pages, Ring::Out, dst)?.0)
    }

    /// Publishes `out_cons += n`, handing `n` bytes back to the guest. `n`
    /// must not exceed what is pending (what `read_out` returned).
    pub fn consume_out(&self, n: usize) -> Result<()> {
        consume(&self.pages, Ring::Out, n)
    }

    /// Room in `in` for input.
    pub fn in_free(&self) -> Result<usize> {
        let idx = load_indices(&self.pages, Ring::In, Role::Producer)?;
        Ok(IN_SIZE - as_usize(idx.fill()))
    }

    /// Copies what fits of `src` into `in` and publishes `in_prod`; never
    /// overwrites input the guest has not consumed.
    pub fn write_in(&self, src: &[u8]) -> Result<usize> {
        produce(&self.pages, Ring::In, src)
    }

    /// The guest's `in_cons`: compare with an earlier value to tell whether
    /// the guest consumed input since (flow control: resume reading the sink).
    pub fn in_cons(&self) -> Result<u32> {
        Ok(self.pages.load_u32(IN_CONS_OFFSET, Ordering::Acquire)?)
    }

    /// Our consumer index of `out` (the guest log records it).
    pub fn out_cons(&self) -> Result<u32> {
        Ok(self.pages.load_u32(OUT_CONS_OFFSET, Ordering::Acquire)?)
    }

    pub fn connection(&self) -> Result<Connection> {
        Ok(self
            .pages
            .load_u8(CONNECTION_OFFSET, Ordering::Acquire)?
            .into())
    }

    /// Tells the guest a backend serves the ring: new domain builders start
    /// it at 1, and a guest that honours it drops output until it reads 0.
    pub fn set_connected(&self) -> Result<()> {
        let v = XENCONSOLE_CONNECTED;
        Ok(self
            .pages
            .store_u8(CONNECTION_OFFSET, v, Ordering::Release)?)
    }

    pub fn set_disconnected(&self) -> Result<()> {
        let v = XENCONSOLE_DISCONNECTED;
        Ok(self
            .pages
            .store_u8(CONNECTION_OFFSET, v, Ordering::Release)?)
    }
}

/// The guest's view of the page, as Linux `hvc_xen` uses it: produces `out`,
/// consumes `in`. For the simulated guest and for tests.
#[derive(Debug)]
pub struct FrontendRing {
    pages: MappedPages,
}

impl FrontendRing {
    pub fn new(pages: MappedPages) -> Result<FrontendRing> {
        check_mapping(&pages)?;
        Ok(FrontendRing { pages })
    }

    /// The raw page (a misbehaving guest writes indices through it).
    pub fn pages(&self) -> &MappedPages {
        &self.pages
    }

    pub fn into_pages(self) -> MappedPages {
        self.pages
    }

    /// Copies what fits of `src` into `out` and publishes `out_prod`.
    pub fn write_out(&self, src: &[u8]) -> Result<usize> {
        produce(&self.pages, Ring::Out, src)
    }

    /// Room in `out`.
    pub fn out_free(&self) -> Result<usize> {
        let idx = load_indices(&self.pages, Ring::Out, Role::Producer)?;
        Ok(OUT_SIZE - as_usize(idx.fill()))
    }

    /// Bytes of input waiting in `in`.
    pub fn in_pending(&self) -> Result<usize> {
        let idx = load_indices(&self.pages, Ring::In, Role::Consumer)?;
        Ok(as_usize(idx.fill()))
    }

    /// Copies up to `dst.len()` bytes of input and publishes `in_cons`.
    pub fn read_in(&self, dst: &mut [u8]) -> Result<usize> {
        let (n, _) = peek(&self.pages, Ring::In, dst)?;
        consume(&self.pages, Ring::In, n)?;
        Ok(n)
    }

    /// The `connection` byte is 0 (a backend serves the ring).
    pub fn is_connected(&self) -> Result<bool> {
        let v = self.pages.load_u8(CONNECTION_OFFSET, Ordering::Acquire)?;
        Ok(v == XENCONSOLE_CONNECTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::emu::{EmuGuest, EmuPlatform, Emulator};
    use platform::{GuestPlatform, Platform};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    // --- layout pinned against the real header ------------------------------

    const LAYOUT_PROGRAM: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
#include <xen/io/console.h>
#define F(f) printf(#f " %zu %zu\n", offsetof(struct xencons_interface, f), \
                    sizeof(((struct xencons_interface *)0)->f))
int main(void) {
    F(in); F(out); F(in_cons); F(in_prod); F(out_cons); F(out_prod);
#ifdef XENCONSOLE_DISCONNECTED
    F(connection);
    printf("values %d %d\n", XENCONSOLE_CONNECTED, XENCONSOLE_DISCONNECTED);
#endif
    printf("sizeof %zu 0\n", sizeof(struct xencons_interface));
    return 0;
}
"#;

    fn header_layout() -> Vec<(String, usize, usize)> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("console.c");
        let exe = dir.path().join("console");
        std::fs::write(&src, LAYOUT_PROGRAM).unwrap();
        let hint = "needs `cc` and /usr/include/xen/io/console.h (apt-get install gcc libxen-dev)";
        let cc = std::process::Command::new("cc")
            .args(["-std=gnu11", "-Wall", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cc: {e}; {hint}"));
        let stderr = String::from_utf8_lossy(&cc.stderr);
        assert!(cc.status.success(), "{stderr}\n{hint}");
        let out = std::process::Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split(' ').collect();
                (
                    w[0].to_owned(),
                    w[1].parse().unwrap(),
                    w[2].parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn layout_matches_the_installed_xen_console_header() {
        let c = header_layout();
        let field = |name: &str| c.iter().find(|(n, ..)| n == name).map(|(_, o, s)| (*o, *s));

        assert_eq!(field("in"), Some((IN_OFFSET, IN_SIZE)));
        assert_eq!(field("out"), Some((OUT_OFFSET, OUT_SIZE)));
        assert_eq!(field("in_cons"), Some((IN_CONS_OFFSET, 4)));
        assert_eq!(field("in_prod"), Some((IN_PROD_OFFSET, 4)));
        assert_eq!(field("out_cons"), Some((OUT_CONS_OFFSET, 4)));
        assert_eq!(field("out_prod"), Some((OUT_PROD_OFFSET, 4)));
        match field("connection") {
            // Xen >= 4.21 headers: the byte and its values are in the header.
            Some(conn) => {
                assert_eq!(conn, (CONNECTION_OFFSET, 1));
                let values = (
                    usize::from(XENCONSOLE_CONNECTED),
                    usize::from(XENCONSOLE_DISCONNECTED),
                );
                assert_eq!(field("values"), Some(values));
                assert_eq!(field("sizeof"), Some((CONNECTION_OFFSET + 4, 0)));
            }
            // Older headers (Debian's 4.17) end right where `connection`
            // starts; the byte itself is pinned by the literals below.
            None => assert_eq!(field("sizeof"), Some((CONNECTION_OFFSET, 0))),
        }
    }

    #[test]
    fn connection_byte_is_pinned_to_xen_4_21_values() {
        assert_eq!(CONNECTION_OFFSET, 3088);
        assert_eq!(XENCONSOLE_CONNECTED, 0);
        assert_eq!(XENCONSOLE_DISCONNECTED, 1);
    }

    // --- one console page, two views, through the emulated Xen --------------

    /// The console page of an emulated guest, mapped twice: by the guest
    /// (frontend view) and foreign-mapped by dom0 (backend view).
    struct Page {
        backend: ConsoleRing,
        frontend: FrontendRing,
        _clients: (EmuGuest, EmuPlatform),
        _emu: Emulator,
        _dir: tempfile::TempDir,
    }

    fn page() -> Page {
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(dir.path().join("run")).unwrap();
        let d = emu.create_domain("ring", 1).unwrap();
        let guest = EmuGuest::connect(emu.paths().xen_domain(d)).unwrap();
        let gfn = guest.start_info().unwrap().console_gfn;
        let own = guest.map_own_page(gfn).unwrap();
        let dom0 = EmuPlatform::connect(emu.paths().xen()).unwrap();
        let foreign = dom0.foreign_mapper().map_foreign(d, &[gfn], true).unwrap();
        Page {
            backend: ConsoleRing::new(foreign).unwrap(),
            frontend: FrontendRing::new(own).unwrap(),
            _clients: (guest, dom0),
            _emu: emu,
            _dir: dir,
        }
    }

    impl Page {
        fn raw(&self) -> &MappedPages {
            self.frontend.pages()
        }

        fn set_indices(&self, ring: Ring, prod: u32, cons: u32) {
            let raw = self.raw();
            raw.store_u32(ring.prod_offset(), prod, Ordering::Relaxed)
                .unwrap();
            raw.store_u32(ring.cons_offset(), cons, Ordering::Relaxed)
                .unwrap();
        }

        fn indices(&self, ring: Ring) -> (u32, u32) {
            let raw = self.raw();
            let prod = raw.load_u32(ring.prod_offset(), Ordering::Relaxed).unwrap();
            let cons = raw.load_u32(ring.cons_offset(), Ordering::Relaxed).unwrap();
            (prod, cons)
        }

        fn reset(&self, start: u32) {
            self.raw().write_from(0, &[0u8; IN_CONS_OFFSET]).unwrap();
            self.set_indices(Ring::In, start, start);
            self.set_indices(Ring::Out, start, start);
        }

        fn snapshot(&self) -> Vec<u8> {
            let mut page = vec![0u8; RING_PAGE_SIZE];
            self.raw().read_into(0, &mut page).unwrap();
            page
        }

        fn produce(&self, ring: Ring, src: &[u8]) -> Result<usize> {
            match ring {
                Ring::Out => self.frontend.write_out(src),
                Ring::In => self.backend.write_in(src),
            }
        }

        fn free(&self, ring: Ring) -> Result<usize> {
            match ring {
                Ring::Out => self.frontend.out_free(),
                Ring::In => self.backend.in_free(),
            }
        }

        fn pending(&self, ring: Ring) -> Result<usize> {
            match ring {
                Ring::Out => self.backend.out_pending(),
                Ring::In => self.frontend.in_pending(),
            }
        }

        /// Reads and consumes, as each ring's consumer does.
        fn take(&self, ring: Ring, dst: &mut [u8]) -> Result<usize> {
            match ring {
                Ring::Out => {
                    let n = self.backend.read_out(dst)?;
                    self.backend.consume_out(n)?;
                    Ok(n)
                }
                Ring::In => self.frontend.read_in(dst),
            }
        }
    }

    #[test]
    fn a_freshly_built_domain_reads_disconnected_until_the_backend_connects() {
        let p = page();

        let before = (
            p.backend.connection().unwrap(),
            p.frontend.is_connected().unwrap(),
        );
        p.backend.set_connected().unwrap();
        let after = (
            p.backend.connection().unwrap(),
            p.frontend.is_connected().unwrap(),
        );

        assert_eq!(before, (Connection::Disconnected, false));
        assert_eq!(after, (Connection::Connected, true));
    }

    #[test]
    fn a_connection_byte_neither_value_reads_as_other_and_not_connected() {
        let p = page();

        p.raw()
            .store_u8(CONNECTION_OFFSET, 7, Ordering::Relaxed)
            .unwrap();

        assert_eq!(p.backend.connection().unwrap(), Connection::Other(7));
        assert!(!p.frontend.is_connected().unwrap());
    }

    #[test]
    fn output_that_wraps_the_array_is_read_in_order() {
        let p = page();
        p.reset(u32::MAX - 2);
        let msg: Vec<u8> = (0..=255u8).cycle().take(OUT_SIZE).collect();
        p.set_indices(Ring::Out, u32::MAX - 2, u32::MAX - 2);

        let written = p.frontend.write_out(&msg).unwrap();
        let mut got = vec![0u8; OUT_SIZE];
        let read = p.backend.read_out(&mut got).unwrap();

        assert_eq!((written, read), (OUT_SIZE, OUT_SIZE));
        assert_eq!(got, msg);
        assert_eq!(
            p.indices(Ring::Out),
            ((u32::MAX - 2).wrapping_add(2048), u32::MAX - 2)
        );
    }

    #[test]
    fn read_out_does_not_consume_until_consume_out() {
        let p = page();
        p.reset(0);
        p.frontend.write_out(b"hello").unwrap();

        let mut buf = [0u8; 3];
        let first = p.backend.read_out(&mut buf).unwrap();
        let again = p.backend.read_out(&mut buf).unwrap();
        let pending_before = p.backend.out_pending().unwrap();
        p.backend.consume_out(3).unwrap();

        assert_eq!((first, again, &buf), (3, 3, b"hel"));
        assert_eq!(pending_before, 5);
        assert_eq!(p.backend.out_pending().unwrap(), 2);
        assert_eq!(p.frontend.out_free().unwrap(), OUT_SIZE - 2);
    }

    #[test]
    fn consuming_more_than_is_pending_is_refused_and_changes_nothing() {
        let p = page();
        p.reset(10);
        p.frontend.write_out(b"abc").unwrap();

        let err = p.backend.consume_out(4).unwrap_err();

        assert_eq!(err, RingError::ConsumeBeyondPending { n: 4, pending: 3 });
        assert_eq!(p.indices(Ring::Out), (13, 10));
    }

    #[test]
    fn input_never_overwrites_what_the_guest_has_not_consumed() {
        let p = page();
        p.reset(0);

        let first = p.backend.write_in(&[1u8; IN_SIZE - 1]).unwrap();
        let second = p.backend.write_in(b"xyz").unwrap();
        let full = p.backend.write_in(b"!").unwrap();
        let cons_before = p.backend.in_cons().unwrap();
        let mut buf = [0u8; 2];
        p.frontend.read_in(&mut buf).unwrap();

        assert_eq!((first, second, full), (IN_SIZE - 1, 1, 0));
        assert_eq!(p.backend.in_free().unwrap(), 2);
        assert_ne!(p.backend.in_cons().unwrap(), cons_before);
    }

    #[test]
    fn a_ring_with_prod_ahead_by_more_than_size_is_rejected() {
        let p = page();
        p.reset(0);
        p.set_indices(Ring::Out, 5000, 100);

        let err = p.backend.read_out(&mut [0u8; 16]).unwrap_err();

        let bad = RingError::BadIndices {
            ring: Ring::Out,
            prod: 5000,
            cons: 100,
        };
        assert_eq!(err, bad);
        assert_eq!(p.indices(Ring::Out), (5000, 100));
    }

    #[test]
    fn both_directions_stream_between_threads_byte_exact() {
        let p = page();
        p.reset(u32::MAX - 10_000);
        let out: Vec<u8> = pseudo_random(1 << 20, 7);
        let input: Vec<u8> = pseudo_random(1 << 18, 11);

        let (got_out, got_in) = std::thread::scope(|s| {
            s.spawn(|| pump(|b| p.frontend.write_out(b), &out));
            s.spawn(|| pump(|b| p.backend.write_in(b), &input));
            let o = s.spawn(|| drain(|b| p.take(Ring::Out, b), out.len()));
            let i = s.spawn(|| drain(|b| p.take(Ring::In, b), input.len()));
            (o.join().unwrap(), i.join().unwrap())
        });

        assert!(got_out == out, "out stream differs");
        assert!(got_in == input, "in stream differs");
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x.to_be_bytes()[0]
            })
            .collect()
    }

    fn pump(mut produce: impl FnMut(&[u8]) -> Result<usize>, data: &[u8]) {
        let mut sent = 0;
        let mut chunk = 1;
        while sent < data.len() {
            let end = data.len().min(sent + chunk);
            sent += produce(&data[sent..end]).unwrap();
            chunk = chunk % 3001 + 97;
            std::thread::yield_now();
        }
    }

    fn drain(mut take: impl FnMut(&mut [u8]) -> Result<usize>, len: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(len);
        let mut buf = vec![0u8; 1500];
        let mut chunk = 1;
        while got.len() < len {
            let n = take(&mut buf[..chunk]).unwrap();
            got.extend_from_slice(&buf[..n]);
            chunk = chunk % 1499 + 1;
            std::thread::yield_now();
        }
        got
    }

    // --- property tests --------------------------------------------------

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Produce(usize),
        Consume(usize),
        /// Out ring: `read_out` without consuming; in ring: `in_pending`.
        Peek(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0usize..3000).prop_map(Op::Produce),
            (0usize..3000).prop_map(Op::Consume),
            (0usize..3000).prop_map(Op::Peek),
        ];
        proptest::collection::vec(op, 1..150)
    }

    /// Starts near the 32-bit wrap half of the time.
    fn start_index() -> impl Strategy<Value = u32> {
        prop_oneof![(u32::MAX - 20_000)..=u32::MAX, any::<u32>()]
    }

    struct Stream<'a> {
        p: &'a Page,
        ring: Ring,
        data: &'a [u8],
        sent: usize,
        got: Vec<u8>,
    }

    impl Stream<'_> {
        fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
            let (ring, p) = (self.ring, self.p);
            let pending = self.sent - self.got.len();
            prop_assert_eq!(p.pending(ring)?, pending);
            match op {
                Op::Produce(k) => {
                    let chunk = &self.data[self.sent..self.data.len().min(self.sent + k)];
                    let free = p.free(ring)?;
                    let n = p.produce(ring, chunk)?;
                    prop_assert_eq!(n, chunk.len().min(free));
                    self.sent += n;
                }
                Op::Consume(k) => {
                    let mut buf = vec![0u8; k];
                    let n = p.take(ring, &mut buf)?;
                    prop_assert_eq!(n, k.min(pending));
                    self.got.extend_from_slice(&buf[..n]);
                }
                Op::Peek(k) if ring == Ring::Out => {
                    let mut buf = vec![0u8; k];
                    let n = p.backend.read_out(&mut buf)?;
                    prop_assert_eq!(n, k.min(pending));
                    let at = self.got.len();
                    prop_assert_eq!(&buf[..n], &self.data[at..at + n]);
                }
                Op::Peek(_) => {}
            }
            Ok(())
        }

        fn finish(&mut self) -> Result<(), TestCaseError> {
            while self.got.len() < self.data.len() {
                self.step(Op::Produce(ring_chunk(self.ring)))?;
                self.step(Op::Consume(ring_chunk(self.ring)))?;
            }
            Ok(())
        }
    }

    fn ring_chunk(ring: Ring) -> usize {
        ring.size() / 2 + 1
    }

    fn stream_moves_exactly(ring: Ring) {
        let p = page();
        let data = proptest::collection::vec(any::<u8>(), 0..12_000);
        let mut runner = TestRunner::new(Config::with_cases(200));
        let result = runner.run(&(start_index(), data, ops()), |(start, data, ops)| {
            p.reset(start);
            let mut s = Stream {
                p: &p,
                ring,
                data: &data,
                sent: 0,
                got: Vec::new(),
            };
            for op in ops {
                s.step(op)?;
            }
            s.finish()?;
            prop_assert!(s.got == data, "stream differs");
            let moved = start.wrapping_add(len_u32(data.len()));
            prop_assert_eq!(p.indices(ring), (moved, moved));
            Ok(())
        });
        result.unwrap();
    }

    #[test]
    fn out_ring_moves_a_byte_stream_exactly_under_any_interleaving() {
        stream_moves_exactly(Ring::Out);
    }

    #[test]
    fn in_ring_moves_a_byte_stream_exactly_under_any_interleaving() {
        stream_moves_exactly(Ring::In);
    }

    /// (prod, cons) whose distance exceeds the ring: prod too far ahead, or
    /// behind cons (a huge wrapped distance).
    fn hostile_indices(ring: Ring) -> impl Strategy<Value = (u32, u32)> {
        let size = ring.size_u32();
        let gap = prop_oneof![
            Just(size + 1),
            (u32::MAX - 64)..=u32::MAX,
            (size + 1)..=u32::MAX
        ];
        (any::<u32>(), gap).prop_map(|(cons, gap)| (cons.wrapping_add(gap), cons))
    }

    fn other(ring: Ring) -> Ring {
        match ring {
            Ring::In => Ring::Out,
            Ring::Out => Ring::In,
        }
    }

    fn hostile_indices_are_contained(ring: Ring) {
        let p = page();
        let fill = proptest::collection::vec(any::<u8>(), IN_CONS_OFFSET);
        let mut runner = TestRunner::new(Config::with_cases(200));
        let result = runner.run(&(hostile_indices(ring), fill), |((prod, cons), fill)| {
            p.reset(0);
            p.raw().write_from(0, &fill)?;
            p.set_indices(ring, prod, cons);
            let before = p.snapshot();
            let bad = RingError::BadIndices { ring, prod, cons };

            let mut dst = [0xa5u8; 64];
            prop_assert_eq!(p.take(ring, &mut dst), Err(bad));
            prop_assert_eq!(p.produce(ring, b"x"), Err(bad));
            prop_assert_eq!(p.free(ring), Err(bad));
            prop_assert_eq!(p.pending(ring), Err(bad));
            if ring == Ring::Out {
                prop_assert_eq!(p.backend.read_out(&mut dst), Err(bad));
                prop_assert_eq!(p.backend.consume_out(0), Err(bad));
            }
            prop_assert!(dst == [0xa5u8; 64], "destination written");
            prop_assert!(p.snapshot() == before, "page written");

            // The other ring of the same page still works.
            let sent = p.produce(other(ring), b"ok")?;
            let mut got = [0u8; 2];
            prop_assert_eq!((sent, p.take(other(ring), &mut got)?), (2, 2));
            prop_assert_eq!(&got, b"ok");
            Ok(())
        });
        result.unwrap();
    }

    #[test]
    fn hostile_out_indices_give_bad_indices_and_touch_nothing() {
        hostile_indices_are_contained(Ring::Out);
    }

    #[test]
    fn hostile_in_indices_give_bad_indices_and_touch_nothing() {
        hostile_indices_are_contained(Ring::In);
    }
}
