//! Orchestration tests against a fake sysfs/procfs tree and a fake kernel
//! that reacts to writes the way the livepatch core does.

use super::*;
use crate::sysfs::testutil::FakeRoot;
use object::write::{Object as WObject, StandardSection};
use object::{Architecture, BinaryFormat, Endianness, SectionKind};
use std::sync::{Arc, Mutex};

const REL: &str = "6.1.0-56-amd64";

fn ko(name: &str, livepatch: bool, release: &str) -> Vec<u8> {
    let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let t = o.section_id(StandardSection::Text);
    o.append_section_data(t, &[0xc3], 1);
    let mi = o.add_section(vec![], b".modinfo".to_vec(), SectionKind::Data);
    let mut info = format!("name={name}\0vermagic={release} SMP preempt mod_unload modversions \0");
    if livepatch {
        info.push_str("livepatch=Y\0");
    }
    o.append_section_data(mi, info.as_bytes(), 1);
    o.write().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// The transition completes after a few polls.
    Completes,
    /// Tasks never switch: the transition only ends when reversed.
    Stalls,
    /// finit_module fails with this errno.
    Fails(i32),
}

/// Plays the kernel: creates the sysfs entries on load, finishes or stalls
/// the transition, and honours `enabled=0` by unpatching and dropping the
/// module reference.
struct FakeKernel {
    root: PathBuf,
    behaviour: Behaviour,
    log: Vec<String>,
    deleted: Arc<Mutex<Vec<String>>>,
    busy_once: std::sync::atomic::AtomicBool,
    sims: Sims,
}

/// Simulator threads of one fixture; stopped and joined before the fake
/// tree is removed, or their writes race with the removal and leave
/// directories behind.
#[derive(Default, Clone)]
struct Sims {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Sims {
    fn stop_all(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

fn simulate(sims: &Sims, root: PathBuf, name: String, complete: bool) {
    let stop = Arc::clone(&sims.stop);
    let t = std::thread::spawn(move || {
        let pd = root.join("sys/kernel/livepatch").join(&name);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10)
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(5));
            let enabled = std::fs::read_to_string(pd.join("enabled")).unwrap_or_default();
            let forced = std::fs::read_to_string(pd.join("force")).is_ok_and(|f| f.trim() == "1");
            if forced {
                // The core completes the transition and keeps the module
                // reference forever.
                let _ = std::fs::write(pd.join("transition"), "0\n");
                if enabled.trim() == "0" {
                    let _ = std::fs::remove_dir_all(&pd);
                    return;
                }
                continue;
            }
            if enabled.trim() == "0" {
                let _ = std::fs::remove_dir_all(&pd);
                let _ = std::fs::write(root.join("sys/module").join(&name).join("refcnt"), "0\n");
                return;
            }
            if complete && start.elapsed() > Duration::from_millis(30) {
                let _ = std::fs::write(pd.join("transition"), "0\n");
            }
        }
    });
    sims.threads.lock().unwrap().push(t);
}

fn lay_out_patch(root: &Path, name: &str, transition: bool) {
    let pd = root.join("sys/kernel/livepatch").join(name);
    std::fs::create_dir_all(pd.join("vmlinux/cmdline_proc_show,1")).unwrap();
    std::fs::write(pd.join("enabled"), "1\n").unwrap();
    std::fs::write(
        pd.join("transition"),
        if transition { "1\n" } else { "0\n" },
    )
    .unwrap();
    std::fs::write(pd.join("vmlinux/patched"), "1\n").unwrap();
    let md = root.join("sys/module").join(name);
    std::fs::create_dir_all(&md).unwrap();
    std::fs::write(md.join("refcnt"), "1\n").unwrap();
    std::fs::write(md.join("taint"), "OEK\n").unwrap();
}

