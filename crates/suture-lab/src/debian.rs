//! A second kind of guest: a Debian bookworm userspace with systemd on a
//! disk image, booted on a Debian kernel under QEMU TCG. Where the busybox
//! guest lives in RAM and forgets everything at power-off, this one keeps
//! its disk between boots, so boot-time behaviour (systemd units, the
//! crash-loop guard, packages) can be tested across reboots.
//!
//! The userspace is built once with debootstrap and cached outside the
//! repository (`$SUTURE_CACHE/guest/bookworm`, default
//! /var/cache/suture/guest/bookworm). Each test copies the base image
//! (sparse) and boots it as often as it likes. A test talks to the guest
//! through a second, read-only disk: `/mnt/lab/run.sh` is run by a oneshot
//! unit after the boot finished, its output goes to the serial console
//! between the lab markers, and the guest powers off afterwards unless the
//! script already did (an orderly `systemctl poweroff`, or an abrupt
//! `echo o > /proc/sysrq-trigger`).

use crate::{console_text, read_console, Console, RunOutput, BEGIN_MARKER, END_MARKER};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bump when the configuration below changes: the cached image is rebuilt.
/// v2: openssh-server and python3 (Ansible's target needs a Python), DHCP
/// on the NIC by systemd-networkd, and the lab unit's server mode.
const IMAGE_VERSION: u32 = 2;

/// Packages debootstrap adds to minbase.
const INCLUDE: &str =
    "--include=systemd,systemd-sysv,udev,kmod,procps,iproute2,openssh-server,python3";

fn guest_dir() -> PathBuf {
    std::env::var_os("SUTURE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/suture".into())
        .join("guest/bookworm")
}

/// The first `URIs:` of the system's Debian sources, else deb.debian.org.
fn mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("URIs:"))
                .and_then(|u| u.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const LAB_UNIT: &str = "[Unit]
Description=suture lab: run the test script from the lab disk
After=multi-user.target suture.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/suture-lab-run
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
";

const LAB_RUN: &str = "#!/bin/sh
mkdir -p /mnt/lab
if ! mount -o ro /dev/vdb /mnt/lab; then
    echo 'suture-lab: no lab disk (/dev/vdb)'
    systemctl poweroff
    exit 1
fi
cd /root
if [ -e /mnt/lab/serve ]; then
    # Server mode: the guest stays up for ssh. The key comes from the lab
    # disk at every boot (a reboot or kexec keeps the disk attached), so it
    # is never part of the image.
    mkdir -p -m 700 /root/.ssh
    install -m 600 /mnt/lab/authorized_keys /root/.ssh/authorized_keys
    [ -e /mnt/lab/run.sh ] && sh /mnt/lab/run.sh
    umount /mnt/lab
    systemctl is-active --quiet ssh.service || systemctl start ssh.service
    echo \"SUTURE-LAB-READY release=$(uname -r) boot_id=$(cat /proc/sys/kernel/random/boot_id)\"
    exit 0
fi
echo SUTURE-LAB-BEGIN
sh /mnt/lab/run.sh
rc=$?
echo
echo \"SUTURE-LAB-END status=$rc\"
umount /mnt/lab
systemctl poweroff
";

/// DHCP on QEMU's user-mode NIC (`10.0.2.15`), whatever udev names it.
const NETWORK: &str = "[Match]
Name=en* eth*
[Network]
DHCP=ipv4
";

/// Builds (once) and returns the base image.
pub fn base_image() -> Result<PathBuf> {
    let dir = guest_dir();
    let img = dir.join(format!("base-v{IMAGE_VERSION}.img"));
    if img.is_file() {
        return Ok(img);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Per version, so a new package list starts from a fresh debootstrap.
    let rootfs = dir.join(format!("rootfs-v{IMAGE_VERSION}"));
    let done = dir.join(format!("rootfs-v{IMAGE_VERSION}.done"));
    if !done.is_file() {
        if Command::new("debootstrap")
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("debootstrap not found: apt-get install debootstrap");
        }
        let _ = std::fs::remove_dir_all(&rootfs);
        eprintln!(
            "suture-lab: debootstrap bookworm into {} (about 2 minutes, once)",
            rootfs.display()
        );
        sh(Command::new("debootstrap")
            .args(["--variant=minbase", INCLUDE, "bookworm"])
            .arg(&rootfs)
            .arg(mirror()))?;
        std::fs::write(&done, "")?;
    }
    let w = |rel: &str, text: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = rootfs.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    w(
        "etc/fstab",
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
        0o644,
    )?;
    w("etc/hostname", "suture-guest\n", 0o644)?;
    w("etc/systemd/system/suture-lab.service", LAB_UNIT, 0o644)?;
    w("usr/local/sbin/suture-lab-run", LAB_RUN, 0o755)?;
    let link = |target: &str, at: &str| -> Result<()> {
        let p = rootfs.join(at);
        std::fs::create_dir_all(p.parent().unwrap())?;
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p)?;
        Ok(())
    };
    link(
        "/etc/systemd/system/suture-lab.service",
        "etc/systemd/system/multi-user.target.wants/suture-lab.service",
    )?;
    // The console is the test's channel: no login prompt on it.
    link("/dev/null", "etc/systemd/system/serial-getty@ttyS0.service")?;
    w("etc/systemd/network/20-lab.network", NETWORK, 0o644)?;
    link(
        "/lib/systemd/system/systemd-networkd.service",
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    )?;
    link(
        "/lib/systemd/system/systemd-networkd.socket",
        "etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
    )?;
    let tmp = dir.join(format!(".base-v{IMAGE_VERSION}.img.tmp"));
    let _ = std::fs::remove_file(&tmp);
    sh(Command::new("truncate").args(["-s", "3G"]).arg(&tmp))?;
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "suture-root", "-d"])
        .arg(&rootfs)
        .arg(&tmp))
    .context("mkfs.ext4 -d (e2fsprogs 1.43 or newer)")?;
    std::fs::rename(&tmp, &img)?;
    Ok(img)
}

