//! suture-lab: boot a kernel under QEMU (TCG) with a busybox initramfs built
//! in memory, run one shell script as the guest's workload, and return its
//! serial output and exit status.
//!
//! KVM does not work on the project's machines, so the accelerator is TCG;
//! a boot to a shell prompt takes about 5 s.
//!
//! ```no_run
//! let vm = suture_lab::Vm::new("6.1.0-56-amd64")?;
//! let run = vm.run("uname -r")?;
//! assert_eq!(run.exit_status, 0);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cpio;
pub mod debian;

use anyhow::{anyhow, bail, Context, Result};
use cpio::{FileTree, NodeKind};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Printed by `/init` after the test script; the status follows the `=`.
/// Long and odd so a script's own output cannot be mistaken for it.
pub const END_MARKER: &str = "SUTURE-LAB-END status=";
/// Printed by `/init` right before the test script starts.
pub const BEGIN_MARKER: &str = "SUTURE-LAB-BEGIN";

/// What one guest run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Everything the guest wrote on its serial console, `\r` removed.
    pub output: String,
    /// The test script's exit status, as reported by `/init`.
    pub exit_status: i32,
    /// From starting QEMU to its exit.
    pub duration: Duration,
}

impl RunOutput {
    /// Output between the begin and end markers: the script's own output
    /// (plus any kernel console messages printed meanwhile).
    pub fn script_output(&self) -> &str {
        let s = match self.output.find(BEGIN_MARKER) {
            Some(i) => &self.output[i + BEGIN_MARKER.len()..],
            None => &self.output,
        };
        let s = s.strip_prefix('\n').unwrap_or(s);
        match s.rfind(END_MARKER) {
            Some(i) => &s[..i],
            None => s,
        }
    }
}

/// The release of the running host kernel (`uname -r`).
pub fn host_release() -> Result<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    Ok(s.trim().to_string())
}

/// The kernel release VM tests boot: `$SUTURE_TEST_RELEASE` (set by
/// `scripts/test.sh`), else the release Debian's `linux-image-amd64`
/// depends on, else the one the project was developed against.
pub fn test_release() -> String {
    if let Some(r) = std::env::var("SUTURE_TEST_RELEASE")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        return r.trim().to_string();
    }
    Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split([',', ' ', '|'])
                .find_map(|w| w.strip_prefix("linux-image-"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "6.1.0-56-amd64".to_string())
}

/// Where Debian installs the image for `release`.
pub fn kernel_image(release: &str) -> PathBuf {
    PathBuf::from(format!("/boot/vmlinuz-{release}"))
}

/// For tests: returns `Ok(true)` when the kernel image for `release` exists.
/// When it is absent, returns `Ok(false)` after printing why the test skips,
/// unless `CI` is set: CI must run VM tests, so there it is an error.
pub fn require_kernel_or_skip(release: &str) -> Result<bool> {
    kernel_gate(
        release,
        kernel_image(release).exists(),
        std::env::var_os("CI"),
    )
}

/// The decision behind [`require_kernel_or_skip`], apart from the
/// environment so it can be tested.
fn kernel_gate(release: &str, image_exists: bool, ci: Option<std::ffi::OsString>) -> Result<bool> {
    if image_exists {
        return Ok(true);
    }
    let img = kernel_image(release);
    if ci.is_some_and(|v| !v.is_empty()) {
        bail!(
            "{} is missing and CI is set, so the VM test cannot be skipped: install it with \
             `apt-get install linux-image-{release}`",
            img.display()
        );
    }
    eprintln!(
        "SKIP: {} not found (install linux-image-{release}); set CI=true to make this a failure",
        img.display()
    );
    Ok(false)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Reads the ELF program headers and returns the `PT_INTERP` path, if any.
/// Used to tell a static busybox from a dynamic one and to copy the dynamic
/// loader a host binary names.
pub fn elf_interpreter(data: &[u8]) -> Result<Option<String>> {
    let rd16 = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd32 = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let rd64 = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let bad = || anyhow!("truncated ELF program header table");
    let phoff = rd64(0x20).ok_or_else(bad)? as usize;
    let phentsize = rd16(0x36).ok_or_else(bad)? as usize;
    let phnum = rd16(0x38).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd32(ph).ok_or_else(bad)? == 3 {
            let off = rd64(ph + 8).ok_or_else(bad)? as usize;
            let size = rd64(ph + 32).ok_or_else(bad)? as usize;
            let raw = data.get(off..off + size).ok_or_else(bad)?;
            let s = raw.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(s).into_owned()));
        }
    }
    Ok(None)
}

