//! Pins `XenbusState` against Xen's own header,
//! `xen/include/public/io/xenbus.h`, as Debian's `libxen-dev` installs it.
//! A tiny C program compiled against the header prints every state; the
//! test compares them with the Rust enum. A missing header is a failure,
//! not a skip: `.ci/run` installs `libxen-dev`.

use std::path::Path;
use std::process::Command;

use xenbus::XenbusState;

const XENBUS_H: &str = "/usr/include/xen/io/xenbus.h";

const C_NAMES: [&str; 9] = [
    "XenbusStateUnknown",
    "XenbusStateInitialising",
    "XenbusStateInitWait",
    "XenbusStateInitialised",
    "XenbusStateConnected",
    "XenbusStateClosing",
    "XenbusStateClosed",
    "XenbusStateReconfiguring",
    "XenbusStateReconfigured",
];

fn c_source() -> String {
    let mut src = String::from(
        "#include <stdio.h>\n\
         #include <xen/io/xenbus.h>\n\
         int main(void) {\n",
    );
    for name in C_NAMES {
        src.push_str(&format!("    printf(\"{name} %d\\n\", (int){name});\n"));
    }
    src.push_str(
        "    printf(\"sizeof %lu\\n\", (unsigned long)sizeof(XenbusState));\n\
         return 0;\n}\n",
    );
    src
}

fn compile_and_run() -> Vec<(String, String)> {
    assert!(
        Path::new(XENBUS_H).exists(),
        "{XENBUS_H} is missing: install Xen's headers with \
         `apt-get install --no-install-recommends libxen-dev` (.ci/run does this)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("xenbus_facts.c");
    let exe = dir.path().join("xenbus_facts");
    std::fs::write(&src, c_source()).expect("write C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run C compiler `{cc}` ({e}): install gcc (.ci/run does this)")
        });
    assert!(
        out.status.success(),
        "compiling against {XENBUS_H} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run compiled C program");
    assert!(run.status.success(), "C program failed: {:?}", run.status);
    String::from_utf8(run.stdout)
        .expect("C output is UTF-8")
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("key value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn xenbus_states_match_xenbus_h() {
    let facts = compile_and_run();
    assert_eq!(facts.len(), C_NAMES.len() + 1);
    for (i, name) in C_NAMES.iter().enumerate() {
        let (k, v) = &facts[i];
        assert_eq!(k, name);
        let value: u8 = v.parse().expect("state value");
        let ours = XenbusState::ALL[i];
        assert_eq!(ours.as_u8(), value, "{name}");
        assert_eq!(format!("XenbusState{}", ours.name()), *name);
        assert_eq!(ours.to_string(), v.as_str(), "{name} as XenStore text");
        assert_eq!(XenbusState::parse(v.as_bytes()), Some(ours));
    }
    // The last state is the largest: nothing beyond Reconfigured exists.
    assert_eq!(
        XenbusState::from_u8(u8::try_from(XenbusState::ALL.len()).unwrap()),
        None
    );
}
