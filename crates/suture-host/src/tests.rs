//! Orchestration tests against a fake sysfs/procfs tree and a fake kernel
//! that reacts to writes the way the livepatch core does.

use super::*;
use crate::sysfs::testutil::FakeRoot;
use object::write::{Object as WObject, StandardSection};
use object::{Architecture, BinaryFormat, Endianness, SectionKind};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sys::Kernel;

const REL: &str = "6.1.0-56-amd64";

fn ko(name: &str, livepatch: bool, release: &str) -> Vec<u8> {
    ko_with(name, livepatch, release, "")
}

/// `extra` is more `.modinfo` strings, NUL-separated.
fn ko_with(name: &str, livepatch: bool, release: &str, extra: &str) -> Vec<u8> {
    let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let t = o.section_id(StandardSection::Text);
    o.append_section_data(t, &[0xc3], 1);
    let mi = o.add_section(vec![], b".modinfo".to_vec(), SectionKind::Data);
    let mut info = format!("name={name}\0vermagic={release} SMP preempt mod_unload modversions \0");
    if livepatch {
        info.push_str("livepatch=Y\0");
    }
    info.push_str(extra);
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
        let mut completed = false;
        while start.elapsed() < Duration::from_secs(10)
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(5));
            let enabled = std::fs::read_to_string(pd.join("enabled")).unwrap_or_default();
            let forced = std::fs::read_to_string(pd.join("force")).is_ok_and(|f| f.trim() == "1");
            if forced && enabled.trim() == "0" {
                // A forced unpatching: the core frees the patch but keeps
                // the module reference forever.
                let _ = std::fs::remove_dir_all(&pd);
                return;
            }
            if forced && !completed {
                // A forced patching completes; the module stays removable
                // (only patches it replaces would be pinned).
                set_attr(&pd.join("transition"), "0\n");
                // `force` is write-only in sysfs; the fake forgets it so a
                // later unpatching is not taken as forced too.
                let _ = std::fs::write(pd.join("force"), "0");
                completed = true;
            }
            if enabled.trim() == "0" {
                let _ = std::fs::remove_dir_all(&pd);
                let _ = std::fs::write(root.join("sys/module").join(&name).join("refcnt"), "0\n");
                return;
            }
            if complete && !completed && start.elapsed() > Duration::from_millis(30) {
                set_attr(&pd.join("transition"), "0\n");
                completed = true;
            }
        }
    });
    sims.threads.lock().unwrap().push(t);
}

/// Rewrites an attribute the host may be reading at that moment. Real sysfs
/// attributes change atomically; a plain rewrite truncates first, and a reader
/// racing it sees an empty file (seen in CI as a `transition` of None).
fn set_attr(path: &Path, value: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, value).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
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
        // The kernel reads the descriptor from offset 0, not from its position.
        let mut data = vec![0; file.metadata()?.len() as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut data, 0)?;
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
    assert!(
        e.message
            .contains("could not resolve symbol of lp_sym: foo_bar"),
        "{e}"
    );
    // The symbols are named in the message, each once; the module's
    // dependencies that are not loaded are named in the hint.
    let f = fixture(
        "errno-deps",
        Behaviour::Fails(libc::ENOENT),
        &[
            "before the load",
            "lp_dep: Unknown symbol svc_rqst_alloc (err -2)",
            "lp_dep: Unknown symbol xdr_init_decode (err -2)",
            "lp_dep: Unknown symbol svc_rqst_alloc (err -2)",
            "livepatch: symbol 'nfsd_file_put' not found in symbol table",
        ],
    );
    std::fs::create_dir_all(f.fake.0.join("sys/module/loaded_dep")).unwrap();
    let p = write_ko(
        &f,
        "lp.ko",
        &ko_with("lp_dep", true, REL, "depends=sunrpc,loaded_dep,nfsd\0"),
    );
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownSymbol);
    assert!(
        e.message
            .contains("symbols of lp_dep: svc_rqst_alloc, xdr_init_decode, nfsd_file_put"),
        "{e}"
    );
    let hint = e.hint.as_deref().unwrap();
    assert!(
        hint.contains("depends on sunrpc, nfsd, not loaded")
            && hint.contains("modprobe sunrpc nfsd"),
        "{hint}"
    );
    // Callbacks and klp_state refusals share errnos with other causes; the
    // kernel's lines name them.
    for (errno, line, needle) in [
        (
            libc::EBUSY,
            "livepatch: pre-patch callback failed for object 'vmlinux'",
            "pre-patch callback",
        ),
        (
            libc::EINVAL,
            "livepatch: Livepatch patch (lp_st) is not compatible with the already installed livepatches.",
            "--state",
        ),
    ] {
        let f = fixture("errno-cause", Behaviour::Fails(errno), &["before the load", line]);
        let p = write_ko(&f, "lp.ko", &ko("lp_st", true, REL));
        let e = f.host.load(&p, &quick()).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
        assert_eq!(e.errno, Some(errno));
    }
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

