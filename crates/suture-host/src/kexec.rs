//! Boot another installed release without going through firmware: the
//! fallback for a fix that cannot be live-patched.
//!
//! The release's image and initrd are handed to `kexec_file_load` (not the
//! older `kexec_load`) so the kernel itself reads and verifies the image:
//! where signatures are enforced (lockdown, `KEXEC_SIG_FORCE`), an unsigned
//! or foreign image is refused by the kernel rather than trusted because we
//! read it. The decisions (which files, which command line, what an errno
//! means) are pure functions over a configurable root; the two syscalls are
//! behind [`KexecSys`].

use crate::sys::LogMark;
use crate::{ErrorKind, HostError};
use serde::Serialize;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// x86's `COMMAND_LINE_SIZE`, the terminating NUL included: the bzImage
/// header of every kernel we boot advertises `cmdline_size` = 2047.
pub const COMMAND_LINE_MAX: usize = 2048;

/// Parameters that name the files the running kernel was booted from
/// (added by GRUB); kept, they would describe the wrong kernel after kexec.
const BOOT_FILE_PARAMS: [&str; 2] = ["BOOT_IMAGE", "initrd"];

/// The syscalls `suture kexec` needs, so the orchestration can be tested
/// without loading anything into the running kernel.
pub trait KexecSys {
    fn euid(&self) -> u32;
    /// `kexec_file_load(kernel, initrd, len(cmdline)+1, cmdline, 0)`.
    fn file_load(&self, kernel: &File, initrd: &File, cmdline: &CString) -> io::Result<()>;
    /// `kexec_file_load(-1, -1, 0, NULL, KEXEC_FILE_UNLOAD)`.
    fn file_unload(&self) -> io::Result<()>;
    fn log_mark(&self) -> LogMark;
    fn log_since(&self, mark: LogMark) -> Vec<String>;
}

/// What was loaded, for the operator and for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loaded {
    pub release: String,
    pub image: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// `/sys/kernel/kexec_loaded` read back after the syscall.
    pub kexec_loaded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unloaded {
    /// Whether a kernel was loaded before the unload.
    pub was_loaded: bool,
}

/// How the new kernel's command line is made.
#[derive(Debug, Clone, Default)]
pub struct CmdlineSpec {
    /// Replaces the running command line.
    pub replace: Option<String>,
    /// Appended to the running (or replacing) command line.
    pub append: Option<String>,
}

/// A release name is used in file names: the rule every stage applies to a
/// release (nothing that could leave `/boot`, nothing `uname -r` would not print).
pub fn check_release(release: &str) -> Result<(), HostError> {
    suture_abi::check_release(release).map_err(|e| {
        HostError::new(ErrorKind::BadInput, e.to_string())
        .hint("pass a release as `uname -r` prints it, e.g. 6.1.0-56-amd64; `ls /boot/vmlinuz-*` lists the installed ones")
    })
}

pub fn image_path(root: &Path, release: &str) -> PathBuf {
    root.join("boot").join(format!("vmlinuz-{release}"))
}

pub fn initrd_path(root: &Path, release: &str) -> PathBuf {
    root.join("boot").join(format!("initrd.img-{release}"))
}

