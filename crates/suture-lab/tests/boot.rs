//! Boots the installed Debian kernel under TCG. Skips (with a printed reason)
//! only when the image is absent and CI is unset.

use std::sync::Mutex;
use suture_lab::{require_kernel_or_skip, test_release, Vm};

// One guest at a time: parallel TCG guests on two cores make boot times,
// and so the timeout test's margins, unpredictable.
static VM_LOCK: Mutex<()> = Mutex::new(());

#[test]
fn guest_runs_installed_kernel_and_propagates_status() {
    let release = test_release();
    if !require_kernel_or_skip(&release).unwrap() {
        return;
    }
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let vm = Vm::new(&release).unwrap();
    let run = vm
        .run("echo \"guest-release=$(uname -r)\"\nexit 7\n")
        .unwrap();
    eprintln!("boot+run took {:?}", run.duration);
    let out = run.script_output();
    assert!(
        out.contains(&format!("guest-release={release}\n")),
        "guest output:\n{}",
        run.output
    );
    assert_eq!(run.exit_status, 7, "guest output:\n{}", run.output);
}

#[test]
fn added_files_and_dynamic_executables_work_in_guest() {
    let release = test_release();
    if !require_kernel_or_skip(&release).unwrap() {
        return;
    }
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Vm::new(&release).unwrap();
    vm.add_bytes("/root/data.txt", b"payload-42\n".to_vec(), 0o644);
    // A glibc-linked host program exercises the ldd copying; `env` from
    // coreutils is dynamically linked on Debian.
    vm.add_executable(
        std::path::Path::new("/usr/bin/env"),
        "/usr/local/bin/host-env",
    )
    .unwrap();
    let run = vm.run("cat /root/data.txt\n/usr/local/bin/host-env FOO=bar /usr/local/bin/host-env | grep '^FOO='\n").unwrap();
    let out = run.script_output();
    assert!(out.contains("payload-42"), "guest output:\n{}", run.output);
    assert!(out.contains("FOO=bar"), "guest output:\n{}", run.output);
    assert_eq!(run.exit_status, 0, "guest output:\n{}", run.output);
}

#[test]
fn timeout_kills_guest_and_reports_output_so_far() {
    let release = test_release();
    if !require_kernel_or_skip(&release).unwrap() {
        return;
    }
    let _g = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let vm = Vm::new(&release)
        .unwrap()
        .timeout(std::time::Duration::from_secs(25));
    let err = vm.run("echo before-hang\nsleep 1000\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("did not power off"), "{msg}");
    // The boot must have got as far as the script: the message carries the
    // output seen before the kill, which is what makes a hang debuggable.
    assert!(msg.contains("before-hang"), "{msg}");
}
