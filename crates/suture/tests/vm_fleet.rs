//! Issue 6: fleet rollout with the Ansible collection in `ansible/`, on
//! Debian guests (bookworm, systemd, sshd) booted on SUTURE_TEST_RELEASE
//! under QEMU, reachable on 127.0.0.1 ports only, driven by ansible-core
//! from the venv scripts/setup.sh makes (SUTURE_ANSIBLE_VENV, default
//! /var/cache/suture/venv).
//!
//! `fleet_rollout_and_kexec` boots four guests at once. On three of them:
//! 2. a probe failing on the canary stops the rollout after the first batch
//!    and rolls the canary back; the other two never receive the patch;
//! 4. check mode reports a change and changes nothing;
//! 1. the rollout reaches all three, all report the new patch level, and a
//!    second run changes nothing; `state: absent` is idempotent too.
//!
//! Meanwhile, on the fourth: 3. the kexec playbook moves it to
//! SUTURE_TEST_RELEASE_OLD (its `uname -r` and boot id change). The two
//! share nothing but the machine: a rollout runs one host at a time and
//! mostly waits for Ansible's round trips, which leaves a core for the
//! kexec guest's reboot.
//!
//! The module pure parts have Python unit tests, run here too
//! (`collection_unit_tests`), with the lint the collection gets offline.

mod common;

use common::{run, suture};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use suture_lab::debian::{DebianGuest, GuestServer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ansible_dir() -> PathBuf {
    repo().join("ansible")
}

fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("SUTURE_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/suture/venv".into());
    let p = venv.join("bin").join(tool);
    assert!(
        p.is_file(),
        "{} missing: run scripts/setup.sh (it installs ansible-core from PyPI into {})",
        p.display(),
        venv.display()
    );
    p
}