/// Parses `ldd` output into the host paths of the libraries it resolved.
/// `not found` lines are errors: the binary would not start in the guest.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            continue;
        }
        if line.contains("=> not found") {
            bail!("ldd could not resolve a library: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        // linux-vdso has no file; everything else with an absolute path is copied.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The `/init` the guest runs. The script's status is printed after a newline
/// so that output without a trailing newline cannot swallow the marker.
fn init_script(script_guest_path: &str) -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
cd /root
echo {BEGIN_MARKER}
sh {script_guest_path}
rc=$?
echo
echo "{END_MARKER}$rc"
poweroff -f
"#
    )
}

/// Removes a directory tree on drop, so temp files vanish on every exit path.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "suture-lab-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps QEMU on drop, so no guest outlives its run (a panic or an
/// early `?` included).
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A guest configuration: kernel, memory, extra files. `run` boots it once
/// per script; the struct can be reused.
#[derive(Debug, Clone)]
pub struct Vm {
    release: String,
    kernel: PathBuf,
    qemu: PathBuf,
    busybox: PathBuf,
    memory_mb: u32,
    append: Vec<String>,
    timeout: Duration,
    tree: FileTree,
    verbose: bool,
}

impl Vm {
    /// A VM that boots `/boot/vmlinuz-RELEASE`. Fails with what to install
    /// when QEMU, a static busybox or the kernel image is missing.
    pub fn new(release: &str) -> Result<Self> {
        let qemu = find_in_path("qemu-system-x86_64").ok_or_else(|| {
            anyhow!("qemu-system-x86_64 not found in PATH: install it with `apt-get install qemu-system-x86`")
        })?;
        let busybox = PathBuf::from("/bin/busybox");
        let bb = std::fs::read(&busybox).map_err(|e| {
            anyhow!("cannot read {}: {e}; install a static busybox with `apt-get install busybox-static`", busybox.display())
        })?;
        if elf_interpreter(&bb)
            .with_context(|| format!("inspecting {}", busybox.display()))?
            .is_some()
        {
            bail!(
                "{} is dynamically linked and would not run in the guest: install `busybox-static` \
                 (it replaces the `busybox` package)",
                busybox.display()
            );
        }
        let kernel = kernel_image(release);
        if !kernel.is_file() {
            bail!("kernel image {} not found: install it with `apt-get install linux-image-{release}`", kernel.display());
        }
        let mut vm = Vm {
            release: release.to_string(),
            kernel,
            qemu,
            busybox,
            memory_mb: 512,
            append: Vec::new(),
            timeout: Duration::from_secs(180),
            tree: FileTree::new(),
            verbose: std::env::var_os("SUTURE_LAB_VERBOSE").is_some(),
        };
        vm.add_base(bb)?;
        Ok(vm)
    }