impl Kernel for FakeKernel {
    fn release(&self) -> io::Result<String> {
        Ok(REL.to_string())
    }
    fn finit_module(&self, file: &std::fs::File, _params: &str) -> io::Result<()> {
        if let Behaviour::Fails(errno) = self.behaviour {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut data = Vec::new();
        io::Read::read_to_end(&mut &*file, &mut data)?;
        let name = modinfo::parse_module(&data).unwrap().name;
        lay_out_patch(&self.root, &name, true);
        simulate(
            &self.sims,
            self.root.clone(),
            name,
            self.behaviour == Behaviour::Completes,
        );
        Ok(())
    }
    fn delete_module(&self, name: &str) -> io::Result<()> {
        // The first attempt finds the reference still held, as the real
        // kernel can right after the patch is freed.
        if !self
            .busy_once
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let md = self.root.join("sys/module").join(name);
        if !md.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if std::fs::read_to_string(md.join("refcnt"))
            .unwrap_or_default()
            .trim()
            != "0"
        {
            return Err(io::Error::from_raw_os_error(libc::EWOULDBLOCK));
        }
        std::fs::remove_dir_all(md)?;
        self.deleted.lock().unwrap().push(name.to_string());
        Ok(())
    }
    fn log_mark(&self) -> sys::LogMark {
        // Everything in `log` counts as logged during the load attempt
        // except the first line, which predates the mark.
        sys::LogMark {
            kmsg: None,
            index: 1.min(self.log.len()),
        }
    }
    fn log_since(&self, mark: sys::LogMark) -> Vec<String> {
        self.log[mark.index..].to_vec()
    }
}

struct Fixture {
    fake: FakeRoot,
    host: Host,
    deleted: Arc<Mutex<Vec<String>>>,
    sims: Sims,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.sims.stop_all();
    }
}

fn fixture(tag: &str, behaviour: Behaviour, log: &[&str]) -> Fixture {
    let fake = FakeRoot::new(tag);
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let sims = Sims::default();
    let kernel = FakeKernel {
        root: fake.0.clone(),
        behaviour,
        log: log.iter().map(|s| s.to_string()).collect(),
        deleted: Arc::clone(&deleted),
        busy_once: std::sync::atomic::AtomicBool::new(false),
        sims: sims.clone(),
    };
    let host = Host::with(fake.0.clone(), Box::new(kernel));
    Fixture {
        fake,
        host,
        deleted,
        sims,
    }
}

fn write_ko(f: &Fixture, file: &str, data: &[u8]) -> PathBuf {
    let p = f.fake.0.join(file);
    std::fs::write(&p, data).unwrap();
    p
}

fn quick() -> LoadOptions {
    LoadOptions {
        timeout: Duration::from_millis(400),
        poll_interval: Duration::from_millis(2),
        ..LoadOptions::default()
    }
}

#[test]
fn load_waits_for_transition_and_reports_state() {
    let f = fixture("load-ok", Behaviour::Completes, &[]);
    let p = write_ko(&f, "lp.ko", &ko("lp_ok", true, REL));
    let r = f
        .host
        .load(
            &p,
            &LoadOptions {
                timeout: Duration::from_secs(5),
                ..quick()
            },
        )
        .unwrap();
    assert_eq!(r.name, "lp_ok");
    assert!(
        r.transition_ms >= 20.0,
        "transition took {} ms; the fake needs ~30",
        r.transition_ms
    );
    assert_eq!(r.state.enabled, Some(true));
    assert_eq!(r.state.transition, Some(false));
    assert_eq!(r.state.objects[0].functions[0].name, "cmdline_proc_show");
}

#[test]
fn load_refuses_non_livepatch_and_wrong_release_without_loading() {
    let f = fixture("refuse", Behaviour::Fails(libc::EFAULT), &[]);
    let p = write_ko(&f, "plain.ko", &ko("plain", false, REL));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotLivepatch);
    assert!(e.to_string().contains("not a livepatch module"), "{e}");
    let p = write_ko(&f, "old.ko", &ko("old", true, "6.1.0-47-amd64"));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ReleaseMismatch);
    assert!(
        e.message.contains("6.1.0-47-amd64") && e.message.contains(REL),
        "{e}"
    );
    let p = write_ko(&f, "junk.ko", b"#!/bin/sh\n");
    assert_eq!(
        f.host.load(&p, &quick()).unwrap_err().kind,
        ErrorKind::NotAModule
    );
    let e = f
        .host
        .load(&f.fake.0.join("missing.ko"), &quick())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
}

#[test]
fn load_refuses_when_already_loaded_or_another_in_transition() {
    let f = fixture("busy", Behaviour::Completes, &[]);
    let p = write_ko(&f, "lp.ko", &ko("lp_dup", true, REL));
    f.fake.mkdir("sys/module/lp_dup");
    assert_eq!(
        f.host.load(&p, &quick()).unwrap_err().kind,
        ErrorKind::AlreadyLoaded
    );
    std::fs::remove_dir(f.fake.0.join("sys/module/lp_dup")).unwrap();
    f.fake.write("sys/kernel/livepatch/other/transition", "1\n");
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy);
    assert!(e.message.contains("\"other\""), "{e}");
}

