//! Conformance: the 55 x86_64 object pairs of kpatch's unit tests, with the
//! verdict, function count and extra property listed in EXPECTED.tsv.

// Tests and tools of a pure crate do their own I/O.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::PathBuf;

use suture_diff::{diff, Options, Outcome};
use suture_elf::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kpatch-unit-objs/x86_64")
}

struct Case {
    name: String,
    expect: String,
    functions: Option<usize>,
    jump: usize,
    check: String,
}

fn cases() -> Vec<Case> {
    let dir = corpus_dir();
    let tsv = dir.join("EXPECTED.tsv");
    let text = std::fs::read_to_string(&tsv).unwrap_or_else(|e| {
        panic!("the object-pair corpus was not found: looked for {} ({e}); it lives in shared/kpatch-unit-objs beside the repository", tsv.display())
    });
    let mut v = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        assert!(f.len() >= 5, "bad EXPECTED.tsv line: {line}");
        v.push(Case {
            name: f[0].into(),
            expect: f[1].into(),
            functions: f[2].parse().ok(),
            jump: f[3].parse().unwrap(),
            check: f[4].into(),
        });
    }
    v
}

fn options(jump: usize) -> Options {
    let mut o = Options::default();
    for (k, v) in [
        (".parainstructions", 16),
        ("__ex_table", 12),
        ("__bug_table", 12),
        (".altinstructions", 13),
        (".orc_unwind", 6),
        (".static_call_sites", 8),
        (".printk_index", 44),
        ("__jump_table", jump),
    ] {
        o.entry_sizes.insert(k.to_string(), v);
    }
    o
}

fn read_pair(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = corpus_dir();
    let orig = std::fs::read(dir.join(format!("{name}.ORIG.o"))).unwrap();
    let p = dir.join(format!("{name}.PATCHED.o"));
    let p = if p.exists() {
        p
    } else {
        dir.join(format!("{name}.PATCHED.FAIL.o"))
    };
    (orig, std::fs::read(p).unwrap())
}

/// What `nm` prints as `t`/`T`: defined, non-weak, non-section, non-file
/// symbols in executable sections.
fn nm_text_count(o: &Object) -> usize {
    o.symbols
        .iter()
        .filter(|s| s.index != 0 && s.typ != STT_SECTION && s.typ != STT_FILE)
        .filter(|s| matches!(s.bind, STB_LOCAL | STB_GLOBAL))
        .filter(|s| {
            s.section()
                .map(|x| o.sections[x].is_exec())
                .unwrap_or(false)
        })
        .count()
}

fn relas_named<'a>(o: &'a Object, sec: &str) -> Vec<(&'a str, u32, i64)> {
    let Some(s) = o.section_by_name(sec) else {
        return Vec::new();
    };
    o.relas_of(s.index)
        .iter()
        .map(|r| (o.symbols[r.sym].name.as_str(), r.rtype, r.addend))
        .collect()
}