fn ssh(g: &GuestServer, cmd: &str) -> String {
    let o = g.ssh(cmd).unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "ssh {cmd:?} failed ({}): {text}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// Progress with the time since the test started: the two halves of the
/// test run side by side, so each line says which one it is.
fn phase(t0: Instant, who: &str, what: &str) {
    eprintln!(
        "vm_fleet: [{:7.1}s] {who}: {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// Starts one server guest per entry of `lab` (files for its lab disk, the
/// script run before each "ready" marker) at once, one vCPU each, and waits
/// for all of them to answer ssh.
fn start_guests(rel: &str, key: &Path, lab: &[(&[(&Path, &str)], &str)]) -> Vec<GuestServer> {
    let t = Instant::now();
    let mut guests: Vec<GuestServer> = lab
        .iter()
        .map(|(files, script)| {
            let mut g = DebianGuest::new(rel).unwrap();
            g.smp = 1;
            g.memory_mb = 1024;
            // An emulated CPU on an oversubscribed host stalls for tens of
            // seconds; the detectors stay on, with thresholds for that (a
            // soft lockup after 120 s, an RCU stall after 300 s). After a
            // kexec under TCG the TSC-deadline timer fired up to 38 s late
            // ("Long readout interval"), and the initramfs, which sleeps in
            // short steps, took 100 s instead of 20; the APIC's one-shot
            // timer brought that kexec'd boot from 165 s to 47 s.
            g.append =
                "watchdog_thresh=60 rcupdate.rcu_cpu_stall_timeout=300 lapic=notscdeadline".into();
            g.serve(key, files, script).unwrap()
        })
        .collect();
    for g in guests.iter_mut() {
        g.wait_ready(1, Duration::from_secs(900)).unwrap();
        let at = g.wait_ssh(Duration::from_secs(300)).unwrap();
        eprintln!(
            "vm_fleet: guest on port {} answers ssh {at:.1?} after its start",
            g.port()
        );
    }
    eprintln!(
        "vm_fleet: {} guest(s) up {:.1?} after the first start",
        lab.len(),
        t.elapsed()
    );
    guests
}

/// An inventory of the guests as g1, g2, ... in group `fleet`.
fn inventory(dir: &Path, guests: &[GuestServer], key: &Path) -> PathBuf {
    let mut s = String::from("[fleet]\n");
    for (i, g) in guests.iter().enumerate() {
        s += &format!("g{} ansible_port={}\n", i + 1, g.port());
    }
    s += &format!(
        "[fleet:vars]\nansible_host=127.0.0.1\nansible_user=root\nansible_ssh_private_key_file={}\n\
         ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n\
         ansible_python_interpreter=/usr/bin/python3\n",
        key.display()
    );
    let p = dir.join("inventory.ini");
    std::fs::write(&p, s).unwrap();
    p
}

struct Ansible {
    inventory: PathBuf,
    dir: PathBuf,
}

struct Run {
    ok: bool,
    out: String,
    took: Duration,
}

impl Ansible {
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(venv_bin(tool));
        c.current_dir(ansible_dir())
            .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
            .env("ANSIBLE_COLLECTIONS_PATH", ansible_dir())
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("ansible-tmp"))
            .arg("-i")
            .arg(&self.inventory);
        c
    }

    fn finish(mut c: Command, what: &str) -> Run {
        let t = Instant::now();
        let o = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let took = t.elapsed();
        eprintln!(
            "vm_fleet: {what}: {} in {took:.1?}\n{out}",
            if o.status.success() { "ok" } else { "FAILED" }
        );
        Run {
            ok: o.status.success(),
            out,
            took,
        }
    }

    fn playbook(&self, name: &str, vars: &Value, extra: &[&str]) -> Run {
        let mut c = self.command("ansible-playbook");
        c.arg(format!("suture.livepatch.{name}"))
            .arg("-e")
            .arg(vars.to_string())
            .args(extra);
        Self::finish(c, &format!("ansible-playbook {name} {}", extra.join(" ")))
    }

    fn adhoc(&self, hosts: &str, module: &str, args: &str, extra: &[&str]) -> Run {
        let mut c = self.command("ansible");
        c.arg(hosts).args(["-m", module, "-a", args]).args(extra);
        Self::finish(
            c,
            &format!(
                "ansible {hosts} -m {module} -a {args:?} {}",
                extra.join(" ")
            ),
        )
    }
}

/// PLAY RECAP counters per host: `g1 : ok=5 changed=0 unreachable=0 ...`.
fn recap(out: &str) -> HashMap<String, HashMap<String, u64>> {
    let at = out.rfind("PLAY RECAP").expect("PLAY RECAP in the output");
    out[at..]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (host, rest) = l.split_once(" : ")?;
            let counters = rest
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
            Some((host.trim().to_string(), counters))
        })
        .collect()
}

/// The `changed:`/`ok:` lines of one task in the default callback's output.
fn task_lines<'a>(out: &'a str, task: &str) -> Vec<&'a str> {
    let mut lines = Vec::new();
    let mut inside = false;
    for l in out.lines() {
        if l.starts_with("TASK [") {
            inside = l.contains(task);
        } else if inside && !l.trim().is_empty() {
            lines.push(l);
        }
    }
    lines
}

fn summary(dir: &Path) -> Value {
    let p = dir.join("summary.json");
    let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    std::fs::remove_file(&p).unwrap();
    v
}

