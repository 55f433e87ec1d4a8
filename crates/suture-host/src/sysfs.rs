//! Reading livepatch state from sysfs and procfs under a configurable root
//! (`/` on a real host, a temporary tree in tests).

use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `sys/` and `proc/` live.
#[derive(Debug, Clone)]
pub struct Root(pub PathBuf);

impl Default for Root {
    fn default() -> Self {
        Root(PathBuf::from("/"))
    }
}

impl Root {
    pub fn livepatch_dir(&self) -> PathBuf {
        self.0.join("sys/kernel/livepatch")
    }
    pub fn patch_dir(&self, name: &str) -> PathBuf {
        self.livepatch_dir().join(name)
    }
    pub fn module_dir(&self, name: &str) -> PathBuf {
        self.0.join("sys/module").join(name)
    }
    pub fn proc_dir(&self) -> PathBuf {
        self.0.join("proc")
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_bool(p: &Path) -> Option<bool> {
    match read_trim(p)?.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn read_int(p: &Path) -> Option<i64> {
    read_trim(p)?.parse().ok()
}

/// One patched function directory, `NAME,SYMPOS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedFunction {
    pub name: String,
    pub sympos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchObject {
    /// `vmlinux` or a module name.
    pub name: String,
    /// `None` when the kernel predates the attribute (added in 6.1).
    pub patched: Option<bool>,
    pub functions: Vec<PatchedFunction>,
}

/// The module side of a livepatch: cheap attributes from `/sys/module/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModuleState {
    pub loaded: bool,
    pub refcnt: Option<i64>,
    pub srcversion: Option<String>,
    /// Taint letters the module carries: K livepatch, O out of tree, E unsigned.
    pub taint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchState {
    pub name: String,
    /// False for a livepatch module still loaded whose patch was disabled:
    /// the kernel removes the sysfs directory but not the module.
    pub active: bool,
    pub enabled: Option<bool>,
    pub transition: Option<bool>,
    /// Only in kernels that have the attribute (6.11+).
    pub replace: Option<bool>,
    /// Only in kernels that have the attribute (6.13+).
    pub stack_order: Option<i64>,
    pub objects: Vec<PatchObject>,
    pub module: ModuleState,
}

pub fn module_state(root: &Root, name: &str) -> ModuleState {
    let d = root.module_dir(name);
    ModuleState {
        loaded: d.is_dir(),
        refcnt: read_int(&d.join("refcnt")),
        srcversion: read_trim(&d.join("srcversion")),
        taint: read_trim(&d.join("taint")),
    }
}

fn sorted_subdirs(p: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(p)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Reads `/sys/kernel/livepatch/NAME`; `Ok(None)` when it does not exist.
pub fn read_patch(root: &Root, name: &str) -> io::Result<Option<PatchState>> {
    let d = root.patch_dir(name);
    if !d.is_dir() {
        return Ok(None);
    }
    let mut objects = Vec::new();
    for (oname, opath) in sorted_subdirs(&d)? {
        let mut functions = Vec::new();
        for (fname, _) in sorted_subdirs(&opath).unwrap_or_default() {
            let (n, pos) = match fname.rsplit_once(',') {
                Some((n, p)) => (n.to_string(), p.parse().unwrap_or(0)),
                None => (fname.clone(), 0),
            };
            functions.push(PatchedFunction {
                name: n,
                sympos: pos,
            });
        }
        objects.push(PatchObject {
            name: oname,
            patched: read_bool(&opath.join("patched")),
            functions,
        });
    }
    Ok(Some(PatchState {
        name: name.to_string(),
        active: true,
        enabled: read_bool(&d.join("enabled")),
        transition: read_bool(&d.join("transition")),
        replace: read_bool(&d.join("replace")),
        stack_order: read_int(&d.join("stack_order")),
        objects,
        module: module_state(root, name),
    }))
}

/// Every active patch, then every loaded module tainted `K` (a livepatch)
/// that has no active patch any more.
pub fn list_patches(root: &Root) -> io::Result<Vec<PatchState>> {
    let lp = root.livepatch_dir();
    if !lp.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist: this kernel was built without CONFIG_LIVEPATCH, or sysfs is not mounted", lp.display()),
        ));
    }
    let mut out = Vec::new();
    for (name, _) in sorted_subdirs(&lp)? {
        if let Some(p) = read_patch(root, &name)? {
            out.push(p);
        }
    }
    if let Ok(mods) = sorted_subdirs(&root.0.join("sys/module")) {
        for (name, path) in mods {
            let taint = read_trim(&path.join("taint")).unwrap_or_default();
            if taint.contains('K') && !out.iter().any(|p| p.name == name) {
                out.push(PatchState {
                    name: name.clone(),
                    active: false,
                    enabled: None,
                    transition: None,
                    replace: None,
                    stack_order: None,
                    objects: vec![],
                    module: module_state(root, &name),
                });
            }
        }
    }
    Ok(out)
}

/// Names of patches currently in transition (at most one, by kernel design).
pub fn patches_in_transition(root: &Root) -> Vec<String> {
    sorted_subdirs(&root.livepatch_dir())
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| read_bool(&p.join("transition")) == Some(true))
        .map(|(n, _)| n)
        .collect()
}