fn check(case: &Case, out: &Object) -> Result<(), String> {
    match case.name.as_str() {
        "convert-global-local" => {
            let s = out
                .symbols
                .iter()
                .find(|s| s.name == "__kmalloc" && s.section().is_some())
                .ok_or("__kmalloc not defined")?;
            if s.bind != STB_LOCAL || s.typ != STT_FUNC {
                return Err(format!("__kmalloc bind {} type {}", s.bind, s.typ));
            }
        }
        "dynamic-debug-jump-label-issue-1253" => {
            if let Some(s) = out
                .symbols
                .iter()
                .find(|s| s.index != 0 && s.typ == STT_SECTION && s.is_undef())
            {
                return Err(format!("undefined section symbol #{}", s.index));
            }
        }
        "import-ns" => {
            let mi = out.section_by_name(".modinfo").ok_or("no .modinfo")?;
            let n = mi
                .data
                .split(|&c| c == 0)
                .filter(|e| e.starts_with(b"import_ns="))
                .count();
            let others = mi
                .data
                .split(|&c| c == 0)
                .filter(|e| !e.is_empty() && !e.starts_with(b"import_ns="))
                .count();
            if n != 4 || others != 0 {
                return Err(format!(
                    "{n} import_ns= entries and {others} others in .modinfo"
                ));
            }
        }
        "mcount_loc-issue-1102" => {
            let r = relas_named(out, "__mcount_loc");
            if !r.contains(&("netlbl_catmap_getlong", R_X86_64_64, 0)) {
                return Err(format!("__mcount_loc relocations: {r:?}"));
            }
            let f = out
                .symbols
                .iter()
                .find(|s| s.name == "netlbl_catmap_getlong")
                .ok_or("no symbol")?;
            if f.section().is_none() {
                return Err("netlbl_catmap_getlong is not defined in the output".into());
            }
        }
        "zero-page-rela-issue-1064" => {
            let found = out
                .relocated_sections()
                .flat_map(|s| out.relas_of(s))
                .any(|r| {
                    out.symbols[r.sym].name == "empty_zero_page"
                        && r.rtype == R_X86_64_64
                        && r.addend == 0x8000_0000
                });
            if !found {
                return Err("no R_X86_64_64 empty_zero_page+0x80000000".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// `ld -r` must accept the output: the next stage links it with kbuild.
fn links(name: &str, bytes: &[u8]) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("suture-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join(format!("{name}.o"));
    let outp = dir.join(format!("{name}.ld.o"));
    std::fs::write(&inp, bytes).unwrap();
    let r = std::process::Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&outp)
        .arg(&inp)
        .output();
    match r {
        Ok(o) if o.status.success() && o.stderr.is_empty() => Ok(()),
        Ok(o) => Err(format!("ld -r: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => Err(format!("cannot run ld: {e}")),
    }
}

/// Cases whose `check` column has a dedicated assertion (in `check`, or in the
/// refusal / no-change branches of `corpus`).
const CHECKED: &[&str] = &[
    "convert-global-local",
    "dynamic-debug-jump-label-issue-1253",
    "import-ns",
    "mcount_loc-issue-1102",
    "meminfo-init",
    "meminfo-init2",
    "unique-id-pr-1314",
    "warn-detect",
    "zero-page-rela-issue-1064",
];

#[test]
fn corpus() {
    let cases = cases();
    assert_eq!(cases.len(), 55, "EXPECTED.tsv lists 55 cases");
    for c in &cases {
        assert!(
            c.check == "-" || CHECKED.contains(&c.name.as_str()),
            "{}: the check \"{}\" has no assertion here",
            c.name,
            c.check
        );
    }
    let mut failures: HashMap<String, String> = HashMap::new();
    let mut passed = 0;
    for c in &cases {
        let (o, p) = read_pair(&c.name);
        let res = diff(&o, &p, &options(c.jump));
        let r: Result<(), String> = match (&res, c.expect.as_str()) {
            (Ok(Outcome::Changes(patch)), "changes") => (|| {
                let out = Object::parse(&patch.object)
                    .map_err(|e| format!("output does not parse: {e}"))?;
                let n = nm_text_count(&out);
                if let Some(want) = c.functions {
                    if n != want {
                        return Err(format!(
                            "{n} functions, expected {want} (changed {:?}, new {:?})",
                            patch.report.changed, patch.report.new
                        ));
                    }
                }
                if n == 0 {
                    return Err("patch defines no function".into());
                }
                check(c, &out)?;
                links(&c.name, &patch.object)
            })(),
            // kpatch refuses a change confined to __init code; suture says
            // so with its own outcome (nothing in the running kernel to patch).
            (Ok(Outcome::Refused(rep) | Outcome::InitExitOnly(rep)), "refuse") => {
                if c.name.starts_with("meminfo-init") {
                    if rep
                        .refusals
                        .iter()
                        .any(|r| r.subject == "proc_meminfo_init" && r.reason.contains("__init"))
                    {
                        Ok(())
                    } else {
                        Err(format!(
                            "refusals do not name the __init function: {:?}",
                            rep.refusals
                        ))
                    }
                } else {
                    Ok(())
                }
            }
            (Ok(Outcome::NoChange(rep)), "no-change") => {
                if rep.refusals.is_empty() && rep.changed.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{rep:?}"))
                }
            }
            (Ok(Outcome::Changes(p)), _) => Err(format!(
                "patch produced: changed {:?} new {:?}",
                p.report.changed, p.report.new
            )),
            (Ok(Outcome::Refused(r)), _) => Err(format!("refused: {:?}", r.refusals)),
            (Ok(Outcome::NoChange(_)), _) => Err("no change".into()),
            (Ok(Outcome::InitExitOnly(r)), _) => Err(format!("init/exit only: {:?}", r.refusals)),
            (Err(e), _) => Err(format!("error: {e}")),
        };
        match r {
            Ok(()) => passed += 1,
            Err(e) if c.check != "-" => {
                failures.insert(c.name.clone(), format!("{e} [check: {}]", c.check));
            }
            Err(e) => {
                failures.insert(c.name.clone(), e);
            }
        }
    }
    let mut names: Vec<_> = failures.keys().cloned().collect();
    names.sort();
    for n in &names {
        eprintln!("FAIL {n}: {}", failures[n]);
    }
    eprintln!("corpus: {passed} of {} cases pass", cases.len());
    assert!(failures.is_empty(), "{} corpus cases fail", failures.len());
}

/// Corrupted symbol tables and relocations (where damage is most likely to
/// reach the differ's logic rather than the reader's checks) must give a
/// verdict or an error, never a panic.
#[test]
fn corrupted_pairs_never_panic() {
    for name in ["meminfo-string", "cold-add", "special-static"] {
        let (o, p) = read_pair(name);
        let elf = Object::parse(&p).unwrap();
        let regions: Vec<(usize, usize)> = elf
            .sections
            .iter()
            .filter(|s| matches!(s.sh_type, SHT_SYMTAB | SHT_RELA))
            .map(|s| (s.data.start(), s.size as usize))
            .collect();
        let mut seed = 0x9E3779B97F4A7C15u64 ^ name.len() as u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..150 {
            let mut b = p.clone();
            for _ in 0..4 {
                let (off, size) = regions[next() as usize % regions.len()];
                if size == 0 {
                    continue;
                }
                let i = off + next() as usize % size;
                b[i] = next() as u8;
            }
            let r = std::panic::catch_unwind(|| diff(&o, &b, &options(24)));
            assert!(r.is_ok(), "{name}: mutation round {round} panicked");
        }
    }
}

/// `.altinstr_aux` holds one `static_cpu_has()` stub per call site, each
/// jumping back into its own function: the patch keeps only the stub of the
/// included function (`dummy_function`), not those of `x86_virt_spec_ctrl`
/// or of `__init` code, and its jump still lands on the stub's first byte.
#[test]
fn altinstr_aux_sliced_to_the_included_stubs() {
    let (o, p) = read_pair("altinstr_aux");
    let Outcome::Changes(patch) = diff(&o, &p, &options(24)).unwrap() else {
        panic!("expected changes")
    };
    let out = Object::parse(&patch.object).unwrap();
    let aux = out
        .section_by_name(".altinstr_aux")
        .expect(".altinstr_aux kept for dummy_function");
    // testb $bit, cap(%rip) (7 bytes); jnz yes (6); jmp no (5)
    assert_eq!(aux.size, 18, "one stub, not the whole section (0xc6 bytes)");
    assert_eq!(&aux.data[..2], &[0xf6, 0x05]);
    let targets: Vec<(&str, u32, i64)> = relas_named(&out, ".altinstr_aux");
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert!(
        targets
            .iter()
            .all(|t| t.0 == "boot_cpu_data" || t.0 == "dummy_function"),
        "{targets:?}"
    );
    let into_aux: Vec<i64> = relas_named(&out, ".text.dummy_function")
        .into_iter()
        .filter(|t| t.0 == ".altinstr_aux")
        .map(|t| t.2)
        .collect();
    assert_eq!(
        into_aux,
        vec![-4],
        "the jmp's field ends the instruction: stub start - 4"
    );
}
