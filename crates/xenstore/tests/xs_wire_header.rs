//! Pins the wire constants of `xenstore::wire` and `xenstore::errno` against
//! Xen's own header, `xen/include/public/io/xs_wire.h`, as Debian's
//! `libxen-dev` installs it (`/usr/include/xen/io/xs_wire.h`).
//!
//! A tiny C program is compiled against the header and prints every value the
//! header defines for the wire protocol; this test parses that output and
//! compares it, value by value, with the Rust definitions. A missing header is
//! a failure, not a skip: `.ci/run` installs `libxen-dev`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use xenstore::errno::XsErrno;
use xenstore::wire::{self, Header, MsgType};

const XS_WIRE_H: &str = "/usr/include/xen/io/xs_wire.h";

/// Every `XS_*` member of `enum xsd_sockmsg_type` in Xen 4.17's header
/// (Debian 12), in declaration order.
const C_TYPES: &[&str] = &[
    "XS_CONTROL",
    "XS_DIRECTORY",
    "XS_READ",
    "XS_GET_PERMS",
    "XS_WATCH",
    "XS_UNWATCH",
    "XS_TRANSACTION_START",
    "XS_TRANSACTION_END",
    "XS_INTRODUCE",
    "XS_RELEASE",
    "XS_GET_DOMAIN_PATH",
    "XS_WRITE",
    "XS_MKDIR",
    "XS_RM",
    "XS_SET_PERMS",
    "XS_WATCH_EVENT",
    "XS_ERROR",
    "XS_IS_DOMAIN_INTRODUCED",
    "XS_RESUME",
    "XS_SET_TARGET",
    "XS_RESET_WATCHES",
    "XS_DIRECTORY_PART",
];

/// Types that `wire::MsgType` knows beyond Xen 4.17's `XS_TYPE_COUNT`: added
/// by later Xen releases (4.18+), numbered from the old count upwards.
const POST_4_17_TYPES: &[&str] = &[
    "XS_GET_FEATURE",
    "XS_SET_FEATURE",
    "XS_GET_QUOTA",
    "XS_SET_QUOTA",
];

/// The C program: one `key value` line per fact, `errno` lines in table order.
fn c_source() -> String {
    let mut src = String::from(
        "#include <errno.h>\n\
         #include <stddef.h>\n\
         #include <stdint.h>\n\
         #include <stdio.h>\n\
         #include <xen/io/xs_wire.h>\n\
         #define P(x) printf(\"%s %lu\\n\", #x, (unsigned long)(x))\n\
         int main(void) {\n",
    );
    for name in C_TYPES {
        src.push_str(&format!("    P({name});\n"));
    }
    src.push_str(
        "    P(XS_TYPE_COUNT);\n\
         P(XS_INVALID);\n\
         P(XENSTORE_PAYLOAD_MAX);\n\
         P(XENSTORE_ABS_PATH_MAX);\n\
         P(XENSTORE_REL_PATH_MAX);\n\
         printf(\"sizeof_xsd_sockmsg %lu\\n\", (unsigned long)sizeof(struct xsd_sockmsg));\n\
         printf(\"offset_type %lu\\n\", (unsigned long)offsetof(struct xsd_sockmsg, type));\n\
         printf(\"offset_req_id %lu\\n\", (unsigned long)offsetof(struct xsd_sockmsg, req_id));\n\
         printf(\"offset_tx_id %lu\\n\", (unsigned long)offsetof(struct xsd_sockmsg, tx_id));\n\
         printf(\"offset_len %lu\\n\", (unsigned long)offsetof(struct xsd_sockmsg, len));\n\
         {\n\
             struct xsd_sockmsg m;\n\
             printf(\"sizeof_field %lu %lu %lu %lu\\n\", (unsigned long)sizeof(m.type),\n\
                    (unsigned long)sizeof(m.req_id), (unsigned long)sizeof(m.tx_id),\n\
                    (unsigned long)sizeof(m.len));\n\
         }\n\
         for (size_t i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)\n\
             printf(\"errno %d %s\\n\", xsd_errors[i].errnum, xsd_errors[i].errstring);\n\
         return 0;\n\
         }\n",
    );
    src
}

/// The C program's output lines, compiled and run once per test binary.
fn header_facts() -> &'static [String] {
    static FACTS: OnceLock<Vec<String>> = OnceLock::new();
    FACTS.get_or_init(compile_and_run)
}

/// Compiles and runs the C program, returning its stdout lines.
fn compile_and_run() -> Vec<String> {
    assert!(
        Path::new(XS_WIRE_H).exists(),
        "{XS_WIRE_H} is missing: install Xen's headers with \
         `apt-get install --no-install-recommends libxen-dev` (.ci/run does this)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("xs_wire_facts.c");
    let exe = dir.path().join("xs_wire_facts");
    std::fs::write(&src, c_source()).expect("write C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .arg("-std=c99")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run C compiler `{cc}` ({e}): install gcc (.ci/run does this)")
        });
    assert!(
        out.status.success(),
        "compiling against {XS_WIRE_H} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run compiled C program");
    assert!(run.status.success(), "C program failed: {:?}", run.status);
    String::from_utf8(run.stdout)
        .expect("C program output is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

struct Facts {
    /// `key value` lines other than `errno`.
    values: BTreeMap<String, String>,
    /// `xsd_errors[]` in table order: (errnum, name).
    errors: Vec<(i32, String)>,
}

fn parse(lines: &[String]) -> Facts {
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for line in lines {
        let (key, rest) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        if key == "errno" {
            let (num, name) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            errors.push((num.parse().expect("errnum"), name.to_owned()));
        } else {
            let old = values.insert(key.to_owned(), rest.to_owned());
            assert!(old.is_none(), "duplicate key {key}");
        }
    }
    Facts { values, errors }
}

impl Facts {
    fn num(&self, key: &str) -> u64 {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("{key} not printed by the C program"))
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    }
}