/// A Debian guest: a private copy of the base image plus the boot settings.
pub struct DebianGuest {
    release: String,
    kernel: PathBuf,
    initrd: PathBuf,
    qemu: PathBuf,
    dir: crate::TempDir,
    disk: PathBuf,
    pub timeout: Duration,
    pub verbose: bool,
    /// Three server guests share two cores: each gets one vCPU there.
    pub smp: u32,
    pub memory_mb: u32,
    /// Added to the kernel command line (a kexec carries it over).
    pub append: String,
}

impl DebianGuest {
    /// A fresh disk from the cached base image (built on first use).
    pub fn new(release: &str) -> Result<Self> {
        let qemu = crate::find_in_path("qemu-system-x86_64").ok_or_else(|| {
            anyhow!("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
        })?;
        let kernel = crate::kernel_image(release);
        let initrd = PathBuf::from(format!("/boot/initrd.img-{release}"));
        for p in [&kernel, &initrd] {
            if !p.is_file() {
                bail!(
                    "{} not found: apt-get install linux-image-{release}",
                    p.display()
                );
            }
        }
        let base = base_image()?;
        let dir = crate::TempDir::new()?;
        let disk = dir.0.join("root.img");
        sh(Command::new("cp")
            .arg("--sparse=always")
            .arg(&base)
            .arg(&disk))?;
        Ok(DebianGuest {
            release: release.to_string(),
            kernel,
            initrd,
            qemu,
            dir,
            disk,
            // Generous: guests share two cores with other builds and guests.
            timeout: Duration::from_secs(600),
            verbose: std::env::var_os("SUTURE_LAB_VERBOSE").is_some(),
            smp: 2,
            memory_mb: 1536,
            append: String::new(),
        })
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// Writes the read-only lab disk: `files` (host path, name), `run.sh`
    /// when a script is given, and `extra` (name, contents).
    fn lab_disk(
        &self,
        files: &[(&Path, &str)],
        script: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Result<PathBuf> {
        let lab = self.dir.0.join("lab");
        let _ = std::fs::remove_dir_all(&lab);
        std::fs::create_dir_all(&lab)?;
        let mut size = 16u64 << 20;
        for (host, name) in files {
            let to = lab.join(name);
            if let Some(d) = to.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::copy(host, &to).with_context(|| format!("copying {}", host.display()))?;
            size += std::fs::metadata(host)?.len() * 2;
        }
        if let Some(script) = script {
            std::fs::write(lab.join("run.sh"), script)?;
        }
        for (name, data) in extra {
            std::fs::write(lab.join(name), data)?;
        }
        let lab_img = self.dir.0.join("lab.img");
        let _ = std::fs::remove_file(&lab_img);
        sh(Command::new("truncate")
            .arg("-s")
            .arg(size.to_string())
            .arg(&lab_img))?;
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&lab)
            .arg(&lab_img))?;
        Ok(lab_img)
    }

    /// QEMU for this disk and a lab disk; the caller adds what differs.
    fn qemu_command(&self, lab_img: &Path) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-nographic"])
            .arg("-smp")
            .arg(self.smp.to_string())
            .arg("-m")
            .arg(self.memory_mb.to_string())
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                lab_img.display()
            ))
            .arg("-append")
            .arg(
                format!(
                    "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=false {}",
                    self.append
                )
                .trim_end(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Boots the disk once: `files` (host path, name) are put on the lab
    /// disk next to `run.sh`, visible in the guest under /mnt/lab. The disk
    /// keeps whatever the boot changed.
    pub fn boot(&self, files: &[(&Path, &str)], script: &str) -> Result<RunOutput> {
        let lab_img = self.lab_disk(files, Some(script), &[])?;
        let mut cmd = self.qemu_command(&lab_img);
        cmd.arg("-no-reboot");
        eprintln!(
            "suture-lab: booting Debian bookworm on {} (timeout {:?})",
            self.kernel.display(),
            self.timeout
        );
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.qemu.display()))?;
        let (output, reader) = read_console(child.stdout.take().unwrap(), self.verbose);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                bail!(
                    "Debian guest did not power off within {:?}; output:\n{}",
                    self.timeout,
                    console_text(&output)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = reader.join();
        let out = console_text(&output);
        if !status.success() {
            bail!("QEMU exited with {status}; guest output:\n{out}");
        }
        let exit_status = crate::parse_end_marker(&out).ok_or_else(|| {
            anyhow!("the guest powered off without the lab script's status ({BEGIN_MARKER}..{END_MARKER}); output:\n{out}")
        })?;
        let duration = start.elapsed();
        eprintln!("suture-lab: Debian guest powered off after {duration:.1?}, script exit status {exit_status}");
        Ok(RunOutput {
            output: out,
            exit_status,
            duration,
        })
    }

    /// Starts the guest in the background as an ssh server on a free port
    /// of 127.0.0.1 (QEMU user networking forwards it to the guest's 22).
    /// `private_key`'s `.pub` becomes root's authorized key at every boot;
    /// `files` land on the lab disk and `script` (may be empty) runs as root
    /// before each "ready" marker. The guest reboots instead of exiting, so
    /// reboots and kexec keep the same QEMU, port and lab disk.
    pub fn serve(
        self,
        private_key: &Path,
        files: &[(&Path, &str)],
        script: &str,
    ) -> Result<GuestServer> {
        let pub_key = std::fs::read(private_key.with_extension("pub")).with_context(|| {
            format!(
                "reading {}.pub (make the pair with ssh_keypair)",
                private_key.display()
            )
        })?;
        let lab_img = self.lab_disk(
            files,
            Some(script),
            &[("serve", b""), ("authorized_keys", &pub_key)],
        )?;
        // The port is free when asked; QEMU may still lose a race for it,
        // which shows as an early exit: then try another.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut cmd = self.qemu_command(&lab_img);
            cmd.arg("-nic").arg(format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"
            ));
            let started = Instant::now();
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.qemu.display()))?;
            let (console, reader) = read_console(child.stdout.take().unwrap(), self.verbose);
            std::thread::sleep(Duration::from_millis(500));
            if let Some(st) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let _ = reader.join();
                last_err = format!("QEMU exited at start ({st}): {err}");
                continue;
            }
            eprintln!(
                "suture-lab: Debian guest {} serving ssh on 127.0.0.1:{port}",
                self.release
            );
            return Ok(GuestServer {
                guest: self,
                child,
                console,
                reader: Some(reader),
                port,
                key: private_key.to_path_buf(),
                started,
            });
        }
        bail!("could not start the guest with a port forward: {last_err}")
    }
}

