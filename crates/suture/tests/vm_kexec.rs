//! `suture kexec` (issue 6, test 3): a Debian guest booted on
//! SUTURE_TEST_RELEASE moves itself to SUTURE_TEST_RELEASE_OLD with
//! kexec_file_load and `systemctl kexec`, within one QEMU run. QEMU runs
//! with -no-reboot, so a firmware reset would end it: coming back on the
//! other release in the same run is the proof that firmware was skipped.
//! The lab unit runs the script again after the second boot; a state file
//! on the guest's root disk tells the two boots apart.
//!
//! The refusals that must happen before the kernel is touched are tested
//! on the host as well, against a `--root` tree.

mod common;

use common::suture;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn old_release() -> String {
    std::env::var("SUTURE_TEST_RELEASE_OLD").unwrap_or_else(|_| "6.1.0-47-amd64".into())
}

/// The script's output by section: a line `== NAME` starts section NAME.
/// Kernel console lines (`[  12.345678] ...`) interleave with the script's
/// on the serial port and are left out.
fn sections(out: &str) -> HashMap<String, String> {
    let kernel_line = |l: &str| {
        l.strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .is_some_and(|(t, _)| {
                let t = t.trim();
                !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
    };
    let mut map: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    for line in out.lines().filter(|l| !kernel_line(l)) {
        if let Some(name) = line.strip_prefix("== ") {
            map.entry(name.to_string()).or_default();
            current = Some(name.to_string());
        } else if let Some(c) = &current {
            let text = map.get_mut(c).expect("entered above");
            text.push_str(line);
            text.push('\n');
        }
    }
    map
}

fn section<'a>(s: &'a HashMap<String, String>, name: &str) -> &'a str {
    s.get(name)
        .unwrap_or_else(|| panic!("section {name:?} missing; have {:?}", s.keys()))
}

/// Runs `suture kexec ARGS --json` and returns (exit code, JSON document).
fn kexec_json(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(suture())
        .arg("kexec")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), doc)
}

