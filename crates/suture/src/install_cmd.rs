//! `suture install`, `suture uninstall`, `suture confirm`: patches that
//! survive a reboot. `install` checks the module, stores it under
//! STATE/RELEASE/, loads it and enables the boot unit (`suture.service`,
//! which runs `suture load --all` early at boot) and the crash-loop
//! guard's confirmation timer. `confirm` is what that timer and the unit's
//! stop action run.
//!
//! Exit status: 0 success; 1 failure; 2 refused before touching the kernel
//! (see `suture load`).

use crate::host_cmd::{fail, force_confirm, host, timeout, StateArgs};
use std::path::PathBuf;
use std::time::Duration;
use suture_host::state::{enable_units, UnitDirs};
use suture_host::{LoadOptions, UnloadOptions};

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The livepatch module (.ko) to install for its kernel release.
    pub module: PathBuf,
    /// Seconds to wait for the patching transition before reversing it.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub state: StateArgs,
    /// Where to write and enable the systemd units when no package shipped
    /// them.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Do not write or enable the boot units.
    #[arg(long)]
    pub no_enable: bool,
    /// Only store the patch for the release it was built for, to be loaded
    /// when that kernel boots (no release or build check now).
    #[arg(long)]
    pub no_load: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// Name of the installed patch (its module name).
    pub name: String,
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[arg(long)]
    pub force: bool,
    #[arg(long, requires = "force")]
    pub yes: bool,
    /// Succeed when no such patch is installed or loaded (package scripts).
    #[arg(long)]
    pub missing_ok: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ConfirmArgs {
    /// Confirm patches loaded at least this many seconds ago in this boot.
    #[arg(long, default_value_t = 300)]
    pub min_loaded: u64,
    /// The system is shutting down in order: confirm every patch of this boot.
    #[arg(long)]
    pub clean_shutdown: bool,
    #[command(flatten)]
    pub state: StateArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn install(a: InstallArgs) -> anyhow::Result<i32> {
    let st = a.state.dir();
    let opts = LoadOptions {
        timeout: timeout(a.timeout)?,
        ..LoadOptions::default()
    };
    let result = if a.no_load {
        host().install_for_boot(&st, &a.module).map(|i| (i, None))
    } else {
        host().install(&st, &a.module, &opts)
    };
    let (inst, load) = match result {
        Ok(r) => r,
        Err(e) => return fail("install", e, a.json),
    };
    let units = if a.no_enable {
        Default::default()
    } else {
        let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/suture".into());
        let dirs = UnitDirs {
            etc: a.unit_dir.clone(),
            ..UnitDirs::default()
        };
        match enable_units(&dirs, &exe) {
            Ok(u) => u,
            Err(e) => suture_host::state::UnitsReport {
                warning: Some(format!(
                    "the patch is installed and loaded, but the boot unit could not be set up in {}: {e}; \
                     it will not be loaded at boot until `suture install` succeeds there or the unit is enabled by hand",
                    a.unit_dir.display()
                )),
                ..Default::default()
            },
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "install": { "name": inst.name, "release": inst.release, "path": inst.path, "load": load, "units": units }
            }))?
        );
    } else {
        println!(
            "installed {} for {} in {}; {}",
            inst.name,
            inst.release,
            inst.path.display(),
            match (&load, a.no_load) {
                (Some(_), _) => "loaded",
                (None, true) => "to be loaded when that kernel boots",
                (None, false) => "already loaded",
            }
        );
        for u in &units.enabled {
            println!("enabled {}", u.display());
        }
    }
    if let Some(w) = &units.warning {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

pub fn uninstall(a: UninstallArgs) -> anyhow::Result<i32> {
    let opts = UnloadOptions {
        timeout: timeout(a.timeout)?,
        force: force_confirm(a.force, a.yes, "uninstall")?,
        ..UnloadOptions::default()
    };
    match host().uninstall(&a.state.dir(), &a.name, &opts) {
        Ok((was_installed, unload)) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "ok": true, "uninstall": { "name": a.name, "was_installed": was_installed, "unload": unload }
                    }))?
                );
            } else {
                let unloaded = match &unload {
                    Some(u) if !u.module_removed => {
                        "disabled (forced: the module stays until reboot)"
                    }
                    Some(_) => "unloaded",
                    None => "was not loaded",
                };
                println!(
                    "uninstalled {}: {unloaded}{}",
                    a.name,
                    if was_installed {
                        ""
                    } else {
                        " (it was loaded but not installed)"
                    }
                );
            }
            Ok(0)
        }
        Err(e) if a.missing_ok && e.kind == suture_host::ErrorKind::NotLoaded => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": true, "uninstall": null })
                    )?
                );
            } else {
                println!("{} is not installed or loaded: nothing to do", a.name);
            }
            Ok(0)
        }
        Err(e) => fail("uninstall", e, a.json),
    }
}

pub fn confirm(a: ConfirmArgs) -> anyhow::Result<i32> {
    match host().confirm(
        &a.state.dir(),
        Duration::from_secs(a.min_loaded),
        a.clean_shutdown,
    ) {
        Ok(names) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": true, "confirmed": names })
                    )?
                );
            } else {
                for n in &names {
                    println!("confirmed {n}");
                }
            }
            Ok(0)
        }
        Err(e) => fail("confirm", e, a.json),
    }
}