/// Makes an ed25519 key pair `dir/NAME` and `dir/NAME.pub` without a
/// passphrase (replacing an old one): one per test run.
pub fn ssh_keypair(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = dir.join(name);
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "suture-lab", "-f"])
        .arg(&key))
    .context("ssh-keygen (apt-get install openssh-client)")?;
    Ok(key)
}

/// One "ready" line of a server guest: printed after each boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub release: String,
    pub boot_id: String,
}

pub const READY_MARKER: &str = "SUTURE-LAB-READY ";

/// Every ready marker in a console log, in order.
pub fn parse_ready(console: &str) -> Vec<Ready> {
    console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(READY_MARKER)? + READY_MARKER.len()..];
            let mut release = None;
            let mut boot_id = None;
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("release", v)) => release = Some(v.to_string()),
                    Some(("boot_id", v)) => boot_id = Some(v.to_string()),
                    _ => {}
                }
            }
            Some(Ready {
                release: release?,
                boot_id: boot_id.filter(|b| !b.is_empty())?,
            })
        })
        .collect()
}

/// A guest running in the background; QEMU is killed on drop.
pub struct GuestServer {
    guest: DebianGuest,
    child: std::process::Child,
    console: Console,
    reader: Option<std::thread::JoinHandle<()>>,
    port: u16,
    key: PathBuf,
    started: Instant,
}

