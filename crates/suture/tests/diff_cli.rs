//! `suture diff` as a command: each spelling of its options gives the same
//! object, report and exit status; usage errors are bad input (1).

use std::path::PathBuf;
use std::process::{Command, Output};

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/kpatch-unit-objs/x86_64")
        .join(name)
}

fn suture(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn option_spellings_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, patched) = (
        corpus("meminfo-string.ORIG.o"),
        corpus("meminfo-string.PATCHED.o"),
    );
    let (a, b) = (dir.path().join("a.o"), dir.path().join("b.o"));
    let plain = suture(&[
        "diff".as_ref(),
        orig.as_os_str(),
        patched.as_os_str(),
        "-o".as_ref(),
        a.as_os_str(),
        "--entry-size".as_ref(),
        "__jump_table=16".as_ref(),
    ]);
    // `--output=FILE`, the files after `--`, options before them.
    let mut b_arg = std::ffi::OsString::from("--output=");
    b_arg.push(&b);
    let spelled = suture(&[
        "diff".as_ref(),
        "--entry-size".as_ref(),
        "__jump_table=16".as_ref(),
        b_arg.as_os_str(),
        "--".as_ref(),
        orig.as_os_str(),
        patched.as_os_str(),
    ]);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(
        spelled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&spelled.stderr)
    );
    let report = |o: &Output, p: &PathBuf| {
        String::from_utf8_lossy(&o.stdout).replace(&*p.to_string_lossy(), "OUT")
    };
    assert_eq!(report(&plain, &a), report(&spelled, &b));
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same klp object both ways"
    );
}

#[test]
fn usage_errors_are_bad_input() {
    let missing = suture(&["diff".as_ref(), "only-one.o".as_ref()]);
    assert_eq!(
        missing.status.code(),
        Some(1),
        "a missing argument is bad input, not a refusal (2)"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("<PATCHED>"));
    let bad_flag = suture(&[
        "diff".as_ref(),
        "a.o".as_ref(),
        "b.o".as_ref(),
        "--no-such-flag".as_ref(),
    ]);
    assert_eq!(bad_flag.status.code(), Some(1));
    let help = suture(&["diff".as_ref(), "--help".as_ref()]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: suture diff"));
}

/// A `--symbols` file that is neither ELF nor a kallsyms copy is bad input,
/// named, in the report's JSON too.
#[test]
fn a_bad_symbols_file_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let syms = dir.path().join("kallsyms");
    std::fs::write(&syms, "not kallsyms\n").unwrap();
    let out = dir.path().join("x.o");
    let run = |json: bool| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "diff".into(),
            corpus("meminfo-string.ORIG.o").into_os_string(),
            corpus("meminfo-string.PATCHED.o").into_os_string(),
            "-o".into(),
            out.clone().into_os_string(),
            "--symbols".into(),
            syms.clone().into_os_string(),
        ];
        if json {
            args.push("--json".into());
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        suture(&args)
    };
    let plain = run(false);
    assert_eq!(plain.status.code(), Some(1));
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        err.contains("not a kallsyms copy") && err.contains("line 1"),
        "{err}"
    );
    let json = run(true);
    assert_eq!(json.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(j["outcome"], "error");
    assert!(
        j["error"].as_str().unwrap().contains("not a kallsyms copy"),
        "{j}"
    );
    assert!(!out.exists(), "nothing written");
}

/// `suture diff` runs in `suture-diff` when it is beside `suture`, and in
/// process when it is not, with the same result either way.
#[test]
fn runs_suture_diff_beside_it_or_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("suture");
    std::fs::copy(env!("CARGO_BIN_EXE_suture"), &alone).unwrap();
    let run = |bin: &std::path::Path, args: &[&std::ffi::OsStr]| {
        Command::new(bin).args(args).output().unwrap()
    };
    // Only suture-diff's own command line has --version.
    let beside = run(
        env!("CARGO_BIN_EXE_suture").as_ref(),
        &["diff".as_ref(), "--version".as_ref()],
    );
    assert_eq!(beside.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&beside.stdout).starts_with("suture diff "));
    let in_process = run(&alone, &["diff".as_ref(), "--version".as_ref()]);
    assert_eq!(
        in_process.status.code(),
        Some(1),
        "suture's own `diff` has no --version"
    );

    for (pair, code) in [("meminfo-string", 0), ("unique-id-pr-1314", 3)] {
        let orig = corpus(&format!("{pair}.ORIG.o"));
        let mut patched = corpus(&format!("{pair}.PATCHED.o"));
        if !patched.exists() {
            patched = corpus(&format!("{pair}.PATCHED.FAIL.o"));
        }
        let outs = [
            dir.path().join(format!("{pair}.a.o")),
            dir.path().join(format!("{pair}.b.o")),
        ];
        let results: Vec<(Option<i32>, String, Option<Vec<u8>>)> =
            [env!("CARGO_BIN_EXE_suture").as_ref(), alone.as_path()]
                .iter()
                .zip(&outs)
                .map(|(bin, out)| {
                    let o = run(
                        bin,
                        &[
                            "diff".as_ref(),
                            orig.as_os_str(),
                            patched.as_os_str(),
                            "-o".as_ref(),
                            out.as_os_str(),
                        ],
                    );
                    let text =
                        String::from_utf8_lossy(&o.stdout).replace(&*out.to_string_lossy(), "OUT");
                    (o.status.code(), text, std::fs::read(out).ok())
                })
                .collect();
        assert_eq!(results[0].0, Some(code), "{pair}: {}", results[0].1);
        assert_eq!(
            results[0], results[1],
            "{pair}: same status, report and object both ways"
        );
        assert_eq!(
            results[0].2.is_some(),
            code == 0,
            "{pair}: an object only for a patch"
        );
    }
}

/// A reader that went away (`suture diff ... | head -1`) ends the differ like
/// any Unix filter, by SIGPIPE, not with a panic; the object is written first.
#[test]
fn closed_stdout_is_sigpipe_not_a_panic() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.o");
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .args([
            "diff".as_ref(),
            corpus("meminfo-string.ORIG.o").as_os_str(),
            corpus("meminfo-string.PATCHED.o").as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--json".as_ref(),
        ])
        .stdout(write)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.exists(), "the object is written before the report");
}
