//! `xen-console domain create|destroy|list`: the emulated toolstack, like
//! `xl create`/`destroy`/`list`, for a running `xen-console up` or `emu`.

use std::path::PathBuf;

use anyhow::Context;
use platform::emu::EmuPlatform;

#[derive(clap::Args)]
pub struct Args {
    /// The emulator's run directory.
    #[arg(long, global = true, default_value = crate::util::DEFAULT_EMU_DIR)]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// Build a domain with a primary console.
    Create {
        name: String,
        /// Pages of memory.
        #[arg(long, default_value_t = 16)]
        pages: usize,
    },
    /// Destroy a domain.
    Destroy { domid: u16 },
    /// List domains.
    List,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let xen = args.dir.join("xen");
    let dom0 = EmuPlatform::connect(&xen).with_context(|| {
        format!(
            "no emulated Xen at {} (is `xen-console up` running?)",
            xen.display()
        )
    })?;
    match args.what {
        What::Create { name, pages } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                anyhow::bail!("a domain name is letters, digits, '-' and '_'");
            }
            let d = dom0.toolstack(&format!("create {name} {pages}"))?;
            println!("{d}");
        }
        What::Destroy { domid } => {
            dom0.toolstack(&format!("destroy {domid}"))?;
        }
        What::List => {
            println!("{:>5}  {:<16} {:>6}", "domid", "name", "pages");
            for entry in dom0.toolstack("list")?.split_whitespace() {
                let mut f = entry.splitn(3, ':');
                let (d, n, p) = (
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                );
                println!("{d:>5}  {n:<16} {p:>6}");
            }
        }
    }
    Ok(())
}
