//! End to end on the installed Debian kernel under QEMU: build the kernel's
//! own sample livepatch out of tree, then `suture load`, `list`, `unload` it
//! in the guest and check what `/proc/cmdline` prints at each step.
//!
//! Needs: linux-image-RELEASE, linux-headers-RELEASE, linux-source-6.1 (or
//! an extracted tree in $SUTURE_LINUX_SRC or /tmp/exp/linux-source-6.1),
//! gcc/make, qemu-system-x86, busybox-static. Skips only when the kernel
//! image is absent and CI is unset; in CI every missing piece is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn release() -> String {
    suture_lab::test_release()
}

// One guest at a time: the stall test's timeouts assume the guest is not
// sharing the two cores with another TCG guest.
static VM_LOCK: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// What the guest needs, built once per test process: the tests run in
/// parallel and would otherwise race on the same Kbuild directory.
struct Artifacts {
    sample: PathBuf,
    plain: PathBuf,
    stall: PathBuf,
    missing: PathBuf,
    other_build: PathBuf,
    stallkt: PathBuf,
    kt_patch: PathBuf,
    suture: PathBuf,
}

fn artifacts() -> &'static Artifacts {
    static A: std::sync::OnceLock<Artifacts> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        // Under target/ rather than /tmp: kept for incremental rebuilds and
        // removed by `cargo clean`, so nothing accumulates in /tmp.
        let dir = target_dir().join("suture-host-vm").join(release());
        let (sample, plain, stall, missing) = build_modules(&dir);
        Artifacts {
            other_build: dir.join("mod/other-build.ko"),
            stallkt: dir.join("mod/suture_stall.ko"),
            kt_patch: dir.join("mod/kt-patch.ko"),
            sample,
            plain,
            stall,
            missing,
            suture: suture_binary(),
        }
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The sample's source: an extracted tree if there is one, else the one
/// file pulled out of Debian's linux-source tarball.
fn sample_source(scratch: &Path) -> PathBuf {
    let rel = "samples/livepatch/livepatch-sample.c";
    let mut trees: Vec<PathBuf> = std::env::var_os("SUTURE_LINUX_SRC")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    trees.push("/tmp/exp/linux-source-6.1".into());
    trees.push("/usr/src/linux-source-6.1".into());
    if let Some(p) = trees.iter().map(|t| t.join(rel)).find(|p| p.is_file()) {
        return p;
    }
    let tarball = Path::new("/usr/src/linux-source-6.1.tar.xz");
    assert!(
        tarball.is_file(),
        "no kernel source for {rel}: install linux-source-6.1 (apt-get install linux-source-6.1) or set SUTURE_LINUX_SRC"
    );
    let member = format!("linux-source-6.1/{rel}");
    run(Command::new("tar")
        .arg("-xJf")
        .arg(tarball)
        .arg("-C")
        .arg(scratch)
        .arg(&member));
    scratch.join(member)
}

/// A livepatch for `hrtimer_nanosleep`: a task sleeping in `sleep` keeps the
/// old function on its stack, so the patching transition cannot finish
/// until the kernel's fake signal (about 15 s in); a shorter load timeout
/// sees a real stall. The replacement sleeps correctly, minus the restart
/// bookkeeping, because `suture` itself sleeps through it while polling.
const STALL_PATCH_C: &str = r#"#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/hrtimer.h>
#include <linux/sched.h>