#[test]
fn kernel_errnos_are_translated() {
    let cases = [
        (libc::EEXIST, ErrorKind::AlreadyLoaded, "already loaded"),
        (libc::EBUSY, ErrorKind::Busy, "ftrace"),
        (libc::ENOEXEC, ErrorKind::Incompatible, "rebuild"),
        (libc::EINVAL, ErrorKind::Incompatible, "dmesg"),
        (libc::ENOENT, ErrorKind::UnknownSymbol, "Unknown symbol"),
        (libc::EKEYREJECTED, ErrorKind::Signature, "sign"),
        (libc::EBADMSG, ErrorKind::Signature, "malformed"),
        (libc::EPERM, ErrorKind::Signature, "signature"),
    ];
    for (errno, kind, needle) in cases {
        let f = fixture("errno", Behaviour::Fails(errno), &[]);
        let p = write_ko(&f, "lp.ko", &ko("lp_err", true, REL));
        let e = f.host.load(&p, &quick()).unwrap_err();
        assert_eq!((e.kind, e.errno), (kind, Some(errno)), "{e}");
        assert!(e.to_string().contains(needle), "errno {errno}: {e}");
    }
    // The kernel log overrides a generic errno with the concrete cause.
    let f = fixture(
        "errno-log",
        Behaviour::Fails(libc::EINVAL),
        &[
            "before the load",
            "lp_sym: Unknown symbol foo_bar (err -2)",
            "livepatch: failed to initialize patch",
        ],
    );
    let p = write_ko(&f, "lp.ko", &ko("lp_sym", true, REL));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownSymbol);
    assert_eq!(
        e.kernel_log,
        [
            "lp_sym: Unknown symbol foo_bar (err -2)",
            "livepatch: failed to initialize patch"
        ]
    );
    assert!(e.to_string().contains("foo_bar"));
    // modules_disabled makes EPERM a permission problem, not a signature one.
    let f = fixture("errno-disabled", Behaviour::Fails(libc::EPERM), &[]);
    f.fake.write("proc/sys/kernel/modules_disabled", "1\n");
    let p = write_ko(&f, "lp.ko", &ko("lp_perm", true, REL));
    assert_eq!(
        f.host.load(&p, &quick()).unwrap_err().kind,
        ErrorKind::Permission
    );
}

#[test]
fn load_timeout_reverses_removes_and_names_stalled_tasks() {
    let f = fixture("stall", Behaviour::Stalls, &[]);
    f.fake.write("proc/77/task/77/patch_state", "0\n");
    f.fake.write("proc/77/task/77/comm", "sleeper\n");
    f.fake.write(
        "proc/77/task/77/stack",
        "[<0>] __schedule+0x1/0x2\n[<0>] cmdline_proc_show+0x1/0x2\n",
    );
    f.fake.write("proc/78/task/78/patch_state", "1\n");
    let p = write_ko(&f, "lp.ko", &ko("lp_stall", true, REL));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransitionTimeout, "{e}");
    assert_eq!(e.stalled_tasks.len(), 1);
    assert_eq!(e.stalled_tasks[0].pid, 77);
    let text = e.to_string();
    assert!(
        text.contains("sleeper") && text.contains("cmdline_proc_show"),
        "{text}"
    );
    assert_eq!(e.stalled_tasks[0].patched_on_stack, ["cmdline_proc_show"]);
    assert!(
        text.contains("patched function(s) on its stack: cmdline_proc_show"),
        "{text}"
    );
    assert!(text.contains("reversed and the module removed"), "{text}");
    assert_eq!(*f.deleted.lock().unwrap(), ["lp_stall"]);
    assert!(!f.fake.0.join("sys/kernel/livepatch/lp_stall").exists());
}

#[test]
fn unload_disables_waits_and_deletes() {
    let f = fixture("unload", Behaviour::Completes, &[]);
    lay_out_patch(&f.fake.0, "lp_un", false);
    simulate(&f.sims, f.fake.0.clone(), "lp_un".into(), true);
    let r = f
        .host
        .unload(
            "lp-un",
            &UnloadOptions {
                timeout: Duration::from_secs(5),
                poll_interval: Duration::from_millis(2),
                ..UnloadOptions::default()
            },
        )
        .unwrap();
    assert!(r.was_enabled);
    assert_eq!(*f.deleted.lock().unwrap(), ["lp_un"]);
    assert!(!f.fake.0.join("sys/kernel/livepatch/lp_un").exists());
    let e = f
        .host
        .unload("lp_un", &UnloadOptions::default())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotLoaded);
}

