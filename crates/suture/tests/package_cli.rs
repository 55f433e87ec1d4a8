//! `suture package` on modules it did not build: fields that would become
//! paths, package names or maintainer-script text are refused before
//! anything is written; a good module's scripts carry its values quoted.

use object::write::{Object as WObject, StandardSection};
use object::{Architecture, BinaryFormat, Endianness, SectionKind};
use std::path::Path;
use std::process::Command;

fn livepatch_ko(name: &str, release: &str) -> Vec<u8> {
    let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let t = o.section_id(StandardSection::Text);
    o.append_section_data(t, &[0xc3], 1);
    let mi = o.add_section(vec![], b".modinfo".to_vec(), SectionKind::Data);
    let info = format!("name={name}\0livepatch=Y\0license=GPL\0vermagic={release} SMP preempt mod_unload modversions \0");
    o.append_section_data(mi, info.as_bytes(), 1);
    o.write().unwrap()
}

fn package(ko: &Path, out: &Path) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("package")
        .arg(ko)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_module_fields_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for (name, release) in [
        ("$(id>PWNED)", "6.1.0-56-amd64"),
        ("../../x", "6.1.0-56-amd64"),
        ("fix", "../../.."),
        ("fix", "6.1.0-56-amd64;id>PWNED"),
    ] {
        let ko = dir.path().join("m.ko");
        std::fs::write(&ko, livepatch_ko(name, release)).unwrap();
        let (code, err) = package(&ko, &out);
        assert_eq!(code, Some(2), "{name} {release}: {err}");
        assert!(err.contains("is not valid"), "{err}");
        assert!(entries(&out).is_empty(), "{:?}", entries(&out));
        assert_eq!(entries(dir.path()), ["m.ko", "out"]);
    }
}

#[test]
fn a_good_module_is_packaged_with_quoted_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ko = dir.path().join("fix.ko");
    std::fs::write(&ko, livepatch_ko("livepatch_fix", "6.1.0-56-amd64")).unwrap();
    let (code, err) = package(&ko, &out);
    assert_eq!(code, Some(0), "{err}");
    // Only the package: the staging directory is gone.
    let deb = "suture-patch-livepatch-fix-6.1.0-56-amd64_1_amd64.deb";
    assert_eq!(entries(&out), [deb]);
    let x = dir.path().join("x");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(out.join(deb))
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let postinst = std::fs::read_to_string(x.join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("release='6.1.0-56-amd64'"), "{postinst}");
    assert!(
        postinst.contains("ko='/usr/lib/suture/patches/6.1.0-56-amd64/livepatch_fix.ko'"),
        "{postinst}"
    );
    let prerm = std::fs::read_to_string(x.join("DEBIAN/prerm")).unwrap();
    assert!(prerm.contains("name='livepatch_fix'"), "{prerm}");
    assert_eq!(
        std::fs::read(x.join("usr/lib/suture/patches/6.1.0-56-amd64/livepatch_fix.ko")).unwrap(),
        std::fs::read(&ko).unwrap()
    );
}