    fn add_base(&mut self, busybox: Vec<u8>) -> Result<()> {
        let t = &mut self.tree;
        t.insert("bin/busybox", 0o755, NodeKind::File(busybox));
        let out = Command::new(&self.busybox)
            .arg("--list-full")
            .output()
            .with_context(|| format!("running {} --list-full", self.busybox.display()))?;
        if !out.status.success() {
            bail!(
                "{} --list-full failed: {}",
                self.busybox.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The list names `bin/busybox` itself; linking it would make a loop.
        let listing = String::from_utf8_lossy(&out.stdout);
        for applet in listing
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "bin/busybox")
        {
            let depth = applet.matches('/').count();
            let target = format!("{}bin/busybox", "../".repeat(depth));
            t.insert(applet, 0o777, NodeKind::Symlink(target));
        }
        for d in ["proc", "sys", "dev", "tmp", "root", "etc"] {
            t.insert(d, 0o755, NodeKind::Dir);
        }
        t.insert(
            "dev/console",
            0o600,
            NodeKind::CharDev { major: 5, minor: 1 },
        );
        t.insert("dev/null", 0o666, NodeKind::CharDev { major: 1, minor: 3 });
        Ok(())
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Extra kernel command line arguments, appended after the defaults.
    pub fn append(mut self, arg: &str) -> Self {
        self.append.push(arg.to_string());
        self
    }

    /// Upper bound on one run, boot to power-off. Default 180 s: TCG on two
    /// shared cores can be several times slower than an idle machine.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Echo the guest's serial output to stderr while it runs (also enabled
    /// by the `SUTURE_LAB_VERBOSE` environment variable).
    pub fn verbose(mut self, v: bool) -> Self {
        self.verbose = v;
        self
    }

    /// Adds bytes as a guest file.
    pub fn add_bytes(&mut self, guest_path: &str, data: Vec<u8>, perm: u32) -> &mut Self {
        self.tree.insert(guest_path, perm, NodeKind::File(data));
        self
    }

    /// Copies a host file (symlinks followed) into the guest, keeping its
    /// permission bits.
    pub fn add_file(&mut self, host: &Path, guest_path: &str) -> Result<&mut Self> {
        let data = std::fs::read(host)
            .with_context(|| format!("reading {} for the guest", host.display()))?;
        let perm = std::fs::metadata(host)?.permissions().mode() & 0o7777;
        self.tree.insert(guest_path, perm, NodeKind::File(data));
        Ok(self)
    }

    /// Copies a dynamically linked host executable plus every shared library
    /// `ldd` lists for it (at the same paths) so it runs in the guest.
    pub fn add_executable(&mut self, host: &Path, guest_path: &str) -> Result<&mut Self> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let dynamic = elf_interpreter(&data)
            .with_context(|| format!("inspecting {}", host.display()))?
            .is_some();
        self.tree.insert(guest_path, 0o755, NodeKind::File(data));
        if dynamic {
            let out = Command::new("ldd")
                .arg(host)
                .output()
                .context("running ldd (install the libc-bin package)")?;
            if !out.status.success() {
                bail!(
                    "ldd {} failed: {}",
                    host.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for lib in parse_ldd(&String::from_utf8_lossy(&out.stdout))? {
                if !self.tree.contains(&lib.to_string_lossy()) {
                    let guest = lib.to_string_lossy().into_owned();
                    self.add_file(&lib, &guest)?;
                }
            }
        }
        Ok(self)
    }

    /// Copies `/lib/modules/RELEASE/REL_PATH` to the same guest path.
    pub fn add_release_module(&mut self, rel_path: &str) -> Result<&mut Self> {
        let p = format!(
            "/lib/modules/{}/{}",
            self.release,
            rel_path.trim_start_matches('/')
        );
        self.add_file(Path::new(&p), &p)
    }

    fn command_line(&self) -> String {
        let mut s = String::from("console=ttyS0 quiet panic=-1");
        for a in &self.append {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Boots the guest, runs `script` with busybox `sh` as root in `/root`,
    /// and powers off. Errors (timeout, QEMU failure, no end marker) carry
    /// the serial output seen so far.
    pub fn run(&self, script: &str) -> Result<RunOutput> {
        let tmp = TempDir::new()?;
        let mut tree = self.tree.clone();
        tree.insert(
            "init",
            0o755,
            NodeKind::File(init_script("/suture-lab-test.sh").into_bytes()),
        );
        tree.insert(
            "suture-lab-test.sh",
            0o755,
            NodeKind::File(script.as_bytes().to_vec()),
        );
        let initrd = tmp.0.join("initrd.gz");
        let gz = cpio::gzip(&tree.to_newc()).context("compressing the initramfs")?;
        // The initramfs is unpacked into guest RAM; a size close to the
        // memory given explains an otherwise puzzling boot failure.
        eprintln!(
            "suture-lab: booting {} with a {:.1} MiB initramfs, {} MiB RAM, timeout {:?}",
            self.kernel.display(),
            gz.len() as f64 / (1 << 20) as f64,
            self.memory_mb,
            self.timeout
        );
        std::fs::write(&initrd, gz).with_context(|| format!("writing {}", initrd.display()))?;

        let mut cmd = Command::new(&self.qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-m")
        .arg(self.memory_mb.to_string())
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(self.command_line())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // If the test process dies without unwinding (SIGKILL, abort), the
        // kernel still kills QEMU: the Drop guard alone cannot cover that.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.qemu.display()))?;
        let mut guard = QemuGuard(child);

        let (output, reader) = read_console(
            guard.0.stdout.take().expect("stdout is piped"),
            self.verbose,
        );
        let mut stderr = guard.0.stderr.take().expect("stderr is piped");
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });

        let status = loop {
            if let Some(st) = guard.0.try_wait().context("waiting for QEMU")? {
                break st;
            }
            if start.elapsed() > self.timeout {
                let _ = guard.0.kill();
                let _ = guard.0.wait();
                let _ = reader.join();
                bail!(
                    "guest did not power off within {:?} (kernel {}); QEMU killed. Output so far:\n{}",
                    self.timeout,
                    self.kernel.display(),
                    console_text(&output)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let duration = start.elapsed();
        let _ = reader.join();
        let qemu_err = err_reader.join().unwrap_or_default();
        let text = console_text(&output);
        if !status.success() {
            bail!(
                "QEMU exited with {status}: {}\nGuest output:\n{text}",
                qemu_err.trim()
            );
        }
        let exit_status = parse_end_marker(&text).ok_or_else(|| {
            anyhow!(
                "guest powered off without reporting the script's status (kernel panic or /init failure?). \
                 QEMU stderr: {}\nGuest output:\n{text}",
                qemu_err.trim()
            )
        })?;
        eprintln!(
            "suture-lab: guest powered off after {duration:.1?}, script exit status {exit_status}"
        );
        Ok(RunOutput {
            output: text,
            exit_status,
            duration,
        })
    }
}

/// The serial console of a running QEMU, collected by a thread.
pub(crate) type Console = Arc<Mutex<Vec<u8>>>;

pub(crate) fn console_text(o: &Console) -> String {
    String::from_utf8_lossy(&o.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "")
}

pub(crate) fn read_console(
    mut stdout: std::process::ChildStdout,
    verbose: bool,
) -> (Console, std::thread::JoinHandle<()>) {
    let output: Console = Arc::new(Mutex::new(Vec::new()));
    let o2 = Arc::clone(&output);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if verbose {
                use std::io::Write;
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            o2.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    (output, reader)
}

/// The status from the last end-marker line.
pub fn parse_end_marker(output: &str) -> Option<i32> {
    output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(END_MARKER))
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_gate_skips_only_outside_ci() {
        assert!(kernel_gate("r", true, Some("true".into())).unwrap());
        assert!(kernel_gate("r", true, None).unwrap());
        assert!(!kernel_gate("r", false, None).unwrap());
        assert!(!kernel_gate("r", false, Some("".into())).unwrap());
        let e = kernel_gate("9.9-x", false, Some("true".into())).unwrap_err();
        assert!(e.to_string().contains("linux-image-9.9-x"), "{e}");
    }

    #[test]
    fn missing_kernel_image_names_the_package() {
        // Only meaningful where QEMU and busybox exist; otherwise Vm::new
        // fails earlier, on those, which another message covers.
        if find_in_path("qemu-system-x86_64").is_none() || !Path::new("/bin/busybox").exists() {
            return;
        }
        let e = Vm::new("0.0.0-suture-none").unwrap_err().to_string();
        assert!(
            e.contains("apt-get install linux-image-0.0.0-suture-none"),
            "{e}"
        );
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let t = TempDir::new().unwrap();
        let p = t.0.clone();
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(t);
        assert!(!p.exists());
    }

    #[test]
    fn ldd_output_parses() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn end_marker_takes_last_and_ignores_garbage() {
        assert_eq!(
            parse_end_marker("x\nSUTURE-LAB-END status=3\nSUTURE-LAB-END status=7\n[ 1.0] reboot"),
            Some(7)
        );
        assert_eq!(parse_end_marker("no marker"), None);
        assert_eq!(parse_end_marker("SUTURE-LAB-END status=abc"), None);
    }

    #[test]
    fn elf_interpreter_distinguishes_static_and_dynamic() {
        assert!(elf_interpreter(b"not elf").is_err());
        // The test binary itself is dynamically linked against glibc.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).unwrap();
        assert!(
            interp.as_deref().is_some_and(|i| i.contains("ld-linux")),
            "{interp:?}"
        );
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            if Command::new("dpkg")
                .args(["-S", "/bin/busybox"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("busybox-static"))
            {
                assert_eq!(elf_interpreter(&bb).unwrap(), None);
            }
        }
    }

    #[test]
    fn script_output_is_between_markers() {
        let r = RunOutput {
            output: format!("boot noise\n{BEGIN_MARKER}\nhello\n\n{END_MARKER}0\n"),
            exit_status: 0,
            duration: Duration::ZERO,
        };
        assert_eq!(r.script_output(), "hello\n\n");
    }
}
