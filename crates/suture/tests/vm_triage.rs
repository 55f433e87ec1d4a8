//! `suture triage` on a real Debian update (issue 13): linux-source-6.1
//! 6.1.187-1 against two older releases of the series, 6.1.0-47-amd64
//! (source 6.1.170-3) and 6.1.0-50-amd64 (6.1.176-1), restricted to a few
//! directories, with `--build`. Each release gets its own verdicts (its own
//! source, its own diff); every object is accounted for; the cumulative
//! module of the first release is installed in a guest of that release, the
//! transition completes, the modules it patches are loaded after it and come
//! up patched, `suture status --json` shows the update's version and the
//! counts the module records, and it unloads with no oops or warning.

mod common;

use common::field;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const UPDATE: &str = "6.1.187-1";
const ONLY: [&str; 2] = ["kernel/locking", "net/ipv4/netfilter"];

/// Both releases, or `None` (after saying why) when they are not installed;
/// under CI a missing one is a failure.
fn releases() -> Option<(String, String)> {
    let old = std::env::var("SUTURE_TEST_RELEASE_OLD").unwrap_or_else(|_| "6.1.0-47-amd64".into());
    let second =
        std::env::var("SUTURE_TEST_RELEASE_TRIAGE").unwrap_or_else(|_| "6.1.0-50-amd64".into());
    for r in [&old, &second] {
        if !suture_lab::require_kernel_or_skip(r).expect("kernel for the triage test") {
            return None;
        }
    }
    Some((old, second))
}

/// `modules.dep` of `release`: module name → (path under /lib/modules/R,
/// the paths of its dependencies, deepest last).
fn modules_dep(release: &str) -> HashMap<String, (String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap();
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            let name = Path::new(m)
                .file_name()?
                .to_str()?
                .split('.')
                .next()?
                .replace('-', "_");
            Some((
                name,
                (
                    m.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                ),
            ))
        })
        .collect()
}