/// A task that has not reached the transition's target state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StalledTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub patch_state: i32,
    /// The first frame of the kernel stack that is not a generic scheduler
    /// primitive: where the task is waiting.
    pub blocking_function: Option<String>,
    /// Functions of the patch found on the task's stack: why the kernel
    /// could not switch it.
    pub patched_on_stack: Vec<String>,
    pub stack: Vec<String>,
}

/// Functions every sleeping task has on top of its stack; they say nothing
/// about why the transition is stuck.
const SLEEP_PRIMITIVES: &[&str] = &[
    "__schedule",
    "schedule",
    "schedule_timeout",
    "schedule_hrtimeout_range",
    "schedule_hrtimeout_range_clock",
    "schedule_preempt_disabled",
    "io_schedule",
    "io_schedule_timeout",
    "preempt_schedule_common",
    "__cond_resched",
];

fn frame_function(frame: &str) -> &str {
    frame.split(['+', ' ']).next().unwrap_or(frame)
}

/// Parses `/proc/PID/stack` lines ("[<0>] do_wait+0x1e0/0x310") into frames
/// and picks the blocking one.
pub fn parse_stack(text: &str) -> (Vec<String>, Option<String>) {
    let frames: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let f = match l.find("] ") {
                Some(i) if l.starts_with('[') => &l[i + 2..],
                _ => l,
            };
            (!f.is_empty()).then(|| f.to_string())
        })
        .collect();
    let blocking = frames
        .iter()
        .map(|f| frame_function(f))
        .find(|n| !SLEEP_PRIMITIVES.contains(n))
        .or_else(|| frames.first().map(|f| frame_function(f)))
        .map(str::to_string);
    (frames, blocking)
}

/// The function names a patch replaces, from its sysfs directories.
pub fn patched_function_names(patch: &PatchState) -> Vec<String> {
    patch
        .objects
        .iter()
        .flat_map(|o| o.functions.iter().map(|f| f.name.clone()))
        .collect()
}

/// Walks `/proc/*/task/*/patch_state` for tasks whose state is neither the
/// target nor -1 (no transition in progress for that task). `patched` are
/// the patch's function names, looked for on each stalled task's stack;
/// frames of the patch module itself (`... [MODULE]`, its replacement
/// functions, which block an unpatching transition) count too.
pub fn stalled_tasks(
    root: &Root,
    target: i32,
    patched: &[String],
    module: Option<&str>,
) -> Vec<StalledTask> {
    let module_tag = module.map(|m| format!("[{m}]"));
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir(root.proc_dir()) else {
        return out;
    };
    let mut pids: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let tdir = root.proc_dir().join(pid.to_string()).join("task");
        let Ok(tasks) = std::fs::read_dir(&tdir) else {
            continue;
        };
        let mut tids: Vec<u32> = tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            let t = tdir.join(tid.to_string());
            // Tasks exit while we walk; a missing file just means "gone".
            let Some(state) = read_int(&t.join("patch_state")) else {
                continue;
            };
            let state = state as i32;
            if state == -1 || state == target {
                continue;
            }
            let (stack, blocking_function) =
                parse_stack(&std::fs::read_to_string(t.join("stack")).unwrap_or_default());
            let mut patched_on_stack: Vec<String> = stack
                .iter()
                .filter(|f| {
                    patched.iter().any(|p| p == frame_function(f))
                        || module_tag
                            .as_deref()
                            .is_some_and(|t| f.trim_end().ends_with(t))
                })
                .map(|f| frame_function(f).to_string())
                .collect();
            patched_on_stack.dedup();
            out.push(StalledTask {
                patched_on_stack,
                pid,
                tid,
                comm: read_trim(&t.join("comm")).unwrap_or_default(),
                patch_state: state,
                blocking_function,
                stack,
            });
        }
    }
    out
}

