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

use crate::{RunOutput, BEGIN_MARKER, END_MARKER};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bump when the configuration below changes: the cached image is rebuilt.
const IMAGE_VERSION: u32 = 1;

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
echo SUTURE-LAB-BEGIN
sh /mnt/lab/run.sh
rc=$?
echo
echo \"SUTURE-LAB-END status=$rc\"
umount /mnt/lab
systemctl poweroff
";

/// Builds (once) and returns the base image.
pub fn base_image() -> Result<PathBuf> {
    let dir = guest_dir();
    let img = dir.join(format!("base-v{IMAGE_VERSION}.img"));
    if img.is_file() {
        return Ok(img);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rootfs = dir.join("rootfs");
    if !dir.join("rootfs.done").is_file() {
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
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,udev,kmod,procps",
                "bookworm",
            ])
            .arg(&rootfs)
            .arg(mirror()))?;
        std::fs::write(dir.join("rootfs.done"), "")?;
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
            timeout: Duration::from_secs(300),
            verbose: std::env::var_os("SUTURE_LAB_VERBOSE").is_some(),
        })
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// Boots the disk once: `files` (host path, name) are put on the lab
    /// disk next to `run.sh`, visible in the guest under /mnt/lab. The disk
    /// keeps whatever the boot changed.
    pub fn boot(&self, files: &[(&Path, &str)], script: &str) -> Result<RunOutput> {
        let lab = self.dir.0.join("lab");
        let _ = std::fs::remove_dir_all(&lab);
        std::fs::create_dir_all(&lab)?;
        let mut size = 16u64 << 20;
        for (host, name) in files {
            std::fs::copy(host, lab.join(name))
                .with_context(|| format!("copying {}", host.display()))?;
            size += std::fs::metadata(host)?.len() * 2;
        }
        std::fs::write(lab.join("run.sh"), script)?;
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

        let mut cmd = Command::new(&self.qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1536",
            "-nographic",
            "-no-reboot",
        ])
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
        .arg("root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        eprintln!(
            "suture-lab: booting Debian bookworm on {} (timeout {:?})",
            self.kernel.display(),
            self.timeout
        );
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.qemu.display()))?;
        let output = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut stdout = child.stdout.take().unwrap();
        let (o2, verbose) = (Arc::clone(&output), self.verbose);
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
        let text = |o: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&o.lock().unwrap_or_else(|e| e.into_inner())).replace('\r', "")
        };
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
                    text(&output)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = reader.join();
        let out = text(&output);
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
}
