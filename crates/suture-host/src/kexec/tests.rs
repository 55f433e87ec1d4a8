use super::*;
use crate::sysfs::testutil::FakeRoot;
use std::cell::RefCell;

/// A root tree standing in for `/`: `boot/`, `proc/`, `sys/`.
struct Tree(FakeRoot);

impl Tree {
    fn new(tag: &str) -> Self {
        let t = Tree(FakeRoot::new(tag));
        t.write("proc/sys/kernel/kexec_load_disabled", "0\n");
        t.write("sys/kernel/kexec_loaded", "0\n");
        t.write(
            "proc/cmdline",
            "BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-amd64 root=UUID=abc ro initrd=/boot/initrd.img-6.1.0-56-amd64 quiet\n",
        );
        t
    }
    fn root(&self) -> &Path {
        &self.0 .0
    }
    fn write(&self, rel: &str, text: &str) {
        self.0.write(rel, text)
    }
    fn install(&self, release: &str) {
        self.write(&format!("boot/vmlinuz-{release}"), "image bytes");
        self.write(&format!("boot/initrd.img-{release}"), "initrd bytes");
    }
}

/// Records calls; "the kernel" flips `sys/kernel/kexec_loaded` like the
/// real one, unless told to fail with an errno.
struct FakeSys {
    root: PathBuf,
    euid: u32,
    fail: Option<i32>,
    calls: RefCell<Vec<String>>,
}

impl FakeSys {
    fn new(t: &Tree) -> Self {
        FakeSys {
            root: t.root().to_path_buf(),
            euid: 0,
            fail: None,
            calls: RefCell::new(vec![]),
        }
    }
}

impl KexecSys for FakeSys {
    fn euid(&self) -> u32 {
        self.euid
    }
    fn file_load(&self, kernel: &File, initrd: &File, cmdline: &CString) -> io::Result<()> {
        use std::io::Read;
        let mut k = String::new();
        let mut i = String::new();
        (&*kernel).read_to_string(&mut k)?;
        (&*initrd).read_to_string(&mut i)?;
        self.calls
            .borrow_mut()
            .push(format!("load {k}|{i}|{}", cmdline.to_str().unwrap()));
        if let Some(e) = self.fail {
            return Err(io::Error::from_raw_os_error(e));
        }
        std::fs::write(self.root.join("sys/kernel/kexec_loaded"), "1\n")
    }
    fn file_unload(&self) -> io::Result<()> {
        self.calls.borrow_mut().push("unload".into());
        std::fs::write(self.root.join("sys/kernel/kexec_loaded"), "0\n")
    }
    fn log_mark(&self) -> LogMark {
        LogMark {
            kmsg: None,
            index: 0,
        }
    }
    fn log_since(&self, _: LogMark) -> Vec<String> {
        vec!["kexec_file: Enforced kernel signature verification failed (-129).".into()]
    }
}

#[test]
fn split_respects_quotes_and_blanks() {
    assert_eq!(
        split_cmdline("  a=1\tb=\"x y\"  c \n"),
        vec!["a=1", "b=\"x y\"", "c"]
    );
    assert_eq!(split_cmdline(""), Vec::<&str>::new());
    assert_eq!(split_cmdline("\"a b\" c"), vec!["\"a b\"", "c"]);
}

#[test]
fn carry_over_drops_boot_files_only() {
    assert_eq!(
        carry_over("BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-amd64 root=UUID=abc ro initrd=/boot/initrd.img quiet\n"),
        "root=UUID=abc ro quiet"
    );
    // A parameter that merely starts like one of them stays.
    assert_eq!(
        carry_over("initrdmem=1 BOOT_IMAGEX=2"),
        "initrdmem=1 BOOT_IMAGEX=2"
    );
    // Quoted values stay whole; init's arguments after `--` are untouched.
    assert_eq!(
        carry_over("dyndbg=\"file a.c +p\" initrd=x -- initrd=y single"),
        "dyndbg=\"file a.c +p\" -- initrd=y single"
    );
    // A QEMU -kernel boot has neither.
    assert_eq!(
        carry_over("root=/dev/vda rw console=ttyS0"),
        "root=/dev/vda rw console=ttyS0"
    );
}

#[test]
fn cmdline_replace_and_append() {
    let running = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro";
    let s = |r: Option<&str>, a: Option<&str>| CmdlineSpec {
        replace: r.map(str::to_string),
        append: a.map(str::to_string),
    };
    assert_eq!(
        build_cmdline(running, &s(None, None)).unwrap(),
        "root=/dev/sda1 ro"
    );
    assert_eq!(
        build_cmdline(running, &s(None, Some(" nokaslr  quiet "))).unwrap(),
        "root=/dev/sda1 ro nokaslr quiet"
    );
    assert_eq!(
        build_cmdline(
            running,
            &s(Some("root=/dev/vda console=ttyS0"), Some("x=1"))
        )
        .unwrap(),
        "root=/dev/vda console=ttyS0 x=1"
    );
    // --cmdline is taken as given: BOOT_IMAGE there was asked for.
    assert_eq!(
        build_cmdline(running, &s(Some("BOOT_IMAGE=a b"), None)).unwrap(),
        "BOOT_IMAGE=a b"
    );
    assert_eq!(build_cmdline("", &s(None, Some("a"))).unwrap(), "a");
}