static long stall_hrtimer_nanosleep(ktime_t rqtp, const enum hrtimer_mode mode,
				    const clockid_t clockid)
{
	ktime_t expires = rqtp;

	set_current_state(TASK_INTERRUPTIBLE);
	if (schedule_hrtimeout_range_clock(&expires, current->timer_slack_ns, mode, clockid))
		return -ERESTARTNOHAND;
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "hrtimer_nanosleep", .new_func = stall_hrtimer_nanosleep, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int stall_init(void) { return klp_enable_patch(&patch); }
static void stall_exit(void) { }
module_init(stall_init);
module_exit(stall_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#;

/// A livepatch for a function no kernel has: the livepatch core fails the
/// load with EINVAL and says why only in the kernel log.
const MISSING_PATCH_C: &str = r#"#include <linux/module.h>
#include <linux/livepatch.h>

static void missing_replacement(void) { }

static struct klp_func funcs[] = {
	{ .old_name = "suture_no_such_function", .new_func = missing_replacement, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int missing_init(void) { return klp_enable_patch(&patch); }
static void missing_exit(void) { }
module_init(missing_init);
module_exit(missing_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#;

/// The sample livepatch claiming, in the key `suture build` records, a
/// build-id no kernel has: the same release, another build.
const OTHER_BUILD_C: &str = r#"#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

static int other_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "other build");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = other_cmdline_proc_show, },
	{ }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int other_init(void) { return klp_enable_patch(&patch); }
static void other_exit(void) { }
module_init(other_init);
module_exit(other_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(suture_release_build_id, "00112233445566778899aabbccddeeff00112233");
MODULE_INFO(suture_cve, "CVE-2099-0001");
"#;

/// Replaces `suture_stall_wait` in `examples/stall`'s module, whose kthread
/// sleeps uninterruptibly in that function until its `release` parameter is
/// set (the kernel's fake signal only wakes interruptible sleepers).
const KT_PATCH_C: &str = r#"#include <linux/module.h>
#include <linux/livepatch.h>

static void new_suture_stall_wait(void) { }

static struct klp_func funcs[] = {
	{ .old_name = "suture_stall_wait", .new_func = new_suture_stall_wait, },
	{ }
};
static struct klp_object objs[] = { { .name = "suture_stall", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int kt_patch_init(void) { return klp_enable_patch(&patch); }
static void kt_patch_exit(void) { }
module_init(kt_patch_init);
module_exit(kt_patch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"#;

/// Builds the sample livepatch, an ordinary module (the refusal case), the
/// stalling patch and the missing-function patch against the release's
/// headers.
fn build_modules(scratch: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let release = release();
    let headers = PathBuf::from(format!("/usr/src/linux-headers-{release}"));
    assert!(
        headers.is_dir(),
        "{} missing: apt-get install linux-headers-{release}",
        headers.display()
    );
    let m = scratch.join("mod");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(sample_source(scratch), m.join("livepatch-sample.c")).unwrap();
    std::fs::write(
        m.join("plain-mod.c"),
        "#include <linux/module.h>\nstatic int __init plain_init(void) { return 0; }\n\
         static void __exit plain_exit(void) { }\nmodule_init(plain_init);\nmodule_exit(plain_exit);\n\
         MODULE_LICENSE(\"GPL\");\n",
    )
    .unwrap();
    std::fs::write(m.join("stall-patch.c"), STALL_PATCH_C).unwrap();
    std::fs::write(m.join("missing-patch.c"), MISSING_PATCH_C).unwrap();
    std::fs::write(m.join("other-build.c"), OTHER_BUILD_C).unwrap();
    let stall = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stall/suture_stall.c");
    std::fs::copy(&stall, m.join("suture_stall.c")).unwrap();
    std::fs::write(m.join("kt-patch.c"), KT_PATCH_C).unwrap();
    std::fs::write(
        m.join("Kbuild"),
        "obj-m := livepatch-sample.o plain-mod.o stall-patch.o missing-patch.o other-build.o suture_stall.o kt-patch.o\n",
    )
    .unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", m.display()))
        .arg("-j1")
        .arg("modules"));
    (
        m.join("livepatch-sample.ko"),
        m.join("plain-mod.ko"),
        m.join("stall-patch.ko"),
        m.join("missing-patch.ko"),
    )
}

/// Newest modification time of the sources a `suture` build depends on.
fn newest_source(root: &Path) -> std::time::SystemTime {
    fn walk(dir: &Path, newest: &mut std::time::SystemTime) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    walk(&p, newest);
                }
            } else if p.extension().is_some_and(|x| x == "rs") || name == "Cargo.toml" {
                if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                    *newest = (*newest).max(m);
                }
            }
        }
    }
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    walk(&root.join("crates"), &mut newest);
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(m) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    newest
}

/// `$SUTURE_BIN`, else the workspace's `target/debug/suture` when it is
/// newer than every source, else a fresh `cargo build` of it. An
/// integration test of this crate gets no CARGO_BIN_EXE for another crate,
/// and rebuilding unconditionally would not be free: `cargo build -p suture`
/// unifies features differently from `cargo test --workspace` and so
/// recompiles the suture crates even when nothing changed.
fn suture_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SUTURE_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let bin = target_dir().join("debug/suture");
    let fresh = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest_source(&root));
    if !fresh {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-j1", "-p", "suture", "--bin", "suture"]));
    }
    assert!(
        bin.is_file(),
        "cargo build did not produce {}",
        bin.display()
    );
    bin
}

/// Splits the guest's output into sections started by `== NAME` lines.
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

const SCRIPT: &str = r#"
echo "== cmdline-before"; cat /proc/cmdline
echo "== load"; suture load /root/livepatch-sample.ko; echo "rc=$?"
echo "== cmdline-patched"; cat /proc/cmdline
echo "== list-json"; suture list --json; echo "rc=$?"
echo "== list-table"; suture list; echo "rc=$?"
echo "== load-again"; suture load /root/livepatch-sample.ko; echo "rc=$?"
echo "== unload"; suture unload livepatch_sample; echo "rc=$?"
echo "== cmdline-after"; cat /proc/cmdline
echo "== after-state"
test -e /sys/kernel/livepatch/livepatch_sample && echo "sysfs=present" || echo "sysfs=gone"
grep -q '^livepatch_sample ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== plain"; suture load /root/plain-mod.ko; echo "rc=$?"
echo "== plain-state"
grep -q '^plain_mod ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== missing"; suture load --json /root/missing-patch.ko; echo "rc=$?"
echo "== missing-state"
grep -q '^missing_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== load-json"; suture load --json /root/livepatch-sample.ko; echo "rc=$?"
echo "== unload-json"; suture unload --json livepatch_sample; echo "rc=$?"
echo "== end"
"#;

