//! `suture load`, `suture unload`, `suture list`: the host side.
//!
//! Exit status: 0 success; 1 the operation failed (kernel refusal, timeout,
//! environment); 2 refused before touching the kernel (not a livepatch
//! module, built for another release, not a module at all).
//! With `--json`, stdout carries exactly one JSON document, success or not.

use std::path::PathBuf;
use std::time::Duration;
use suture_host::{ErrorKind, HostError, LoadOptions, UnloadOptions};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The livepatch module (.ko) to load.
    pub module: PathBuf,
    /// Seconds to wait for the patching transition before reversing it.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
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
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        anyhow::anyhow!("--timeout must be a non-negative number of seconds, got {secs}")
    })
}

fn exit_code(e: &HostError) -> i32 {
    match e.kind {
        ErrorKind::NotLivepatch | ErrorKind::ReleaseMismatch | ErrorKind::NotAModule => 2,
        _ => 1,
    }
}

/// Reports a failure on stderr (and as JSON when asked) and picks the exit code.
fn fail(op: &str, e: HostError, json: bool) -> anyhow::Result<i32> {
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
    let opts = LoadOptions {
        timeout: timeout(a.timeout)?,
        ..LoadOptions::default()
    };
    match suture_host::load(&a.module, &opts) {
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
            }
            Ok(0)
        }
        Err(e) => fail("load", e, a.json),
    }
}

pub fn unload(a: UnloadArgs) -> anyhow::Result<i32> {
    let opts = UnloadOptions {
        timeout: timeout(a.timeout)?,
        ..UnloadOptions::default()
    };
    match suture_host::unload(&a.name, &opts) {
        Ok(r) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "unload": r }))?
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

pub fn list(a: ListArgs) -> anyhow::Result<i32> {
    match suture_host::list() {
        Ok(patches) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": true, "patches": patches })
                    )?
                );
            } else {
                print!("{}", suture_host::format_table(&patches));
            }
            Ok(0)
        }
        Err(e) => fail("list", e, a.json),
    }
}