/// What a confirmation was asked: patch name and the pids shown.
type Asked = Arc<Mutex<Vec<(String, Vec<u32>)>>>;

/// A confirmation that records the tasks it was shown and answers `yes`.
fn recording_confirm(yes: bool) -> (ForceConfirm, Asked) {
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
fn load_forced_only_with_consent() {
    let f = fixture("force", Behaviour::Stalls, &[]);
    stalled_task_77(&f);
    let p = write_ko(&f, "lp.ko", &ko("lp_force", true, REL));
    // Refused consent: the usual reversal.
    let (no, seen) = recording_confirm(false);
    let e = f
        .host
        .load(
            &p,
            &LoadOptions {
                force: Some(no),
                ..quick()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TransitionTimeout);
    assert_eq!(*seen.lock().unwrap(), [("lp_force".to_string(), vec![77])]);
    assert!(!f.fake.0.join("sys/kernel/livepatch/lp_force").exists());
    assert!(e.hint.as_deref().unwrap().contains("--force"), "{e}");

    let (yes, seen) = recording_confirm(true);
    let r = f
        .host
        .load(
            &p,
            &LoadOptions {
                force: Some(yes),
                ..quick()
            },
        )
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(r.aid.forced);
    assert_eq!(r.aid.forced_past[0].pid, 77);
    assert_eq!(r.state.transition, Some(false));
    // Forcing a patching transition does not pin this module: it unloads.
    let r = f
        .host
        .unload(
            "lp_force",
            &UnloadOptions {
                timeout: Duration::from_secs(5),
                poll_interval: Duration::from_millis(2),
                ..UnloadOptions::default()
            },
        )
        .unwrap();
    assert!(r.module_removed && !r.aid.forced);
    assert_eq!(*f.deleted.lock().unwrap(), ["lp_force", "lp_force"]);
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
    f.sims
        .threads
        .lock()
        .unwrap()
        .push(std::thread::spawn(move || {
            let pd = root.join("sys/kernel/livepatch/lp_uf");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(3));
                let forced =
                    std::fs::read_to_string(pd.join("force")).is_ok_and(|f| f.trim() == "1");
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
    assert!(
        f.deleted.lock().unwrap().is_empty(),
        "a forced module must not be deleted"
    );
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
    f.sims
        .threads
        .lock()
        .unwrap()
        .push(std::thread::spawn(move || {
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
    assert!(
        hint.contains("fake signal(s) through the signal attribute"),
        "{hint}"
    );

    // 6.1 has no attribute: the hint explains the kernel's 15 s period.
    let f = fixture("nosignal", Behaviour::Stalls, &[]);
    stalled_task_77(&f);
    let p = write_ko(&f, "lp.ko", &ko("lp_nosig", true, REL));
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert!(
        e.hint.as_deref().unwrap().contains("only every 15 s"),
        "{e}"
    );
}

use crate::state::{enable_units, StateDir, UnitDirs};

fn boot(f: &Fixture, id: &str, uptime: f64) {
    f.fake
        .write("proc/sys/kernel/random/boot_id", &format!("{id}\n"));
    f.fake
        .write("proc/uptime", &format!("{uptime:.2} 100.00\n"));
}

#[test]
fn build_id_mismatch_is_refused_before_the_kernel() {
    let f = fixture("buildid", Behaviour::Fails(libc::EFAULT), &[]);
    let p = write_ko(
        &f,
        "lp.ko",
        &ko_with("lp_b", true, REL, "suture_release_build_id=00ff\0"),
    );
    // No notes file: cannot be checked, so refused.
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BuildIdMismatch, "{e}");
    // GNU build-id note 0xab 0xcd: another build.
    let mut notes = vec![4, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
    notes.extend_from_slice(b"GNU\0");
    notes.extend_from_slice(&[0xab, 0xcd, 0, 0]);
    std::fs::create_dir_all(f.fake.0.join("sys/kernel")).unwrap();
    std::fs::write(f.fake.0.join("sys/kernel/notes"), &notes).unwrap();
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BuildIdMismatch);
    let t = e.to_string();
    assert!(
        t.contains("build-id 00ff") && t.contains("build-id abcd"),
        "{t}"
    );
    // The same build: the check passes and the kernel is called (the fake
    // fails with EFAULT, proving the call happened).
    let p = write_ko(
        &f,
        "ok.ko",
        &ko_with("lp_b", true, REL, "suture_release_build_id=ABCD\0"),
    );
    let c = f.host.check_module(&p).unwrap();
    assert!(c.build_id_checked);
    assert_eq!(
        f.host.load(&p, &quick()).unwrap_err().errno,
        Some(libc::EFAULT)
    );
}

#[test]
fn install_stores_loads_and_marks_pending_then_confirm_clears() {
    let f = fixture("install", Behaviour::Completes, &[]);
    boot(&f, "boot-a", 30.0);
    let st = StateDir(f.fake.0.join("state"));
    let p = write_ko(
        &f,
        "fix1.ko",
        &ko_with("fix1", true, REL, "suture_cve=CVE-2024-0001\0"),
    );
    let (inst, load) = f
        .host
        .install(
            &st,
            &p,
            &LoadOptions {
                timeout: Duration::from_secs(5),
                ..quick()
            },
        )
        .unwrap();
    assert!(load.is_some());
    assert_eq!(inst.path, st.0.join(REL).join("fix1.ko"));
    assert_eq!(
        std::fs::read(&inst.path).unwrap(),
        std::fs::read(&p).unwrap()
    );
    assert_eq!(inst.pending.as_ref().unwrap().boot_id, "boot-a");
    assert_eq!(inst.record.as_ref().unwrap().seq, 1);
    // Not yet up long enough in this boot.
    boot(&f, "boot-a", 100.0);
    assert!(f
        .host
        .confirm(&st, Duration::from_secs(300), false)
        .unwrap()
        .is_empty());
    boot(&f, "boot-a", 400.0);
    assert_eq!(
        f.host
            .confirm(&st, Duration::from_secs(300), false)
            .unwrap(),
        ["fix1"]
    );
    assert!(st.get(REL, "fix1").unwrap().pending.is_none());

    // Status joins the loaded patch with the installed file's metadata.
    let s = f.host.status(Some(&st)).unwrap();
    assert_eq!(s.cves, ["CVE-2024-0001"]);
    assert_eq!(s.effective_version, format!("{REL}+fix1"));
    assert!(s.patches[0].applied && s.patches[0].installed);

    // A second patch goes after it in load order; a failing install
    // leaves nothing behind.
    let p2 = write_ko(&f, "fix2.ko", &ko("fix2", true, REL));
    f.host
        .install(
            &st,
            &p2,
            &LoadOptions {
                timeout: Duration::from_secs(5),
                ..quick()
            },
        )
        .unwrap();
    assert_eq!(
        st.installed(REL)
            .unwrap()
            .iter()
            .map(|i| (i.name.as_str(), i.record.as_ref().unwrap().seq))
            .collect::<Vec<_>>(),
        [("fix1", 1), ("fix2", 2)]
    );
    let bad = write_ko(&f, "bad.ko", &ko("bad", false, REL));
    assert_eq!(
        f.host.install(&st, &bad, &quick()).unwrap_err().kind,
        ErrorKind::NotLivepatch
    );
    assert!(st.get(REL, "bad").is_none());

    // Uninstall unloads and removes the files.
    let (was, rep) = f
        .host
        .uninstall(
            &st,
            "fix2",
            &UnloadOptions {
                timeout: Duration::from_secs(5),
                poll_interval: Duration::from_millis(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(was && rep.is_some());
    assert!(st.get(REL, "fix2").is_none());
    assert!(!f.fake.0.join("sys/kernel/livepatch/fix2").exists());
    assert_eq!(
        f.host
            .uninstall(&st, "nothing", &UnloadOptions::default())
            .unwrap_err()
            .kind,
        ErrorKind::NotLoaded
    );
}

#[test]
fn failed_install_of_a_new_build_restores_the_old_file() {
    let f = fixture("reinstall", Behaviour::Fails(libc::EINVAL), &[]);
    boot(&f, "b", 1.0);
    let st = StateDir(f.fake.0.join("state"));
    let old = ko_with("fixr", true, REL, "suture_cve=CVE-OLD\0");
    st.store(REL, "fixr", &write_ko(&f, "old.ko", &old))
        .unwrap();
    let newp = write_ko(
        &f,
        "new.ko",
        &ko_with("fixr", true, REL, "suture_cve=CVE-NEW\0"),
    );
    assert_eq!(
        f.host.install(&st, &newp, &quick()).unwrap_err().kind,
        ErrorKind::Incompatible
    );
    assert_eq!(std::fs::read(st.0.join(REL).join("fixr.ko")).unwrap(), old);
    assert_eq!(st.get(REL, "fixr").unwrap().record.unwrap().seq, 1);
}

#[test]
fn crash_loop_guard_skips_a_patch_pending_from_an_earlier_boot() {
    let f = fixture("guard", Behaviour::Completes, &[]);
    let st = StateDir(f.fake.0.join("state"));
    for n in ["good", "crashy"] {
        st.store(REL, n, &write_ko(&f, &format!("{n}.ko"), &ko(n, true, REL)))
            .unwrap();
    }
    st.store(
        "5.10.0-30-amd64",
        "old",
        &write_ko(&f, "old.ko", &ko("old", true, "5.10.0-30-amd64")),
    )
    .unwrap();
    // Boot 1: both load, both pending; "good" gets confirmed, then the
    // machine dies with "crashy" still pending.
    boot(&f, "boot-1", 10.0);
    let opts = LoadOptions {
        timeout: Duration::from_secs(5),
        ..quick()
    };
    let r = f.host.load_all(&st, &opts).unwrap();
    assert_eq!(r.loaded, ["good", "crashy"]);
    assert_eq!(r.other_releases, ["5.10.0-30-amd64"]);
    st.clear_pending(REL, "good").unwrap();
    // Boot 2 (nothing loaded any more).
    for n in ["good", "crashy"] {
        let _ = std::fs::remove_dir_all(f.fake.0.join("sys/kernel/livepatch").join(n));
        let _ = std::fs::remove_dir_all(f.fake.0.join("sys/module").join(n));
    }
    boot(&f, "boot-2", 5.0);
    let r = f.host.load_all(&st, &opts).unwrap();
    assert_eq!(r.loaded, ["good"]);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(
        (r.skipped[0].name.as_str(), r.skipped[0].new),
        ("crashy", true)
    );
    assert!(
        r.skipped[0].reason.contains("boot-1"),
        "{}",
        r.skipped[0].reason
    );
    assert!(!f.fake.0.join("sys/kernel/livepatch/crashy").exists());
    let s = f.host.status(Some(&st)).unwrap();
    assert_eq!(s.skipped[0].name, "crashy");
    assert_eq!(
        s.skipped[0].skipped.as_ref().unwrap().crashed_boot_id,
        "boot-1"
    );
    assert!(crate::report::format_status(&s).contains("SKIPPED by the crash-loop guard: crashy"));
    // The timer confirms "good" in boot 2; had it not, boot 3 would skip
    // it too.
    boot(&f, "boot-2", 400.0);
    assert_eq!(
        f.host
            .confirm(&st, Duration::from_secs(300), false)
            .unwrap(),
        ["good"]
    );
    // Boot 3: still skipped (reported as an old decision), until reinstalled.
    boot(&f, "boot-3", 5.0);
    let r = f.host.load_all(&st, &opts).unwrap();
    assert_eq!(
        (r.skipped[0].name.as_str(), r.skipped[0].new),
        ("crashy", false)
    );
    assert_eq!(r.already_loaded, ["good"]);
    // A clean shutdown confirms whatever this boot loaded.
    st.mark_pending(
        REL,
        "good",
        &crate::state::Pending {
            boot_id: "boot-3".into(),
            uptime_at_load: 4.0,
        },
    )
    .unwrap();
    assert_eq!(
        f.host.confirm(&st, Duration::from_secs(300), true).unwrap(),
        ["good"]
    );
}

#[test]
fn units_are_written_and_enabled_once() {
    let f = FakeRoot::new("units");
    let dirs = UnitDirs {
        etc: f.0.join("etc/systemd/system"),
        lib: vec![f.0.join("lib/systemd/system")],
        running_marker: f.0.join("run/systemd/system"),
    };
    let r = enable_units(&dirs, Path::new("/opt/suture/bin/suture")).unwrap();
    assert_eq!(r.written.len(), 3);
    let svc = std::fs::read_to_string(dirs.etc.join("suture.service")).unwrap();
    assert!(
        svc.contains("ExecStart=/opt/suture/bin/suture load --all"),
        "{svc}"
    );
    assert!(svc.contains("Before=sysinit.target"), "{svc}");
    assert_eq!(
        std::fs::read_link(dirs.etc.join("sysinit.target.wants/suture.service")).unwrap(),
        dirs.etc.join("suture.service")
    );
    assert!(dirs
        .etc
        .join("timers.target.wants/suture-confirm.timer")
        .exists());
    let again = enable_units(&dirs, Path::new("/opt/suture/bin/suture")).unwrap();
    assert!(again.written.is_empty() && again.enabled.is_empty());
    // A unit shipped by a package wins over writing one.
    let g = FakeRoot::new("units-pkg");
    let dirs = UnitDirs {
        etc: g.0.join("etc"),
        lib: vec![g.0.join("lib")],
        running_marker: g.0.join("run"),
    };
    g.write("lib/suture.service", "[Unit]\n");
    let r = enable_units(&dirs, Path::new("/usr/bin/suture")).unwrap();
    assert!(!dirs.etc.join("suture.service").exists());
    assert_eq!(r.written.len(), 2);
    assert_eq!(
        std::fs::read_link(dirs.etc.join("sysinit.target.wants/suture.service")).unwrap(),
        g.0.join("lib/suture.service")
    );
}

#[test]
fn status_shows_a_stalled_transition_and_prometheus_text() {
    let f = fixture("status", Behaviour::Completes, &[]);
    lay_out_patch(&f.fake.0, "lp_s", true);
    stalled_task_77(&f);
    f.fake.write("proc/1/task/1/patch_state", "1\n");
    let s = f.host.status(None).unwrap();
    let t = s.transition.as_ref().unwrap();
    assert_eq!(
        (t.patch.as_str(), t.direction.as_str()),
        ("lp_s", "patching")
    );
    assert_eq!(t.tasks.iter().map(|t| t.pid).collect::<Vec<_>>(), [77]);
    assert_eq!(t.tasks[0].patched_on_stack, ["cmdline_proc_show"]);
    assert!(!s.patches[0].applied);
    assert_eq!(s.effective_version, REL);
    let text = crate::report::format_status(&s);
    assert!(
        text.contains("lp_s is patching; 1 task(s)") && text.contains("cmdline_proc_show+0x1/0x2"),
        "{text}"
    );
    let prom = crate::report::prometheus_text(&s);
    assert!(
        prom.contains("suture_transition_blocking_tasks 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("suture_patch_applied{patch=\"lp_s\",installed=\"false\"} 0\n"),
        "{prom}"
    );
    // Unpatching direction: enabled 0, the task in state 1 blocks.
    f.fake.write("sys/kernel/livepatch/lp_s/enabled", "0\n");
    let s = f.host.status(None).unwrap();
    let t = s.transition.unwrap();
    assert_eq!((t.direction.as_str(), t.tasks[0].pid), ("unpatching", 1));
}

/// A self-signed certificate made with openssl, for a trust store.
fn test_cert(dir: &Path) -> Vec<u8> {
    let o = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-x509", "-days", "1", "-batch", "-newkey", "rsa:2048",
        ])
        .args(["-subj", "/CN=suture unit test"])
        .arg("-keyout")
        .arg(dir.join("unit.key"))
        .arg("-out")
        .arg(dir.join("unit.pem"))
        .output()
        .expect("openssl is installed (scripts/setup.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(dir.join("unit.pem")).unwrap()
}

#[test]
fn with_a_trust_store_an_unsigned_patch_is_refused_before_the_kernel() {
    let f = fixture("truststore", Behaviour::Completes, &[]);
    let p = write_ko(&f, "lp.ko", &ko("lp_unsigned", true, REL));
    // An empty store changes nothing.
    f.fake.mkdir("etc/suture/certs");
    assert!(f.host.check_module(&p).unwrap().signature.is_none());
    let cert = test_cert(&f.fake.0);
    std::fs::write(f.fake.0.join("etc/suture/certs/ours.pem"), cert).unwrap();
    let e = f.host.load(&p, &quick()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsigned, "{e}");
    assert!(
        e.to_string().contains("not signed") && e.to_string().contains("--sign-key"),
        "{e}"
    );
    assert!(!f.fake.0.join("sys/kernel/livepatch/lp_unsigned").exists());
    // install stores nothing it would refuse to load.
    let st = StateDir(f.fake.0.join("state"));
    assert_eq!(
        f.host.install(&st, &p, &quick()).unwrap_err().kind,
        ErrorKind::Unsigned
    );
    assert_eq!(
        f.host.install_for_boot(&st, &p).unwrap_err().kind,
        ErrorKind::Unsigned
    );
    assert!(st.get(REL, "lp_unsigned").is_none());
    // A store file that is not a certificate refuses everything.
    std::fs::write(f.fake.0.join("etc/suture/certs/broken.crt"), b"junk").unwrap();
    let e = f.host.check_module(&p).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TrustStore, "{e}");
    assert!(e.to_string().contains("broken.crt"), "{e}");
}

#[test]
fn an_installed_patch_changed_since_install_is_refused() {
    let f = fixture("changed", Behaviour::Completes, &[]);
    boot(&f, "b1", 1.0);
    let st = StateDir(f.fake.0.join("state"));
    let p = write_ko(&f, "fix.ko", &ko("fix_a", true, REL));
    st.store(REL, "fix_a", &p).unwrap();
    let inst = st.get(REL, "fix_a").unwrap();
    let rec = inst.record.clone().unwrap();
    assert_eq!(
        rec.sha256.as_deref(),
        Some(state::sha256_hex(&std::fs::read(&p).unwrap()).as_str())
    );
    assert!(!inst.changed_since_install);
    assert_eq!(st.record_of(&inst.path), Ok(Some(rec)));
    assert_eq!(st.record_of(&p), Ok(None));
    // One byte of the stored copy changes (the .modinfo string stays valid).
    let mut data = std::fs::read(&inst.path).unwrap();
    let at = data.windows(6).position(|w| w == b"fix_a\0").unwrap() + 4;
    data[at] = b'b';
    std::fs::write(&inst.path, &data).unwrap();
    assert!(st.get(REL, "fix_a").unwrap().changed_since_install);
    let r = f.host.load_all(&st, &quick()).unwrap();
    assert!(r.loaded.is_empty());
    assert_eq!(r.failed.len(), 1);
    let e = &r.failed[0].error;
    assert_eq!(e.kind, ErrorKind::Modified, "{e}");
    assert!(
        e.to_string().contains("changed since it was installed"),
        "{e}"
    );
    assert!(!f.fake.0.join("sys/kernel/livepatch/fix_b").exists());
    // Loaded by its path, the same check applies once the caller passes the record.
    let opts = LoadOptions {
        installed_sha256: st.record_of(&inst.path).unwrap().and_then(|r| r.sha256),
        ..quick()
    };
    assert_eq!(
        f.host.load(&inst.path, &opts).unwrap_err().kind,
        ErrorKind::Modified
    );
    // Reinstalling records the new hash; then it loads.
    let (_, rep) = f
        .host
        .install(
            &st,
            &write_ko(&f, "fix2.ko", &ko("fix_a", true, REL)),
            &quick(),
        )
        .unwrap();
    assert!(rep.is_some());
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                v.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn module_fields_that_would_leave_the_state_directory_are_refused() {
    let f = fixture("escape", Behaviour::Completes, &[]);
    boot(&f, "boot-a", 30.0);
    // Deep enough that "../../.." from a release directory stays inside
    // the fake root, where the test can see what was written.
    let st = StateDir(f.fake.0.join("var/lib/suture/state"));
    std::fs::create_dir_all(&st.0).unwrap();
    let before = files_under(&f.fake.0);
    let by_name = write_ko(&f, "n.ko", &ko("../../../escaped", true, REL));
    let by_release = write_ko(&f, "r.ko", &ko("escaped", true, "../../.."));
    let by_shell = write_ko(&f, "s.ko", &ko("$(id>PWNED)", true, REL));
    for p in [&by_name, &by_release, &by_shell] {
        let e = f.host.install(&st, p, &quick()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotAModule, "{e}");
        assert!(e.message.contains("is not valid"), "{e}");
        let e = f.host.install_for_boot(&st, p).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotAModule, "{e}");
    }
    let mut after = files_under(&f.fake.0);
    after.retain(|p| !["n.ko", "r.ko", "s.ko"].contains(&p.as_str()));
    assert_eq!(
        after, before,
        "nothing but the three test modules was written"
    );
    assert!(f.deleted.lock().unwrap().is_empty());
    // A name from the command line is held to the same rule.
    let e = f
        .host
        .uninstall(&st, "../../../etc/passwd", &UnloadOptions::default())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadInput, "{e}");
    // And the state directory's own writers refuse such names whoever calls them.
    let err = st.store_data(REL, "../x", &by_name, b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = st.remove("../..", "x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn state_that_cannot_be_read_fails_closed() {
    let f = fixture("unreadable", Behaviour::Completes, &[]);
    let st = StateDir(f.fake.0.join("state"));
    let names = [
        "json_cut",
        "skip_cut",
        "pend_cut",
        "json_link",
        "json_gone",
        "fine",
    ];
    for n in names {
        st.store(REL, n, &write_ko(&f, &format!("{n}.ko"), &ko(n, true, REL)))
            .unwrap();
    }
    let file = |n: &str, ext: &str| st.release_dir(REL).join(format!("{n}.{ext}"));
    // Each damaged the way a full disk or a crash mid-write would.
    std::fs::write(file("json_cut", "json"), "{\"seq\": 1, \"instal").unwrap();
    std::fs::write(file("skip_cut", "skipped"), "{\"reason\": \"loaded dur").unwrap();
    std::fs::write(file("pend_cut", "pending"), "").unwrap();
    std::fs::remove_file(file("json_link", "json")).unwrap();
    std::os::unix::fs::symlink(file("fine", "json"), file("json_link", "json")).unwrap();
    std::fs::remove_file(file("json_gone", "json")).unwrap();
    boot(&f, "boot-1", 10.0);
    let opts = LoadOptions {
        timeout: Duration::from_secs(5),
        ..quick()
    };
    let r = f.host.load_all(&st, &opts).unwrap();
    assert_eq!(r.loaded, ["fine"]);
    let mut failed: Vec<(&str, ErrorKind)> = r
        .failed
        .iter()
        .map(|x| (x.name.as_str(), x.error.kind))
        .collect();
    failed.sort_by_key(|x| x.0);
    assert_eq!(
        failed,
        [
            ("json_cut", ErrorKind::StateUnreadable),
            ("json_gone", ErrorKind::StateUnreadable),
            ("json_link", ErrorKind::StateUnreadable),
            ("pend_cut", ErrorKind::StateUnreadable),
            ("skip_cut", ErrorKind::StateUnreadable),
        ]
    );
    for n in ["json_cut", "skip_cut", "pend_cut", "json_link", "json_gone"] {
        assert!(
            !f.fake.0.join("sys/kernel/livepatch").join(n).exists(),
            "{n} was loaded"
        );
    }
    let why = |n: &str| {
        r.failed
            .iter()
            .find(|x| x.name == n)
            .unwrap()
            .error
            .to_string()
    };
    assert!(
        why("json_cut").contains("json_cut.json is damaged"),
        "{}",
        why("json_cut")
    );
    assert!(why("json_link").contains("symlink"), "{}", why("json_link"));
    assert!(
        why("json_gone").contains("json_gone.json is missing"),
        "{}",
        why("json_gone")
    );
    // The damaged crash marker is kept for the operator, not deleted.
    assert!(file("pend_cut", "pending").exists());
    // list and status say so.
    let inst = st.installed(REL).unwrap();
    let guard = |n: &str| inst.iter().find(|i| i.name == n).unwrap().guard;
    assert_eq!(guard("skip_cut"), state::Guard::Unreadable);
    assert_eq!(guard("fine"), state::Guard::Pending);
    let s = f.host.status(Some(&st)).unwrap();
    assert_eq!(s.unreadable.len(), 5);
    let text = crate::report::format_status(&s);
    assert!(
        text.contains(
            "UNREADABLE state, not loaded at boot: pend_cut: pend_cut.pending is damaged"
        ),
        "{text}"
    );
    assert!(crate::report::prometheus_text(&s).contains("suture_patches_unreadable 5\n"));
    let json = serde_json::to_value(&inst).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["guard"] == "unreadable"));

    // A release directory that is a file: nothing can be loaded from it,
    // and the boot unit must fail rather than report "nothing installed".
    let other = StateDir(f.fake.0.join("state2"));
    std::fs::create_dir_all(&other.0).unwrap();
    std::fs::write(other.release_dir(REL), "not a directory").unwrap();
    let e = f.host.load_all(&other, &opts).unwrap_err();
    assert_eq!(e.kind, ErrorKind::StateUnreadable, "{e}");
    // So is a state directory that is a file.
    std::fs::write(f.fake.0.join("state3"), "x").unwrap();
    let e = f
        .host
        .load_all(&StateDir(f.fake.0.join("state3")), &opts)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::StateUnreadable, "{e}");
    // A state directory that does not exist yet is simply empty.
    let r = f
        .host
        .load_all(&StateDir(f.fake.0.join("state4")), &opts)
        .unwrap();
    assert!(r.loaded.is_empty() && r.failed.is_empty());
}

/// A cumulative patch of a distribution update (`suture triage --build`):
/// status reports the update's source version and the object counts, in
/// every format; a version that is not one is not repeated.
#[test]
fn status_reports_the_effective_source_version_of_a_cumulative_patch() {
    let f = fixture("update", Behaviour::Completes, &[]);
    boot(&f, "boot-a", 30.0);
    let st = StateDir(f.fake.0.join("state"));
    let p = write_ko(
        &f,
        "livepatch_linux_6_1_187_1.ko",
        &ko_with(
            "livepatch_linux_6_1_187_1",
            true,
            REL,
            "suture_source_version=6.1.187-1\0suture_update_live=41\0suture_update_reboot=3\0suture_object=fs/proc/base.o\0",
        ),
    );
    let opts = LoadOptions {
        timeout: Duration::from_secs(5),
        ..quick()
    };
    f.host.install(&st, &p, &opts).unwrap();
    let s = f.host.status(Some(&st)).unwrap();
    let u = s.update.as_ref().expect("an update");
    assert_eq!(u.source_version, "6.1.187-1");
    assert_eq!(u.patch, "livepatch_linux_6_1_187_1");
    assert_eq!((u.objects_live, u.objects_need_reboot), (41, 3));
    let text = crate::report::format_status(&s);
    assert!(
        text.contains("source:    6.1.187-1 (cumulative patch livepatch_linux_6_1_187_1): 41 object(s) of the update live, 3 need a reboot"),
        "{text}"
    );
    let prom = crate::report::prometheus_text(&s);
    assert!(prom.contains("suture_update_objects{source_version=\"6.1.187-1\",patch=\"livepatch_linux_6_1_187_1\",state=\"reboot\"} 3"), "{prom}");
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["update"]["objects_live"], 41);

    let bad = ko_with("fixv", true, REL, "suture_source_version=6.1\n\x1b[2J\0");
    let m = crate::modinfo::parse_module(&bad).unwrap();
    assert_eq!(m.suture.source_version, None);
}