/// `GetDomainPath` -> `XS_GET_DOMAIN_PATH`.
fn c_name(t: MsgType) -> String {
    let mut name = String::from("XS");
    for ch in format!("{t:?}").chars() {
        if ch.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    name
}

#[test]
fn wire_constants_match_xs_wire_h() {
    let facts = parse(header_facts());

    // Every message type of the header: same number, and from_raw finds it.
    for name in C_TYPES {
        let raw = u32::try_from(facts.num(name)).expect("type fits u32");
        let t = MsgType::from_raw(raw)
            .unwrap_or_else(|| panic!("{name} = {raw} unknown to MsgType::from_raw"));
        assert_eq!(t as u32, raw, "{name}");
        assert_eq!(
            c_name(t),
            *name,
            "MsgType for {raw} is {t:?}, header says {name}"
        );
    }

    // Conversely every MsgType below the header's count is one the header
    // names, and those above it are the known later additions, in order.
    let count = u32::try_from(facts.num("XS_TYPE_COUNT")).expect("count fits u32");
    let header_numbers: Vec<u32> = C_TYPES
        .iter()
        .map(|n| u32::try_from(facts.num(n)).expect("type fits u32"))
        .collect();
    let mut extras = Vec::new();
    for t in MsgType::ALL {
        if (t as u32) < count {
            assert!(
                header_numbers.contains(&(t as u32)),
                "{t:?} = {} is not in the header",
                t as u32
            );
        } else {
            extras.push(t);
        }
    }
    for (i, (t, name)) in extras.iter().zip(POST_4_17_TYPES).enumerate() {
        assert_eq!(c_name(*t), *name);
        assert_eq!(
            *t as u32,
            count + u32::try_from(i).expect("small"),
            "{name}"
        );
    }
    assert_eq!(
        extras.len(),
        POST_4_17_TYPES.len(),
        "unexpected types past XS_TYPE_COUNT"
    );
    // Numbers in 0..count that the header does not name (XS_RESTRICT, 20) are
    // not message types.
    for raw in 0..count {
        if !header_numbers.contains(&raw) {
            assert_eq!(
                MsgType::from_raw(raw),
                None,
                "{raw} is a hole in the header"
            );
        }
    }

    assert_eq!(facts.num("XS_INVALID"), u64::from(wire::XS_INVALID));
    assert_eq!(MsgType::from_raw(wire::XS_INVALID), None);

    assert_eq!(facts.num("XENSTORE_PAYLOAD_MAX"), wire::PAYLOAD_MAX as u64);
    assert_eq!(
        facts.num("XENSTORE_ABS_PATH_MAX"),
        wire::ABS_PATH_MAX as u64
    );
    assert_eq!(
        facts.num("XENSTORE_REL_PATH_MAX"),
        wire::REL_PATH_MAX as u64
    );
}

#[test]
fn header_layout_matches_struct_xsd_sockmsg() {
    let facts = parse(header_facts());
    assert_eq!(facts.num("sizeof_xsd_sockmsg"), wire::HEADER_LEN as u64);
    assert_eq!(facts.values["sizeof_field"], "4 4 4 4");

    // Header::encode puts each field, little-endian, at the C offset.
    let h = Header {
        msg_type: 0x0403_0201,
        req_id: 0x1413_1211,
        tx_id: 0x2423_2221,
        len: 0x3433_3231,
    };
    let bytes = h.encode();
    assert_eq!(bytes.len(), wire::HEADER_LEN);
    for (field, value) in [
        ("offset_type", h.msg_type),
        ("offset_req_id", h.req_id),
        ("offset_tx_id", h.tx_id),
        ("offset_len", h.len),
    ] {
        let off = usize::try_from(facts.num(field)).expect("offset");
        let word = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
        assert_eq!(word, value, "{field}");
    }
    assert_eq!(Header::decode(&bytes), h);
}

#[test]
fn errno_table_matches_xsd_errors() {
    let facts = parse(header_facts());
    let ours: Vec<(i32, String)> = XsErrno::ALL
        .iter()
        .map(|e| (e.raw_os_error(), e.name().to_owned()))
        .collect();
    assert!(!facts.errors.is_empty(), "xsd_errors[] printed nothing");
    assert_eq!(ours, facts.errors, "XsErrno::ALL vs xsd_errors[]");
    for (_, name) in &facts.errors {
        assert_eq!(XsErrno::from_name(name).map(XsErrno::name), Some(&**name));
    }
}