fn guest() -> suture_lab::Vm {
    let a = artifacts();
    let mut vm = suture_lab::Vm::new(&release()).unwrap();
    vm.add_executable(&a.suture, "/bin/suture").unwrap();
    vm.add_file(&a.sample, "/root/livepatch-sample.ko").unwrap();
    vm.add_file(&a.plain, "/root/plain-mod.ko").unwrap();
    vm.add_file(&a.stall, "/root/stall-patch.ko").unwrap();
    vm.add_file(&a.missing, "/root/missing-patch.ko").unwrap();
    vm.add_file(&a.other_build, "/root/other-build.ko").unwrap();
    vm.add_file(&a.stallkt, "/root/suture_stall.ko").unwrap();
    vm.add_file(&a.kt_patch, "/root/kt-patch.ko").unwrap();
    vm
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

#[test]
fn sample_livepatch_load_list_unload_in_guest() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let vm = guest();
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
        "script did not finish; guest output:\n{}",
        r.output
    );

    let before = sec("cmdline-before");
    assert!(before.contains("console=ttyS0"), "{out}");
    assert!(!before.contains("live patched"), "{out}");

    let load = sec("load");
    assert!(
        load.contains("loaded livepatch_sample") && load.ends_with("rc=0\n"),
        "load:\n{load}"
    );
    assert_eq!(
        sec("cmdline-patched").trim(),
        "this has been live patched",
        "{out}"
    );

    let list = json_of(&sec("list-json"));
    assert_eq!(list["ok"], true, "{list}");
    let patches = list["patches"].as_array().unwrap();
    let p = patches
        .iter()
        .find(|p| p["name"] == "livepatch_sample")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (
            p["active"].clone(),
            p["enabled"].clone(),
            p["transition"].clone()
        ),
        (true.into(), true.into(), false.into())
    );
    assert_eq!(p["objects"][0]["name"], "vmlinux");
    // 6.1 has the per-object `patched` attribute but not `replace`.
    assert_eq!(p["objects"][0]["patched"], true);
    assert_eq!(p["replace"], serde_json::Value::Null);
    assert_eq!(p["objects"][0]["functions"][0]["name"], "cmdline_proc_show");
    assert!(
        p["module"]["taint"]
            .as_str()
            .is_some_and(|t| t.contains('K')),
        "{p}"
    );

    let table = sec("list-table");
    assert!(
        table.contains("livepatch_sample") && table.contains("vmlinux(1)"),
        "table:\n{table}"
    );

    let again = sec("load-again");
    assert!(
        again.contains("already loaded") && again.ends_with("rc=1\n"),
        "load-again:\n{again}"
    );

    let unload = sec("unload");
    assert!(
        unload.contains("unloaded livepatch_sample") && unload.ends_with("rc=0\n"),
        "unload:\n{unload}"
    );
    assert_eq!(sec("cmdline-after"), before, "{out}");
    let after = sec("after-state");
    assert!(
        after.contains("sysfs=gone") && after.contains("module=gone"),
        "after:\n{after}"
    );

    let plain_out = sec("plain");
    assert!(
        plain_out.contains("not a livepatch module"),
        "plain:\n{plain_out}"
    );
    assert!(!plain_out.ends_with("rc=0\n"), "plain:\n{plain_out}");
    assert!(sec("plain-state").contains("module=gone"), "{out}");

    // The errno alone (EINVAL) does not say which function was missing;
    // the kernel log lines captured during the attempt do.
    let missing = sec("missing");
    assert!(missing.ends_with("rc=1\n"), "missing:\n{missing}");
    let mj = json_of(&missing);
    assert_eq!(mj["error"]["kind"], "incompatible", "{mj}");
    assert_eq!(mj["error"]["errno"], 22, "errno should be EINVAL: {mj}");
    let log = mj["error"]["kernel_log"]
        .as_array()
        .unwrap_or_else(|| panic!("no kernel_log: {mj}"));
    assert!(
        log.iter().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains("suture_no_such_function"))),
        "kernel log does not name the missing function: {mj}"
    );
    assert!(sec("missing-state").contains("module=gone"), "{out}");

    let lj = json_of(&sec("load-json"));
    assert_eq!(lj["ok"], true, "{lj}");
    assert_eq!(lj["load"]["name"], "livepatch_sample");
    assert!(lj["load"]["transition_ms"].as_f64().is_some(), "{lj}");
    let uj = json_of(&sec("unload-json"));
    assert_eq!(
        (uj["ok"].clone(), uj["unload"]["was_enabled"].clone()),
        (true.into(), true.into()),
        "{uj}"
    );
    eprintln!(
        "load: {} ms (transition {} ms); unload: {} ms",
        lj["load"]["total_ms"], lj["load"]["transition_ms"], uj["unload"]["total_ms"]
    );
}

const STALL_SCRIPT: &str = r#"
sleep 600 &
SLEEPER=$!
# The sleeper must be inside nanosleep before the patch arrives, or it
# would switch on its way there and nothing would stall.
i=0
while ! grep -q hrtimer_nanosleep /proc/$SLEEPER/stack 2>/dev/null; do
  i=$((i+1)); [ $i -gt 300 ] && echo "sleeper never reached nanosleep" && break
  usleep 100000
