//! Pins `platform::abi` to the real Linux headers: compiles a C program
//! against `/usr/include/xen/{evtchn,gntdev,privcmd}.h` (Debian/Ubuntu
//! `linux-libc-dev`) that prints every ioctl number, struct size and field
//! offset we mirror, and compares each with the Rust side. A swapped or
//! mis-encoded ioctl number, or a struct that drifted, fails here.
//!
//! `privcmd.h` includes `<xen/interface/xen.h>`, which only the kernel tree
//! has, so a shim directory on `-I` provides it with the three typedefs the
//! headers use (`evtchn.h` and `gntdev.h` need them too).

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use platform::abi::{evtchn, gntdev, privcmd};

const INSTALL_HINT: &str = "this test needs a C compiler (`cc`) and the Linux uapi headers \
     /usr/include/xen/{evtchn,gntdev,privcmd}.h: install gcc and linux-libc-dev \
     (apt-get install gcc linux-libc-dev)";

const SHIM_XEN_H: &str = r#"
#ifndef XEN_CONSOLE_SHIM_XEN_H
#define XEN_CONSOLE_SHIM_XEN_H
#include <stdint.h>
typedef uint16_t domid_t;
typedef unsigned long xen_pfn_t;
typedef uint32_t grant_ref_t;
#endif
"#;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <xen/interface/xen.h>
#include <xen/evtchn.h>
#include <xen/gntdev.h>
#include <xen/privcmd.h>

#define P(key, v) printf("%s 0x%lx\n", key, (unsigned long)(v))
#define IOC(x) P(#x, x)
#define VAL(x) P(#x, x)
#define SIZE(s) P("sizeof " #s, sizeof(struct s))
#define OFF(s, f) P("offsetof " #s "." #f, offsetof(struct s, f))

int main(void) {
    IOC(IOCTL_EVTCHN_BIND_VIRQ);
    IOC(IOCTL_EVTCHN_BIND_INTERDOMAIN);
    IOC(IOCTL_EVTCHN_BIND_UNBOUND_PORT);
    IOC(IOCTL_EVTCHN_UNBIND);
    IOC(IOCTL_EVTCHN_NOTIFY);
    IOC(IOCTL_EVTCHN_RESET);
    IOC(IOCTL_EVTCHN_RESTRICT_DOMID);
    SIZE(ioctl_evtchn_bind_virq);
    SIZE(ioctl_evtchn_bind_interdomain);
    OFF(ioctl_evtchn_bind_interdomain, remote_domain);
    OFF(ioctl_evtchn_bind_interdomain, remote_port);
    SIZE(ioctl_evtchn_bind_unbound_port);
    SIZE(ioctl_evtchn_unbind);
    SIZE(ioctl_evtchn_notify);
    SIZE(ioctl_evtchn_restrict_domid);

    IOC(IOCTL_GNTDEV_MAP_GRANT_REF);
    IOC(IOCTL_GNTDEV_UNMAP_GRANT_REF);
    IOC(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR);
    IOC(IOCTL_GNTDEV_SET_MAX_GRANTS);
    IOC(IOCTL_GNTDEV_SET_UNMAP_NOTIFY);
    VAL(UNMAP_NOTIFY_CLEAR_BYTE);
    VAL(UNMAP_NOTIFY_SEND_EVENT);
    SIZE(ioctl_gntdev_grant_ref);
    OFF(ioctl_gntdev_grant_ref, domid);
    OFF(ioctl_gntdev_grant_ref, ref);
    SIZE(ioctl_gntdev_map_grant_ref);
    OFF(ioctl_gntdev_map_grant_ref, count);
    OFF(ioctl_gntdev_map_grant_ref, index);
    OFF(ioctl_gntdev_map_grant_ref, refs);
    SIZE(ioctl_gntdev_unmap_grant_ref);
    OFF(ioctl_gntdev_unmap_grant_ref, index);
    OFF(ioctl_gntdev_unmap_grant_ref, count);
    SIZE(ioctl_gntdev_get_offset_for_vaddr);
    OFF(ioctl_gntdev_get_offset_for_vaddr, vaddr);
    OFF(ioctl_gntdev_get_offset_for_vaddr, offset);
    OFF(ioctl_gntdev_get_offset_for_vaddr, count);
    SIZE(ioctl_gntdev_set_max_grants);
    SIZE(ioctl_gntdev_unmap_notify);
    OFF(ioctl_gntdev_unmap_notify, index);
    OFF(ioctl_gntdev_unmap_notify, action);
    OFF(ioctl_gntdev_unmap_notify, event_channel_port);

    IOC(IOCTL_PRIVCMD_MMAPBATCH_V2);
    IOC(IOCTL_PRIVCMD_RESTRICT);
    IOC(IOCTL_PRIVCMD_MMAP_RESOURCE);
    P("sizeof xen_pfn_t", sizeof(xen_pfn_t));
    SIZE(privcmd_mmapbatch_v2);
    OFF(privcmd_mmapbatch_v2, num);
    OFF(privcmd_mmapbatch_v2, dom);
    OFF(privcmd_mmapbatch_v2, addr);
    OFF(privcmd_mmapbatch_v2, arr);
    OFF(privcmd_mmapbatch_v2, err);
    SIZE(privcmd_mmap_resource);
    OFF(privcmd_mmap_resource, dom);
    OFF(privcmd_mmap_resource, type);
    OFF(privcmd_mmap_resource, id);
    OFF(privcmd_mmap_resource, idx);
    OFF(privcmd_mmap_resource, num);
    OFF(privcmd_mmap_resource, addr);
    return 0;
}
"#;