#[test]
fn a_debian_update_becomes_one_cumulative_livepatch_per_release() {
    let Some((old, second)) = releases() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("triage");
    let o = Command::new(common::suture())
        .args([
            "triage", "--to", UPDATE, "--kernel", &old, "--kernel", &second, "--build", "--json",
            "--only",
        ])
        .args(ONLY)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(out.join("triage.json")).unwrap()).unwrap();
    assert_eq!(report, on_disk);
    assert!(
        err.contains("objects compiled with the update"),
        "progress: {err}"
    );
    assert_eq!(report["to_version"], UPDATE);
    let rels = report["releases"].as_array().unwrap();
    assert_eq!(rels.len(), 2);
    // Each release is triaged from its own source.
    assert_eq!(rels[0]["release"], old.as_str());
    assert_eq!(rels[0]["source_version"], "6.1.170-3");
    assert_eq!(rels[1]["release"], second.as_str());
    assert_eq!(rels[1]["source_version"], "6.1.176-1");
    for rel in rels {
        let objects = rel["objects"].as_array().unwrap();
        let counts = rel["counts"].as_object().unwrap();
        let total: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(total as usize, objects.len(), "every object counted once");
        assert_eq!(counts["failed"], 0, "{rel:#}");
        for ob in objects {
            let path = ob["object"].as_str().unwrap();
            assert!(
                ONLY.iter().any(|d| path.starts_with(&format!("{d}/"))),
                "{path} is out of scope"
            );
            if ob["verdict"] == "live" {
                let p = out.join(ob["patch"].as_str().unwrap());
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(text.contains("--- a/"), "{}", p.display());
            }
        }
        assert!(counts["live"].as_u64().unwrap() > 0, "{rel:#}");
        let m = &rel["module"];
        let ko = out.join(
            m["path"]
                .as_str()
                .unwrap_or_else(|| panic!("no module: {m:#}")),
        );
        assert!(ko.is_file());
        assert_eq!(m["source_version"], UPDATE);
        assert_eq!(
            m["covers"].as_array().unwrap().len() as u64,
            counts["live"].as_u64().unwrap()
        );
    }
    // The two releases differ in what the update changes for them.
    assert_ne!(rels[0]["objects"], rels[1]["objects"]);

    // The first release's cumulative module, on a guest of that release.
    let rel = &rels[0];
    let name = rel["module"]["name"].as_str().unwrap().to_string();
    let ko = out.join(rel["module"]["path"].as_str().unwrap());
    let info = suture_host::modinfo::parse_module(&std::fs::read(&ko).unwrap()).unwrap();
    assert_eq!(info.suture.source_version.as_deref(), Some(UPDATE));
    let live = rel["counts"]["live"].as_u64().unwrap() as u32;
    assert_eq!(info.suture.update_live, Some(live));
    let modules: Vec<String> = rel["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["verdict"] == "live" && o["module"] != "vmlinux")
        .map(|o| o["module"].as_str().unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        !modules.is_empty(),
        "the scope has module objects that go live: {rel:#}"
    );
    let dep = modules_dep(&old);
    let _g = common::vm_lock();
    let mut vm = common::vm(&old);
    vm.add_file(&ko, "/root/update.ko").unwrap();
    let lib = format!("/lib/modules/{old}");
    let mut loads = String::new();
    // What modprobe would load, in its order; libcrc32c's crc32c comes from
    // a soft dependency (crc32c_generic), loaded first.
    let mut files: Vec<String> = vec!["kernel/crypto/crc32c_generic.ko".into()];
    for m in &modules {
        let (path, deps) = &dep[m];
        for p in deps.iter().rev().chain(std::iter::once(path)) {
            if !files.contains(p) {
                files.push(p.clone());
            }
        }
    }
    for p in &files {
        let data = std::fs::read(format!("{lib}/{p}")).unwrap();
        let plain = suture_symbols::decompress_module(&data)
            .unwrap()
            .into_owned();
        let file = Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".xz");
        let guest = format!("/root/mods/{file}");
        vm.add_bytes(&guest, plain, 0o644);
        loads.push_str(&format!("insmod {guest} || exit 20\n"));
    }
    for m in &modules {
        loads.push_str(&format!(
            "echo PATCHED_{m}:$(cat /sys/kernel/livepatch/{name}/{m}/patched)\n"
        ));
    }
    let script = format!(
        "export SUTURE_STATE_DIR=/var/lib/suture\n\
         suture install --no-enable /root/update.ko || exit 10\n\
         echo TRANSITION:$(cat /sys/kernel/livepatch/{name}/transition)\n\
         {loads}\
         suture status --json > /tmp/s.json || exit 11\n\
         echo STATUS:$(tr -d ' \\n' < /tmp/s.json)\n\
         suture uninstall {name} || exit 12\n\
         echo GONE:$(ls /sys/kernel/livepatch | grep -c {name})\n\
         {}",
        common::KERNEL_LOG_CHECK
    );
    let run = vm.run(&script).unwrap();
    let gout = run.script_output();
    assert_eq!(run.exit_status, 0, "{gout}");
    assert_eq!(field(gout, "TRANSITION"), "0", "{gout}");
    for m in &modules {
        assert_eq!(
            field(gout, &format!("PATCHED_{m}")),
            "1",
            "{m} came up patched: {gout}"
        );
    }
    let status: Value = serde_json::from_str(field(gout, "STATUS")).unwrap();
    let u = &status["status"]["update"];
    assert_eq!(u["source_version"], UPDATE, "{status:#}");
    assert_eq!(u["patch"], name.as_str());
    assert_eq!(u["objects_live"].as_u64(), Some(u64::from(live)));
    assert_eq!(
        u["objects_need_reboot"].as_u64(),
        Some(u64::from(info.suture.update_reboot.unwrap()))
    );
    assert_eq!(field(gout, "GONE"), "0", "{gout}");
    assert_eq!(field(gout, "COMPLAINTS"), "0", "{gout}");
}
