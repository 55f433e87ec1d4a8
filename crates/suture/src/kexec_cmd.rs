//! `suture kexec`: boot another installed release through a clean systemd
//! shutdown that skips firmware, for fixes that cannot be live-patched.
//!
//! Exit status: 0 loaded (and the reboot started, unless `--no-reboot`);
//! 1 the kernel refused the image or the reboot could not be started;
//! 2 refused before touching the kernel (unknown release, not root, kexec
//! disabled, bad arguments). With `--json`, stdout carries exactly one
//! JSON document, success or not.

use crate::host_cmd::fail;
use std::path::PathBuf;
use suture_host::kexec::{self, CmdlineSpec};
use suture_host::sys::SysKexec;
use suture_host::{ErrorKind, HostError};

#[derive(clap::Args)]
pub struct Args {
    /// The release to boot, as `uname -r` prints it (its image and initrd
    /// must be installed in /boot).
    #[arg(long, value_name = "RELEASE", required_unless_present = "unload")]
    pub kernel: Option<String>,
    /// Parameters added to the new kernel's command line.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// The new kernel's command line, instead of the running one (which is
    /// used without its BOOT_IMAGE= and initrd= parameters).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Only load the kernel; `systemctl kexec` boots it later.
    #[arg(long)]
    pub no_reboot: bool,
    /// Cancel a kernel loaded with --no-reboot.
    #[arg(long, conflicts_with_all = ["kernel", "append", "cmdline", "no_reboot"])]
    pub unload: bool,
    /// Where boot/, proc/ and sys/ are read (tests); anything but / needs
    /// --no-reboot, since the reboot is the real host's.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn exit_code(e: &HostError) -> i32 {
    match e.kind {
        ErrorKind::BadInput
        | ErrorKind::UnknownRelease
        | ErrorKind::KexecDisabled
        | ErrorKind::Permission
            if e.errno.is_none() =>
        {
            2
        }
        _ => 1,
    }
}

fn report_failure(op: &str, e: HostError, json: bool) -> anyhow::Result<i32> {
    let code = exit_code(&e);
    fail(op, e, json)?;
    Ok(code)
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.unload {
        return unload(&a);
    }
    let release = a.kernel.as_deref().expect("clap requires --kernel");
    if !a.no_reboot && a.root != std::path::Path::new("/") {
        let e = HostError::new(
            ErrorKind::BadInput,
            format!(
                "--root {} reads another tree, but the reboot would be this host's",
                a.root.display()
            ),
        )
        .hint("add --no-reboot");
        return report_failure("kexec", e, a.json);
    }
    let spec = CmdlineSpec {
        replace: a.cmdline.clone(),
        append: a.append.clone(),
    };
    let loaded = match kexec::load(&a.root, &SysKexec, release, &spec) {
        Ok(l) => l,
        Err(e) => return report_failure("kexec", e, a.json),
    };
    if !a.json {
        println!(
            "loaded {} for kexec\n  image   {}\n  initrd  {}\n  cmdline {}",
            loaded.release,
            loaded.image.display(),
            loaded.initrd.display(),
            loaded.cmdline
        );
    }
    let reboot = if a.no_reboot {
        Ok(false)
    } else {
        kexec::systemctl_kexec().map(|()| true)
    };
    let doc = |reboot_started: bool| {
        serde_json::json!({
            "release": loaded.release,
            "image": loaded.image,
            "initrd": loaded.initrd,
            "cmdline": loaded.cmdline,
            "kexec_loaded": loaded.kexec_loaded,
            "reboot_started": reboot_started,
        })
    };
    match reboot {
        Ok(started) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": true, "kexec": doc(started) })
                    )?
                );
            } else if started {
                println!("rebooting into {} (systemctl kexec)", loaded.release);
            } else {
                println!(
                    "not rebooting (--no-reboot): `systemctl kexec` boots it, `suture kexec --unload` cancels it"
                );
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: suture kexec: {e}");
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "ok": false, "kexec": doc(false), "error": e })
                    )?
                );
            }
            Ok(1)
        }
    }
}

fn unload(a: &Args) -> anyhow::Result<i32> {
    match kexec::unload(&a.root, &SysKexec) {
        Ok(u) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "ok": true, "unload": u }))?
                );
            } else if u.was_loaded {
                println!("unloaded the kexec kernel");
            } else {
                println!("no kexec kernel was loaded");
            }
            Ok(0)
        }
        Err(e) => report_failure("kexec --unload", e, a.json),
    }
}
