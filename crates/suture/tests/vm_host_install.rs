//! Issue 5 on the host side, in a guest booted on Debian's kernel: `suture
//! install` stores and loads a patch and sets up the boot units; `list`
//! shows installed and loaded side by side; `status` reports the patch
//! level with CVE ids and writes a Prometheus textfile (parsed here); the
//! crash-loop guard skips a patch left pending by an earlier boot;
//! `load --all` loads what is installed for the running release only;
//! `uninstall` takes it away. The modules carry the `suture_*` modinfo keys
//! `suture build` is to write, including the release's real build-id.
//!
//! Outside the guest: the shipped systemd units pass `systemd-analyze verify`.

mod common;

use common::{run, suture};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static VM_LOCK: Mutex<()> = Mutex::new(());

fn release() -> String {
    suture_lab::test_release()
}

/// The GNU build-id of the release's vmlinux from suture's cache (left by
/// `suture build`), parsed from its ELF notes.
fn vmlinux_build_id() -> Option<String> {
    let cache = std::env::var_os("SUTURE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/suture".into());
    let out = Command::new("readelf")
        .arg("-n")
        .arg(cache.join(release()).join("vmlinux"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.trim()
            .strip_prefix("Build ID: ")
            .map(|s| s.trim().to_string())
    })
}

