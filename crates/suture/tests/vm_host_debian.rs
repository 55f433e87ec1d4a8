//! Issue 5's tests in a guest with a real Debian userspace (bookworm,
//! systemd, dpkg/apt) booted four times from the same disk:
//!
//! 1. `dpkg -i` of a patch package makes the patch live.
//! 2. After an orderly reboot it is live again, loaded by suture.service;
//!    `apt-get remove` takes it away. Reinstalled, then the guest dies
//!    abruptly (sysrq power-off) with the patch still pending.
//! 3. The crash-loop guard skips it at boot and says so; a module for
//!    another release is refused with its reason; `apt-get remove` cleans up.
//!    With a certificate in /etc/suture/certs, suture refuses an unsigned
//!    module, one signed by another key and one changed after signing, and
//!    installs the signed one; an installed file changed since is refused.
//! 4. After the next reboot it stays away.
//!
//! The guest boots the host's `/boot/vmlinuz-RELEASE` and initrd; a dummy
//! `linux-image-RELEASE` package stands in for the image package the patch
//! depends on. The userspace is built once with debootstrap (cached under
//! /var/cache/suture/guest).

mod common;

use common::{run, signing_key, suture};
use std::path::{Path, PathBuf};
use std::process::Command;

fn release() -> String {
    suture_lab::test_release()
}

fn dummy_image_deb(dir: &Path, rel: &str) -> PathBuf {
    let stage = dir.join("dummy");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: linux-image-{rel}\nVersion: 1\nArchitecture: amd64\nMaintainer: test <root@localhost>\n\
             Description: stands in for the image the guest boots with -kernel\n"
        ),
    )
    .unwrap();
    let deb = dir.join("linux-image-dummy.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&stage)
        .arg(&deb));
    deb
}

fn patch_module(dir: &Path, rel: &str) -> PathBuf {
    let m = dir.join("mod");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("deb_fix.c"),
        r#"#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
static int deb_show(struct seq_file *m, void *v) { seq_printf(m, "%s\n", "patched from a debian package"); return 0; }
static struct klp_func funcs[] = { { .old_name = "cmdline_proc_show", .new_func = deb_show, }, { } };
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int i(void) { return klp_enable_patch(&patch); }
static void e(void) { }
module_init(i);
module_exit(e);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(suture_cve, "CVE-2099-5555");
"#,
    )
    .unwrap();
    std::fs::write(m.join("Kbuild"), "obj-m := deb_fix.o\n").unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(format!("/usr/src/linux-headers-{rel}"))
        .arg(format!("M={}", m.display()))
        .args(["-j1", "modules"]));
    m.join("deb_fix.ko")
}

/// Another release of the same length: the ABI number one up (or one down
/// where one up would need another digit), `6.1.0-57-amd64` → `6.1.0-58-amd64`.
fn other_release(rel: &str) -> String {
    let mut parts: Vec<String> = rel.splitn(3, '-').map(str::to_string).collect();
    let abi: u32 = parts[1]
        .parse()
        .expect("a Debian release: UPSTREAM-ABI-FLAVOUR");
    let up = (abi + 1).to_string();
    parts[1] = if up.len() == parts[1].len() {
        up
    } else {
        (abi - 1).to_string()
    };
    let other = parts.join("-");
    assert!(other.len() == rel.len() && other != rel, "{rel} -> {other}");
    other
}

/// The same module claiming another release in its vermagic (same length,
/// so the ELF stays valid): what a module built for another kernel, or a
/// tampered one, looks like to suture.
fn other_release_copy(ko: &Path, rel: &str) -> PathBuf {
    let other = other_release(rel);
    let mut data = std::fs::read(ko).unwrap();
    let (from, to) = (format!("vermagic={rel}"), format!("vermagic={other}"));
    let at = data
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("vermagic in .modinfo");
    data[at..at + to.len()].copy_from_slice(to.as_bytes());
    let p = ko.with_file_name("other-release.ko");
    std::fs::write(&p, data).unwrap();
    p
}

