//! `suture package`: a .deb per kernel release. Checked with dpkg-deb
//! (control fields, contents, maintainer scripts), then installed and
//! removed with busybox's dpkg in a guest booted on that release: the
//! postinst makes the patch live, the prerm takes it away.

mod common;

use common::{run, suture};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn release() -> String {
    suture_lab::test_release()
}

/// A livepatch for `cmdline_proc_show` carrying the metadata keys.
fn build_module(dir: &Path) -> PathBuf {
    let rel = release();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("pkg_fix.c"),
        r#"#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
static int pkg_show(struct seq_file *m, void *v) { seq_printf(m, "%s\n", "patched by a package"); return 0; }
static struct klp_func funcs[] = { { .old_name = "cmdline_proc_show", .new_func = pkg_show, }, { } };
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int i(void) { return klp_enable_patch(&patch); }
static void e(void) { }
module_init(i);
module_exit(e);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(suture_description, "Fix the command line");
MODULE_INFO(suture_cve, "CVE-2099-4444");
MODULE_INFO(suture_patch_sha256, "aabbccdd");
"#,
    )
    .unwrap();
    std::fs::write(dir.join("Kbuild"), "obj-m := pkg_fix.o\n").unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(format!("/usr/src/linux-headers-{rel}"))
        .arg(format!("M={}", dir.display()))
        .args(["-j1", "modules"]));
    dir.join("pkg_fix.ko")
}

fn fields(control: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut last = None;
    for l in control.lines() {
        if l.starts_with(' ') {
            if let Some(k) = &last {
                let v: &mut String = m.get_mut(k).unwrap();
                v.push('\n');
                v.push_str(l.trim());
            }
        } else if let Some((k, v)) = l.split_once(':') {
            m.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    m
}

const SCRIPT: &str = r#"
mkdir -p /var/lib/dpkg/info && touch /var/lib/dpkg/status
echo "== before"; cat /proc/cmdline
echo "== install"; dpkg -i -F depends /root/pkg.deb; echo "rc=$?"; cat /proc/cmdline
echo "== state"; suture list; ls /var/lib/suture/$(uname -r)
echo "== remove"; dpkg -r PKGNAME; echo "rc=$?"; cat /proc/cmdline
ls /var/lib/suture/$(uname -r) 2>&1
grep -q '^pkg_fix ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== end"
"#;

#[test]
fn package_fields_contents_scripts_and_install_in_guest() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let rel = release();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-host-package-{rel}"));
    let ko = build_module(&dir);
    let out_dir = dir.join("debs");
    let _ = std::fs::remove_dir_all(&out_dir);
    let o = run(Command::new(suture())
        .args(["package", "--json", "--pkg-version", "3", "-o"])
        .arg(&out_dir)
        .arg(&ko));
    let j: serde_json::Value = serde_json::from_str(&o[o.find('{').unwrap()..]).unwrap();
    let pkg = format!("suture-patch-pkg-fix-{rel}");
    assert_eq!(j["package"]["name"], pkg.as_str());
    let deb = PathBuf::from(j["package"]["path"].as_str().unwrap());
    assert_eq!(deb, out_dir.join(format!("{pkg}_3_amd64.deb")));

    let info = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb));
    let f = fields(&info);
    assert_eq!(f["Package"], pkg);
    assert_eq!(f["Version"], "3");
    assert_eq!(f["Architecture"], "amd64");
    assert_eq!(f["Depends"], format!("linux-image-{rel}, suture"));
    assert!(
        f["Description"].starts_with("Fix the command line\n"),
        "{info}"
    );
    assert!(
        f["Description"].contains("Fixes: CVE-2099-4444.") && f["Description"].contains("aabbccdd"),
        "{info}"
    );
    let i = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(i.contains(" postinst") && i.contains(" prerm"), "{i}");
    let c = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(
        c.contains("root/root")
            && c.contains(&format!("./usr/lib/suture/patches/{rel}/pkg_fix.ko")),
        "{c}"
    );
    let ctl = dir.join("ctl");
    let _ = std::fs::remove_dir_all(&ctl);
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    assert!(
        postinst.contains(&format!("ko='/usr/lib/suture/patches/{rel}/pkg_fix.ko'"))
            && postinst.contains("suture install \"$ko\""),
        "{postinst}"
    );
    assert!(postinst.contains("--no-load"), "{postinst}");
    let prerm = std::fs::read_to_string(ctl.join("prerm")).unwrap();
    assert!(
        prerm.contains("name='pkg_fix'")
            && prerm.contains("suture uninstall --missing-ok \"$name\""),
        "{prerm}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(ctl.join("postinst"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // A non-livepatch file is refused with status 2.
    let o = Command::new(suture())
        .args(["package", "-o"])
        .arg(&out_dir)
        .arg(dir.join("pkg_fix.o"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // In the guest: busybox's dpkg runs the maintainer scripts.
    let mut vm = suture_lab::Vm::new(&rel).unwrap();
    vm.add_executable(Path::new(suture()), "/bin/suture")
        .unwrap();
    vm.add_file(&deb, "/root/pkg.deb").unwrap();
    let r = vm.run(&SCRIPT.replace("PKGNAME", &pkg)).unwrap();
    let out = r.script_output();
    assert!(out.contains("== end"), "{}", r.output);
    let sec = |a: &str, b: &str| out[out.find(a).unwrap()..out.find(b).unwrap()].to_string();
    let inst = sec("== install", "== state");
    assert!(
        inst.contains("installed pkg_fix") && inst.contains("rc=0\npatched by a package"),
        "{inst}"
    );
    let st = sec("== state", "== remove");
    assert!(
        st.contains("pkg_fix.ko") && st.contains("CVE-2099-4444"),
        "{st}"
    );
    let rm = sec("== remove", "== end");
    assert!(
        rm.contains("uninstalled pkg_fix") && rm.contains("rc=0"),
        "{rm}"
    );
    assert!(
        rm.contains("console=ttyS0") && rm.contains("module=gone") && !rm.contains("pkg_fix.ko"),
        "{rm}"
    );
}
