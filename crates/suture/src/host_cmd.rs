//! `suture load`, `suture unload`, `suture list`: the host side.
//!
//! Exit status: 0 success; 1 the operation failed (kernel refusal, timeout,
//! environment); 2 refused before touching the kernel (not a livepatch
//! module, built for another release or another build of it, not a module
//! at all). With `--json`, stdout carries exactly one JSON document,
//! success or not.
//!
//! Paths are configurable for tests and unusual layouts: `--state-dir`
//! (or `SUTURE_STATE_DIR`, default /var/lib/suture) and `SUTURE_SYSROOT`
//! (where `sys/` and `proc/` are read, default /).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use suture_host::state::StateDir;
use suture_host::{
    ErrorKind, ForceConfirm, Host, HostError, LoadOptions, StalledTask, UnloadOptions,
};

const FORCE_HELP: &str = "If the transition has not finished at the deadline, force it instead of reversing it \
(asks first, unless --yes). Dangerous: tasks still running the code being replaced are declared switched, and the \
kernel never releases the module being disabled (unload) or the modules of replaced patches (load) until reboot.";

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The livepatch module (.ko) to load.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub module: Option<PathBuf>,
    /// Load every patch installed for the running release, oldest first,
    /// with the crash-loop guard (what the boot unit runs).
    #[arg(long)]
    pub all: bool,
    /// Seconds to wait for the patching transition before reversing it.
    /// The kernel sends blocking tasks a fake signal every 15 s meanwhile.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[arg(long, help = FORCE_HELP)]
    pub force: bool,
    /// Answer yes to the --force confirmation (for scripts).
    #[arg(long, requires = "force")]
    pub yes: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct UnloadArgs {
    /// Name of the livepatch (its module name, as `suture list` shows it).
    pub name: String,
    /// Seconds to wait for each step (unpatching transition, module release).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[arg(long, help = FORCE_HELP)]
    pub force: bool,
    /// Answer yes to the --force confirmation (for scripts).
    #[arg(long, requires = "force")]
    pub yes: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Clone)]
pub struct StateArgs {
    /// Where installed patches are kept [default: $SUTURE_STATE_DIR, else /var/lib/suture].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    pub fn dir(&self) -> StateDir {
        match self.state_dir.clone().or_else(|| {
            std::env::var_os("SUTURE_STATE_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        }) {
            Some(p) => StateDir(p),
            None => StateDir::default(),
        }
    }
}

/// The running system, or the tree `SUTURE_SYSROOT` names (tests).
pub fn host() -> Host {
    match std::env::var_os("SUTURE_SYSROOT").filter(|v| !v.is_empty()) {
        Some(r) => Host::with(PathBuf::from(r), Box::new(suture_host::sys::SysKernel)),
        None => Host::system(),
    }
}

/// The consent `--force` needs: `--yes`, or an answer on a terminal.
/// Without either, refuse up front rather than stall and then fail.
pub fn force_confirm(
    force: bool,
    yes: bool,
    op: &'static str,
) -> anyhow::Result<Option<ForceConfirm>> {
    if !force {
        return Ok(None);
    }
    if yes {
        return Ok(Some(Arc::new(move |name: &str, tasks: &[StalledTask]| {
            eprintln!(
                "warning: suture {op}: forcing the transition of {name} past {} task(s) (--force --yes): {}",
                tasks.len(),
                suture_host::force_warning(op != "load")
            );
            true
        })));
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "--force needs a confirmation and stdin is not a terminal; add --yes if you accept that {}",
            suture_host::force_warning(op != "load")
        );
    }
    Ok(Some(Arc::new(move |name: &str, tasks: &[StalledTask]| {
        eprintln!(
            "suture {op}: the transition of {name} did not finish; these tasks have not switched:"
        );
        for t in tasks {
            eprintln!(
                "  pid {} {:?} blocked in {} (patched on stack: {})",
                t.pid,
                t.comm,
                t.blocking_function.as_deref().unwrap_or("?"),
                if t.patched_on_stack.is_empty() {
                    "-".to_string()
                } else {
                    t.patched_on_stack.join(", ")
                }
            );
        }
        eprintln!("\n{}.", suture_host::force_warning(op != "load"));
        eprint!("Type \"force\" to force the transition, anything else to reverse it: ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        line.trim() == "force"
    })))
}

pub fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        anyhow::anyhow!("--timeout must be a non-negative number of seconds, got {secs}")
    })
}

pub fn exit_code(e: &HostError) -> i32 {
    match e.kind {
        ErrorKind::NotLivepatch
        | ErrorKind::ReleaseMismatch
        | ErrorKind::BuildIdMismatch
        | ErrorKind::NotAModule
        | ErrorKind::Unsigned
        | ErrorKind::UnknownSigner
        | ErrorKind::BadSignature
        | ErrorKind::Modified
        | ErrorKind::TrustStore => 2,
        _ => 1,
    }
}

/// Reports a failure on stderr (and as JSON when asked) and picks the exit code.
pub fn fail(op: &str, e: HostError, json: bool) -> anyhow::Result<i32> {
    eprintln!("error: suture {op}: {e}");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": false, "error": e }))?
        );
    }
    Ok(exit_code(&e))
}