/// What suture's trust store is tested with: `trusted.pem` (the
/// certificate to put in /etc/suture/certs), the module signed with its key
/// by the release's `sign-file`, the same signed module with one byte of its
/// `.modinfo` changed, and the module signed by a key the store lacks.
fn signed_copies(ko: &Path, rel: &str) -> [PathBuf; 4] {
    let d = ko.parent().unwrap();
    let sign = |who: &str, out: &str| {
        let (key, cert) = signing_key(d, who);
        let p = d.join(out);
        run(
            Command::new(format!("/usr/src/linux-headers-{rel}/scripts/sign-file"))
                .arg("sha256")
                .arg(&key)
                .arg(&cert)
                .arg(ko)
                .arg(&p),
        );
        (cert, p)
    };
    let (trusted, signed) = sign("trusted", "signed.ko");
    let (_, stranger) = sign("stranger", "stranger.ko");
    let mut data = std::fs::read(&signed).unwrap();
    let at = data
        .windows(13)
        .position(|w| w == b"CVE-2099-5555")
        .expect("the CVE id in .modinfo")
        + 12;
    data[at] = b'6';
    let tampered = d.join("tampered.ko");
    std::fs::write(&tampered, data).unwrap();
    [trusted, signed, tampered, stranger]
}

fn between<'a>(out: &'a str, a: &str, b: &str) -> &'a str {
    let s = out
        .find(a)
        .unwrap_or_else(|| panic!("{a} missing in:\n{out}"));
    let e = out[s..].find(b).map_or(out.len(), |e| s + e);
    &out[s..e]
}

