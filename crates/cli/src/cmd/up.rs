//! `xen-console up`: the whole system on this machine, no hypervisor
//! needed. Starts the emulated Xen and the console daemon, boots a few
//! simulated guests that print a boot log and then echo what is typed,
//! prints how to reach each console, and runs until Ctrl-C. Domains made
//! meanwhile with `xen-console domain create` get a guest process too.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use console::backend::{BackendHandle, ConsoleBackend};
use console::device::ConsoleOptions;
use console::sink::SinkSpec;
use platform::emu::{EmuPlatform, Emulator};
use platform::DomId;
use signal_hook::consts::{SIGINT, SIGTERM};
use xenstore::client::{Client, XenStore};

use crate::control;

#[derive(clap::Args)]
pub struct Args {
    /// Run directory (sockets, logs).
    #[arg(long, default_value = crate::util::DEFAULT_EMU_DIR)]
    pub dir: PathBuf,
    /// Guests to boot.
    #[arg(long, default_value_t = 3)]
    pub guests: usize,
    /// Exit after this many seconds (for scripts); default: until Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// A guest process and the domain it runs as.
struct GuestProc {
    child: Child,
}

impl Drop for GuestProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_guest(
    emu_paths: &platform::emu::EmuPaths,
    d: DomId,
    name: &str,
) -> anyhow::Result<GuestProc> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("guest")
        .arg("--xen")
        .arg(emu_paths.xen_domain(d))
        .arg("--xenstore")
        .arg(emu_paths.xenstore_domain(d))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting a guest process")?;
    if let Some(stdin) = child.stdin.as_mut() {
        writeln!(stdin, "boot {name}")?;
    }
    Ok(GuestProc { child })
}

fn wait_tty(store: &Client, d: DomId) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(v) = store.read(&format!("/local/domain/{d}/console/tty")) {
            if !v.is_empty() {
                return Some(String::from_utf8_lossy(&v).into_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn print_table(store: &Client, backend: &BackendHandle, domains: &[(DomId, String)]) {
    println!();
    println!(
        "{:>5}  {:<10} {:<14} {:<42}",
        "domid", "name", "console tty", "log"
    );
    let list = backend.list().unwrap_or_default();
    for (d, name) in domains {
        let tty = wait_tty(store, *d).unwrap_or_else(|| "-".into());
        let log = list
            .iter()
            .find(|c| c.id.domid == *d && c.id.devid == 0)
            .and_then(|c| c.log.clone())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        println!("{:>5}  {:<10} {:<14} {:<42}", d.0, name, tty, log);
    }
}

/// Starts guest processes for domains created after start-up.
fn adopt_new_domains(
    emu: Arc<Emulator>,
    guests: Arc<Mutex<HashMap<DomId, GuestProc>>>,
) -> anyhow::Result<()> {
    let store = Client::connect_unix(emu.paths().xenstored())?;
    let events = store.watch_events();
    store.watch("@introduceDomain", "up")?;
    store.watch("@releaseDomain", "up")?;
    std::thread::spawn(move || loop {
        match events.recv_timeout(Duration::from_secs(3600)) {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(_) => return,
        }
        let live: HashMap<DomId, String> = emu
            .domains()
            .into_iter()
            .filter(|i| i.domid != DomId::DOM0)
            .map(|i| (i.domid, i.name))
            .collect();
        let mut g = guests.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|d, _| live.contains_key(d));
        for (d, name) in live {
            if let std::collections::hash_map::Entry::Vacant(slot) = g.entry(d) {
                match spawn_guest(emu.paths(), d, &name) {
                    Ok(p) => {
                        slot.insert(p);
                        println!("domain {d} ({name}) started: xen-console attach {d}");
                    }
                    Err(e) => eprintln!("cannot start a guest for domain {d}: {e:#}"),
                }
            }
        }
    });
    Ok(())
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.join("xen").exists() && platform::emu::proto::connect(&dir.join("xen")).is_ok() {
        anyhow::bail!(
            "another `xen-console up` is running in {} (or pass --dir)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::util::raise_fd_limit()?;
    fresh_dir(&args.dir)?;
    let emu = Arc::new(Emulator::start(&args.dir).context("starting the emulated Xen")?);
    let logs = args.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let opts = ConsoleOptions {
        default_sink: SinkSpec::Pty,
        log_dir: Some(logs),
        discover_primaries: true,
        primary_sink: Some(SinkSpec::Pty),
        ..ConsoleOptions::default()
    };
    let plat = Arc::new(EmuPlatform::connect(emu.paths().xen())?);
    let backend = Arc::new(ConsoleBackend::spawn(
        Client::connect_unix(emu.paths().xenstored())?,
        plat,
        opts,
    )?);
    let control_path = args.dir.join("control");
    control::serve(&control_path, backend.clone())?;

    let guests: Arc<Mutex<HashMap<DomId, GuestProc>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut booted = Vec::new();
    for i in 1..=args.guests {
        let name = format!("guest{i}");
        let d = emu.create_domain(&name, 16).map_err(anyhow::Error::msg)?;
        let p = spawn_guest(emu.paths(), d, &name)?;
        guests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d, p);
        booted.push((d, name));
    }
    adopt_new_domains(emu.clone(), guests.clone())?;

    let store = Client::connect_unix(emu.paths().xenstored())?;
    println!(
        "xen-console is up on an emulated Xen in {}",
        args.dir.display()
    );
    print_table(&store, &backend, &booted);
    let xs = emu.paths().xenstored();
    println!();
    println!("Reach a console:      xen-console attach <domid>        (Ctrl-] leaves)");
    println!(
        "Xen's own tools:      export XENSTORED_PATH={}",
        xs.display()
    );
    println!("                      xenstore-ls /local/domain/1; /usr/lib/xen-4.17/bin/xenconsole --type pv 1");
    println!("More domains:         xen-console domain create <name>  |  domain list  |  domain destroy <domid>");
    println!(
        "Consoles:             xen-console ctl --control {} list",
        control_path.display()
    );
    println!();
    if let Some((d, name)) = booted.first() {
        let log = args.dir.join("logs").join(format!("guest-{name}.log"));
        // The boot log arrives in ring-sized pieces: show it once it has
        // stopped growing for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
        let mut last = (0, Instant::now());
        while Instant::now() < deadline {
            let now = size();
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() >= Duration::from_millis(200) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("--- the console of domain {d} ({name}) so far ---");
        println!(
            "{}",
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).replace('\r', "")
        );
        println!("--- (xen-console attach {d} to type into it) ---");
        println!();
    }
    println!("Running; Ctrl-C stops everything.");
    let _ = std::io::stdout().flush();

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    match args.seconds {
        Some(s) => std::thread::sleep(Duration::from_secs(s)),
        None => {
            let _ = signals.forever().next();
        }
    }
    println!("stopping");
    guests.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let _ = std::fs::remove_file(&control_path);
    backend.request_stop();
    backend.wait_ended();
    drop(emu);
    Ok(())
}