#[test]
fn unload_of_disabled_patch_only_removes_module_and_reports_forced_refcount() {
    let f = fixture("unload-mod", Behaviour::Completes, &[]);
    f.fake.write("sys/module/lp_left/refcnt", "0\n");
    let r = f.host.unload("lp_left", &UnloadOptions::default()).unwrap();
    assert!(!r.was_enabled);
    assert_eq!(*f.deleted.lock().unwrap(), ["lp_left"]);
    // A forced patch never drops its reference.
    f.fake.write("sys/module/lp_forced/refcnt", "1\n");
    let e = f
        .host
        .unload(
            "lp_forced",
            &UnloadOptions {
                timeout: Duration::from_millis(100),
                poll_interval: Duration::from_millis(5),
                ..UnloadOptions::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModuleInUse);
    assert!(e.to_string().contains("reboot"), "{e}");
}

#[test]
fn unload_timeout_names_tasks_still_patched() {
    let f = fixture("unload-stall", Behaviour::Completes, &[]);
    lay_out_patch(&f.fake.0, "lp_slow", false);
    // No simulator: writing enabled=0 starts a transition that never ends.
    let pd = f.fake.0.join("sys/kernel/livepatch/lp_slow");
    std::fs::write(pd.join("transition"), "1\n").unwrap();
    f.fake.write("proc/5/task/6/patch_state", "1\n");
    f.fake.write("proc/5/task/6/comm", "worker\n");
    let e = f
        .host
        .unload(
            "lp_slow",
            &UnloadOptions {
                timeout: Duration::from_millis(100),
                poll_interval: Duration::from_millis(5),
                ..UnloadOptions::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransitionTimeout);
    assert_eq!((e.stalled_tasks[0].pid, e.stalled_tasks[0].tid), (5, 6));
    assert_eq!(std::fs::read_to_string(pd.join("enabled")).unwrap(), "0");
}

#[test]
fn table_and_json_render() {
    let f = fixture("table", Behaviour::Completes, &[]);
    assert_eq!(
        format_table(&f.host.list().unwrap()),
        "no livepatches loaded\n"
    );
    lay_out_patch(&f.fake.0, "lp_t", false);
    let l = f.host.list().unwrap();
    let t = format_table(&l);
    assert!(t.lines().next().unwrap().starts_with("NAME"), "{t}");
    assert!(
        t.contains("lp_t") && t.contains("vmlinux(1)") && t.contains("taint=OEK"),
        "{t}"
    );
    let j: serde_json::Value = serde_json::to_value(&l).unwrap();
    assert_eq!(j[0]["name"], "lp_t");
    assert_eq!(j[0]["enabled"], true);
    assert_eq!(j[0]["objects"][0]["patched"], true);
    assert_eq!(j[0]["replace"], serde_json::Value::Null);
}

fn stalled_task_77(f: &Fixture) {
    f.fake.write("proc/77/task/77/patch_state", "0\n");
    f.fake.write("proc/77/task/77/comm", "sleeper\n");
    f.fake.write(
        "proc/77/task/77/stack",
        "[<0>] __schedule+0x1/0x2\n[<0>] cmdline_proc_show+0x1/0x2\n",
    );
}

/// A confirmation that records the tasks it was shown and answers `yes`.
fn recording_confirm(yes: bool) -> (ForceConfirm, Arc<Mutex<Vec<(String, Vec<u32>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let c: ForceConfirm = Arc::new(move |name: &str, tasks: &[StalledTask]| {
        s2.lock()
            .unwrap()
            .push((name.to_string(), tasks.iter().map(|t| t.pid).collect()));
        yes
    });
    (c, seen)
}

#[test]
fn load_forced_only_with_consent_and_the_module_stays() {
    let f = fixture("force", Behaviour::Stalls, &[]);
    stalled_task_77(&f);
    let p = write_ko(&f, "lp.ko", &ko("lp_force", true, REL));
    // Refused consent: the usual reversal.
    let (no, seen) = recording_confirm(false);
    let e = f
        .host
        .load(&p, &LoadOptions { force: Some(no), ..quick() })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransitionTimeout);
    assert_eq!(*seen.lock().unwrap(), [("lp_force".to_string(), vec![77])]);
    assert!(!f.fake.0.join("sys/kernel/livepatch/lp_force").exists());
    assert!(e.hint.as_deref().unwrap().contains("--force"), "{e}");

    let (yes, seen) = recording_confirm(true);
    let r = f
        .host
        .load(&p, &LoadOptions { force: Some(yes), ..quick() })
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(r.aid.forced);
    assert_eq!(r.aid.forced_past[0].pid, 77);
    assert_eq!(
        std::fs::read_to_string(f.fake.0.join("sys/kernel/livepatch/lp_force/force")).unwrap(),
        "1"
    );
    assert_eq!(r.state.transition, Some(false));
    // The forced module keeps its reference: unloading disables the patch
    // but the module cannot go, and the error says only a reboot helps.
    let e = f
        .host
        .unload(
            "lp_force",
            &UnloadOptions {
                timeout: Duration::from_millis(150),
                poll_interval: Duration::from_millis(2),
                ..UnloadOptions::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModuleInUse, "{e}");
    assert!(e.to_string().contains("reboot"), "{e}");
}

#[test]
fn unload_forced_reports_module_kept() {
    let f = fixture("unload-force", Behaviour::Completes, &[]);
    lay_out_patch(&f.fake.0, "lp_uf", false);
    let pd = f.fake.0.join("sys/kernel/livepatch/lp_uf");
    std::fs::write(pd.join("transition"), "1\n").unwrap();
    // Simulate a stuck unpatching: the transition only ends when forced.
    f.fake.write("proc/9/task/9/patch_state", "1\n");
    f.fake.write("proc/9/task/9/comm", "kworker\n");
    let root = f.fake.0.clone();
    let stop = Arc::clone(&f.sims.stop);
    f.sims.threads.lock().unwrap().push(std::thread::spawn(move || {
        let pd = root.join("sys/kernel/livepatch/lp_uf");
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(3));
            let forced = std::fs::read_to_string(pd.join("force")).is_ok_and(|f| f.trim() == "1");
            if forced {
                let _ = std::fs::remove_dir_all(&pd);
                return;
            }
        }
    }));
    let (yes, seen) = recording_confirm(true);
    let r = f
        .host
        .unload(
            "lp_uf",
            &UnloadOptions {
                timeout: Duration::from_millis(200),
                poll_interval: Duration::from_millis(2),
                force: Some(yes),
                ..UnloadOptions::default()
            },
        )
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [("lp_uf".to_string(), vec![9])]);
    assert!(r.aid.forced && !r.module_removed);
    assert!(f.deleted.lock().unwrap().is_empty(), "a forced module must not be deleted");
    assert!(!pd.exists());
}