#[test]
fn refusals_before_touching_the_kernel() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kexec-root");
    let _ = std::fs::remove_dir_all(&root);
    for (rel, text) in [
        ("boot/vmlinuz-6.1.0-47-amd64", "image"),
        ("boot/initrd.img-6.1.0-47-amd64", "initrd"),
        ("boot/vmlinuz-6.1.0-50-amd64", "image without initrd"),
        ("proc/cmdline", "root=/dev/vda ro\n"),
        ("proc/sys/kernel/kexec_load_disabled", "1\n"),
        ("sys/kernel/kexec_loaded", "0\n"),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let r = root.to_str().unwrap();

    let (rc, j) = kexec_json(&["--kernel", "6.1.0-99-amd64", "--root", r, "--no-reboot"]);
    assert_eq!(rc, 2, "{j}");
    assert_eq!(j["ok"], false);
    assert_eq!(j["error"]["kind"], "unknown_release", "{j}");
    assert_eq!(
        j["error"]["hint"],
        "install it first: apt-get install linux-image-6.1.0-99-amd64"
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("installed: 6.1.0-47-amd64, 6.1.0-50-amd64"),
        "{j}"
    );

    let (rc, j) = kexec_json(&["--kernel", "6.1.0-50-amd64", "--root", r, "--no-reboot"]);
    assert_eq!(rc, 2, "{j}");
    assert!(
        j["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("update-initramfs -c -k 6.1.0-50-amd64"),
        "{j}"
    );

    // Installed, but kexec is switched off (or, unprivileged, not allowed).
    let (rc, j) = kexec_json(&["--kernel", "6.1.0-47-amd64", "--root", r, "--no-reboot"]);
    assert_eq!(rc, 2, "{j}");
    let want = if unsafe { libc::geteuid() } == 0 {
        "kexec_disabled"
    } else {
        "permission"
    };
    assert_eq!(j["error"]["kind"], want, "{j}");

    // A foreign root and a reboot of this host do not go together.
    let (rc, j) = kexec_json(&["--kernel", "6.1.0-47-amd64", "--root", r]);
    assert_eq!(rc, 2, "{j}");
    assert!(
        j["error"]["hint"].as_str().unwrap().contains("--no-reboot"),
        "{j}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn debian_guest_kexecs_into_another_release() {
    let rel = suture_lab::test_release();
    let old = old_release();
    assert_ne!(
        rel, old,
        "SUTURE_TEST_RELEASE_OLD must differ from SUTURE_TEST_RELEASE"
    );
    if !suture_lab::require_kernel_or_skip(&rel).unwrap()
        || !suture_lab::require_kernel_or_skip(&old).unwrap()
    {
        return;
    }
    let image = suture_lab::kernel_image(&old);
    let initrd = std::path::PathBuf::from(format!("/boot/initrd.img-{old}"));
    assert!(
        initrd.is_file(),
        "{} missing: update-initramfs -c -k {old}",
        initrd.display()
    );
    let mut guest = suture_lab::debian::DebianGuest::new(&rel).unwrap();
    // Two boots and a shutdown under TCG on a shared machine.
    guest.timeout = Duration::from_secs(1200);
    let files: Vec<(&Path, &str)> = vec![
        (Path::new(suture()), "suture"),
        (image.as_path(), "vmlinuz"),
        (initrd.as_path(), "initrd.img"),
    ];
    let script = r#"
state=/root/kexec-test.boot_id
if [ ! -e $state ]; then
    echo "== first boot on $(uname -r)"
    install -m 755 /mnt/lab/suture /usr/local/bin/suture
    cp /mnt/lab/vmlinuz /boot/vmlinuz-OLD
    cp /mnt/lab/initrd.img /boot/initrd.img-OLD
    echo "== refuse"
    suture kexec --kernel 0.0.0-none; echo "rc=$?"
    echo "== load only"
    suture kexec --kernel OLD --no-reboot; echo "rc=$?"
    echo "kexec_loaded=$(cat /sys/kernel/kexec_loaded)"
    suture kexec --unload; echo "rc=$?"
    echo "kexec_loaded=$(cat /sys/kernel/kexec_loaded)"
    echo "== not a kernel"
    head -c 1048576 /dev/urandom > /boot/vmlinuz-0.0.0-bogus
    ln -s initrd.img-OLD /boot/initrd.img-0.0.0-bogus
    suture kexec --kernel 0.0.0-bogus --no-reboot; echo "rc=$?"
    rm /boot/vmlinuz-0.0.0-bogus /boot/initrd.img-0.0.0-bogus
    echo "== kexec"
    cat /proc/sys/kernel/random/boot_id > $state
    sync
    # The shutdown stops this unit (SIGTERM) as soon as suture starts it:
    # this shell dies here, suture must live on to write its report, which
    # the second boot shows.
    suture kexec --kernel OLD --append "suture.kexec=1 lockdown=integrity" --json > /root/kexec.json
    echo "== returned rc=$?"
    # Returning would let the lab runner power the guest off instead.
    sleep 900
    echo "== still running after 900 s"
else
    echo "== second boot"
    echo "release=$(uname -r)"
    echo "boot_id_before=$(cat $state)"
    echo "boot_id_now=$(cat /proc/sys/kernel/random/boot_id)"
    echo "cmdline=$(cat /proc/cmdline)"
    echo "== lockdown"
    cat /sys/kernel/security/lockdown
    # One byte changed in the compressed kernel: still a bzImage, but its
    # signature no longer verifies, which lockdown does not forgive.
    cp /boot/vmlinuz-OLD /boot/vmlinuz-0.0.0-tampered
    printf X | dd of=/boot/vmlinuz-0.0.0-tampered bs=1 seek=4000000 conv=notrunc 2>/dev/null
    ln -s initrd.img-OLD /boot/initrd.img-0.0.0-tampered
    suture kexec --kernel 0.0.0-tampered --no-reboot; echo "rc=$?"
    echo "kexec_loaded=$(cat /sys/kernel/kexec_loaded)"
    echo "== json"
    cat /root/kexec.json
    echo "== end"
fi
"#
    .replace("OLD", &old);
    let r = guest.boot(&files, &script).unwrap();
    let out = r.script_output();
    let full = &r.output;

    let secs = sections(out);
    let refuse = section(&secs, "refuse");
    assert!(
        refuse.contains("rc=2")
            && refuse.contains("kernel 0.0.0-none is not installed")
            && refuse.contains("apt-get install linux-image-0.0.0-none")
            && refuse.contains(&format!("installed: {old}")),
        "{refuse}"
    );
    let nk = section(&secs, "not a kernel");
    assert!(
        nk.contains("is not a kernel the running one can boot")
            && nk.contains("apt-get install --reinstall linux-image-0.0.0-bogus")
            && nk.contains("Not a bzImage")
            && nk.contains("rc=1"),
        "ENOEXEC from the real kernel, with its own log line:\n{nk}"
    );
    let lo = section(&secs, "load only");
    assert!(
        lo.contains(&format!("loaded {old} for kexec"))
            && lo.contains("rc=0\nkexec_loaded=1\nunloaded the kexec kernel\nrc=0\nkexec_loaded=0"),
        "{lo}"
    );
    // The shutdown ended the script before suture could have returned.
    assert!(
        !secs
            .keys()
            .any(|k| k.starts_with("returned") || k.starts_with("still running")),
        "{out}"
    );

    let js = section(&secs, "json");
    let doc: serde_json::Value = serde_json::from_str(js).unwrap_or_else(|e| panic!("{e}: {js}"));
    assert_eq!(doc["ok"], true, "{js}");
    assert_eq!(doc["kexec"]["kexec_loaded"], true, "{js}");
    assert_eq!(doc["kexec"]["release"], old.as_str());
    assert_eq!(doc["kexec"]["image"], format!("/boot/vmlinuz-{old}"));
    assert_eq!(doc["kexec"]["initrd"], format!("/boot/initrd.img-{old}"));
    assert_eq!(doc["kexec"]["reboot_started"], true);
    let cmdline = doc["kexec"]["cmdline"].as_str().unwrap();
    assert!(
        cmdline.starts_with("root=/dev/vda rw console=ttyS0")
            && cmdline.ends_with(" suture.kexec=1 lockdown=integrity"),
        "{cmdline}"
    );

    let second = section(&secs, "second boot");
    let field = |k: &str| {
        second
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} missing:\n{second}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("release="), old, "{second}");
    let (before, now) = (field("boot_id_before="), field("boot_id_now="));
    assert_eq!(before.len(), 36, "{second}");
    assert_eq!(now.len(), 36, "{second}");
    assert_ne!(before, now, "the boot id must change:\n{second}");
    assert_eq!(
        field("cmdline="),
        cmdline,
        "the new kernel got what was loaded"
    );
    let ld = section(&secs, "lockdown");
    assert!(
        ld.contains("[integrity]")
            && ld.contains(
                "the kernel is locked down (integrity) and refused the image of 0.0.0-tampered"
            )
            && ld.contains("mokutil --import")
            && ld.contains("rc=1\nkexec_loaded=0"),
        "a tampered image under lockdown: EPERM from the real kernel, explained:\n{ld}"
    );

    // The serial log: the first kernel's banner, the kexec hand-over, the
    // second kernel's banner, and nothing that boots a kernel in between.
    let banner_new = full
        .find(&format!("Linux version {rel} "))
        .unwrap_or_else(|| panic!("no banner of {rel}:\n{full}"));
    let handover = full[banner_new..]
        .find("kexec_core: Starting new kernel")
        .map(|i| banner_new + i)
        .unwrap_or_else(|| panic!("no kexec hand-over in the log:\n{full}"));
    let banner_old = full[handover..]
        .find(&format!("Linux version {old} "))
        .map(|i| handover + i)
        .unwrap_or_else(|| panic!("no banner of {old} after the hand-over:\n{full}"));
    assert_eq!(
        full.matches("Linux version ").count(),
        2,
        "exactly two kernels booted in this QEMU run:\n{full}"
    );
    assert!(
        !full[handover..banner_old].contains("SeaBIOS")
            && !full[handover..banner_old].contains("Booting from"),
        "firmware ran between the kernels:\n{}",
        &full[handover..banner_old]
    );
}