/// Releases with an image in `ROOT/boot`, sorted, for the error that names
/// what could have been meant.
pub fn installed_releases(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// The image and initrd of `release` under `root`, or an error saying which
/// package (or command) provides the missing file.
pub fn resolve(root: &Path, release: &str) -> Result<(PathBuf, PathBuf), HostError> {
    check_release(release)?;
    let image = image_path(root, release);
    let initrd = initrd_path(root, release);
    if !image.is_file() {
        let installed = installed_releases(root);
        let have = if installed.is_empty() {
            "no kernel image is installed there".to_string()
        } else {
            format!("installed: {}", installed.join(", "))
        };
        return Err(HostError::new(
            ErrorKind::UnknownRelease,
            format!(
                "kernel {release} is not installed: {} not found ({have})",
                image.display()
            ),
        )
        .hint(format!(
            "install it first: apt-get install linux-image-{release}"
        )));
    }
    if !initrd.is_file() {
        return Err(HostError::new(
            ErrorKind::UnknownRelease,
            format!(
                "kernel {release} has no initramfs: {} not found",
                initrd.display()
            ),
        )
        .hint(format!(
            "generate it: update-initramfs -c -k {release} (package initramfs-tools)"
        )));
    }
    Ok((image, initrd))
}

/// Splits a kernel command line the way the kernel's `next_arg` does: on
/// blanks, except inside double quotes (`opt="a b"` is one parameter).
pub fn split_cmdline(cmdline: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quoted = false;
    for (i, c) in cmdline.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                out.push(&cmdline[s..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(&cmdline[s..]);
    }
    out
}

/// The running command line without the parameters that name the running
/// kernel's files. Everything after `--` belongs to init and is kept as is.
pub fn carry_over(running: &str) -> String {
    let mut kept = Vec::new();
    let mut for_init = false;
    for tok in split_cmdline(running) {
        if tok == "--" {
            for_init = true;
        }
        let key = tok.split_once('=').map_or(tok, |(k, _)| k);
        if for_init || !BOOT_FILE_PARAMS.contains(&key) {
            kept.push(tok);
        }
    }
    kept.join(" ")
}

/// The new kernel's command line from the running one and the operator's
/// `--cmdline`/`--append`, checked against what the syscall accepts.
pub fn build_cmdline(running: &str, spec: &CmdlineSpec) -> Result<String, HostError> {
    let mut line = match &spec.replace {
        Some(r) => split_cmdline(r).join(" "),
        None => carry_over(running),
    };
    if let Some(a) = &spec.append {
        let a = split_cmdline(a).join(" ");
        if !a.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&a);
        }
    }
    if line.contains('\0') {
        return Err(HostError::new(
            ErrorKind::BadInput,
            "the kernel command line contains a NUL byte",
        )
        .hint("remove it from --cmdline/--append"));
    }
    if line.matches('"').count() % 2 == 1 {
        return Err(HostError::new(
            ErrorKind::BadInput,
            format!("unbalanced double quote in the kernel command line: {line}"),
        )
        .hint("quote whole values, e.g. --append 'opt=\"a b\"'"));
    }
    if line.len() + 1 > COMMAND_LINE_MAX {
        return Err(HostError::new(
            ErrorKind::BadInput,
            format!(
                "the kernel command line is {} bytes; the kernel accepts at most {}",
                line.len(),
                COMMAND_LINE_MAX - 1
            ),
        )
        .hint("shorten it with --cmdline"));
    }
    Ok(line)
}

/// What the running kernel allows before anything is attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// `kernel.kexec_load_disabled`; `None` when the kernel has no kexec.
    pub disabled: Option<bool>,
    /// The active lockdown mode (`integrity`, `confidentiality`), if any.
    pub lockdown: Option<String>,
    /// `kernel.kexec_load_limit_reboot` (6.6+): loads left, -1 unlimited.
    /// Every load and unload counts; at 0 the kernel answers EPERM.
    pub loads_left: Option<i64>,
}

/// `[none] integrity confidentiality` → the bracketed mode unless `none`.
pub fn parse_lockdown(text: &str) -> Option<String> {
    let s = text.find('[')?;
    let e = s + text[s..].find(']')?;
    let mode = &text[s + 1..e];
    (mode != "none" && !mode.is_empty()).then(|| mode.to_string())
}