impl GuestServer {
    /// The 127.0.0.1 port forwarded to the guest's sshd.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn private_key(&self) -> &Path {
        &self.key
    }

    pub fn release(&self) -> &str {
        self.guest.release()
    }

    /// The serial console so far (`\r` removed).
    pub fn serial(&self) -> String {
        console_text(&self.console)
    }

    /// Since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console shows at least `n` ready markers (one per
    /// boot) and returns the last; fails early if QEMU exits.
    pub fn wait_ready(&mut self, n: usize, timeout: Duration) -> Result<Ready> {
        let start = Instant::now();
        loop {
            let r = parse_ready(&self.serial());
            if r.len() >= n {
                return Ok(r[r.len() - 1].clone());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({st}) before boot {n} was ready; console:\n{}",
                    self.serial()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "guest on port {} not ready (boot {n}) within {timeout:?}; console:\n{}",
                    self.port,
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// ssh options for this guest: its host key changes with every image
    /// and kexec is not a reason to refuse, so none is remembered.
    pub fn ssh_args(&self) -> Vec<String> {
        [
            "-i",
            &self.key.display().to_string(),
            "-p",
            &self.port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs `cmd` as root in the guest over ssh.
    pub fn ssh(&self, cmd: &str) -> Result<std::process::Output> {
        Command::new("ssh")
            .args(self.ssh_args())
            .arg("root@127.0.0.1")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .context("running ssh (apt-get install openssh-client)")
    }

    /// Waits until sshd answers a command; returns the time since QEMU
    /// started.
    pub fn wait_ssh(&mut self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let out = self.ssh("true")?;
            if out.status.success() {
                return Ok(self.started.elapsed());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("QEMU exited ({st}); console:\n{}", self.serial());
            }
            if start.elapsed() > timeout {
                bail!(
                    "ssh to 127.0.0.1:{} did not answer within {timeout:?} (last: {}); console:\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.serial()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for GuestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_markers_in_order_and_partial_lines_ignored() {
        let log = "[  1.0] booting\nSUTURE-LAB-READY release=6.1.0-56-amd64 boot_id=aa-bb\n\
                   noise SUTURE-LAB-READY release=6.1.0-47-amd64 boot_id=cc\n\
                   SUTURE-LAB-READY release=6.1.0-47-amd64 boot_id=\nSUTURE-LAB-READY release=x";
        assert_eq!(
            parse_ready(log),
            vec![
                Ready {
                    release: "6.1.0-56-amd64".into(),
                    boot_id: "aa-bb".into()
                },
                Ready {
                    release: "6.1.0-47-amd64".into(),
                    boot_id: "cc".into()
                },
            ]
        );
        assert!(parse_ready("nothing here").is_empty());
    }
}