#[test]
fn cmdline_refusals() {
    let s = |a: &str| CmdlineSpec {
        replace: None,
        append: Some(a.to_string()),
    };
    let e = build_cmdline("ro", &s("a\0b")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadInput);
    let e = build_cmdline("ro", &s("opt=\"a b")).unwrap_err();
    assert!(e.message.contains("unbalanced"), "{e}");
    // 2047 bytes fit (with the NUL: COMMAND_LINE_MAX), 2048 do not.
    let fits = "x".repeat(COMMAND_LINE_MAX - 1 - 3);
    assert_eq!(
        build_cmdline("ro", &s(&fits)).unwrap().len(),
        COMMAND_LINE_MAX - 1
    );
    let e = build_cmdline("ro", &s(&format!("{fits}y"))).unwrap_err();
    assert!(
        e.message.contains("2048 bytes") && e.message.contains("at most 2047"),
        "{e}"
    );
}

#[test]
fn release_names() {
    for ok in ["6.1.0-47-amd64", "6.12.117+deb12-amd64"] {
        check_release(ok).unwrap();
    }
    for bad in ["", ".", "..", "../../etc/passwd", "a b", "6.1/x", "a\nb"] {
        assert_eq!(
            check_release(bad).unwrap_err().kind,
            ErrorKind::BadInput,
            "{bad:?}"
        );
    }
}

#[test]
fn resolve_under_root_names_the_package() {
    let t = Tree::new("resolve");
    t.install("6.1.0-56-amd64");
    t.install("6.1.0-47-amd64");
    let (img, ird) = resolve(t.root(), "6.1.0-47-amd64").unwrap();
    assert_eq!(img, t.root().join("boot/vmlinuz-6.1.0-47-amd64"));
    assert_eq!(ird, t.root().join("boot/initrd.img-6.1.0-47-amd64"));

    let e = resolve(t.root(), "6.1.0-99-amd64").unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownRelease);
    assert!(
        e.message.contains("vmlinuz-6.1.0-99-amd64 not found")
            && e.message
                .contains("installed: 6.1.0-47-amd64, 6.1.0-56-amd64"),
        "{e}"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("install it first: apt-get install linux-image-6.1.0-99-amd64")
    );

    t.write("boot/vmlinuz-6.1.0-50-amd64", "image");
    let e = resolve(t.root(), "6.1.0-50-amd64").unwrap_err();
    assert!(e.message.contains("no initramfs"), "{e}");
    assert!(e
        .hint
        .unwrap()
        .contains("update-initramfs -c -k 6.1.0-50-amd64"));
}

#[test]
fn lockdown_modes() {
    assert_eq!(parse_lockdown("[none] integrity confidentiality\n"), None);
    assert_eq!(
        parse_lockdown("none [integrity] confidentiality\n").as_deref(),
        Some("integrity")
    );
    assert_eq!(parse_lockdown(""), None);
}