done
echo "== stall"; suture load --timeout 3 /root/stall-patch.ko; echo "rc=$?"
echo "== stall-json"; suture load --json --timeout 2 /root/stall-patch.ko; echo "rc=$?"
echo "== stall-after"
echo "sleeper=$SLEEPER"
test -e /sys/kernel/livepatch/stall_patch && echo "sysfs=present" || echo "sysfs=gone"
grep -q '^stall_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
kill $SLEEPER
echo "== sample"; suture load /root/livepatch-sample.ko; echo "rc=$?"; cat /proc/cmdline
suture unload livepatch_sample; echo "rc=$?"
echo "== end"
"#;

/// A real stalled transition: the load must time out, name the sleeping
/// task and the patched function on its stack, reverse the transition,
/// remove the module, and leave the kernel able to take the next patch.
#[test]
fn stalled_transition_is_reversed_and_explained() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let vm = guest();
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = vm.run(STALL_SCRIPT).unwrap();
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
        "script did not finish; guest output:\n{}",
        r.output
    );
    let after = sec("stall-after");
    let sleeper: u32 = after
        .lines()
        .find_map(|l| l.strip_prefix("sleeper="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sleeper pid in:\n{after}"));

    let stall = sec("stall");
    assert!(stall.ends_with("rc=1\n"), "stall:\n{stall}");
    assert!(
        stall.contains("did not finish its transition within 3s"),
        "stall:\n{stall}"
    );
    assert!(
        stall.contains(&format!("task {sleeper} (tid {sleeper}) \"sleep\"")),
        "stall:\n{stall}"
    );
    assert!(
        stall.contains("patched function(s) on its stack: hrtimer_nanosleep"),
        "stall:\n{stall}"
    );
    assert!(
        stall.contains("reversed and the module removed"),
        "stall:\n{stall}"
    );

    let j = json_of(&sec("stall-json"));
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["error"]["kind"], "transition_timeout", "{j}");
    let tasks = j["error"]["stalled_tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{j}"));
    let t = tasks
        .iter()
        .find(|t| t["pid"] == sleeper)
        .unwrap_or_else(|| panic!("sleeper {sleeper} not listed: {j}"));
    assert_eq!(t["comm"], "sleep");
    assert_eq!(t["patch_state"], 0);
    assert!(
        t["stack"].as_array().is_some_and(|st| st.iter().any(|f| f
            .as_str()
            .is_some_and(|f| f.starts_with("hrtimer_nanosleep+")))),
        "{t}"
    );

    assert!(
        after.contains("sysfs=gone") && after.contains("module=gone"),
        "after:\n{after}"
    );
    let sample = sec("sample");
    assert!(
        sample.contains("this has been live patched"),
        "sample:\n{sample}"
    );
    assert_eq!(sample.matches("rc=0").count(), 2, "sample:\n{sample}");
}

/// Everything after the first stall: status while a load waits, the
/// kernel's fake signal finishing a transition, an unload stalled by a task
/// inside the replacement function, `--force` refused without consent and
/// applied with it, a build-id mismatch refused.
const TRANSITION_SCRIPT: &str = r#"
# $1: a function that must be on the new sleeper's stack.
start_sleeper() {
  sleep 600 &
  SLEEPER=$!
  i=0
  while ! grep -q "$1" /proc/$SLEEPER/stack 2>/dev/null; do
    i=$((i+1)); [ $i -gt 300 ] && echo "sleeper never reached $1" && break
    usleep 100000
  done
}
start_sleeper hrtimer_nanosleep
S1=$SLEEPER
echo "== ids"; echo "s1=$S1"
T0=$(date +%s)
suture load --timeout 60 /root/stall-patch.ko > /tmp/bg.out 2>&1 &
BG=$!
i=0
while [ "$(cat /sys/kernel/livepatch/stall_patch/transition 2>/dev/null)" != 1 ]; do
  i=$((i+1)); [ $i -gt 200 ] && echo "never in transition" && break
  usleep 20000