/// Compiles and runs [`PROGRAM`]; returns its `key -> 0x..` lines.
fn c_side() -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let shim = dir.path().join("shim/xen/interface");
    std::fs::create_dir_all(&shim).expect("shim dir");
    std::fs::write(shim.join("xen.h"), SHIM_XEN_H).expect("shim header");
    let src = dir.path().join("abi.c");
    std::fs::write(&src, PROGRAM).expect("C source");
    let exe = dir.path().join("abi");

    let compiled = Command::new("cc")
        .arg("-std=gnu11")
        .arg("-Wall")
        .arg("-I")
        .arg(dir.path().join("shim"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc: {e}; {INSTALL_HINT}"));
    assert!(
        compiled.status.success(),
        "compiling against the Xen headers failed:\n{}\n{INSTALL_HINT}",
        String::from_utf8_lossy(&compiled.stderr)
    );

    let ran = Command::new(&exe).output().expect("run the C program");
    assert!(ran.status.success(), "the C program failed");
    String::from_utf8(ran.stdout)
        .expect("ASCII output")
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("`key value` lines");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The same keys, from the Rust definitions.
fn rust_side() -> Vec<(&'static str, String)> {
    macro_rules! hex {
        ($v:expr) => {
            format!("{:#x}", $v)
        };
    }
    use evtchn::*;
    use gntdev::*;
    use privcmd::*;
    vec![
        ("IOCTL_EVTCHN_BIND_VIRQ", hex!(IOCTL_EVTCHN_BIND_VIRQ)),
        (
            "IOCTL_EVTCHN_BIND_INTERDOMAIN",
            hex!(IOCTL_EVTCHN_BIND_INTERDOMAIN),
        ),
        (
            "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
            hex!(IOCTL_EVTCHN_BIND_UNBOUND_PORT),
        ),
        ("IOCTL_EVTCHN_UNBIND", hex!(IOCTL_EVTCHN_UNBIND)),
        ("IOCTL_EVTCHN_NOTIFY", hex!(IOCTL_EVTCHN_NOTIFY)),
        ("IOCTL_EVTCHN_RESET", hex!(IOCTL_EVTCHN_RESET)),
        (
            "IOCTL_EVTCHN_RESTRICT_DOMID",
            hex!(IOCTL_EVTCHN_RESTRICT_DOMID),
        ),
        ("sizeof ioctl_evtchn_bind_virq", hex!(size_of::<BindVirq>())),
        (
            "sizeof ioctl_evtchn_bind_interdomain",
            hex!(size_of::<BindInterdomain>()),
        ),
        (
            "offsetof ioctl_evtchn_bind_interdomain.remote_domain",
            hex!(offset_of!(BindInterdomain, remote_domain)),
        ),
        (
            "offsetof ioctl_evtchn_bind_interdomain.remote_port",
            hex!(offset_of!(BindInterdomain, remote_port)),
        ),
        (
            "sizeof ioctl_evtchn_bind_unbound_port",
            hex!(size_of::<BindUnboundPort>()),
        ),
        ("sizeof ioctl_evtchn_unbind", hex!(size_of::<Unbind>())),
        ("sizeof ioctl_evtchn_notify", hex!(size_of::<Notify>())),
        (
            "sizeof ioctl_evtchn_restrict_domid",
            hex!(size_of::<RestrictDomid>()),
        ),
        (
            "IOCTL_GNTDEV_MAP_GRANT_REF",
            hex!(IOCTL_GNTDEV_MAP_GRANT_REF),
        ),
        (
            "IOCTL_GNTDEV_UNMAP_GRANT_REF",
            hex!(IOCTL_GNTDEV_UNMAP_GRANT_REF),
        ),
        (
            "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR",
            hex!(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR),
        ),
        (
            "IOCTL_GNTDEV_SET_MAX_GRANTS",
            hex!(IOCTL_GNTDEV_SET_MAX_GRANTS),
        ),
        (
            "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
            hex!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY),
        ),
        ("UNMAP_NOTIFY_CLEAR_BYTE", hex!(UNMAP_NOTIFY_CLEAR_BYTE)),
        ("UNMAP_NOTIFY_SEND_EVENT", hex!(UNMAP_NOTIFY_SEND_EVENT)),
        (
            "sizeof ioctl_gntdev_grant_ref",
            hex!(size_of::<GrantRefEntry>()),
        ),
        (
            "offsetof ioctl_gntdev_grant_ref.domid",
            hex!(offset_of!(GrantRefEntry, domid)),
        ),
        (
            "offsetof ioctl_gntdev_grant_ref.ref",
            hex!(offset_of!(GrantRefEntry, r#ref)),
        ),
        (
            "sizeof ioctl_gntdev_map_grant_ref",
            hex!(size_of::<MapGrantRef>()),
        ),
        (
            "offsetof ioctl_gntdev_map_grant_ref.count",
            hex!(offset_of!(MapGrantRef, count)),
        ),
        (
            "offsetof ioctl_gntdev_map_grant_ref.index",
            hex!(offset_of!(MapGrantRef, index)),
        ),
        (
            "offsetof ioctl_gntdev_map_grant_ref.refs",
            hex!(offset_of!(MapGrantRef, refs)),
        ),
        (
            "sizeof ioctl_gntdev_unmap_grant_ref",
            hex!(size_of::<UnmapGrantRef>()),
        ),
        (
            "offsetof ioctl_gntdev_unmap_grant_ref.index",
            hex!(offset_of!(UnmapGrantRef, index)),
        ),
        (
            "offsetof ioctl_gntdev_unmap_grant_ref.count",
            hex!(offset_of!(UnmapGrantRef, count)),
        ),
        (
            "sizeof ioctl_gntdev_get_offset_for_vaddr",
            hex!(size_of::<GetOffsetForVaddr>()),
        ),
        (
            "offsetof ioctl_gntdev_get_offset_for_vaddr.vaddr",
            hex!(offset_of!(GetOffsetForVaddr, vaddr)),
        ),
        (
            "offsetof ioctl_gntdev_get_offset_for_vaddr.offset",
            hex!(offset_of!(GetOffsetForVaddr, offset)),
        ),
        (
            "offsetof ioctl_gntdev_get_offset_for_vaddr.count",
            hex!(offset_of!(GetOffsetForVaddr, count)),
        ),
        (
            "sizeof ioctl_gntdev_set_max_grants",
            hex!(size_of::<SetMaxGrants>()),
        ),
        (
            "sizeof ioctl_gntdev_unmap_notify",
            hex!(size_of::<UnmapNotify>()),
        ),
        (
            "offsetof ioctl_gntdev_unmap_notify.index",
            hex!(offset_of!(UnmapNotify, index)),
        ),
        (
            "offsetof ioctl_gntdev_unmap_notify.action",
            hex!(offset_of!(UnmapNotify, action)),
        ),
        (
            "offsetof ioctl_gntdev_unmap_notify.event_channel_port",
            hex!(offset_of!(UnmapNotify, event_channel_port)),
        ),
        (
            "IOCTL_PRIVCMD_MMAPBATCH_V2",
            hex!(IOCTL_PRIVCMD_MMAPBATCH_V2),
        ),
        ("IOCTL_PRIVCMD_RESTRICT", hex!(IOCTL_PRIVCMD_RESTRICT)),
        (
            "IOCTL_PRIVCMD_MMAP_RESOURCE",
            hex!(IOCTL_PRIVCMD_MMAP_RESOURCE),
        ),
        ("sizeof xen_pfn_t", hex!(size_of::<XenPfn>())),
        (
            "sizeof privcmd_mmapbatch_v2",
            hex!(size_of::<MmapBatchV2>()),
        ),
        (
            "offsetof privcmd_mmapbatch_v2.num",
            hex!(offset_of!(MmapBatchV2, num)),
        ),
        (
            "offsetof privcmd_mmapbatch_v2.dom",
            hex!(offset_of!(MmapBatchV2, dom)),
        ),
        (
            "offsetof privcmd_mmapbatch_v2.addr",
            hex!(offset_of!(MmapBatchV2, addr)),
        ),
        (
            "offsetof privcmd_mmapbatch_v2.arr",
            hex!(offset_of!(MmapBatchV2, arr)),
        ),
        (
            "offsetof privcmd_mmapbatch_v2.err",
            hex!(offset_of!(MmapBatchV2, err)),
        ),
        (
            "sizeof privcmd_mmap_resource",
            hex!(size_of::<MmapResource>()),
        ),
        (
            "offsetof privcmd_mmap_resource.dom",
            hex!(offset_of!(MmapResource, dom)),
        ),
        (
            "offsetof privcmd_mmap_resource.type",
            hex!(offset_of!(MmapResource, r#type)),
        ),
        (
            "offsetof privcmd_mmap_resource.id",
            hex!(offset_of!(MmapResource, id)),
        ),
        (
            "offsetof privcmd_mmap_resource.idx",
            hex!(offset_of!(MmapResource, idx)),
        ),
        (
            "offsetof privcmd_mmap_resource.num",
            hex!(offset_of!(MmapResource, num)),
        ),
        (
            "offsetof privcmd_mmap_resource.addr",
            hex!(offset_of!(MmapResource, addr)),
        ),
    ]
}

/// Every disagreement between the two sides, one line each.
fn mismatches(c: &BTreeMap<String, String>, rust: &[(&str, String)]) -> Vec<String> {
    let mut bad: Vec<String> = rust
        .iter()
        .filter(|(k, v)| c.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: C {:?}, Rust {v}", c.get(*k)))
        .collect();
    let pinned: std::collections::BTreeSet<&str> = rust.iter().map(|(k, _)| *k).collect();
    bad.extend(
        c.keys()
            .filter(|k| !pinned.contains(k.as_str()))
            .map(|k| format!("{k}: printed by C, not compared")),
    );
    bad
}

#[test]
fn abi_matches_the_linux_uapi_headers() {
    let c = c_side();
    let rust = rust_side();
    let bad = mismatches(&c, &rust);
    assert!(
        bad.is_empty(),
        "Rust ABI differs from the C headers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_swapped_ioctl_number_is_caught() {
    let c = c_side();
    let mut rust = rust_side();
    // krata's bug: BIND_UNBOUND_PORT and UNBIND swapped.
    let i = rust
        .iter()
        .position(|(k, _)| *k == "IOCTL_EVTCHN_BIND_UNBOUND_PORT");
    let j = rust.iter().position(|(k, _)| *k == "IOCTL_EVTCHN_UNBIND");
    let (i, j) = (i.unwrap(), j.unwrap());
    let (vi, vj) = (rust[i].1.clone(), rust[j].1.clone());
    rust[i].1 = vj;
    rust[j].1 = vi;
    let bad = mismatches(&c, &rust);
    assert_eq!(bad.len(), 2, "{bad:?}");
}