/// Numbers `"key": N` in -v output, for the per-host figures.
fn numbers(out: &str, key: &str) -> Vec<f64> {
    let pat = format!("\"{key}\": ");
    out.match_indices(&pat)
        .filter_map(|(i, _)| {
            let rest = &out[i + pat.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

struct GuestState {
    cmdline: String,
    applied: Vec<String>,
    installed: Vec<String>,
    staged: bool,
}

/// One ssh session per look: each new session is a key exchange on an
/// emulated CPU.
fn guest_state(g: &GuestServer) -> GuestState {
    let out = ssh(
        g,
        "cat /proc/cmdline; echo @@; test -e /var/tmp/suture/fleet_fix.ko && echo yes || echo no; echo @@; \
         suture status --json",
    );
    let parts: Vec<&str> = out.split("@@\n").collect();
    let [cmdline, staged, st] = parts[..] else {
        panic!("unexpected guest state output: {out}")
    };
    let (cmdline, staged) = (cmdline.to_string(), staged.trim() == "yes");
    let v: Value = serde_json::from_str(st).unwrap();
    let names = |arr: &Value, f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        arr.as_array()
            .unwrap()
            .iter()
            .filter(|p| f(p))
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let patches = &v["status"]["patches"];
    let mut installed = names(patches, &|p| p["installed"] == true);
    installed.extend(
        v["status"]["installed_not_loaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string()),
    );
    GuestState {
        cmdline,
        applied: names(patches, &|p| p["applied"] == true),
        installed,
        staged,
    }
}

/// suture's binary without debug sections: the test build is mostly debug
/// information, and every host receives a copy through QEMU's user network.
fn stripped_suture(dir: &Path) -> PathBuf {
    let p = dir.join("suture");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&p)
        .arg(suture()));
    p
}

fn build_patch(dir: &Path, rel: &str) -> PathBuf {
    let ko = dir.join("fleet_fix.ko");
    run(Command::new(suture())
        .arg("build")
        .arg(repo().join("examples/cmdline.patch"))
        .args(["--kernel", rel, "--name", "fleet_fix", "-o"])
        .arg(&ko));
    ko
}

#[test]
fn fleet_rollout_and_kexec() {
    let t0 = Instant::now();
    let rel = suture_lab::test_release();
    let old = std::env::var("SUTURE_TEST_RELEASE_OLD").unwrap_or_else(|_| "6.1.0-47-amd64".into());
    if !suture_lab::require_kernel_or_skip(&rel).unwrap()
        || !suture_lab::require_kernel_or_skip(&old).unwrap()
    {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-fleet");
    let _ = std::fs::remove_dir_all(&dir);
    let kexec_dir = dir.join("kexec");
    std::fs::create_dir_all(&kexec_dir).unwrap();
    venv_bin("ansible-playbook");
    let ko = build_patch(&dir, &rel);
    let suture_bin = stripped_suture(&dir);
    let key = suture_lab::debian::ssh_keypair(&dir, "id_fleet").unwrap();
    // The kexec guest gets both releases' images and initrds, installed on
    // its disk as their linux-image packages would (the initrd brings
    // virtio_net/ext4): the target, and the way back for a host failing
    // its gates.
    let boot: Vec<(PathBuf, String)> = [&rel, &old]
        .iter()
        .flat_map(|r| {
            [
                (suture_lab::kernel_image(r), format!("boot/vmlinuz-{r}")),
                (
                    PathBuf::from(format!("/boot/initrd.img-{r}")),
                    format!("boot/initrd.img-{r}"),
                ),
            ]
        })
        .collect();
    let boot: Vec<(&Path, &str)> = boot
        .iter()
        .map(|(p, n)| (p.as_path(), n.as_str()))
        .collect();
    // The rollout's hosts have suture on their PATH, as its package puts it
    // (what docs/fleet-scale.md recommends: the binary reaches a host once,
    // not with every run); the kexec playbook stages it with suture_binary.
    let installed: &[(&Path, &str)] = &[(&suture_bin, "suture")];
    let install = "install -m 0755 /mnt/lab/suture /usr/local/bin/suture\n";
    let mut guests = start_guests(
        &rel,
        &key,
        &[
            (installed, install),
            (installed, install),
            (installed, install),
            (&boot, "cp -n /mnt/lab/boot/* /boot/\n"),
        ],
    );
    let kexec_guest = guests.pop().unwrap();
    phase(t0, "both", "guests up");
    std::thread::scope(|s| {
        s.spawn(|| kexec_batch(kexec_guest, &kexec_dir, &key, &suture_bin, &rel, &old, t0));
        rollout(&guests, &dir, &key, &ko, &rel, t0);
    });
    phase(t0, "both", "done");
}

/// Issue 6's tests 2, 4 and 1 on three guests, in that order.
fn rollout(guests: &[GuestServer], dir: &Path, key: &Path, ko: &Path, rel: &str, t0: Instant) {
    let ans = Ansible {
        inventory: inventory(dir, guests, key),
        dir: dir.to_path_buf(),
    };
    let level = format!("{rel}+fleet_fix");
    let base = serde_json::json!({
        "suture_patch": ko,
        "suture_summary_file": dir.join("summary.json"),
    });
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };

    // 2. The probe fails on the canary (the first batch, serial 1).
    let r = ans.playbook(
        "rollout",
        &with(serde_json::json!({
            "suture_probe": "test {{ inventory_hostname }} != g1",
        })),
        &[],
    );
    assert!(!r.ok, "the rollout must fail when the canary's probe fails");
    assert!(
        r.out.contains("health gate failed") && r.out.contains("probe: 'test g1 != g1' exited 1"),
        "the failure names the gate"
    );
    let rc = recap(&r.out);
    assert_eq!(rc["g1"]["failed"], 1, "{rc:?}");
    assert_eq!(rc["g2"]["failed"], 0, "{rc:?}");
    let g1 = guest_state(&guests[0]);
    assert!(
        g1.applied.is_empty() && g1.installed.is_empty() && !g1.cmdline.contains("suture=live"),
        "the canary is rolled back: {:?} {:?} {}",
        g1.applied,
        g1.installed,
        g1.cmdline
    );
    let log = ssh(&guests[0], "dmesg | grep fleet_fix");
    assert!(
        log.contains("'fleet_fix': patching complete")
            && log.contains("'fleet_fix': unpatching complete"),
        "the canary was patched, then unpatched:\n{log}"
    );
    for g in &guests[1..] {
        let s = guest_state(g);
        assert!(
            !s.staged && s.applied.is_empty() && !s.cmdline.contains("suture=live"),
            "a host after the canary never received the patch"
        );
    }
    assert_eq!(
        summary(dir),
        serde_json::json!({ rel: ["g1", "g2", "g3"] }),
        "summary after the failed canary"
    );

    phase(t0, "rollout", "canary failed and rolled back");
    // 4. Check mode: a change reported, nothing changed.
    let r = ans.playbook("rollout", &base, &["--check"]);
    assert!(r.ok);
    let applies = task_lines(&r.out, "Apply the patch");
    for h in ["g1", "g2", "g3"] {
        assert!(
            applies
                .iter()
                .any(|l| l.starts_with(&format!("changed: [{h}]"))),
            "check mode reports the change on {h}: {applies:?}"
        );
    }
    for g in guests {
        let s = guest_state(g);
        assert!(
            s.applied.is_empty() && s.installed.is_empty() && !s.cmdline.contains("suture=live"),
            "check mode changed nothing in the kernel or the state directory"
        );
    }
    let r = ans.adhoc(
        "fleet",
        "suture.livepatch.patch",
        "src=/var/tmp/suture/fleet_fix.ko",
        &["--check"],
    );
    assert!(r.ok && r.out.matches("\"changed\": true").count() == 3);
    assert!(guest_state(&guests[0]).applied.is_empty());

    phase(t0, "rollout", "check mode changed nothing");
    // 1. The rollout: canary, 10%, 50%, 100%; the probe sees the patch.
    let r = ans.playbook(
        "rollout",
        &with(serde_json::json!({ "suture_probe": "grep -q suture=live /proc/cmdline" })),
        &["-v"],
    );
    assert!(r.ok, "the rollout succeeds");
    let first_took = r.took;
    let secs = numbers(&r.out, "seconds");
    let transition = numbers(&r.out, "transition_ms");
    let load = numbers(&r.out, "load_ms");
    for g in guests {
        let s = guest_state(g);
        assert!(
            s.applied == ["fleet_fix"]
                && s.installed == ["fleet_fix"]
                && s.cmdline.contains("suture=live"),
            "every host has the patch applied and installed: {:?} {:?}",
            s.applied,
            s.installed
        );
    }
    assert_eq!(
        summary(dir),
        serde_json::json!({ &level: ["g1", "g2", "g3"] })
    );
    let r = ans.playbook(
        "rollout",
        &with(serde_json::json!({ "suture_probe": "grep -q suture=live /proc/cmdline" })),
        &[],
    );
    assert!(r.ok);
    let rc = recap(&r.out);
    for h in ["g1", "g2", "g3"] {
        assert_eq!(rc[h]["changed"], 0, "second run changes nothing: {rc:?}");
        assert_eq!(rc[h]["failed"], 0, "{rc:?}");
    }
    assert_eq!(
        summary(dir),
        serde_json::json!({ &level: ["g1", "g2", "g3"] })
    );
    let r = ans.adhoc(
        "fleet",
        "suture.livepatch.patch",
        "src=/var/tmp/suture/fleet_fix.ko",
        &["--check"],
    );
    assert!(r.ok && r.out.matches("\"changed\": false").count() == 3);

    phase(t0, "rollout", "rollout and rerun checked");
    // state: absent, twice: a change, then none.
    let absent = "name=fleet_fix state=absent";
    let r = ans.adhoc("g3", "suture.livepatch.patch", absent, &[]);
    assert!(r.ok && r.out.contains("\"changed\": true"));
    let s = guest_state(&guests[2]);
    assert!(s.applied.is_empty() && s.installed.is_empty() && !s.cmdline.contains("suture=live"));
    let r = ans.adhoc("g3", "suture.livepatch.patch", absent, &[]);
    assert!(r.ok && r.out.contains("\"changed\": false"));

    phase(t0, "rollout", "state: absent checked");
    eprintln!(
        "vm_fleet: figures (TCG, 3 guests of 1 vCPU on 2 shared cores): patch task per host {secs:?} s \
         (apply incl. status reads; probe runs listed too), load {load:?} ms, transition {transition:?} ms; \
         rollout of 3 hosts in 3 batches {first_took:.1?}"
    );
}

#[test]
fn collection_unit_tests() {
    // The pure core needs no Ansible: the system's python3 runs it.
    run(Command::new("python3").current_dir(ansible_dir()).args([
        "-m",
        "unittest",
        "discover",
        "-s",
        "ansible_collections/suture/livepatch/tests/unit",
        "-t",
        ".",
    ]));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-fleet-lint");
    std::fs::create_dir_all(&dir).unwrap();
    let inv = dir.join("inventory.ini");
    std::fs::write(&inv, "[fleet]\ng1 ansible_port=1\n").unwrap();
    let ans = Ansible {
        inventory: inv,
        dir: dir.clone(),
    };
    for pb in ["rollout", "kexec"] {
        let mut c = ans.command("ansible-playbook");
        c.arg("--syntax-check")
            .arg(format!("suture.livepatch.{pb}"));
        run(&mut c);
    }
    for (kind, name) in [
        ("module", "patch"),
        ("module", "health"),
        ("module", "status"),
        ("filter", "patch_levels"),
        ("filter", "batch_failed"),
        ("filter", "update_status"),
    ] {
        let mut c = Command::new(venv_bin("ansible-doc"));
        c.current_dir(ansible_dir())
            .env("ANSIBLE_COLLECTIONS_PATH", ansible_dir())
            .args(["-t", kind, "--json"])
            .arg(format!("suture.livepatch.{name}"));
        let out = run(&mut c);
        let v: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        assert!(
            v[format!("suture.livepatch.{name}")]["doc"]["short_description"].is_string(),
            "ansible-doc reads the documentation of {name}"
        );
    }
    let collection = ansible_dir().join("ansible_collections/suture/livepatch");
    let mut c = Command::new(venv_bin("ansible-lint"));
    c.current_dir(&collection)
        .env("ANSIBLE_COLLECTIONS_PATH", ansible_dir())
        .args(["--offline", "--nocolor", "."]);
    run(&mut c);
    // The tarball Galaxy imports builds (its README included).
    let built = dir.join("galaxy");
    let _ = std::fs::remove_dir_all(&built);
    let mut c = Command::new(venv_bin("ansible-galaxy"));
    c.current_dir(&collection)
        .args(["collection", "build", "--output-path"])
        .arg(&built);
    run(&mut c);
    let tarball = std::fs::read_dir(&built)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let listing = run(Command::new("tar").arg("tzf").arg(&tarball));
    assert!(listing.lines().any(|l| l == "README.md"), "{listing}");
    // ansible-test sanity. Its pip bootstrap comes from a host the build
    // machines cannot reach: scripts/ansible-test-get-pip.py stands in for
    // it, saved where ansible-test says it looks.
    let sanity = || {
        Command::new(venv_bin("ansible-test"))
            .current_dir(&collection)
            .args(["sanity", "--local", "--python", "3.11", "--color", "no"])
            .output()
            .unwrap()
    };
    let mut o = sanity();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if let Some(at) = text.split("manually downloaded and saved to: ").nth(1) {
        let path = at.split_whitespace().next().unwrap();
        std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
        std::fs::copy(repo().join("scripts/ansible-test-get-pip.py"), path).unwrap();
        o = sanity();
    }
    assert!(
        o.status.success(),
        "ansible-test sanity:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Issue 6's test 3: the kexec playbook moves `g` to `old`.
fn kexec_batch(
    mut g: GuestServer,
    dir: &Path,
    key: &Path,
    suture_bin: &Path,
    rel: &str,
    old: &str,
    t0: Instant,
) {
    let before = g.wait_ready(1, Duration::from_secs(10)).unwrap();
    assert_eq!(before.release, rel);
    let mut guests = [g];
    let ans = Ansible {
        inventory: inventory(dir, &guests, key),
        dir: dir.to_path_buf(),
    };
    let r = ans.playbook(
        "kexec",
        &serde_json::json!({
            "suture_kexec_release": old,
            "suture_binary": suture_bin,
            "suture_summary_file": dir.join("summary.json"),
            "suture_probe": "systemctl is-active ssh",
        }),
        &["-v"],
    );
    assert!(r.ok, "the kexec playbook succeeds");
    phase(t0, "kexec", "moved");
    let kexec_took = r.took;
    for task in [
        "The host runs the new release in a new boot",
        "Health gates",
    ] {
        assert!(
            task_lines(&r.out, task)
                .iter()
                .any(|l| l.starts_with("ok: [g1]")),
            "{task} ran after the kexec"
        );
    }
    let after = guests[0].wait_ready(2, Duration::from_secs(60)).unwrap();
    assert_eq!(after.release, old, "the second boot is the old release");
    assert_ne!(after.boot_id, before.boot_id);
    assert_eq!(ssh(&guests[0], "uname -r").trim(), old);
    assert_eq!(
        ssh(&guests[0], "cat /proc/sys/kernel/random/boot_id").trim(),
        after.boot_id
    );
    assert_eq!(summary(dir), serde_json::json!({ old: ["g1"] }));
    // Running it again: the host is there already, nothing to do.
    let r = ans.playbook(
        "kexec",
        &serde_json::json!({ "suture_kexec_release": old, "suture_binary": suture_bin }),
        &[],
    );
    assert!(r.ok);
    assert_eq!(recap(&r.out)["g1"]["changed"], 0);
    assert_eq!(parse_ready_count(&guests[0]), 2, "no third boot");
    phase(
        t0,
        "kexec",
        &format!("done; the kexec playbook took {kexec_took:.1?}"),
    );
}

fn parse_ready_count(g: &GuestServer) -> usize {
    suture_lab::debian::parse_ready(&g.serial()).len()
}