done
echo "== status-json"; suture status --json; echo "rc=$?"
echo "== status-text"; suture status; echo "rc=$?"
echo "== status-prom"; suture status --prometheus /tmp/suture.prom > /dev/null; echo "rc=$?"; cat /tmp/suture.prom
wait $BG; BGRC=$?
echo "== bg-load"; cat /tmp/bg.out; echo "rc=$BGRC"; echo "waited=$(( $(date +%s) - T0 ))"
echo "== applied-json"; suture status --json; echo "rc=$?"
start_sleeper stall_hrtimer_nanosleep
S3=$SLEEPER
echo "== unload-stall"; echo "s3=$S3"; suture unload --timeout 3 stall_patch; echo "rc=$?"
echo "== status-unpatching"; suture status --json; echo "rc=$?"
T0=$(date +%s)
echo "== unload-again"; suture unload --timeout 60 stall_patch; echo "rc=$?"; echo "waited=$(( $(date +%s) - T0 ))"
grep -q '^stall_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
start_sleeper hrtimer_nanosleep
S4=$SLEEPER
echo "== force-no-consent"; suture load --force --timeout 2 /root/stall-patch.ko < /dev/null; echo "rc=$?"
grep -q '^stall_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== force"; suture load --force --yes --timeout 2 --json /root/stall-patch.ko; echo "rc=$?"
cat /sys/kernel/livepatch/stall_patch/enabled /sys/kernel/livepatch/stall_patch/transition
# Forcing a patching transition pins only patches it replaces (none here).
echo "== force-load-unload"; suture unload --timeout 10 stall_patch; echo "rc=$?"
grep -q '^stall_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
kill $S1 $S3 $S4
usleep 200000
suture load --timeout 30 /root/stall-patch.ko > /dev/null; echo "reload_rc=$?"
start_sleeper stall_hrtimer_nanosleep
echo "== force-unload"; suture unload --force --yes --timeout 2 stall_patch; echo "rc=$?"
test -e /sys/kernel/livepatch/stall_patch && echo "sysfs=present" || echo "sysfs=gone"
grep -q '^stall_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== force-unload-again"; suture unload --timeout 2 stall_patch; echo "rc=$?"
echo "== other-build"; suture load /root/other-build.ko; echo "rc=$?"
grep -q '^other_build ' /proc/modules && echo "module=loaded" || echo "module=gone"
echo "== end"
"#;