#[test]
fn errno_translation() {
    let r = "6.1.0-47-amd64";
    let e = explain_errno(libc::EPERM, r, Some("integrity"));
    assert_eq!(e.kind, ErrorKind::Signature);
    assert!(e.message.contains("locked down (integrity)"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("mokutil"), "{e}");
    assert_eq!(e.errno, Some(libc::EPERM));
    assert_eq!(
        explain_errno(libc::EPERM, r, None).kind,
        ErrorKind::Permission
    );
    for (errno, says) in [
        (libc::EKEYREJECTED, "does not verify"),
        (libc::ENOKEY, "does not trust"),
        (libc::EBADMSG, "malformed"),
        (libc::ENODATA, "not signed"),
    ] {
        let e = explain_errno(errno, r, None);
        assert_eq!(e.kind, ErrorKind::Signature, "{errno}");
        assert!(e.message.contains(says), "{errno}: {e}");
    }
    let e = explain_errno(libc::ENOEXEC, r, None);
    assert_eq!(e.kind, ErrorKind::NotKernel);
    assert!(e
        .hint
        .unwrap()
        .contains("--reinstall linux-image-6.1.0-47-amd64"));
    assert_eq!(explain_errno(libc::EBUSY, r, None).kind, ErrorKind::Busy);
    assert!(explain_errno(libc::ENOMEM, r, None)
        .hint
        .unwrap()
        .contains("MODULES=dep"));
    assert!(explain_errno(libc::EINVAL, r, None)
        .hint
        .unwrap()
        .contains("--cmdline"));
    assert_eq!(
        explain_errno(libc::ENOSYS, r, None).kind,
        ErrorKind::KexecDisabled
    );
    // Anything else still says what the kernel said.
    let e = explain_errno(libc::EIO, r, None);
    assert!(e.message.contains("Input/output error"), "{e}");
}

#[test]
fn load_carries_the_running_cmdline_and_checks_kexec_loaded() {
    let t = Tree::new("load");
    t.install("6.1.0-47-amd64");
    let sys = FakeSys::new(&t);
    let spec = CmdlineSpec {
        replace: None,
        append: Some("suture.kexec=1".into()),
    };
    let l = load(t.root(), &sys, "6.1.0-47-amd64", &spec).unwrap();
    assert_eq!(l.cmdline, "root=UUID=abc ro quiet suture.kexec=1");
    assert!(l.kexec_loaded);
    assert_eq!(l.image, t.root().join("boot/vmlinuz-6.1.0-47-amd64"));
    assert_eq!(
        *sys.calls.borrow(),
        vec!["load image bytes|initrd bytes|root=UUID=abc ro quiet suture.kexec=1"]
    );
    let u = unload(t.root(), &sys).unwrap();
    assert!(u.was_loaded);
    assert_eq!(kexec_loaded(t.root()), Some(false));
}

#[test]
fn refusals_before_the_syscall() {
    let t = Tree::new("refuse");
    t.install("6.1.0-47-amd64");
    let spec = CmdlineSpec::default();

    let mut sys = FakeSys::new(&t);
    sys.euid = 1000;
    let e = load(t.root(), &sys, "6.1.0-47-amd64", &spec).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission);
    let e = unload(t.root(), &sys).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permission);

    let sys = FakeSys::new(&t);
    let e = load(t.root(), &sys, "6.1.0-99-amd64", &spec).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownRelease);

    t.write("proc/sys/kernel/kexec_load_disabled", "1\n");
    let e = load(t.root(), &sys, "6.1.0-47-amd64", &spec).unwrap_err();
    assert_eq!(e.kind, ErrorKind::KexecDisabled);
    assert!(e.hint.unwrap().contains("cannot be turned back on"));

    t.write("proc/sys/kernel/kexec_load_disabled", "0\n");
    t.write("proc/sys/kernel/kexec_load_limit_reboot", "0\n");
    let e = load(t.root(), &sys, "6.1.0-47-amd64", &spec).unwrap_err();
    assert_eq!(e.kind, ErrorKind::KexecDisabled);
    assert!(e.message.contains("kexec_load_limit_reboot = 0"), "{e}");
    t.write("proc/sys/kernel/kexec_load_limit_reboot", "-1\n");
    assert_eq!(preflight(t.root()).loads_left, Some(-1));

    std::fs::remove_file(t.root().join("proc/sys/kernel/kexec_load_disabled")).unwrap();
    let e = load(t.root(), &sys, "6.1.0-47-amd64", &spec).unwrap_err();
    assert!(e.message.contains("no kexec support"), "{e}");
    assert!(sys.calls.borrow().is_empty(), "{:?}", sys.calls.borrow());
}

#[test]
fn kernel_refusal_is_translated_with_the_kernel_log() {
    let t = Tree::new("errno");
    t.install("6.1.0-47-amd64");
    t.write(
        "sys/kernel/security/lockdown",
        "none integrity [confidentiality]\n",
    );
    let mut sys = FakeSys::new(&t);
    sys.fail = Some(libc::EPERM);
    let e = load(t.root(), &sys, "6.1.0-47-amd64", &CmdlineSpec::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Signature);
    assert!(e.message.contains("locked down (confidentiality)"), "{e}");
    assert_eq!(e.kernel_log.len(), 1);
    assert_eq!(kexec_loaded(t.root()), Some(false));
}

#[test]
fn success_without_kexec_loaded_is_an_error() {
    struct Liar(FakeSys);
    impl KexecSys for Liar {
        fn euid(&self) -> u32 {
            0
        }
        fn file_load(&self, _: &File, _: &File, _: &CString) -> io::Result<()> {
            Ok(())
        }
        fn file_unload(&self) -> io::Result<()> {
            Ok(())
        }
        fn log_mark(&self) -> LogMark {
            self.0.log_mark()
        }
        fn log_since(&self, m: LogMark) -> Vec<String> {
            self.0.log_since(m)
        }
    }
    let t = Tree::new("liar");
    t.install("6.1.0-47-amd64");
    let e = load(
        t.root(),
        &Liar(FakeSys::new(&t)),
        "6.1.0-47-amd64",
        &CmdlineSpec::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("kexec_loaded does not say 1"), "{e}");
    t.write("sys/kernel/kexec_loaded", "1\n");
    let e = unload(t.root(), &Liar(FakeSys::new(&t))).unwrap_err();
    assert!(e.message.contains("still says 1"), "{e}");
}