/// How a wait ended without reaching its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    Done(Duration),
    TimedOut,
}

/// Polls `cond` until it is true or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> WaitOutcome {
    let start = Instant::now();
    loop {
        if cond() {
            return WaitOutcome::Done(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return WaitOutcome::TimedOut;
        }
        std::thread::sleep(
            poll.min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(1)),
        );
    }
}

/// The GNU build-id of the running kernel, from the ELF notes the kernel
/// exports in `/sys/kernel/notes` (the same note `readelf -n vmlinux`
/// shows). `None` when the file is missing or carries no build-id.
pub fn running_build_id(root: &Root) -> Option<String> {
    parse_build_id_notes(&std::fs::read(root.0.join("sys/kernel/notes")).ok()?)
}

/// The GNU build-id in ELF note records ([`suture_abi::notes::gnu_build_id`]).
pub fn parse_build_id_notes(data: &[u8]) -> Option<String> {
    suture_abi::notes::gnu_build_id(data)
}

/// The current boot's id (`/proc/sys/kernel/random/boot_id`): tells the
/// boot that left a marker from the one reading it.
pub fn boot_id(root: &Root) -> Option<String> {
    read_trim(&root.proc_dir().join("sys/kernel/random/boot_id")).filter(|s| !s.is_empty())
}