/// The GNU build-id of the release's vmlinux when suture's cache has the
/// extracted image (`suture build` leaves it there).
fn cached_vmlinux_build_id() -> Option<String> {
    use object::{Object, ObjectSection};
    let cache = std::env::var_os("SUTURE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/suture".into());
    let data = std::fs::read(cache.join(release()).join("vmlinux")).ok()?;
    let f = object::File::parse(&*data).ok()?;
    let notes = f.section_by_name(".notes")?.data().ok()?.to_vec();
    let mut off = 0;
    while off + 12 <= notes.len() {
        let rd = |o: usize| u32::from_le_bytes(notes[o..o + 4].try_into().unwrap()) as usize;
        let (nsz, dsz, ty) = (rd(off), rd(off + 4), rd(off + 8));
        let name = &notes[off + 12..off + 12 + nsz];
        let d0 = off + 12 + ((nsz + 3) & !3);
        if ty == 3 && name == b"GNU\0" {
            return Some(
                notes[d0..d0 + dsz]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
        }
        off = d0 + ((dsz + 3) & !3);
    }
    None
}

#[test]
fn transitions_seen_signalled_forced_and_builds_checked_in_guest() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let vm = guest().timeout(std::time::Duration::from_secs(400));
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = vm.run(TRANSITION_SCRIPT).unwrap();
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
        "script did not finish; guest output:\n{}",
        r.output
    );
    let num = |sec: &str, key: &str| -> u64 {
        sec.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in:\n{sec}"))
    };
    let s1 = num(&sec("ids"), "s1=");

    // While the load waits: the patch in transition, the sleeper named
    // with its stack and the patched function on it.
    let st = json_of(&sec("status-json"));
    assert_eq!(st["ok"], true, "{st}");
    let status = &st["status"];
    assert_eq!(status["release"], release());
    let t = &status["transition"];
    assert_eq!(
        (t["patch"].clone(), t["direction"].clone()),
        ("stall_patch".into(), "patching".into()),
        "{st}"
    );
    let task = t["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["pid"] == s1)
        .unwrap_or_else(|| panic!("sleeper {s1} not in {t}"));
    assert_eq!(task["comm"], "sleep");
    assert_eq!(task["patched_on_stack"][0], "hrtimer_nanosleep", "{task}");
    assert!(
        task["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("hrtimer_nanosleep+")),
        "{task}"
    );
    let p = &status["patches"][0];
    assert_eq!(
        (p["name"].clone(), p["applied"].clone()),
        ("stall_patch".into(), false.into()),
        "{st}"
    );
    // The running kernel's build-id, read from /sys/kernel/notes, is the
    // one in the release's vmlinux.
    let bid = status["build_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no build_id: {st}"));
    assert_eq!(bid.len(), 40, "{bid}");
    if let Some(want) = cached_vmlinux_build_id() {
        assert_eq!(bid, want);
    }
    let text = sec("status-text");
    assert!(
        text.contains("stall_patch is patching") && text.contains(&format!("pid {s1} ")),
        "{text}"
    );
    let prom = sec("status-prom");
    assert!(prom.starts_with("rc=0"), "{prom}");
    assert!(prom.contains("suture_transition_in_progress 1"), "{prom}");
    assert!(
        prom.contains("suture_patch_applied{patch=\"stall_patch\",installed=\"false\"} 0"),
        "{prom}"
    );
    assert!(prom.contains(&format!("build_id=\"{bid}\"")), "{prom}");

    // The kernel's fake signal (every 15 s on 6.1) got the sleeper out of
    // the old function; no attribute to write, suture only waited.
    let bg = sec("bg-load");
    assert!(
        bg.contains("loaded stall_patch") && bg.contains("rc=0"),
        "{bg}"
    );
    let waited = num(&bg, "waited=");
    assert!(
        (10..=45).contains(&waited),
        "the transition took {waited} s; the fake signal comes at 15 s:\n{bg}"
    );
    let applied = json_of(&sec("applied-json"));
    assert_eq!(
        applied["status"]["patches"][0]["applied"], true,
        "{applied}"
    );
    assert_eq!(
        applied["status"]["effective_version"],
        format!("{}+stall_patch", release())
    );
    assert!(applied["status"].get("transition").is_none(), "{applied}");

    // The other direction: a task asleep in the replacement function.
    let us = sec("unload-stall");
    let s3 = num(&us, "s3=");
    assert!(
        us.ends_with("rc=1\n") && us.contains("did not finish unpatching within 3s"),
        "{us}"
    );
    assert!(
        us.contains(&format!("task {s3} (tid {s3}) \"sleep\"")),
        "{us}"
    );
    assert!(us.contains("on its stack: stall_hrtimer_nanosleep"), "{us}");
    let su = json_of(&sec("status-unpatching"));
    let t = &su["status"]["transition"];
    assert_eq!(t["direction"], "unpatching", "{su}");
    assert!(
        t["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["pid"] == s3),
        "{su}"
    );
    let again = sec("unload-again");
    assert!(
        again.contains("removed module stall_patch") || again.contains("unloaded stall_patch"),
        "{again}"
    );
    assert!(
        again.contains("rc=0") && again.contains("module=gone"),
        "{again}"
    );

    // --force: refused without a terminal or --yes, before loading.
    let nc = sec("force-no-consent");
    assert!(
        nc.contains("add --yes") && nc.contains("rc=1") && nc.contains("module=gone"),
        "{nc}"
    );
    let f = sec("force");
    let fj = json_of(&f);
    assert_eq!(fj["load"]["aid"]["forced"], true, "{fj}");
    assert_eq!(fj["load"]["aid"]["kernel_signals"], true, "{fj}");
    assert!(
        f.contains("rc=0\n1\n0\n"),
        "forced patch enabled, transition over:\n{f}"
    );
    assert!(f.contains("replaces") && f.contains("can never be"), "{f}");
    let flu = sec("force-load-unload");
    assert!(
        flu.contains("unloaded stall_patch") && flu.contains("rc=0") && flu.contains("module=gone"),
        "{flu}"
    );
    let fu = sec("force-unload");
    assert!(
        fu.contains("reload_rc=0") || sec("force-load-unload").contains("reload_rc=0"),
        "{out}"
    );
    assert!(
        fu.contains("FORCED") && fu.contains("stays loaded until reboot") && fu.contains("rc=0"),
        "{fu}"
    );
    assert!(
        fu.contains("sysfs=gone") && fu.contains("module=loaded"),
        "{fu}"
    );
    let fa = sec("force-unload-again");
    assert!(fa.contains("rc=1") && fa.contains("reboot"), "{fa}");

    let ob = sec("other-build");
    assert!(
        ob.contains("another build of the same release")
            && ob.contains("00112233445566778899aabbccddeeff00112233"),
        "{ob}"
    );
    assert!(ob.contains("rc=2") && ob.contains("module=gone"), "{ob}");
}

const KTHREAD_SCRIPT: &str = r#"
insmod /root/suture_stall.ko || echo "insmod failed"
KT=
for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = suture_stall ] && KT=${d#/proc/}; done
i=0
while ! grep -q suture_stall_wait /proc/$KT/stack 2>/dev/null; do
  i=$((i+1)); [ $i -gt 100 ] && echo "kthread never reached suture_stall_wait" && break
  usleep 50000
done
echo "== ids"; echo "kt=$KT"
T0=$(date +%s)
echo "== kt-stall"; suture load --timeout 17 /root/kt-patch.ko; echo "rc=$?"; echo "waited=$(( $(date +%s) - T0 ))"
test -e /sys/kernel/livepatch/kt_patch && echo "sysfs=present" || echo "sysfs=gone"
grep -q '^kt_patch ' /proc/modules && echo "module=loaded" || echo "module=gone"
grep -q suture_stall_wait /proc/$KT/stack && echo "kthread=in-old-function"
echo 1 > /sys/module/suture_stall/parameters/release
i=0
while ! grep -q suture_stall_idle /proc/$KT/stack 2>/dev/null; do
  i=$((i+1)); [ $i -gt 100 ] && echo "kthread never left suture_stall_wait" && break
  usleep 50000
done
echo "== kt-load"; suture load --timeout 30 /root/kt-patch.ko; echo "rc=$?"
cat /sys/kernel/livepatch/kt_patch/suture_stall/patched
echo "== kt-unload"; suture unload kt_patch; echo "rc=$?"
rmmod suture_stall; echo "rmmod_rc=$?"
echo "== end"
"#;

/// Issue 4's stall: a kthread asleep uninterruptibly in the function the
/// patch replaces. The kernel's fake signal (sent at 15 s) cannot wake it,
/// so a 17 s load fails naming the kthread and leaves the old code in
/// place; once the kthread has left the function, the same load succeeds.
#[test]
fn kthread_in_uninterruptible_sleep_blocks_until_it_leaves() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let vm = guest().timeout(std::time::Duration::from_secs(300));
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = vm.run(KTHREAD_SCRIPT).unwrap();
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
        "script did not finish; guest output:\n{}",
        r.output
    );
    let kt: u32 = sec("ids")
        .trim()
        .strip_prefix("kt=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no kthread pid:\n{out}"));
    let st = sec("kt-stall");
    assert!(
        st.contains("rc=1") && st.contains("did not finish its transition within 17s"),
        "{st}"
    );
    assert!(
        st.contains(&format!("task {kt} (tid {kt}) \"suture_stall\"")),
        "{st}"
    );
    assert!(
        st.contains("patched function(s) on its stack: suture_stall_wait"),
        "{st}"
    );
    assert!(
        st.contains("sleep uninterruptibly"),
        "the hint should say why the fake signal did not help:\n{st}"
    );
    assert!(
        st.contains("sysfs=gone")
            && st.contains("module=gone")
            && st.contains("kthread=in-old-function"),
        "{st}"
    );
    let waited: u64 = st
        .lines()
        .find_map(|l| l.strip_prefix("waited="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(waited >= 17, "{st}");
    let ld = sec("kt-load");
    assert!(
        ld.contains("loaded kt_patch")
            && ld.contains("suture_stall:suture_stall_wait")
            && ld.contains("rc=0\n1\n"),
        "{ld}"
    );
    let ul = sec("kt-unload");
    assert!(ul.contains("rc=0") && ul.contains("rmmod_rc=0"), "{ul}");
}

/// The release's vmlinux from suture's cache (`suture build` extracts it).
fn cached_vmlinux() -> Option<Vec<u8>> {
    let cache = std::env::var_os("SUTURE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/suture".into());
    std::fs::read(cache.join(release()).join("vmlinux")).ok()
}

fn sha256_hex(b: &[u8]) -> String {
    // Same hash as suture_host::kcore::masked_sha256 with no mask.
    suture_host::kcore::masked_sha256(b, &[])
}

const DUMP_SCRIPT: &str = r#"
echo "== text"; grep ' _text$' /proc/kallsyms
echo "== before"; suture verify --json --dump vmlinux:cmdline_proc_show; echo "rc=$?"
suture load /root/livepatch-sample.ko > /dev/null; echo "load_rc=$?"
echo "== patched"; suture verify --json --dump vmlinux:cmdline_proc_show; echo "rc=$?"
echo "== end"
"#;

const VERIFY_SCRIPT: &str = r#"
echo "== good"; suture verify /root/verify-good.ko; echo "rc=$?"
echo "== bad"; suture verify --json /root/verify-bad.ko; echo "rc=$?"
echo "== nohash"; suture verify /root/livepatch-sample.ko; echo "rc=$?"
suture load /root/livepatch-sample.ko > /dev/null; echo "load_rc=$?"
echo "== good-while-patched"; suture verify /root/verify-good.ko; echo "rc=$?"
echo "== end"
"#;

/// Ksplice's run-pre check on the host: the bytes of `cmdline_proc_show`
/// read through /proc/kcore are the image's (masked as the build would),
/// also while a livepatch has rewritten its fentry site; a record whose
/// bytes do not match is refused.
#[test]
fn verify_compares_functions_with_kernel_memory() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let Some(vmlinux) = cached_vmlinux() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no extracted vmlinux in suture's cache: run `suture build examples/cmdline.patch --kernel {}` first",
            release()
        );
        eprintln!(
            "SKIP: no cached vmlinux for {} (run suture build once)",
            release()
        );
        return;
    };
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = guest().run(DUMP_SCRIPT).unwrap();
    let s = sections(r.script_output());
    assert!(s.contains_key("end"), "{}", r.output);
    let guest_text = u64::from_str_radix(s["text"].split_whitespace().next().unwrap(), 16).unwrap();
    let before = json_of(&s["before"]);
    let patched = json_of(&s["patched"]);
    let hex = |v: &serde_json::Value| -> Vec<u8> {
        let h = v["bytes"].as_str().unwrap_or_else(|| panic!("{v}"));
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let (mem, mem_patched) = (hex(&before), hex(&patched));
    assert_eq!(before["address"], patched["address"]);
    // Booted, the fentry site is a 5-byte nop; patched, a call into the
    // ftrace trampoline; nothing else changes.
    assert_eq!(&mem[..5], &[0x0f, 0x1f, 0x44, 0x00, 0x00], "{before}");
    assert_eq!(mem_patched[0], 0xe8, "{patched}");
    assert_eq!(&mem[5..], &mem_patched[5..]);

    // The same function in the image file, at the same offset from _text.
    use object::{Object, ObjectSection};
    let addr = u64::from_str_radix(
        before["address"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let elf = object::File::parse(&*vmlinux).unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let static_addr = text.address() + (addr - guest_text);
    let (foff, _) = text.file_range().unwrap();
    let start = (foff + static_addr - text.address()) as usize;
    let file = &vmlinux[start..start + mem.len()];
    // The mask `suture build` records (suture_symbols::runtime_mask), with
    // the sites the image's own tables say the kernel rewrites.
    let kallsyms = suture_symbols::kallsyms_from_vmlinux(&vmlinux).unwrap();
    let rewritten = suture_symbols::runtime_rewritten_sites(&vmlinux, &kallsyms).unwrap();
    let mask = suture_symbols::runtime_mask(file, static_addr, &rewritten);
    assert!(
        mask.iter().any(|&(o, l)| o == 0 && l >= 5),
        "the fentry call must be the first instruction: {mask:?}"
    );
    let masked = |b: &[u8]| suture_host::kcore::masked_sha256(b, &mask);
    assert_eq!(
        masked(file),
        masked(&mem),
        "the running function is not the image's"
    );
    // The mask hides only what it must: unmasked, the bytes differ.
    assert_ne!(sha256_hex(file), sha256_hex(&mem));

    // Modules carrying the record `suture build` is to write: the right
    // hash, and one for a build whose code differs in one unmasked byte.
    let mask_s = mask
        .iter()
        .map(|(o, l)| format!("{o}+{l}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut wrong = file.to_vec();
    let spot = (0..wrong.len())
        .find(|i| !mask.iter().any(|(o, l)| (o..&(o + l)).contains(&i)))
        .unwrap();
    wrong[spot] ^= 0xff;
    let rec = |bytes: &[u8]| {
        format!(
            "vmlinux cmdline_proc_show 0 {} {} {mask_s}",
            bytes.len(),
            suture_host::kcore::masked_sha256(bytes, &mask)
        )
    };
    let dir = target_dir()
        .join("suture-host-vm")
        .join(release())
        .join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, r) in [("verify-good", rec(file)), ("verify-bad", rec(&wrong))] {
        std::fs::write(
            dir.join(format!("{name}.c")),
            format!(
                "#include <linux/module.h>\n#include <linux/livepatch.h>\n\
                 static void repl(void) {{ }}\n\
                 static struct klp_func funcs[] = {{ {{ .old_name = \"cmdline_proc_show\", .new_func = repl, }}, {{ }} }};\n\
                 static struct klp_object objs[] = {{ {{ .funcs = funcs, }}, {{ }} }};\n\
                 static struct klp_patch patch = {{ .mod = THIS_MODULE, .objs = objs, }};\n\
                 static int i(void) {{ return klp_enable_patch(&patch); }}\nstatic void e(void) {{ }}\n\
                 module_init(i);\nmodule_exit(e);\nMODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n\
                 MODULE_INFO(suture_func, \"{r}\");\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(dir.join("Kbuild"), "obj-m := verify-good.o verify-bad.o\n").unwrap();
    run(Command::new("make")
        .arg("-C")
        .arg(format!("/usr/src/linux-headers-{}", release()))
        .arg(format!("M={}", dir.display()))
        .args(["-j1", "modules"]));
    let mut vm = guest();
    vm.add_file(&dir.join("verify-good.ko"), "/root/verify-good.ko")
        .unwrap();
    vm.add_file(&dir.join("verify-bad.ko"), "/root/verify-bad.ko")
        .unwrap();
    let r = vm.run(VERIFY_SCRIPT).unwrap();
    let s = sections(r.script_output());
    assert!(s.contains_key("end"), "{}", r.output);
    let good = &s["good"];
    assert!(
        good.contains(": match") && good.contains("verified") && good.ends_with("rc=0\n"),
        "{good}"
    );
    let bad = json_of(&s["bad"]);
    assert_eq!(bad["verify"]["functions"][0]["outcome"], "differs", "{bad}");
    assert!(s["bad"].ends_with("rc=2\n"), "{}", s["bad"]);
    let nohash = &s["nohash"];
    assert!(
        nohash.contains("nothing was compared") && nohash.contains("rc=3\nload_rc=0\n"),
        "{nohash}"
    );
    let gp = &s["good-while-patched"];
    assert!(gp.contains(": match") && gp.ends_with("rc=0\n"), "{gp}");
}

/// Signature enforcement (`module.sig_enforce=1`): the kernel refuses an
/// unsigned patch and suture says why and what to do.
#[test]
fn unsigned_patch_refused_where_signatures_are_enforced() {
    if !suture_lab::require_kernel_or_skip(&release()).unwrap() {
        return;
    }
    let vm = guest().append("module.sig_enforce=1");
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = vm
        .run(
            r#"
echo "== load"; suture load --json /root/livepatch-sample.ko; echo "rc=$?"
grep -q '^livepatch_sample ' /proc/modules && echo "module=loaded" || echo "module=gone"
cat /proc/cmdline
echo "== end"
"#,
        )
        .unwrap();
    let s = sections(r.script_output());
    assert!(s.contains_key("end"), "{}", r.output);
    let load = &s["load"];
    let j = json_of(load);
    assert_eq!(j["error"]["kind"], "signature", "{j}");
    assert_eq!(j["error"]["errno"], libc_ekeyrejected(), "{j}");
    assert!(
        j["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("sign the module"),
        "{j}"
    );
    assert!(
        load.contains("rc=1") && load.contains("module=gone") && !load.contains("live patched"),
        "{load}"
    );
}

/// EKEYREJECTED on x86-64 Linux.
fn libc_ekeyrejected() -> i64 {
    129
}