fn patch_c(name: &str, text: &str, info: &str) -> String {
    format!(
        r#"#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

static int {name}_show(struct seq_file *m, void *v)
{{
	seq_printf(m, "%s\n", "{text}");
	return 0;
}}

static struct klp_func funcs[] = {{
	{{ .old_name = "cmdline_proc_show", .new_func = {name}_show, }},
	{{ }}
}};
static struct klp_object objs[] = {{ {{ .funcs = funcs, }}, {{ }} }};
static struct klp_patch patch = {{ .mod = THIS_MODULE, .objs = objs, .replace = true, }};

static int {name}_init(void) {{ return klp_enable_patch(&patch); }}
static void {name}_exit(void) {{ }}
module_init({name}_init);
module_exit({name}_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
{info}
"#
    )
}

struct Mods {
    fix1: PathBuf,
    fix2: PathBuf,
    build_id: Option<String>,
}

fn build_modules() -> Mods {
    let rel = release();
    let headers = PathBuf::from(format!("/usr/src/linux-headers-{rel}"));
    assert!(
        headers.is_dir(),
        "{} missing: apt-get install linux-headers-{rel}",
        headers.display()
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-host-install-{rel}"));
    std::fs::create_dir_all(&dir).unwrap();
    let build_id = vmlinux_build_id();
    let bid = build_id
        .as_deref()
        .map(|b| format!("MODULE_INFO(suture_release_build_id, \"{b}\");"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("fix1.c"),
        patch_c(
            "fix1",
            "fixed once",
            &format!(
                "MODULE_INFO(suture_cve, \"CVE-2099-1111\");\nMODULE_INFO(suture_cve, \"CVE-2099-2222\");\n\
                 MODULE_INFO(suture_description, \"cmdline fix one\");\nMODULE_INFO(suture_release, \"{rel}\");\n{bid}"
            ),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("fix2.c"),
        patch_c(
            "fix2",
            "fixed twice",
            "MODULE_INFO(suture_cve, \"CVE-2099-3333\");",
        ),
    )
    .unwrap();
    std::fs::write(dir.join("Kbuild"), "obj-m := fix1.o fix2.o\n").unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", dir.display()))
        .arg("-j1")
        .arg("modules"));
    Mods {
        fix1: dir.join("fix1.ko"),
        fix2: dir.join("fix2.ko"),
        build_id,
    }
}

fn sections(out: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            cur = Some(name.trim().to_string());
            map.insert(name.trim().to_string(), String::new());
        } else if let Some(c) = &cur {
            let s = map.get_mut(c).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    map
}

fn json_of(section: &str) -> serde_json::Value {
    let start = section
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in:\n{section}"));
    let end = section
        .rfind('}')
        .unwrap_or_else(|| panic!("no JSON in:\n{section}"));
    serde_json::from_str(&section[start..=end])
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{section}"))
}

/// Checks the text exposition format line by line (what node_exporter's
/// textfile collector accepts): HELP/TYPE comments before a family's
/// samples, `name{label="value",...} number` samples, no duplicate series.
/// Returns the samples.
fn parse_exposition(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with('\n'), "a textfile must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let kind = w.next().unwrap();
            let name = w.next().unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(ident(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                assert!(
                    matches!(w.next(), Some("gauge" | "counter" | "untyped")),
                    "bad TYPE {line:?}"
                );
                assert!(typed.insert(name.to_string()), "TYPE twice: {line:?}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(ident(name), "bad metric name: {line:?}");
        assert!(typed.contains(name), "sample before its TYPE: {line:?}");
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label: {line:?}"));
            assert!(ident(k), "bad label name: {line:?}");
            let mut val = String::new();
            let mut chars = v.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => val.push(c),
                        other => panic!("bad escape {other:?}: {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => val.push(c),
                    None => panic!("unterminated label value: {line:?}"),
                }
            };
            map.insert(k.to_string(), val);
            rest = &v[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        assert!(seen.insert(series.to_string()), "duplicate series {series}");
        samples.push((name.to_string(), map, value));
    }
    samples
}

/// The reference parser too (python3-prometheus-client), when installed.
fn python_parse(text: &str) -> Option<usize> {
    let script =
        "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
                  print(sum(len(m.samples) for m in f(sys.stdin.read())))";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named") {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-prometheus-client is missing: apt-get install python3-prometheus-client"
        );
        eprintln!("SKIP reference parse: apt-get install python3-prometheus-client");
        return None;
    }
    assert!(
        out.status.success(),
        "prometheus_client rejected the textfile: {err}\n{text}"
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

const SCRIPT: &str = r#"
export SUTURE_STATE_DIR=/var/lib/suture
R=$(uname -r)
echo "== install"; suture install --unit-dir /etc/systemd/system /root/fix1.ko; echo "rc=$?"; cat /proc/cmdline
echo "== units"
ls /etc/systemd/system /etc/systemd/system/sysinit.target.wants /etc/systemd/system/timers.target.wants
grep '^ExecStart' /etc/systemd/system/suture.service
ls /var/lib/suture/$R
echo "== list"; suture list; echo "rc=$?"
echo "== list-json"; suture list --json; echo "rc=$?"
echo "== status-json"; suture status --json --prometheus /tmp/suture.prom; echo "rc=$?"
echo "== prom"; cat /tmp/suture.prom
echo "== status-text"; suture status; echo "rc=$?"
# A second install replaces the first patch (atomic replace) and comes
# after it in the boot order.
echo "== install2"; suture install --no-enable /root/fix2.ko; echo "rc=$?"; cat /proc/cmdline
suture unload fix1 > /dev/null 2>&1
echo "== status2"; suture status --json; echo "rc=$?"
# Simulated reboot: nothing loaded, fix2 still pending from "an earlier
# boot" that ended without confirmation or a clean shutdown.
suture unload fix2 > /dev/null; echo "unload_rc=$?"
sed -i 's/"boot_id": "[^"]*"/"boot_id": "an-earlier-boot"/' /var/lib/suture/$R/fix2.pending
mkdir -p /var/lib/suture/5.10.0-99-amd64 && cp /root/fix2.ko /var/lib/suture/5.10.0-99-amd64/fix9.ko
echo "== boot"; suture load --all --json; echo "rc=$?"; cat /proc/cmdline
echo "== boot-text"; suture unload fix1 >/dev/null; suture load --all; echo "rc=$?"
echo "== status-skipped"; suture status; echo "rc=$?"
echo "== list-skipped"; suture list; echo "rc=$?"
# Reinstalling clears the skip; a clean shutdown confirms it.
echo "== reinstall"; suture install --no-enable /root/fix2.ko; echo "rc=$?"
test -e /var/lib/suture/$R/fix2.pending && echo "pending=yes"
suture confirm --min-loaded 3600; echo "confirm_early_rc=$?"
test -e /var/lib/suture/$R/fix2.pending && echo "still-pending=yes"
suture confirm --clean-shutdown; echo "confirm_rc=$?"
test -e /var/lib/suture/$R/fix2.pending || echo "pending=cleared"
echo "== uninstall"; suture uninstall fix2; echo "rc=$?"; suture uninstall fix1; echo "rc=$?"; cat /proc/cmdline
ls /var/lib/suture/$R
suture list --json | grep -c '"name"'
echo "== uninstall-none"; suture uninstall fix2; echo "rc=$?"
echo "== end"
"#;

#[test]
fn install_list_status_guard_uninstall_in_guest() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let m = build_modules();
    let mut vm = suture_lab::Vm::new(&release()).unwrap();
    vm.add_executable(Path::new(suture()), "/bin/suture")
        .unwrap();
    vm.add_file(&m.fix1, "/root/fix1.ko").unwrap();
    vm.add_file(&m.fix2, "/root/fix2.ko").unwrap();
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = vm.run(SCRIPT).unwrap();
    eprintln!("guest run took {:?}", r.duration);
    let out = r.script_output();
    let s = sections(out);
    let sec = |k: &str| {
        s.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("section {k} missing; guest output:\n{}", r.output))
    };
    assert!(
        s.contains_key("end"),
        "script did not finish:\n{}",
        r.output
    );
    let rel = release();

    let inst = sec("install");
    assert!(
        inst.contains(&format!(
            "installed fix1 for {rel} in /var/lib/suture/{rel}/fix1.ko; loaded"
        )),
        "{inst}"
    );
    assert!(inst.contains("rc=0\nfixed once\n"), "{inst}");
    let units = sec("units");
    for f in [
        "suture.service",
        "suture-confirm.service",
        "suture-confirm.timer",
    ] {
        assert!(units.contains(f), "{units}");
    }
    assert!(
        units.contains("ExecStart=/bin/suture load --all"),
        "{units}"
    );
    assert!(
        units.contains("fix1.ko") && units.contains("fix1.json") && units.contains("fix1.pending"),
        "{units}"
    );

    let list = sec("list");
    assert!(
        list.contains("INSTALLED") && list.contains("CVE-2099-1111,CVE-2099-2222"),
        "{list}"
    );
    let lj = json_of(&sec("list-json"));
    assert_eq!(lj["patches"][0]["name"], "fix1", "{lj}");
    assert_eq!(lj["installed"][0]["name"], "fix1", "{lj}");
    assert_eq!(
        lj["installed"][0]["meta"]["description"], "cmdline fix one",
        "{lj}"
    );

    let st = json_of(&sec("status-json"));
    let status = &st["status"];
    assert_eq!(
        status["cves"],
        serde_json::json!(["CVE-2099-1111", "CVE-2099-2222"]),
        "{st}"
    );
    assert_eq!(status["effective_version"], format!("{rel}+fix1"));
    assert_eq!(status["patches"][0]["applied"], true);
    assert_eq!(status["pending"], serde_json::json!(["fix1"]));
    if let Some(b) = &m.build_id {
        // The module recorded the release's build-id; it loaded, so the
        // check passed against /sys/kernel/notes.
        assert_eq!(status["build_id"].as_str(), Some(b.as_str()));
        assert_eq!(
            status["patches"][0]["meta"]["release_build_id"].as_str(),
            Some(b.as_str())
        );
    }

    let prom = sec("prom");
    let samples = parse_exposition(&prom);
    let get = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && match label {
                        None => true,
                        Some((k, v)) => l.get(k).map(String::as_str) == Some(v),
                    }
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(get("suture_patches_applied", None), Some(1.0), "{prom}");
    assert_eq!(
        get("suture_cve_fixed", Some(("cve", "CVE-2099-2222"))),
        Some(1.0),
        "{prom}"
    );
    assert_eq!(
        get("suture_patch_applied", Some(("patch", "fix1"))),
        Some(1.0),
        "{prom}"
    );
    assert_eq!(get("suture_patches_pending", None), Some(1.0), "{prom}");
    assert_eq!(
        get("suture_transition_in_progress", None),
        Some(0.0),
        "{prom}"
    );
    assert_eq!(
        get("suture_kernel_info", Some(("release", &rel))),
        Some(1.0),
        "{prom}"
    );
    if let Some(n) = python_parse(&prom) {
        assert_eq!(n, samples.len(), "{prom}");
    }
    let text = sec("status-text");
    assert!(
        text.contains(&format!("effective: {rel}+fix1")) && text.contains("CVE-2099-1111"),
        "{text}"
    );

    let i2 = sec("install2");
    assert!(i2.contains("rc=0\nfixed twice\n"), "{i2}");
    let s2 = json_of(&sec("status2"));
    assert_eq!(
        s2["status"]["cves"],
        serde_json::json!(["CVE-2099-3333"]),
        "{s2}"
    );
    assert_eq!(s2["status"]["effective_version"], format!("{rel}+fix2"));

    // The boot: fix1 loads, fix2 is skipped as a crash suspect, the other
    // release's patch is left alone.
    let boot = json_of(&sec("boot"));
    let b = &boot["boot"];
    assert_eq!(b["loaded"], serde_json::json!(["fix1"]), "{boot}");
    assert_eq!(b["skipped"][0]["name"], "fix2", "{boot}");
    assert_eq!(b["skipped"][0]["new"], true, "{boot}");
    assert!(
        b["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("an-earlier-boot"),
        "{boot}"
    );
    assert_eq!(
        b["other_releases"],
        serde_json::json!(["5.10.0-99-amd64"]),
        "{boot}"
    );
    assert!(
        sec("boot").contains("rc=0\nfixed once\n"),
        "{}",
        sec("boot")
    );
    let bt = sec("boot-text");
    assert!(
        bt.contains("loaded fix1") && bt.contains("SKIPPED fix2") && bt.contains("earlier boot"),
        "{bt}"
    );
    assert!(
        sec("status-skipped").contains("SKIPPED by the crash-loop guard: fix2"),
        "{}",
        sec("status-skipped")
    );
    assert!(
        sec("list-skipped").contains("SKIPPED"),
        "{}",
        sec("list-skipped")
    );

    let re = sec("reinstall");
    assert!(re.contains("rc=0") && re.contains("pending=yes"), "{re}");
    assert!(re.contains("confirm_early_rc=0\nstill-pending=yes"), "{re}");
    assert!(
        re.contains("confirm_rc=0") && re.contains("pending=cleared"),
        "{re}"
    );

    let un = sec("uninstall");
    assert!(un.contains("uninstalled fix2: unloaded"), "{un}");
    // fix1 was replaced by fix2 (disabled, module still loaded): removed too.
    assert_eq!(un.matches("rc=0").count(), 2, "{un}");
    assert!(!un.contains("fix1.ko") && !un.contains("fix2.ko"), "{un}");
    assert!(
        un.contains("console=ttyS0"),
        "the original cmdline is back:\n{un}"
    );
    let none = sec("uninstall-none");
    assert!(
        none.contains("no patch named \"fix2\"") && none.contains("rc=1"),
        "{none}"
    );
}

/// The units the repository ships are valid for systemd.
#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze missing (package systemd)"
        );
        eprintln!("SKIP: systemd-analyze not found");
        return;
    };
    assert!(out.status.success());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("units");
    std::fs::create_dir_all(&dir).unwrap();
    let units_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd");
    let mut files = Vec::new();
    for u in [
        "suture.service",
        "suture-confirm.service",
        "suture-confirm.timer",
    ] {
        let text = std::fs::read_to_string(units_src.join(u)).unwrap();
        // Point at the built binary: verify checks that ExecStart exists.
        let p = dir.join(u);
        std::fs::write(&p, text.replace("/usr/bin/suture", suture())).unwrap();
        files.push(p);
    }
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