/// Seconds since boot (`/proc/uptime`).
pub fn uptime(root: &Root) -> Option<f64> {
    read_trim(&root.proc_dir().join("uptime"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// True when the patch has no transition in progress (or is gone).
pub fn transition_done(root: &Root, name: &str) -> bool {
    read_bool(&root.patch_dir(name).join("transition")) != Some(true)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A throwaway root with helpers to lay out sysfs/procfs files.
    pub struct FakeRoot(pub PathBuf);

    impl FakeRoot {
        pub fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "suture-host-test-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("sys/kernel/livepatch")).unwrap();
            std::fs::create_dir_all(p.join("sys/module")).unwrap();
            std::fs::create_dir_all(p.join("proc")).unwrap();
            FakeRoot(p)
        }
        pub fn root(&self) -> Root {
            Root(self.0.clone())
        }
        pub fn write(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        pub fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.0.join(rel)).unwrap();
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::FakeRoot;
    use super::*;

    #[test]
    fn lists_active_and_disabled_patches_with_optional_attributes() {
        let f = FakeRoot::new("list");
        f.write("sys/kernel/livepatch/lp_a/enabled", "1\n");
        f.write("sys/kernel/livepatch/lp_a/transition", "0\n");
        f.write("sys/kernel/livepatch/lp_a/vmlinux/patched", "1\n");
        f.mkdir("sys/kernel/livepatch/lp_a/vmlinux/cmdline_proc_show,1");
        f.mkdir("sys/kernel/livepatch/lp_a/ext4/ext4_foo,2");
        f.write("sys/module/lp_a/refcnt", "1\n");
        f.write("sys/module/lp_a/taint", "OEK\n");
        f.write("sys/module/lp_a/srcversion", "ABC123\n");
        f.write("sys/kernel/livepatch/lp_b/enabled", "0\n");
        f.write("sys/kernel/livepatch/lp_b/transition", "1\n");
        f.write("sys/kernel/livepatch/lp_b/replace", "1\n");
        f.write("sys/kernel/livepatch/lp_b/stack_order", "2\n");
        f.write("sys/module/lp_old/taint", "K\n");
        f.write("sys/module/ext4/taint", "\n");
        let l = list_patches(&f.root()).unwrap();
        assert_eq!(
            l.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["lp_a", "lp_b", "lp_old"]
        );
        let a = &l[0];
        assert_eq!(
            (a.enabled, a.transition, a.replace, a.stack_order),
            (Some(true), Some(false), None, None)
        );
        assert_eq!(a.objects[0].name, "ext4");
        assert_eq!(a.objects[0].patched, None);
        assert_eq!(
            a.objects[0].functions,
            [PatchedFunction {
                name: "ext4_foo".into(),
                sympos: 2
            }]
        );
        assert_eq!(a.objects[1].patched, Some(true));
        assert_eq!(a.module.refcnt, Some(1));
        assert_eq!(a.module.taint.as_deref(), Some("OEK"));
        assert_eq!(a.module.srcversion.as_deref(), Some("ABC123"));
        assert_eq!(
            (l[1].replace, l[1].stack_order, l[1].module.loaded),
            (Some(true), Some(2), false)
        );
        assert!(!l[2].active && l[2].module.loaded);
        assert_eq!(patches_in_transition(&f.root()), ["lp_b"]);
        assert!(transition_done(&f.root(), "lp_a"));
        assert!(!transition_done(&f.root(), "lp_b"));
        assert!(transition_done(&f.root(), "missing"));
    }

    #[test]
    fn missing_livepatch_dir_is_explained() {
        let f = FakeRoot::new("nolp");
        std::fs::remove_dir(f.0.join("sys/kernel/livepatch")).unwrap();
        let e = list_patches(&f.root()).unwrap_err();
        assert!(e.to_string().contains("CONFIG_LIVEPATCH"), "{e}");
    }

    #[test]
    fn stalled_tasks_are_those_off_target() {
        let f = FakeRoot::new("stall");
        f.write("proc/1/task/1/patch_state", "1\n");
        f.write("proc/1/task/1/comm", "init\n");
        f.write("proc/42/task/42/patch_state", "0\n");
        f.write("proc/42/task/42/comm", "stuck\n");
        f.write(
            "proc/42/task/42/stack",
            "[<0>] __schedule+0x2f0/0x870\n[<0>] schedule+0x5a/0xd0\n[<0>] cmdline_proc_show+0x10/0x30\n[<0>] seq_read_iter+0x120/0x4c0\n",
        );
        f.write("proc/42/task/43/patch_state", "-1\n");
        f.write("proc/self/task/1/patch_state", "0\n");
        f.mkdir("proc/sys");
        let s = stalled_tasks(
            &f.root(),
            1,
            &["seq_read_iter".to_string(), "other".to_string()],
            Some("lp"),
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].pid, s[0].tid, s[0].comm.as_str(), s[0].patch_state),
            (42, 42, "stuck", 0)
        );
        assert_eq!(s[0].blocking_function.as_deref(), Some("cmdline_proc_show"));
        assert_eq!(s[0].patched_on_stack, ["seq_read_iter"]);
        assert_eq!(s[0].stack.len(), 4);
        // Unpatching: target 0, so the task in state 1 is the stalled one.
        f.write(
            "proc/1/task/1/stack",
            "[<0>] __schedule+0x2f0/0x870\n[<0>] new_cmdline_show+0x10/0x30 [lp]\n",
        );
        let s = stalled_tasks(&f.root(), 0, &[], Some("lp"));
        assert_eq!(s[0].patched_on_stack, ["new_cmdline_show"]);
        assert_eq!(s.iter().map(|t| t.pid).collect::<Vec<_>>(), [1]);
        assert_eq!(s[0].blocking_function.as_deref(), Some("new_cmdline_show"));
    }

    #[test]
    fn build_id_from_kernel_notes() {
        // The first records of a real /sys/kernel/notes: a Xen note, then
        // the GNU build-id, then a Linux note.
        let mut d = Vec::new();
        let mut note = |name: &[u8], ty: u32, desc: &[u8]| {
            d.extend_from_slice(&(name.len() as u32).to_le_bytes());
            d.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            d.extend_from_slice(&ty.to_le_bytes());
            d.extend_from_slice(name);
            d.resize(d.len().next_multiple_of(4), 0);
            d.extend_from_slice(desc);
            d.resize(d.len().next_multiple_of(4), 0);
        };
        note(b"Xen\0", 3, b"linux\0");
        note(b"GNU\0", 3, &[0xeb, 0x4f, 0xbc, 0xd0, 0x37]);
        note(b"Linux\0", 0x101, &[0; 4]);
        assert_eq!(parse_build_id_notes(&d).as_deref(), Some("eb4fbcd037"));
        assert_eq!(parse_build_id_notes(&d[..20]), None);
        assert_eq!(parse_build_id_notes(b""), None);
    }

    #[test]
    fn stack_with_only_primitives_reports_top_frame() {
        let (frames, b) = parse_stack("[<0>] __schedule+0x1/0x2\n[<0>] schedule+0x1/0x2\n");
        assert_eq!(frames, ["__schedule+0x1/0x2", "schedule+0x1/0x2"]);
        assert_eq!(b.as_deref(), Some("__schedule"));
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        assert_eq!(
            wait_until(Duration::from_millis(30), Duration::from_millis(5), || {
                false
            }),
            WaitOutcome::TimedOut
        );
        let mut n = 0;
        assert!(matches!(
            wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
                n += 1;
                n > 3
            }),
            WaitOutcome::Done(_)
        ));
    }
}