pub fn preflight(root: &Path) -> Preflight {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    Preflight {
        disabled: read("proc/sys/kernel/kexec_load_disabled").map(|s| s.trim() == "1"),
        lockdown: read("sys/kernel/security/lockdown")
            .as_deref()
            .and_then(parse_lockdown),
        loads_left: read("proc/sys/kernel/kexec_load_limit_reboot")
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// `/sys/kernel/kexec_loaded` as a boolean (`None`: no such file).
pub fn kexec_loaded(root: &Path) -> Option<bool> {
    match std::fs::read_to_string(root.join("sys/kernel/kexec_loaded"))
        .ok()?
        .trim()
    {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The refusals that need no syscall: not root, kexec switched off.
fn check_allowed(root: &Path, sys: &dyn KexecSys) -> Result<Preflight, HostError> {
    if sys.euid() != 0 {
        return Err(HostError::new(
            ErrorKind::Permission,
            "loading a kernel for kexec needs root (CAP_SYS_BOOT)",
        )
        .hint("run it as root, e.g. with sudo"));
    }
    let pre = preflight(root);
    match pre.disabled {
        None => Err(HostError::new(
            ErrorKind::KexecDisabled,
            format!(
                "the running kernel has no kexec support ({} is missing)",
                root.join("proc/sys/kernel/kexec_load_disabled").display()
            ),
        )
        .hint("reboot into the release through the boot loader instead: set it as GRUB's default (grub-reboot) and run `systemctl reboot`")),
        Some(true) => Err(HostError::new(
            ErrorKind::KexecDisabled,
            "kexec is disabled on this host (kernel.kexec_load_disabled = 1)",
        )
        .hint("the switch cannot be turned back on without a reboot: reboot through the boot loader instead (grub-reboot RELEASE, then `systemctl reboot`), and drop kernel.kexec_load_disabled from /etc/sysctl.d if kexec should work next time")),
        Some(false) if pre.loads_left == Some(0) => Err(HostError::new(
            ErrorKind::KexecDisabled,
            "the kernel allows no more kexec loads until reboot (kernel.kexec_load_limit_reboot = 0)",
        )
        .hint("the limit only counts down: reboot through the boot loader instead (grub-reboot RELEASE, then `systemctl reboot`)")),
        Some(false) => Ok(pre),
    }
}

/// What an errno of `kexec_file_load` means for the operator. `lockdown`
/// is the active lockdown mode, which turns a signature failure into EPERM.
pub fn explain_errno(errno: i32, release: &str, lockdown: Option<&str>) -> HostError {
    let reinstall =
        format!("reinstall the image: apt-get install --reinstall linux-image-{release}");
    let (kind, what, hint): (ErrorKind, String, String) = match errno {
        libc::EPERM => match lockdown {
            Some(mode) => (
                ErrorKind::Signature,
                format!("the kernel is locked down ({mode}) and refused the image of {release}: it carries no signature the kernel trusts"),
                format!("boot only images signed by a trusted key: Debian's signed linux-image-{release} (not an -unsigned or self-built one), or enroll the signer's key with mokutil --import"),
            ),
            None => (
                ErrorKind::Permission,
                "the kernel refused kexec (EPERM): the process lacks CAP_SYS_BOOT, or kexec was disabled or its load limit reached meanwhile".into(),
                "run as root outside a restricted container, and check `sysctl kernel.kexec_load_disabled kernel.kexec_load_limit_reboot`".into(),
            ),
        },
        libc::EKEYREJECTED | libc::ENOKEY | libc::EBADMSG | libc::ENODATA | libc::ENOPKG => (
            ErrorKind::Signature,
            format!(
                "the kernel enforces image signatures and rejected {release}'s image: {}",
                match errno {
                    libc::ENOKEY => "it is signed by a key the kernel does not trust",
                    libc::EBADMSG => "its signature is malformed (the file may be damaged)",
                    libc::ENODATA => "it is not signed",
                    libc::ENOPKG => "its signature uses an algorithm the kernel cannot check",
                    _ => "its signature does not verify",
                }
            ),
            format!("use Debian's signed image ({reinstall}) or enroll the signer's key with mokutil --import"),
        ),
        libc::ENOEXEC => (
            ErrorKind::NotKernel,
            format!("the image of {release} is not a kernel the running one can boot (not an x86-64 bzImage, or damaged)"),
            reinstall,
        ),
        libc::EBUSY => (
            ErrorKind::Busy,
            "another kexec load or unload is in progress".into(),
            "wait for it (another `suture kexec` or kexec-tools' kexec) and try again".into(),
        ),
        libc::ENOMEM | libc::EADDRNOTAVAIL => (
            ErrorKind::Kernel,
            "the kernel found no room for the image and initramfs in memory".into(),
            "free memory (stop services) and try again, or make the initramfs smaller (MODULES=dep in /etc/initramfs-tools/initramfs.conf, then update-initramfs -u -k RELEASE)".into(),
        ),
        libc::EFBIG => (
            ErrorKind::Kernel,
            format!("the image or initramfs of {release} is too large to load"),
            "make the initramfs smaller (MODULES=dep in /etc/initramfs-tools/initramfs.conf)".into(),
        ),
        libc::EINVAL => (
            ErrorKind::Kernel,
            format!("the kernel rejected the request (EINVAL): the command line may be too long for {release}'s image, or the image's boot protocol is too old for kexec_file_load"),
            "try a shorter command line with --cmdline; an old image can only be booted through the boot loader".into(),
        ),
        libc::EACCES => (
            ErrorKind::Permission,
            "a security module (IMA appraisal, AppArmor, SELinux) denied reading the image or initramfs".into(),
            "check the audit log (journalctl -k) for the denial and the policy that made it".into(),
        ),
        libc::ENOSYS => (
            ErrorKind::KexecDisabled,
            "the running kernel was built without kexec_file_load (CONFIG_KEXEC_FILE)".into(),
            "reboot through the boot loader instead (grub-reboot RELEASE, then `systemctl reboot`)".into(),
        ),
        _ => (
            ErrorKind::Kernel,
            format!("kexec_file_load failed: {}", io::Error::from_raw_os_error(errno)),
            "the kernel log (journalctl -k) may say more".into(),
        ),
    };
    let mut e = HostError::new(kind, format!("cannot load {release} for kexec: {what}")).hint(hint);
    e.errno = Some(errno);
    e
}

fn open(p: &Path) -> Result<File, HostError> {
    File::open(p).map_err(|e| HostError::io(format!("opening {}", p.display()), &e))
}

/// Loads `release` from `root/boot` as the kernel the next kexec boots,
/// and checks that the kernel says so in `/sys/kernel/kexec_loaded`.
pub fn load(
    root: &Path,
    sys: &dyn KexecSys,
    release: &str,
    spec: &CmdlineSpec,
) -> Result<Loaded, HostError> {
    let (image, initrd) = resolve(root, release)?;
    let pre = check_allowed(root, sys)?;
    let running = if spec.replace.is_some() {
        String::new()
    } else {
        let p = root.join("proc/cmdline");
        std::fs::read_to_string(&p)
            .map_err(|e| HostError::io(format!("reading {}", p.display()), &e))?
    };
    let cmdline = build_cmdline(&running, spec)?;
    let c = CString::new(cmdline.clone()).expect("build_cmdline refuses NUL");
    let (kf, inf) = (open(&image)?, open(&initrd)?);
    let mark = sys.log_mark();
    if let Err(e) = sys.file_load(&kf, &inf, &c) {
        let mut err = match e.raw_os_error() {
            Some(errno) => explain_errno(errno, release, pre.lockdown.as_deref()),
            None => HostError::new(
                ErrorKind::Kernel,
                format!("cannot load {release} for kexec: {e}"),
            ),
        };
        err.kernel_log = sys.log_since(mark);
        return Err(err);
    }
    if kexec_loaded(root) != Some(true) {
        return Err(HostError::new(
            ErrorKind::Kernel,
            format!(
                "kexec_file_load accepted {release}, but /sys/kernel/kexec_loaded does not say 1"
            ),
        )
        .hint("do not reboot with kexec now; check `journalctl -k` and try again"));
    }
    Ok(Loaded {
        release: release.to_string(),
        image,
        initrd,
        cmdline,
        kexec_loaded: true,
    })
}

/// Cancels a loaded kexec kernel (a no-op in the kernel when none is).
pub fn unload(root: &Path, sys: &dyn KexecSys) -> Result<Unloaded, HostError> {
    check_allowed(root, sys)?;
    let was_loaded = kexec_loaded(root) == Some(true);
    if let Err(e) = sys.file_unload() {
        let mut err = HostError::new(
            ErrorKind::Kernel,
            format!("cannot unload the kexec kernel: {e}"),
        );
        err.errno = e.raw_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            err = err.hint("a kexec load is in progress: wait for it and try again");
        }
        return Err(err);
    }
    if kexec_loaded(root) == Some(true) {
        return Err(HostError::new(
            ErrorKind::Kernel,
            "the unload returned success but /sys/kernel/kexec_loaded still says 1",
        )
        .hint(
            "check `journalctl -k`; a `systemctl kexec` now would still boot the loaded kernel",
        ));
    }
    Ok(Unloaded { was_loaded })
}

/// Starts a clean shutdown that ends in the loaded kernel. `--no-block`:
/// systemctl returns once the job is queued instead of waiting for a
/// shutdown that will kill it before it could report.
///
/// The shutdown it starts stops this process's unit or session at once
/// (SIGTERM, SIGHUP), systemctl included, often before systemctl has
/// exited: from here until exit both are ignored, by us and (inherited)
/// by systemctl, so its status and our report still come out.
pub fn systemctl_kexec() -> Result<(), HostError> {
    // SAFETY: SIG_IGN installs no handler, so nothing runs in signal context.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut cmd = std::process::Command::new("systemctl");
    cmd.args(["--no-block", "kexec"]);
    let out = cmd
        .output()
        .map_err(|e| {
            HostError::io("running systemctl kexec".into(), &e).hint(
                "this host does not seem to run systemd; the kernel is loaded: stop services and run `kexec -e`, or cancel with `suture kexec --unload`",
            )
        })?;
    if !out.status.success() {
        return Err(HostError::new(
            ErrorKind::Kernel,
            format!(
                "systemctl kexec failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .hint("the kernel stays loaded: retry `systemctl kexec`, or cancel with `suture kexec --unload`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
