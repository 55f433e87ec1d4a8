//! Boots Debian's 6.1.0-56-amd64 image under QEMU (TCG, busybox initramfs,
//! `nokaslr`) and compares the running kernel's /proc/kallsyms with the table
//! decoded from the same image on disk: every line, in order.
//!
//! Needs the image (see real_kernel.rs for when it may be absent), and
//! qemu-system-x86_64 and a static busybox (Debian: qemu-system-x86,
//! busybox-static); skipped with a printed reason without those. About 25 s.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// The 6.1 release under test: `SUTURE_TEST_RELEASE` (scripts/test.sh sets
/// it to the release Debian's linux-image-amd64 installs), else 6.1.0-57;
/// it prints as its name, so it reads as one in messages and paths.
struct Release;
const RELEASE: Release = Release;

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into());
        f.write_str(&r)
    }
}

/// The CRC-32 (zlib's, as busybox `crc32` prints it) of `data`.
fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// A gzip'd newc cpio archive of (path, mode, contents); directories have no contents.
fn initramfs(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut a = Vec::new();
    let mut put = |name: &str, mode: u32, data: &[u8], ino: usize| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        a.extend_from_slice(hdr.as_bytes());
        a.extend_from_slice(name.as_bytes());
        a.push(0);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
    };
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        put(name, *mode, data, i + 1);
    }
    put("TRAILER!!!", 0, &[], 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&a).unwrap();
    gz.finish().unwrap()
}

#[test]
fn crc32_is_the_one_busybox_prints() {
    // `printf abc | busybox crc32`
    assert_eq!(crc32(b"abc"), 0x352441c2);
}

#[test]
fn decoded_kallsyms_equal_the_running_kernels() {
    let image = format!("/boot/vmlinuz-{RELEASE}");
    if !Path::new(&image).exists() {
        if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
            panic!("CI is set but {image} is missing: install linux-image-{RELEASE}");
        }
        eprintln!("SKIPPED: {image} absent (install linux-image-{RELEASE})");
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let (Some(busybox), true) = (busybox, qemu_ok) else {
        eprintln!("SKIPPED: needs qemu-system-x86_64 and a static busybox (apt-get install qemu-system-x86 busybox-static)");
        return;
    };
    let paths = suture_symbols::ReleasePaths::new(Path::new("/"), &RELEASE.to_string());
    let (_, k) = paths.load_vmlinux().unwrap();
    let mut table = String::new();
    for s in k.symbols() {
        table.push_str(&format!("{:016x} {} {}\n", s.addr, s.kind, s.name));
    }
    let want = (crc32(table.as_bytes()), table.len(), k.len());

    let init = b"#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox mount -t sysfs sysfs /sys\n\
        /bin/busybox grep -v '\\[' /proc/kallsyms > /vmlinux.syms\n\
        echo \"VMSUM $(/bin/busybox crc32 /vmlinux.syms) $(/bin/busybox wc -c < /vmlinux.syms) $(/bin/busybox wc -l < /vmlinux.syms)\"\n\
        echo \"VMTYPE $(/bin/busybox cat /sys/class/tty/ttyS0/type)\"\n\
        for m in nls_cp437 nls_cp850; do\n\
          /bin/busybox insmod /$m.ko\n\
          /bin/busybox grep \"\\[$m\\]\" /proc/kallsyms | /bin/busybox cut -d' ' -f2- | /bin/busybox cut -f1 \
            | /bin/busybox tr A-Z a-z > /m.syms\n\
          echo \"MODSUM $m $(/bin/busybox crc32 < /m.syms) $(/bin/busybox wc -l < /m.syms)\"\n\
        done\n\
        /bin/busybox poweroff -f\n";
    let bb = std::fs::read(busybox).unwrap();
    // Two modules that load without hardware; both define static
    // `uni2char`/`char2uni`, and have .init/.exit code and tables.
    let modules: Vec<(&str, Vec<u8>)> = ["nls_cp437", "nls_cp850"]
        .iter()
        .map(|m| (*m, paths.load_module(m).unwrap_or_else(|e| panic!("{e}"))))
        .collect();
    let cpio = initramfs(&[
        ("bin", 0o40755, b""),
        ("proc", 0o40755, b""),
        ("sys", 0o40755, b""),
        ("dev", 0o40755, b""),
        ("bin/busybox", 0o100755, &bb),
        ("init", 0o100755, init),
        ("nls_cp437.ko", 0o100644, &modules[0].1),
        ("nls_cp850.ko", 0o100644, &modules[1].1),
    ]);
    let dir = std::env::temp_dir().join(format!("suture-symbols-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd.gz");
    std::fs::write(&initrd, cpio).unwrap();
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "512",
            "-smp",
            "1",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            &image,
            "-initrd",
        ])
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 nokaslr"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let line = |tag: &str| {
        log.lines()
            .find_map(|l| l.split_once(tag).map(|(_, r)| r.trim().to_string()))
    };
    let sum = line("VMSUM ").unwrap_or_else(|| panic!("no VMSUM line; console:\n{log}"));
    let f: Vec<&str> = sum.split_whitespace().collect();
    eprintln!(
        "running kernel: {sum}; decoded: crc32 {:08x}, {} bytes, {} lines",
        want.0, want.1, want.2
    );
    // crc32 prints the file name after the sum.
    assert_eq!(f.len(), 4, "{sum}");
    let got = (
        u32::from_str_radix(f[0], 16).unwrap(),
        f[2].parse::<usize>().unwrap(),
        f[3].parse::<usize>().unwrap(),
    );
    assert_eq!(got, want);
    // Each loaded module's symbols, in order, with the kernel's type letters
    // (folded to lower case: /proc/kallsyms upper-cases a module's exports).
    for (file, ko) in &modules {
        let name = suture_symbols::module_name(file);
        let syms = suture_symbols::module_symbols(ko, file).unwrap();
        let mut text = String::new();
        for s in syms.symbols() {
            text.push_str(&format!("{} {}\n", s.kind, s.name).to_lowercase());
        }
        let got = log
            .lines()
            .find_map(|l| {
                l.split_once(&format!("MODSUM {name} "))
                    .map(|(_, r)| r.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no MODSUM for {name}; console:\n{log}"));
        eprintln!(
            "{name}: running kernel {got}; from the .ko: {:08x} {}",
            crc32(text.as_bytes()),
            syms.len()
        );
        assert_eq!(
            got,
            format!("{:08x} {}", crc32(text.as_bytes()), syms.len()),
            "{name}"
        );
        assert_eq!(syms.instances(&name, "uni2char").len(), 1);
    }
    // The sysfs file the VM test elsewhere relies on is there.
    assert_eq!(line("VMTYPE ").as_deref(), Some("4"));
}