#[test]
fn debian_guest_package_reboot_guard_remove() {
    let rel = release();
    if !suture_lab::require_kernel_or_skip(&rel).unwrap() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-host-debian-{rel}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ko = patch_module(&dir, &rel);
    let other = other_release_copy(&ko, &rel);
    let [trusted, signed, tampered, stranger] = signed_copies(&ko, &rel);
    let debs = dir.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/build-suture-deb.sh");
    let tool = PathBuf::from(
        run(Command::new("sh")
            .arg(&script)
            .arg(suture())
            .arg(&debs)
            .arg("0.1.0"))
        .trim()
        .lines()
        .last()
        .unwrap(),
    );
    let o = run(Command::new(suture())
        .args(["package", "--json", "-o"])
        .arg(&debs)
        .arg(&ko));
    let pj: serde_json::Value = serde_json::from_str(&o[o.find('{').unwrap()..]).unwrap();
    let pkg_name = pj["package"]["name"].as_str().unwrap().to_string();
    let pkg = PathBuf::from(pj["package"]["path"].as_str().unwrap());
    let image = dummy_image_deb(&dir, &rel);

    let guest = suture_lab::debian::DebianGuest::new(&rel).unwrap();
    let files: Vec<(&Path, &str)> = vec![
        (tool.as_path(), "suture.deb"),
        (pkg.as_path(), "patch.deb"),
        (image.as_path(), "image.deb"),
        (other.as_path(), "other-release.ko"),
        (trusted.as_path(), "trusted.pem"),
        (signed.as_path(), "signed.ko"),
        (tampered.as_path(), "tampered.ko"),
        (stranger.as_path(), "stranger.ko"),
        (ko.as_path(), "unsigned.ko"),
    ];
    let rel_s = rel.as_str();

    // Boot 1: install.
    let r = guest
        .boot(
            &files,
            r#"
echo "== install"
dpkg -i /mnt/lab/suture.deb /mnt/lab/image.deb; echo "tool_rc=$?"
dpkg -i /mnt/lab/patch.deb; echo "rc=$?"
cat /proc/cmdline
systemctl is-enabled suture.service; systemctl is-active suture.service
ls /var/lib/suture/$(uname -r)
echo "== done"
"#,
        )
        .unwrap();
    let out = r.script_output();
    let b1 = between(out, "== install", "== done");
    assert!(
        b1.contains("tool_rc=0") && b1.contains("rc=0\npatched from a debian package"),
        "{b1}"
    );
    assert!(
        b1.contains("enabled\nactive"),
        "suture.service enabled and started:\n{b1}"
    );
    assert!(b1.contains("deb_fix.pending"), "{b1}");

    // Boot 2: loaded by the unit at boot; apt removes it; reinstalled and
    // then the guest dies abruptly.
    let r = guest
        .boot(
            &files,
            r#"
echo "== boot2"
cat /proc/cmdline
systemctl is-active suture.service
journalctl -b -u suture.service --no-pager -o cat | grep -v '^Start\|^Finish'
suture status --json > /tmp/s.json; grep -c CVE-2099-5555 /tmp/s.json
echo "== remove"
apt-get remove -y PKG > /dev/null 2>&1; echo "rc=$?"
cat /proc/cmdline
ls /var/lib/suture/$(uname -r)
echo "== reinstall"
dpkg -i /mnt/lab/patch.deb > /dev/null; echo "rc=$?"
cat /proc/cmdline
ls /var/lib/suture/$(uname -r)
echo "== crash"
echo
echo "SUTURE-LAB-END status=0"
echo o > /proc/sysrq-trigger
sleep 30
"#
            .replace("PKG", &pkg_name)
            .as_str(),
        )
        .unwrap();
    let out = r.script_output();
    let b2 = between(out, "== boot2", "== remove");
    assert!(
        b2.contains("patched from a debian package\nactive"),
        "live again after the reboot, by the unit:\n{b2}"
    );
    assert!(b2.contains("loaded deb_fix"), "{b2}");
    let rm = between(out, "== remove", "== reinstall");
    assert!(
        rm.contains("rc=0") && rm.contains("console=ttyS0") && !rm.contains("deb_fix.ko"),
        "{rm}"
    );
    let re = between(out, "== reinstall", "== crash");
    assert!(
        re.contains("patched from a debian package") && re.contains("deb_fix.pending"),
        "{re}"
    );

    // Boot 3: the guard skips it; another release is refused; apt removes.
    let r = guest
        .boot(
            &files,
            r#"
echo "== boot3"
cat /proc/cmdline
journalctl -b -u suture.service --no-pager -o cat | grep SKIPPED
suture status
echo "== other"
suture install /mnt/lab/other-release.ko; echo "rc=$?"
echo "== purge"
apt-get remove -y PKG > /dev/null 2>&1; echo "rc=$?"
ls /var/lib/suture/$(uname -r)
echo "== trust"
mkdir -p /etc/suture/certs && cp /mnt/lab/trusted.pem /etc/suture/certs/
for m in unsigned stranger tampered; do
  echo "-- $m"; suture install /mnt/lab/$m.ko; echo "rc=$?"
done
echo "-- signed"
suture install /mnt/lab/signed.ko; echo "rc=$?"
cat /proc/cmdline
suture list --json | grep -c 'CN=suture trusted'
echo "-- changed"
suture unload deb_fix; echo "rc=$?"
F=/var/lib/suture/$(uname -r)/deb_fix.ko
sed -i 's/CVE-2099-5555/CVE-2099-5557/' $F
suture load $F; echo "rc=$?"
suture load --all; echo "rc=$?"
cat /proc/cmdline
suture uninstall deb_fix; echo "rc=$?"
echo "== done"
"#
            .replace("PKG", &pkg_name)
            .as_str(),
        )
        .unwrap();
    let out = r.script_output();
    let b3 = between(out, "== boot3", "== other");
    assert!(
        b3.contains("console=ttyS0"),
        "the skipped patch must not be live:\n{b3}"
    );
    assert!(b3.contains("SKIPPED deb_fix (crash-loop guard)"), "{b3}");
    assert!(
        b3.contains("SKIPPED by the crash-loop guard: deb_fix"),
        "{b3}"
    );
    let ot = between(out, "== other", "== purge");
    assert!(
        ot.contains(&format!("built for kernel {}", other_release(rel_s))) && ot.contains("rc=2"),
        "{ot}"
    );
    let pu = between(out, "== purge", "== trust");
    assert!(pu.contains("rc=0") && !pu.contains("deb_fix"), "{pu}");
    let refusals = [
        ("-- unsigned", "-- stranger", "it is not signed"),
        ("-- stranger", "-- tampered", "CN=suture stranger"),
        (
            "-- tampered",
            "-- signed",
            "the module was modified after it was signed",
        ),
    ];
    for (a, b, why) in refusals {
        let t = between(out, a, b);
        assert!(t.contains(why) && t.contains("rc=2"), "{t}");
    }
    let good = between(out, "-- signed", "-- changed");
    assert!(
        good.contains("installed deb_fix")
            && good.contains("rc=0\npatched from a debian package\n1\n"),
        "the signed module installs, loads, and list names its signer:\n{good}"
    );
    let ch = between(out, "-- changed", "== done");
    assert!(
        ch.matches("changed since it was installed").count() == 2
            && ch.contains("rc=2\n")
            && ch.contains("console=ttyS0")
            && ch.ends_with("rc=0\n"),
        "an installed file changed since is refused by load and at boot (load --all):\n{ch}"
    );

    // Boot 4: stays away.
    let r = guest
        .boot(
            &files,
            r#"
echo "== boot4"
cat /proc/cmdline
systemctl is-active suture.service
suture list
echo "== done"
"#,
        )
        .unwrap();
    let b4 = between(r.script_output(), "== boot4", "== done").to_string();
    assert!(
        b4.contains("console=ttyS0")
            && b4.contains("\nactive\n")
            && b4.contains("no livepatches loaded")
            && b4.contains("no patches installed for boot"),
        "{b4}"
    );
}
