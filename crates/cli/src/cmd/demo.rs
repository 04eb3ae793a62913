//! `xen-console demo`: short shows of what works, for a newcomer.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use xenstore::server::{ServerConfig, ServerHandle};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Start the embedded XenStore server and drive it with Xen's own tools.
    Xenstore {
        /// Keep serving after the demo (Ctrl-C to stop).
        #[arg(long)]
        serve: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Xenstore { serve } => xenstore_demo(serve),
    }
}

fn xenstore_demo(serve: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("xen-console-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("socket");
    let server = ServerHandle::spawn(ServerConfig::new(&socket)).context("starting xenstored")?;
    println!("XenStore server listening on {}", socket.display());
    println!("export XENSTORED_PATH={}\n", socket.display());
    let steps: &[&[&str]] = &[
        &[
            "xenstore-write",
            "/local/domain/1/name",
            "guest1",
            "/local/domain/1/console/limit",
            "1048576",
        ],
        &[
            "xenstore-write",
            "/local/domain/1/console/type",
            "xenconsoled",
        ],
        &["xenstore-chmod", "/local/domain/1/console", "n0"],
        &["xenstore-read", "/local/domain/1/name"],
        &["xenstore-list", "/local/domain/1/console"],
        &["xenstore-ls", "-p", "/local"],
    ];
    for step in steps {
        println!("$ {}", step.join(" "));
        let out = Command::new(step[0])
            .args(&step[1..])
            .env("XENSTORED_PATH", &socket)
            .output()
            .with_context(|| format!("running {} (apt-get install xenstore-utils)", step[0]))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("{} failed: {}", step[0], out.status);
        }
    }
    if serve {
        println!("\nserving; press Ctrl-C to stop");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    server.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