#[test]
fn signal_attribute_is_used_when_the_kernel_has_it() {
    let f = fixture("signal", Behaviour::Stalls, &[]);
    stalled_task_77(&f);
    // Kernels 5.1 to 5.14 have a per-patch `signal` attribute; the fake
    // kernel creates the patch directory on load, so pre-create the file
    // from a thread once it appears.
    let pd = f.fake.0.join("sys/kernel/livepatch/lp_sig");
    let stop = Arc::clone(&f.sims.stop);
    let pd2 = pd.clone();
    f.sims.threads.lock().unwrap().push(std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && !pd2.is_dir() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = std::fs::write(pd2.join("signal"), "0\n");
    }));
    let p = write_ko(&f, "lp.ko", &ko("lp_sig", true, REL));
    let e = f
        .host
        .load(
            &p,
            &LoadOptions {
                timeout: Duration::from_millis(300),
                signal_every: Duration::from_millis(20),
                ..quick()
            },
        )
        .unwrap_err();
    let hint = e.hint.clone().unwrap();
    assert!(hint.contains("fake signal(s) through the signal attribute"), "{hint}");

    // 6.1 has no attribute: the hint explains the kernel's 15 s period.
    let f = fixture("nosignal", Behaviour::Stalls, &[]);
    stalled_task_77(&f);
    let p = write_ko(&f, "lp.ko", &ko("lp_nosig", true, REL));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert!(e.hint.as_deref().unwrap().contains("only every 15 s"), "{e}");
}