pub fn load(a: LoadArgs) -> anyhow::Result<i32> {
    let mut opts = LoadOptions {
        timeout: timeout(a.timeout)?,
        force: force_confirm(a.force, a.yes, "load")?,
        ..LoadOptions::default()
    };
    if a.all {
        return load_all(&a, &opts);
    }
    let module = a
        .module
        .as_deref()
        .expect("clap requires MODULE without --all");
    // Loading an installed patch by its path checks it is still the file
    // that was installed.
    opts.installed_sha256 = match a.state.dir().record_of(module) {
        Ok(r) => r.and_then(|r| r.sha256),
        Err(why) => {
            let e = suture_host::HostError::new(
                suture_host::ErrorKind::StateUnreadable,
                format!("refusing to load {}: it is an installed patch and {why}", module.display()),
            )
            .hint("reinstall it with `suture install`, or load a copy from outside the state directory");
            return fail("load", e, a.json);
        }
    };
    match host().load(module, &opts) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "load": r }))?
                );
            } else {
                let funcs: Vec<String> = r
                    .state
                    .objects
                    .iter()
                    .flat_map(|o| {
                        o.functions
                            .iter()
                            .map(move |f| format!("{}:{}", o.name, f.name))
                    })
                    .collect();
                println!(
                    "loaded {} on {}: patched {} in {:.1} ms (load {:.1} ms, transition {:.1} ms)",
                    r.name,
                    r.release,
                    if funcs.is_empty() {
                        "nothing".to_string()
                    } else {
                        funcs.join(", ")
                    },
                    r.total_ms,
                    r.load_ms,
                    r.transition_ms
                );
                if r.aid.forced {
                    eprintln!(
                        "warning: the transition was FORCED past {} task(s); {}",
                        r.aid.forced_past.len(),
                        suture_host::force_warning(false)
                    );
                }
            }
            Ok(0)
        }
        Err(e) => fail("load", e, a.json),
    }
}

fn load_all(a: &LoadArgs, opts: &LoadOptions) -> anyhow::Result<i32> {
    let st = a.state.dir();
    match host().load_all(&st, opts) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": r.failed.is_empty(), "boot": r })
                    )?
                );
            } else {
                if r.loaded.is_empty()
                    && r.already_loaded.is_empty()
                    && r.skipped.is_empty()
                    && r.failed.is_empty()
                {
                    println!(
                        "no patches installed for {} in {}",
                        r.release,
                        st.release_dir(&r.release).display()
                    );
                }
                for n in &r.loaded {
                    println!("loaded {n}");
                }
                for n in &r.already_loaded {
                    println!("already loaded: {n}");
                }
                for s in &r.skipped {
                    eprintln!(
                        "warning: SKIPPED {} (crash-loop guard{}): {}; reinstall it with `suture install` to try again, or `suture uninstall {}`",
                        s.name,
                        if s.new { "" } else { ", decided in an earlier boot" },
                        s.reason,
                        s.name
                    );
                }
                for f in &r.failed {
                    eprintln!("error: loading {} failed: {}", f.name, f.error);
                }
            }
            Ok(if r.failed.is_empty() { 0 } else { 1 })
        }
        Err(e) => fail("load --all", e, a.json),
    }
}

pub fn unload(a: UnloadArgs) -> anyhow::Result<i32> {
    let opts = UnloadOptions {
        timeout: timeout(a.timeout)?,
        force: force_confirm(a.force, a.yes, "unload")?,
        ..UnloadOptions::default()
    };
    match host().unload(&a.name, &opts) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "unload": r }))?
                );
            } else if !r.module_removed {
                println!(
                    "disabled {}: the unpatching transition was FORCED, so the module stays loaded until reboot ({} ms)",
                    r.name, r.total_ms
                );
            } else if r.was_enabled {
                println!(
                    "unloaded {}: unpatched in {:.1} ms, module removed ({:.1} ms total)",
                    r.name, r.transition_ms, r.total_ms
                );
            } else {
                println!("removed module {} (its patch was already disabled)", r.name);
            }
            Ok(0)
        }
        Err(e) => fail("unload", e, a.json),
    }
}

/// Loaded patches (from sysfs) and installed ones (from the state
/// directory, every release) side by side.
pub fn list(a: ListArgs) -> anyhow::Result<i32> {
    let h = host();
    let st = a.state.dir();
    let release = h.kernel.release().unwrap_or_default();
    match h.list() {
        Ok(patches) => {
            let installed = match st.releases().and_then(|rs| {
                rs.iter()
                    .map(|r| st.installed(r))
                    .collect::<std::io::Result<Vec<_>>>()
            }) {
                Ok(v) => v.into_iter().flatten().collect::<Vec<_>>(),
                Err(e) => {
                    return fail(
                        "list",
                        suture_host::state::state_unreadable(&st, &e),
                        a.json,
                    )
                }
            };
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": true, "release": release, "patches": patches, "installed": installed })
                    )?
                );
            } else {
                print!("{}", suture_host::format_table(&patches));
                print!("{}", format_installed(&release, &installed, &patches));
            }
            Ok(0)
        }
        Err(e) => fail("list", e, a.json),
    }
}

fn format_installed(
    release: &str,
    installed: &[suture_host::state::Installed],
    loaded: &[suture_host::PatchState],
) -> String {
    if installed.is_empty() {
        // Loaded patches are listed above: this is about boot-time loading.
        return "no patches installed for boot (`suture install FILE.ko` keeps one and loads it at every boot)\n".into();
    }
    let mut rows = vec![["INSTALLED", "RELEASE", "LOADED", "GUARD", "CVES"].map(String::from)];
    for i in installed {
        let is_loaded =
            i.release == release && loaded.iter().any(|p| p.name == i.name && p.module.loaded);
        rows.push([
            i.name.clone(),
            i.release.clone(),
            if i.release != release {
                "other release".into()
            } else if is_loaded {
                "yes".into()
            } else {
                "no".into()
            },
            i.guard.label().into(),
            i.meta
                .as_ref()
                .map(|m| m.cves.join(","))
                .unwrap_or_default(),
        ]);
    }
    let w: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::from("\n");
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = w[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
