//! One rule per test, on small objects compiled at test time with the flags
//! kernel objects get (-ffunction-sections -fdata-sections, ftrace's __fentry__
//! call, the kernel code model).

// Tests and tools of a pure crate do their own I/O.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;

use suture_diff::{diff, explain, Error, Options, Outcome, Patch, Report, Target, TargetSym};
use suture_elf::*;

fn compile(name: &str, src: &str) -> Vec<u8> {
    compile_with(name, src, &[])
}

fn compile_with(name: &str, src: &str, extra: &[&str]) -> Vec<u8> {
    // One directory per object, one source name for all: the STT_FILE symbol
    // must match across a before/after pair.
    let dir = std::env::temp_dir()
        .join(format!("suture-rules-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("unit.c");
    let o: PathBuf = dir.join("unit.o");
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args([
            "-c",
            "-O2",
            "-fno-pic",
            "-mcmodel=kernel",
            "-ffunction-sections",
            "-fdata-sections",
            "-pg",
            "-mfentry",
            "-fno-asynchronous-unwind-tables",
            "-fno-stack-protector",
            "-fno-ipa-sra",
            "-fno-ipa-cp",
        ])
        .args(extra)
        .arg("-o")
        .arg(&o)
        .arg(&c)
        .output()
        .expect("gcc is needed to build the test objects");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&o).unwrap()
}

const BASE: &str = r#"
extern int printk(const char *, ...);
extern void warn_slowpath_fmt(const char *file, int line, const char *fmt, ...);
extern int exported_thing(int);
__attribute__((noinline)) static int helper(int x) { return x * 3 + printk("h %d\n", x); }
int f(int a) {
    static int count;
    count++;
    return helper(a) + count;
}
int g(int a) { static int count; count += a; return count + exported_thing(a); }
int w(int a) {
    if (a > 3)
        warn_slowpath_fmt("a.c", __LINE__, "big");
    return a;
}
int data_x = 1;
__attribute__((no_instrument_function)) int nt(int a) { return a + 1; }
__attribute__((section(".init.text"))) int ini(void) { return printk("init\n"); }
"#;

fn variant(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

fn pair(name: &str, patched: &str) -> (Vec<u8>, Vec<u8>) {
    (
        compile(&format!("{name}-orig"), BASE),
        compile(&format!("{name}-patched"), patched),
    )
}

fn changes(o: &[u8], p: &[u8], opts: &Options) -> (Patch, Object) {
    match diff(o, p, opts).unwrap() {
        Outcome::Changes(p) => {
            let obj = Object::parse(&p.object).unwrap();
            (p, obj)
        }
        other => panic!("expected a patch, got {other:?}"),
    }
}

fn refused(o: &[u8], p: &[u8]) -> Report {
    match diff(o, p, &Options::default()).unwrap() {
        Outcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn defined<'a>(o: &'a Object, name: &str) -> Option<&'a Symbol> {
    o.symbols
        .iter()
        .find(|s| s.name == name && s.section().is_some())
}

fn funcs_defined(o: &Object) -> Vec<String> {
    let mut v: Vec<String> = o
        .symbols
        .iter()
        .filter(|s| s.typ == STT_FUNC && s.section().is_some())
        .map(|s| s.name.to_string())
        .collect();
    v.sort();
    v
}

fn reloc_targets(o: &Object, sec: &str) -> Vec<(String, u32, i64)> {
    let s = o
        .section_by_name(sec)
        .unwrap_or_else(|| panic!("no section {sec}"));
    o.relas_of(s.index)
        .iter()
        .map(|r| (o.symbols[r.sym].name.to_string(), r.rtype, r.addend))
        .collect()
}

#[test]
fn identical_objects_are_no_change() {
    let o = compile("same", BASE);
    assert!(matches!(
        diff(&o, &o, &Options::default()).unwrap(),
        Outcome::NoChange(_)
    ));
}

#[test]
fn changed_function_is_local_and_references_become_klp_symbols() {
    let (o, p) = pair(
        "changed",
        &variant("return helper(a) + count;", "return helper(a) + count * 2;"),
    );
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["f"]);
    assert!(patch.report.new.is_empty());
    assert_eq!(funcs_defined(&out), vec!["f"]);
    let f = defined(&out, "f").unwrap();
    assert_eq!(f.bind, STB_LOCAL, "replacement functions are local");
    assert_eq!(patch.replaced.len(), 1);
    assert_eq!(patch.replaced[0].name, "f");
    assert_eq!(patch.replaced[0].sympos, 0);
    let r = reloc_targets(&out, ".text.f");
    let names: Vec<&str> = r.iter().map(|x| x.0.as_str()).collect();
    assert!(names.contains(&".klp.sym.vmlinux.helper,0"), "{names:?}");
    assert!(
        names.contains(&"__fentry__"),
        "an external symbol stays a plain reference: {names:?}"
    );
    // The static local is the running kernel's: a klp reference to ORIG's name.
    let count = names
        .iter()
        .find(|n| n.starts_with(".klp.sym.vmlinux.count."))
        .expect("reference to count");
    let orig = Object::parse(&o).unwrap();
    let orig_count = orig
        .symbols
        .iter()
        .filter(|s| s.name.starts_with("count."))
        .map(|s| s.name.clone())
        .collect::<Vec<_>>();
    assert!(
        orig_count
            .iter()
            .any(|c| *count == format!(".klp.sym.vmlinux.{c},0")),
        "{count} vs {orig_count:?}"
    );
    for s in out
        .symbols
        .iter()
        .filter(|s| s.name.starts_with(".klp.sym."))
    {
        assert!(
            s.is_undef() && s.bind == STB_GLOBAL,
            "{} must be an undefined global",
            s.name
        );
    }
    assert!(!out
        .symbols
        .iter()
        .any(|s| s.index != 0 && s.typ == STT_SECTION && s.is_undef()));
}

#[test]
fn mcount_loc_is_regenerated_for_the_included_function() {
    let (o, p) = pair(
        "mcount",
        &variant("return helper(a) + count;", "return helper(a) - count;"),
    );
    let (_, out) = changes(&o, &p, &Options::default());
    assert_eq!(
        reloc_targets(&out, "__mcount_loc"),
        vec![("f".to_string(), R_X86_64_64, 0)]
    );
}

#[test]
fn nop_mcount_slot_becomes_a_call_to_fentry() {
    let flags = ["-mrecord-mcount", "-mnop-mcount"];
    let o = compile_with("nop-orig", BASE, &flags);
    let p = compile_with(
        "nop-patched",
        &variant("return helper(a) + count;", "return helper(a) ^ count;"),
        &flags,
    );
    let (_, out) = changes(&o, &p, &Options::default());
    let text = out.section_by_name(".text.f").unwrap();
    let r = out
        .relas_of(text.index)
        .iter()
        .find(|r| out.symbols[r.sym].name == "__fentry__")
        .unwrap();
    assert_eq!(r.rtype, R_X86_64_PLT32);
    assert_eq!(
        text.data[r.offset as usize - 1],
        0xe8,
        "a call instruction, not the NOP"
    );
    assert_eq!(
        reloc_targets(&out, "__mcount_loc"),
        vec![("f".to_string(), R_X86_64_64, 0)]
    );
}

#[test]
fn new_function_is_included_with_its_binding() {
    let src = variant("int f(int a) {", "__attribute__((noinline)) static int added(int x) { return printk(\"new %d\\n\", x); }\nint f(int a) {")
        .replace("return helper(a) + count;", "return helper(a) + count + added(a);");
    let (o, p) = pair("newfn", &src);
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.new, vec!["added"]);
    assert_eq!(funcs_defined(&out), vec!["added", "f"]);
    assert_eq!(
        patch
            .replaced
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["f"],
        "new functions replace nothing"
    );
    assert!(
        out.section_by_name(".rodata.added.str1.1").is_some()
            || out.sections.iter().any(|s| s.is_strings()),
        "its string literal comes along"
    );
}

#[test]
fn moved_line_numbers_in_warn_calls_are_no_change() {
    // Two blank lines before w(): only the __LINE__ immediate changes.
    let (o, p) = pair("line", &variant("int w(int a) {", "\n\nint w(int a) {"));
    match diff(&o, &p, &Options::default()).unwrap() {
        Outcome::NoChange(r) => assert!(r.changed.is_empty()),
        other => panic!("expected no change, got {other:?}"),
    }
    // The same immediate passed to a function that is not WARN-like is a change.
    let src = BASE
        .replace(
            "warn_slowpath_fmt(\"a.c\", __LINE__, \"big\")",
            "warn_other(\"a.c\", __LINE__, \"big\")",
        )
        .replace(
            "extern int exported_thing",
            "extern void warn_other(const char *, int, const char *);\nextern int exported_thing",
        );
    let o2 = compile("line2-orig", &src);
    let p2 = compile(
        "line2-patched",
        &src.replacen("int w(int a) {", "\n\nint w(int a) {", 1),
    );
    assert!(matches!(
        diff(&o2, &p2, &Options::default()).unwrap(),
        Outcome::Changes(_)
    ));
}

#[test]
fn static_locals_correlate_through_their_functions() {
    // A new static before f renumbers gcc's count.N; g's count must not be taken for f's.
    let src = variant(
        "int f(int a) {\n    static int count;",
        "int f(int a) {\n    static int before;\n    static int count;\n    before++;",
    );
    let (o, p) = pair("statics", &src);
    let (_, out) = changes(&o, &p, &Options::default());
    let orig = Object::parse(&o).unwrap();
    // ORIG's f uses the count whose section is referenced from .text.f.
    let ftext = orig.section_by_name(".text.f").unwrap().index;
    let f_count = orig
        .relas_of(ftext)
        .iter()
        .map(|r| &orig.symbols[r.sym])
        .map(|s| {
            if s.typ == STT_SECTION {
                orig.sections[s.section().unwrap()]
                    .name
                    .trim_start_matches(".bss.")
                    .to_string()
            } else {
                s.name.to_string()
            }
        })
        .find(|n| n.starts_with("count."))
        .unwrap();
    let names: Vec<String> = reloc_targets(&out, ".text.f")
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(
        names.contains(&format!(".klp.sym.vmlinux.{f_count},0")),
        "{names:?} should use {f_count}"
    );
    // The new static is new state: defined in the patch.
    assert!(out
        .symbols
        .iter()
        .any(|s| s.name.starts_with("before.") && s.section().is_some()));
}

#[test]
fn removed_static_local_reference_is_refused() {
    let src = variant(
        "    count++;\n    return helper(a) + count;",
        "    return helper(a);",
    );
    let (o, p) = pair("rmstatic", &src);
    let r = refused(&o, &p);
    assert!(
        r.refusals.iter().any(|x| x.subject == "f"
            && x.reason.contains("static local")
            && x.reason.contains("count")),
        "{r:?}"
    );
}

#[test]
fn changed_data_is_refused() {
    let (o, p) = pair("data", &variant("int data_x = 1;", "int data_x = 2;"));
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "data_x" && x.reason.contains("data")),
        "{r:?}"
    );
}

#[test]
fn changed_init_code_beside_running_code_is_refused() {
    let both = variant("printk(\"init\\n\")", "printk(\"init!\\n\")")
        .replace("return helper(a) + count;", "return helper(a) + count + 1;");
    let (o, p) = pair("init", &both);
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "ini" && x.reason.contains("__init")),
        "{r:?}"
    );
}

#[test]
fn changed_notrace_function_is_refused() {
    let (o, p) = pair("notrace", &variant("return a + 1;", "return a + 2;"));
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "nt" && x.reason.contains("__fentry__")),
        "{r:?}"
    );
}

#[test]
fn function_moved_to_another_section_is_refused() {
    let (o, p) = pair(
        "moved",
        &variant(
            "int g(int a) {",
            "__attribute__((section(\".sched.text\"))) int g(int a) {",
        ),
    );
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "g" && x.reason.contains("moved")),
        "{r:?}"
    );
}

#[test]
fn special_statics_are_copied_not_correlated() {
    let src = BASE.replace("int g(int a) { static int count;", "int g(int a) { static int __warned; if (!__warned) { __warned = 1; printk(\"once\\n\"); } static int count;");
    let o = compile("special-orig", &src);
    let p = compile(
        "special-patched",
        &src.replace("count += a;", "count += a + 1;"),
    );
    let (_, out) = changes(&o, &p, &Options::default());
    let w = out
        .symbols
        .iter()
        .find(|s| s.name.starts_with("__warned"))
        .expect("__warned referenced");
    assert!(
        w.section().is_some(),
        "a special static is a new copy in the patch, not a klp reference"
    );
}

#[test]
fn target_table_decides_normal_or_klp_references() {
    let (o, p) = pair(
        "target",
        &variant(
            "count += a; return count + exported_thing(a);",
            "count += a * 2; return count + exported_thing(a);",
        ),
    );
    let mut t = Target {
        objname: "vmlinux".into(),
        symbols: Default::default(),
    };
    t.symbols
        .insert("g".into(), TargetSym::Unexported { sympos: 2 });
    t.symbols
        .insert("exported_thing".into(), TargetSym::Exported);
    let orig = Object::parse(&o).unwrap();
    for s in orig.symbols.iter().filter(|s| s.name.starts_with("count.")) {
        t.symbols
            .insert(s.name.to_string(), TargetSym::Unexported { sympos: 3 });
    }
    let opts = Options {
        target: Some(t),
        ..Default::default()
    };
    let (patch, out) = changes(&o, &p, &opts);
    assert_eq!(patch.replaced[0].name, "g");
    assert_eq!(patch.replaced[0].sympos, 2);
    let names: Vec<String> = reloc_targets(&out, ".text.g")
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(names.contains(&"exported_thing".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(".klp.sym.vmlinux.count.") && n.ends_with(",3")),
        "{names:?}"
    );
    // A target table lacking a symbol ORIG defines is an error, not a guess.
    let opts = Options {
        target: Some(Target {
            objname: "vmlinux".into(),
            symbols: Default::default(),
        }),
        ..Default::default()
    };
    assert!(diff(&o, &p, &opts).is_err());
}

#[test]
fn function_pointer_to_a_replaced_function_points_to_the_original() {
    let src = BASE.replace(
        "int data_x = 1;",
        "int data_x = 1;\nextern void take(int (*)(int));\nint h(int a) { take(g); return a; }",
    );
    let o = compile("fptr-orig", &src);
    let p = compile(
        "fptr-patched",
        &src.replace("count += a;", "count -= a;")
            .replace("return a; }", "return a + 1; }"),
    );
    let (_, out) = changes(&o, &p, &Options::default());
    let r = reloc_targets(&out, ".text.h");
    assert!(
        r.iter()
            .any(|x| x.0 == ".klp.sym.vmlinux.g,0" && x.1 == R_X86_64_32S),
        "{r:?}"
    );
}

#[test]
fn explain_names_the_first_difference() {
    let (o, p) = pair(
        "explain",
        &variant("return helper(a) + count;", "return helper(a) + count * 2;"),
    );
    let e = explain(&o, &p, "f", &Options::default()).unwrap();
    assert!(
        e.lines.iter().any(|l| l.contains("first differing")),
        "{:?}",
        e.lines
    );
    let e = explain(&o, &p, "g", &Options::default()).unwrap();
    assert!(
        e.lines.iter().any(|l| l.contains("no difference")),
        "{:?}",
        e.lines
    );
}

const JUMP: &str = r#"
struct static_key { int enabled; };
struct static_key mykey;
extern int printk(const char *, ...);
static inline __attribute__((always_inline)) int key_on(void) {
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
             ".pushsection __jump_table, \"aw\"\n.balign 8\n"
             ".long 1b - ., %l[yes] - .\n.quad %c0 - .\n.popsection"
             : : "i"(&mykey) : : yes);
    return 0;
yes:
    return 1;
}
int j1(int a) { if (key_on()) printk("j1 %d\n", a); return a + 1; }
int j2(int a) { if (key_on()) printk("j2 %d\n", a); return a + 2; }
"#;

#[test]
fn jump_table_is_sliced_to_the_included_functions() {
    let o = compile("jump-orig", JUMP);
    let p = compile(
        "jump-patched",
        &JUMP.replace("return a + 1;", "return a + 3;"),
    );
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["j1"]);
    let jt = out.section_by_name("__jump_table").expect("the kept entry");
    assert_eq!(jt.data.len(), 16, "one 16-byte entry of two");
    let r = reloc_targets(&out, "__jump_table");
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].0, "j1");
    assert_eq!(
        r[2].0, ".klp.sym.vmlinux.mykey,0",
        "the key is the running kernel's"
    );
    assert_eq!(patch.report.entry_sizes["__jump_table"].size, 16);
    assert_eq!(
        patch.report.entry_sizes["__jump_table"].source,
        "relocations"
    );
}

#[test]
fn module_static_key_in_kept_jump_entry_is_refused() {
    let o = compile("jumpmod-orig", JUMP);
    let p = compile(
        "jumpmod-patched",
        &JUMP.replace("return a + 1;", "return a + 3;"),
    );
    let mut t = Target {
        objname: "mymod".into(),
        symbols: Default::default(),
    };
    for n in ["mykey", "j1", "j2"] {
        t.symbols
            .insert(n.into(), TargetSym::Unexported { sympos: 0 });
    }
    let opts = Options {
        target: Some(t),
        ..Default::default()
    };
    match diff(&o, &p, &opts).unwrap() {
        Outcome::Refused(r) => assert!(
            r.refusals
                .iter()
                .any(|x| x.subject == "mykey" && x.reason.contains("mymod")),
            "{r:?}"
        ),
        other => panic!("{other:?}"),
    }
}

// ---- bad input ----

fn input_error(r: Result<Outcome, Error>, file: &str) {
    match r {
        Err(Error::Input { file: f, msg }) => {
            assert_eq!(f, file);
            assert!(!msg.is_empty());
        }
        other => panic!("expected an input error for {file}, got {other:?}"),
    }
}

#[test]
fn truncated_input_is_an_error() {
    let o = compile("trunc", BASE);
    for cut in [0, 10, 63, 64, o.len() / 2, o.len() - 1] {
        input_error(diff(&o[..cut], &o, &Options::default()), "ORIG");
        input_error(diff(&o, &o[..cut], &Options::default()), "PATCHED");
    }
}

#[test]
fn wrong_machine_is_an_error() {
    let o = compile("machine", BASE);
    let mut m = o.clone();
    m[18] = 40; // EM_ARM
    input_error(diff(&m, &o, &Options::default()), "ORIG");
}

#[test]
fn garbage_is_an_error() {
    input_error(
        diff(b"not an object at all", b"", &Options::default()),
        "ORIG",
    );
    let o = compile("garbage", BASE);
    let mut seed = 88172645463325252u64;
    for _ in 0..300 {
        let mut b = o.clone();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = seed as usize % b.len();
            b[i] = (seed >> 40) as u8;
        }
        // Any verdict is acceptable for a corrupted object; a panic is not.
        let _ = diff(&o, &b, &Options::default());
    }
}

#[test]
fn unrelated_pair_is_an_error() {
    let o = compile("one", BASE);
    let p = {
        let dir = std::env::temp_dir()
            .join(format!("suture-rules-{}", std::process::id()))
            .join("two");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("other.c"), "int other(int a) { return a; }\n").unwrap();
        let st = Command::new("gcc")
            .args(["-c", "-O2", "-o"])
            .arg(dir.join("other.o"))
            .arg(dir.join("other.c"))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(dir.join("other.o")).unwrap()
    };
    match diff(&o, &p, &Options::default()) {
        Err(Error::Other(m)) => assert!(m.contains("different source files"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// The kernel reads at most 511 bytes of a `.klp.sym` name (KLP_SYMNAME_MAX)
/// and refuses the module otherwise: such a name is an error of the stage
/// that would write it, naming the symbol.
#[test]
fn too_long_klp_symbol_name_is_an_error() {
    let long = format!("h{}", "x".repeat(511));
    assert_eq!(long.len(), 512);
    let src = |k: i32| {
        format!(
            "extern int printk(const char *, ...);\n\
             __attribute__((noinline)) static int {long}(int x) {{ return x * 3 + printk(\"h %d\\n\", x); }}\n\
             int f(int a) {{ return {long}(a) + {k}; }}\n"
        )
    };
    let o = compile("long-orig", &src(1));
    let p = compile("long-patched", &src(2));
    match diff(&o, &p, &Options::default()) {
        Err(Error::Other(m)) => {
            assert!(m.contains(&long), "{m}");
            assert!(m.contains("KLP_SYMNAME_MAX"), "{m}");
        }
        other => panic!("expected an error naming {long}, got {other:?}"),
    }
}

#[test]
fn changed_constant_is_copied_and_other_users_are_named() {
    let src = r#"
extern int printk(const char *, ...);
const int table[4] = { 1, 2, 3, 4 };
int t1(int i) { return table[i & 3] + 1; }
int t2(int i) { return table[i & 3] + 2; }
"#;
    let o = compile("const-orig", src);
    let p = compile(
        "const-patched",
        &src.replace("{ 1, 2, 3, 4 }", "{ 1, 2, 3, 5 }")
            .replace("+ 1; }", "+ 7; }"),
    );
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["t1"]);
    let t = defined(&out, "table").expect("a new copy of the table");
    assert_eq!(t.bind, STB_LOCAL);
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("table") && w.contains("t2")),
        "{:?}",
        patch.report.warnings
    );
    // Changing only the constant leaves no function to carry it: refused.
    let p2 = compile(
        "const-only",
        &src.replace("{ 1, 2, 3, 4 }", "{ 1, 2, 3, 5 }"),
    );
    let r = refused(&o, &p2);
    assert!(r.refusals.iter().any(|x| x.subject == "table"), "{r:?}");
}

// The annotations of include/suture.h, spelled out: the kernel headers the real
// macros use are not available to these tests; the sections are what counts.
const SUTURE_MACROS: &str = r#"
struct klp_object;
#define CB(kind, type, fn) static __typeof__(type) __suture_cb_##kind##_##fn __attribute__((used, section(".suture.callbacks." #kind))) = fn
#define PTR(sec, tag, fn) static void *__suture_##tag##_##fn __attribute__((used, section(sec))) = (void *)(fn)
"#;

#[test]
fn callbacks_are_included_and_reported_by_kind() {
    let src = format!(
        "{SUTURE_MACROS}{}",
        variant("int data_x = 1;", "int data_x = 1;\nstatic int pre(struct klp_object *o) { return printk(\"pre\\n\"); }\nstatic void post(struct klp_object *o) { printk(\"post\\n\"); }\nCB(pre_patch, int (*)(struct klp_object *), pre);\nCB(post_unpatch, void (*)(struct klp_object *), post);\n")
            .replace("return helper(a) + count;", "return helper(a) + count * 2;")
    );
    let (o, p) = pair("callbacks", &src);
    let (patch, out) = changes(&o, &p, &Options::default());
    let kinds: Vec<(&str, &str)> = patch
        .callbacks
        .iter()
        .map(|c| (c.kind.as_str(), c.symbol.as_str()))
        .collect();
    assert_eq!(kinds, vec![("pre_patch", "pre"), ("post_unpatch", "post")]);
    assert!(
        defined(&out, "pre").is_some() && defined(&out, "post").is_some(),
        "{:?}",
        funcs_defined(&out)
    );
    // The pointer sections stay out of the module: the hook refers to the functions.
    assert!(
        out.sections.iter().all(|s| !s.name.starts_with(".suture")),
        "annotation sections leaked"
    );
}

#[test]
fn two_callbacks_of_one_kind_are_refused() {
    let src = format!(
        "{SUTURE_MACROS}{}",
        variant("int data_x = 1;", "int data_x = 1;\nstatic int a1(struct klp_object *o) { return 1; }\nstatic int a2(struct klp_object *o) { return 2; }\nCB(pre_patch, int (*)(struct klp_object *), a1);\nCB(pre_patch, int (*)(struct klp_object *), a2);\n")
    );
    let (o, p) = pair("twocb", &src);
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == ".suture.callbacks.pre_patch"
                && x.reason.contains("a1")
                && x.reason.contains("a2")),
        "{r:?}"
    );
}

#[test]
fn force_unsafe_turns_refusals_about_the_function_into_warnings() {
    let removed = variant(
        "    count++;\n    return helper(a) + count;",
        "    return helper(a);",
    );
    let src = format!("{SUTURE_MACROS}{removed}\nPTR(\".suture.force_unsafe\", force, f);\n");
    let (o, p) = pair("forced", &src);
    let (patch, out) = changes(&o, &p, &Options::default());
    assert!(defined(&out, "f").is_some());
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("SUTURE_FORCE_UNSAFE(f)") && w.contains("count")),
        "{:?}",
        patch.report.warnings
    );
    // Without the annotation the same change is refused (the test above).
    let r = refused(
        &o,
        &compile("forced-not", &format!("{SUTURE_MACROS}{removed}")),
    );
    assert!(r.refusals.iter().any(|x| x.subject == "f"));
}

#[test]
fn ignored_function_is_left_out_with_a_warning() {
    let src = format!(
        "{SUTURE_MACROS}{}\nPTR(\".suture.ignore.functions\", ignore, g);\n",
        variant(
            "return count + exported_thing(a);",
            "return count + exported_thing(a + 1);"
        )
        .replace("return helper(a) + count;", "return helper(a) + count * 2;")
    );
    let (o, p) = pair("ignored", &src);
    let (patch, _) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["f"]);
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("g: changes ignored (SUTURE_IGNORE_FUNCTION)")),
        "{:?}",
        patch.report.warnings
    );
}

#[test]
fn a_weak_default_missing_from_the_target_is_reached_by_name() {
    // `void __weak release_thread()` in kernel/exit.c is overridden by x86's own:
    // vmlinux has one release_thread, not this object's copy.
    let weak =
        "__attribute__((weak, noinline)) void wk(int a) { asm volatile(\"\" :: \"r\"(a)); }\n";
    let o = compile(
        "weak-orig",
        &format!("{weak}{BASE}").replace(
            "return count + exported_thing(a);",
            "wk(a); return count + exported_thing(a);",
        ),
    );
    let p = compile(
        "weak-patched",
        &format!("{weak}{BASE}").replace(
            "return count + exported_thing(a);",
            "wk(a); return count * 2 + exported_thing(a);",
        ),
    );
    let mut t = Target {
        objname: "vmlinux".into(),
        symbols: Default::default(),
    };
    t.symbols
        .insert("g".into(), TargetSym::Unexported { sympos: 0 });
    t.symbols
        .insert("exported_thing".into(), TargetSym::Exported);
    let orig = Object::parse(&o).unwrap();
    for s in orig.symbols.iter().filter(|s| s.name.starts_with("count.")) {
        t.symbols
            .insert(s.name.to_string(), TargetSym::Unexported { sympos: 0 });
    }
    let opts = Options {
        target: Some(t),
        ..Default::default()
    };
    let (_, out) = changes(&o, &p, &opts);
    let names: Vec<String> = reloc_targets(&out, ".text.g")
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(
        names.contains(&".klp.sym.vmlinux.wk,0".to_string()),
        "{names:?}"
    );
}

/// Found by `cargo fuzz run diff_pair`: a PATCHED section with a corrupt
/// 2^31 alignment made the writer pad the output to gigabytes (out of memory).
#[test]
fn absurd_section_alignment_is_an_error_not_gigabytes_of_padding() {
    let (o, mut p) = pair(
        "align",
        &variant("return helper(a) + count;", "return helper(a) + count * 2;"),
    );
    let obj = Object::parse(&p).unwrap();
    let idx = obj.section_by_name(".text.f").unwrap().index;
    let shoff = u64::from_le_bytes(p[40..48].try_into().unwrap()) as usize;
    let at = shoff + idx * 64 + 48;
    p[at..at + 8].copy_from_slice(&(1u64 << 31).to_le_bytes());
    match diff(&o, &p, &Options::default()) {
        Err(e) => assert!(e.to_string().contains("alignment 2147483648"), "{e}"),
        Ok(x) => panic!("expected an error, got {x:?}"),
    }
}

/// Found by `cargo fuzz run diff_pair`: a symbol pointing into a relocation
/// section had that table copied into the output as a RELA section applying
/// to section 0, which nothing could parse. Now bad input, named.
#[test]
fn a_symbol_inside_a_relocation_table_is_bad_input() {
    let (o, mut p) = pair(
        "symrela",
        &variant("return helper(a) + count;", "return helper(a) + count * 2;"),
    );
    let obj = Object::parse(&p).unwrap();
    let rela = obj.section_by_name(".rela.text.f").unwrap().index as u16;
    let f = obj.symbols.iter().find(|s| s.name == "f").unwrap().index;
    let st = obj.symtab.unwrap();
    let symoff = {
        let shoff = u64::from_le_bytes(p[40..48].try_into().unwrap()) as usize;
        u64::from_le_bytes(
            p[shoff + st * 64 + 24..shoff + st * 64 + 32]
                .try_into()
                .unwrap(),
        ) as usize
    };
    let at = symoff + f * 24 + 6;
    p[at..at + 2].copy_from_slice(&rela.to_le_bytes());
    input_error(diff(&o, &p, &Options::default()), "PATCHED");
}

/// Found by `cargo fuzz run diff_pair`: a symbol name with a multi-byte
/// character two bytes before a `U` panicked the `__UNIQUE_ID_` test (a
/// string sliced inside the character).
#[test]
fn a_name_with_multibyte_characters_is_no_panic() {
    let (o, mut p) = pair(
        "utf8name",
        &variant("return helper(a) + count;", "return helper(a) + count * 2;"),
    );
    // "helper" -> "h€Ur": same length, '€' is three bytes, then 'U'.
    let at = p
        .windows(8)
        .position(|w| w == b"\0helper\0")
        .expect("helper in the string table")
        + 1;
    p[at..at + 6].copy_from_slice("h€Ur".as_bytes());
    assert!(Object::parse(&p)
        .unwrap()
        .symbols
        .iter()
        .any(|s| s.name == "h€Ur"));
    // The renamed static is a new function, and f, which calls it, changed.
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["f"]);
    assert_eq!(patch.report.new, vec!["h€Ur"]);
    assert!(out.symbols.iter().any(|s| s.name == "h€Ur"));
}

#[test]
fn ignored_section_is_left_out_with_a_warning() {
    let src = format!(
        "{SUTURE_MACROS}{}\nstatic const char *__suture_ign __attribute__((used, section(\".suture.ignore.sections\"))) = \".text.g\";\n",
        variant("return count + exported_thing(a);", "return count + exported_thing(a + 1);")
            .replace("return helper(a) + count;", "return helper(a) + count * 2;")
    );
    let (o, p) = pair("ignsec", &src);
    let (patch, _) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["f"]);
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains(".text.g: changes ignored (SUTURE_IGNORE_SECTION)")),
        "{:?}",
        patch.report.warnings
    );
}

/// The btrfs shape: the key is defined in another unit of the same module, so
/// it is undefined here and reached through `.klp.sym.MOD` all the same.
const SCALL: &str = r#"
extern int printk(const char *, ...);
extern struct static_key otherkey;
extern void __SCT__tp_func_foo(int);
extern int __SCK__tp_func_foo;
static inline __attribute__((always_inline)) void trace_foo(int a) {
    asm volatile("1: call __SCT__tp_func_foo\n"
                 ".pushsection .static_call_sites, \"aw\"\n.balign 4\n"
                 ".long 1b - .\n.long %c0 - .\n.popsection" : : "i"(&__SCK__tp_func_foo) : "memory");
}
static inline __attribute__((always_inline)) int key_on(void) {
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
             ".pushsection __jump_table, \"aw\"\n.balign 8\n"
             ".long 1b - ., %l[yes] - .\n.quad %c0 - .\n.popsection"
             : : "i"(&otherkey) : : yes);
    return 0;
yes:
    return 1;
}
int s1(int a) { trace_foo(a); return a + 1; }
int k1(int a) { if (key_on()) printk("k1 %d\n", a); return a + 1; }
"#;

fn module_target(names: &[&str]) -> Options {
    let mut t = Target {
        objname: "mymod".into(),
        symbols: Default::default(),
    };
    for n in names {
        t.symbols
            .insert(n.to_string(), TargetSym::Unexported { sympos: 0 });
    }
    Options {
        target: Some(t),
        ..Default::default()
    }
}

#[test]
fn module_static_call_site_of_another_unit_is_dropped() {
    let o = compile("scall-orig", SCALL);
    let p = compile(
        "scall-patched",
        &SCALL.replace("return a + 1; }\nint k1", "return a + 5; }\nint k1"),
    );
    let opts = module_target(&[
        "s1",
        "k1",
        "__SCK__tp_func_foo",
        "__SCT__tp_func_foo",
        "otherkey",
    ]);
    let (patch, out) = changes(&o, &p, &opts);
    assert_eq!(patch.report.changed, vec!["s1"]);
    assert!(
        out.section_by_name(".static_call_sites")
            .is_none_or(|s| s.data.is_empty()),
        "the entry needing .klp.sym.mymod.__SCK__tp_func_foo must not reach the module"
    );
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("__SCK__tp_func_foo") && w.contains("dropped")),
        "{:?}",
        patch.report.warnings
    );
    // The call itself still goes through the trampoline, as a code relocation.
    assert!(reloc_targets(&out, ".text.s1")
        .iter()
        .any(|r| r.0 == ".klp.sym.mymod.__SCT__tp_func_foo,0"));
    // In vmlinux the same entry is kept: vmlinux klp relocations are applied at load.
    let (_, out) = changes(&o, &p, &Options::default());
    assert!(out
        .section_by_name(".static_call_sites")
        .is_some_and(|s| s.data.len() == 8));
}

#[test]
fn module_jump_label_on_a_key_of_another_unit_is_refused() {
    let o = compile("kmod-orig", SCALL);
    let p = compile(
        "kmod-patched",
        &SCALL.replace(
            "printk(\"k1 %d\\n\", a); return a + 1;",
            "printk(\"k1 %d\\n\", a); return a + 7;",
        ),
    );
    match diff(
        &o,
        &p,
        &module_target(&[
            "s1",
            "k1",
            "__SCK__tp_func_foo",
            "__SCT__tp_func_foo",
            "otherkey",
        ]),
    )
    .unwrap()
    {
        Outcome::Refused(r) => assert!(
            r.refusals
                .iter()
                .any(|x| x.subject == "otherkey" && x.reason.contains("mymod")),
            "{r:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn init_only_change_has_its_own_outcome_and_a_true_reason() {
    let (o, p) = pair(
        "initonly",
        &variant("printk(\"init\\n\")", "printk(\"init2\\n\")"),
    );
    match diff(&o, &p, &Options::default()).unwrap() {
        Outcome::InitExitOnly(r) => {
            assert_eq!(r.refusals.len(), 1, "{r:?}");
            assert_eq!(r.refusals[0].subject, "ini");
            assert!(r.refusals[0].reason.contains("ran at boot"), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
    let opts = module_target(&["f", "g", "w", "nt", "ini", "helper", "data_x"]);
    match diff(&o, &p, &opts).unwrap() {
        Outcome::InitExitOnly(r) => assert!(r.refusals[0].reason.contains("next loaded"), "{r:?}"),
        other => panic!("{other:?}"),
    }
    // Mixed with a change of running code, the whole object is still refused.
    let mixed = variant("printk(\"init\\n\")", "printk(\"init2\\n\")")
        .replace("return a + 1; }", "return a + 2; }");
    let p = compile("initmixed-patched", &mixed);
    assert!(matches!(
        diff(&o, &p, &Options::default()).unwrap(),
        Outcome::Refused(_)
    ));
}

// ---- line numbers only (issue 12.10) ----

/// What a kernel function with WARN/BUG sites carries of `__LINE__`, the way
/// x86-64 6.1 spells it: `__might_sleep(__FILE__, __LINE__)` (an immediate),
/// `WARN_ON_ONCE()` (`ud2` and a `__bug_table` entry holding the line), and
/// fortify's field-spanning `memcpy` warning, whose argument is the string
/// `"field \"p\" at " __FILE__ ":" __stringify(__LINE__)` (what made
/// `prepare_emulation_failure_exit` in arch/x86/kvm/x86.c count as changed
/// after a blank line at the top of the file). `stop()` passes `__FILE__,
/// __LINE__` in arguments 3 and 4 to a function that is no known line callee
/// (XFS's `assfail()`), and `__LINE__` to ext4's `__ext4_journal_stop()` in a
/// tail call. SRCFILE stands for `__FILE__`, which kbuild makes the same
/// relative path on both sides.
const LINES: &str = r#"
#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)
#define SRCFILE "arch/x86/unit.c"
#define BUG_FLAGS(flags) asm volatile("1:\tud2\n" \
    ".pushsection __bug_table,\"aw\"\n" \
    "2:\t.long 1b - .\n\t.long %c0 - .\n\t.word %c1\n\t.word %c2\n\t.org 2b+%c3\n" \
    ".popsection" : : "i"(SRCFILE), "i"(__LINE__), "i"(flags), "i"(12))
#define WARN_ON_ONCE(c) ({ int __ret = !!(c); if (__builtin_expect(__ret, 0)) BUG_FLAGS(2); __ret; })
extern void __might_sleep(const char *file, int line);
extern void __warn_printk(const char *fmt, ...);
struct run { unsigned char insn[16]; int n; };
int fill(struct run *r, int n, unsigned long size) {
    __might_sleep(SRCFILE, __LINE__);
    if (WARN_ON_ONCE(n > 4))
        n = 4;
    if (__builtin_expect(size > sizeof(r->insn), 0)) {
        __warn_printk("memcpy: detected field-spanning write (size %zu) of single %s (size %zu)\n",
                      size, "field \"r->insn\" at " SRCFILE ":" __stringify(__LINE__), 16UL);
        BUG_FLAGS(3);
    }
    r->n = n;
    return n;
}
int other(int a) { return a * 5; }
extern void assfail(void *mp, const char *expr, const char *file, int line);
extern int __ext4_journal_stop(const char *where, unsigned int line, void *handle);
int stop(void *h) {
    if (__builtin_expect(!h, 0))
        assfail(0, "h", SRCFILE, __LINE__);
    return __ext4_journal_stop(__func__, __LINE__, h);
}
"#;

/// The 1-based line of `needle` in `src`.
fn line_of(src: &str, needle: &str) -> u16 {
    src.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle}")) as u16
        + 1
}

#[test]
fn line_numbers_only_is_no_change() {
    let o = compile("lines-orig", LINES);
    // A blank line at the top: every line number moves, nothing else.
    let shifted = format!("\n{LINES}");
    let p = compile("lines-patched", &shifted);
    // The pair really differs where the line numbers are, and only there.
    let (oo, po) = (Object::parse(&o).unwrap(), Object::parse(&p).unwrap());
    let code = |x: &Object| x.section_by_name(".text.fill").unwrap().data.clone();
    assert_eq!(code(&oo).len(), code(&po).len());
    assert_ne!(code(&oo), code(&po), "the __might_sleep immediate moved");
    let bugs = |x: &Object| x.section_by_name("__bug_table").unwrap().data.clone();
    assert_ne!(bugs(&oo), bugs(&po), "the __bug_table lines moved");
    let has = |x: &Object, s: &str| {
        x.sections
            .iter()
            .any(|c| c.data.windows(s.len()).any(|w| w == s.as_bytes()))
    };
    let at = |src: &str| format!("at arch/x86/unit.c:{}", line_of(src, "field \\\"r->insn"));
    assert!(has(&oo, &at(LINES)) && has(&po, &at(&shifted)) && at(LINES) != at(&shifted));
    match diff(&o, &p, &Options::default()).unwrap() {
        Outcome::NoChange(r) => assert!(r.changed.is_empty(), "{r:?}"),
        other => panic!("expected no change, got {other:?}"),
    }
    let stop = |x: &Object| {
        let s = x.symbols.iter().find(|s| s.name == "stop").unwrap();
        x.sections[s.section().unwrap()].data.clone()
    };
    assert_ne!(stop(&oo), stop(&po), "stop()'s line immediates moved");
    // And for a module, as kvm's x86.o (where the wrongly included function
    // then met its static call site on a kvm key).
    match diff(&o, &p, &module_target(&["fill", "other", "stop"])).unwrap() {
        Outcome::NoChange(_) => {}
        other => panic!("expected no change for a module, got {other:?}"),
    }
    let e = explain(&o, &p, "fill", &Options::default()).unwrap();
    assert!(
        e.lines
            .iter()
            .any(|l| l.contains("only line numbers differ in the string")),
        "{:?}",
        e.lines
    );
    assert!(
        e.lines
            .iter()
            .any(|l| l.contains("not a functional change")),
        "{:?}",
        e.lines
    );
}

#[test]
fn a_real_change_beside_moved_line_numbers_is_a_change() {
    let o = compile("lines-real-orig", LINES);
    // The blank line, and a real change in the function that has the WARN sites.
    let real = format!(
        "\n{}",
        LINES.replacen("        n = 4;", "        n = 3;", 1)
    );
    let p = compile("lines-real-patched", &real);
    let (patch, out) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["fill"]);
    assert_eq!(funcs_defined(&out), vec!["fill"]);
    // The replacement carries PATCHED's line numbers: its bug table entries
    // and its string say where the patched code is.
    let bt = out
        .section_by_name("__bug_table")
        .expect("fill's bug table entries");
    assert_eq!(bt.data.len(), 24, "two 12-byte entries");
    let lines: Vec<u16> = bt
        .data
        .chunks(12)
        .map(|e| u16::from_le_bytes([e[8], e[9]]))
        .collect();
    assert_eq!(
        lines,
        vec![
            line_of(&real, "WARN_ON_ONCE(n > 4)"),
            line_of(&real, "BUG_FLAGS(3)")
        ]
    );
    let want = format!("at arch/x86/unit.c:{}", line_of(&real, "field \\\"r->insn"));
    assert!(
        out.sections
            .iter()
            .any(|s| s.data.windows(want.len()).any(|w| w == want.as_bytes())),
        "{want}"
    );
    // A changed string is a change even when its line number moved too.
    let text = format!(
        "\n{}",
        LINES.replacen("(size %zu) of single", "(bytes %zu) of single", 1)
    );
    let p = compile("lines-text-patched", &text);
    let (patch, _) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["fill"]);
    // And so is a changed line-number immediate passed to a function that
    // takes no line number.
    let other = format!(
        "\n{}",
        LINES.replacen("return a * 5;", "return a * 5 + __LINE__;", 1)
    );
    let o2 = compile(
        "lines-other-orig",
        &LINES.replacen("return a * 5;", "return a * 5 + __LINE__;", 1),
    );
    let p2 = compile("lines-other-patched", &other);
    let (patch, _) = changes(&o2, &p2, &Options::default());
    assert_eq!(patch.report.changed, vec!["other"]);
    // A number after a string that is not the unit's __FILE__ is no line.
    let lib = LINES.replacen(
        "assfail(0, \"h\", SRCFILE, __LINE__)",
        "assfail(0, \"h\", \"lib/other.c\", __LINE__)",
        1,
    );
    let o3 = compile("lines-lib-orig", &lib);
    let p3 = compile("lines-lib-patched", &format!("\n{lib}"));
    let (patch, _) = changes(&o3, &p3, &Options::default());
    assert_eq!(patch.report.changed, vec!["stop"]);
}

// ---- patches that span objects (issue 12.6) ----

/// Module code (`mymod`, think vfat) calling what another module exports
/// (`fat`: a function, a static key) and what vmlinux exports (`printk`).
const XMOD: &str = r#"
extern int printk(const char *, ...);
extern int fat_thing(int);
extern int fat_table[4];
extern struct static_key fat_key;
extern void __SCT__tp_func_fat_ev(int);
extern int __SCK__tp_func_fat_ev;
static inline __attribute__((always_inline)) void trace_fat_ev(int a) {
    asm volatile("1: call __SCT__tp_func_fat_ev\n"
                 ".pushsection .static_call_sites, \"aw\"\n.balign 4\n"
                 ".long 1b - .\n.long %c0 - .\n.popsection" : : "i"(&__SCK__tp_func_fat_ev) : "memory");
}
static inline __attribute__((always_inline)) int fat_key_on(void) {
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
             ".pushsection __jump_table, \"aw\"\n.balign 8\n"
             ".long 1b - ., %l[yes] - .\n.quad %c0 - .\n.popsection"
             : : "i"(&fat_key) : : yes);
    return 0;
yes:
    return 1;
}
__attribute__((noinline)) static int own(int x) { return x * 7; }
int look(int a) { return fat_thing(a) + own(a) + printk("look %d\n", a) + fat_table[a & 3]; }
int ev(int a) { trace_fat_ev(a); return a + 1; }
int keyed(int a) { if (fat_key_on()) printk("keyed %d\n", a); return a + 1; }
"#;

/// The differ's view of module `mymod` whose unit references `fat`'s
/// exports: what suture-symbols' `build_target` makes of Module.symvers.
fn cross_target() -> Options {
    let mut opts = module_target(&["look", "ev", "keyed", "own"]);
    let t = opts.target.as_mut().unwrap();
    t.symbols.insert("printk".into(), TargetSym::Exported);
    for n in [
        "fat_thing",
        "fat_table",
        "fat_key",
        "__SCK__tp_func_fat_ev",
        "__SCT__tp_func_fat_ev",
    ] {
        t.symbols.insert(
            n.into(),
            TargetSym::OtherModule {
                module: "fat".into(),
                sympos: 0,
            },
        );
    }
    opts
}

fn xmod_pair(name: &str, from: &str, to: &str) -> (Vec<u8>, Vec<u8>) {
    assert!(XMOD.contains(from), "{from}");
    (
        compile(&format!("{name}-orig"), XMOD),
        compile(&format!("{name}-patched"), &XMOD.replacen(from, to, 1)),
    )
}

#[test]
fn another_modules_export_becomes_a_klp_relocation_of_the_patched_module() {
    let (o, p) = xmod_pair(
        "xmod",
        "printk(\"look %d\\n\", a)",
        "printk(\"look2 %d\\n\", a)",
    );
    let (patch, out) = changes(&o, &p, &cross_target());
    assert_eq!(patch.report.changed, vec!["look"]);
    let r = reloc_targets(&out, ".text.look");
    let names: Vec<&str> = r.iter().map(|x| x.0.as_str()).collect();
    // fat's function and data: relocations the patched module's klp section
    // carries, resolved against fat when mymod loads.
    assert!(
        names.contains(&".klp.xsym.mymod.fat.fat_thing,0"),
        "{names:?}"
    );
    assert!(
        names.contains(&".klp.xsym.mymod.fat.fat_table,0"),
        "{names:?}"
    );
    // The module's own static: its own klp symbol; vmlinux's export: plain.
    assert!(names.contains(&".klp.sym.mymod.own,0"), "{names:?}");
    assert!(names.contains(&"printk"), "{names:?}");
    // Nothing is left for the module loader to find in fat (no dependency).
    assert!(
        !names.iter().any(|n| *n == "fat_thing" || *n == "fat_table"),
        "{names:?}"
    );
    for s in out.symbols.iter().filter(|s| s.name.starts_with(".klp.")) {
        assert_eq!(s.bind, STB_GLOBAL, "{}", s.name);
        assert!(s.section().is_none(), "{}", s.name);
    }
    // The position comes from the table (fat's kallsyms).
    let mut opts = cross_target();
    opts.target.as_mut().unwrap().symbols.insert(
        "fat_thing".into(),
        TargetSym::OtherModule {
            module: "fat".into(),
            sympos: 2,
        },
    );
    let (_, out) = changes(&o, &p, &opts);
    assert!(reloc_targets(&out, ".text.look")
        .iter()
        .any(|x| x.0 == ".klp.xsym.mymod.fat.fat_thing,2"));
}

#[test]
fn vmlinux_never_reaches_a_module_through_a_klp_relocation() {
    // A table that says so anyway (a vmlinux global that shares a module
    // export's name): vmlinux's klp relocations are for vmlinux, so the
    // reference stays plain rather than naming a module.
    let (o, p) = xmod_pair(
        "xmod-vm",
        "printk(\"look %d\\n\", a)",
        "printk(\"look3 %d\\n\", a)",
    );
    let mut opts = cross_target();
    opts.target.as_mut().unwrap().objname = "vmlinux".into();
    let (_, out) = changes(&o, &p, &opts);
    let r = reloc_targets(&out, ".text.look");
    assert!(r.iter().any(|x| x.0 == "fat_thing"), "{r:?}");
    assert!(!r.iter().any(|x| x.0.contains("fat.fat_thing")), "{r:?}");
    // And a module's table naming the module itself, or vmlinux, as the
    // exporter: the module's own symbols are `.klp.sym.MOD`, vmlinux's plain.
    let mut opts = cross_target();
    let t = opts.target.as_mut().unwrap();
    t.symbols.insert(
        "fat_thing".into(),
        TargetSym::OtherModule {
            module: "vmlinux".into(),
            sympos: 0,
        },
    );
    t.symbols.insert(
        "fat_table".into(),
        TargetSym::OtherModule {
            module: "mymod".into(),
            sympos: 0,
        },
    );
    let (_, out) = changes(&o, &p, &opts);
    let r = reloc_targets(&out, ".text.look");
    assert!(r.iter().any(|x| x.0 == "fat_thing"), "{r:?}");
    assert!(r.iter().any(|x| x.0 == "fat_table"), "{r:?}");
    assert!(!r.iter().any(|x| x.0.starts_with(".klp.xsym.")), "{r:?}");
}

#[test]
fn a_call_into_another_module_goes_through_its_padding_when_it_has_one() {
    let (o, p) = xmod_pair(
        "xmod-pfx",
        "printk(\"look %d\\n\", a)",
        "printk(\"look4 %d\\n\", a)",
    );
    let mut opts = cross_target();
    opts.target.as_mut().unwrap().symbols.insert(
        "__pfx_fat_thing".into(),
        TargetSym::OtherModule {
            module: "fat".into(),
            sympos: 0,
        },
    );
    let (_, out) = changes(&o, &p, &opts);
    let r = reloc_targets(&out, ".text.look");
    assert!(
        r.iter()
            .any(|x| x.0 == ".klp.xsym.mymod.fat.__pfx_fat_thing,0" && x.2 == -4),
        "{r:?}"
    );
    // Data is never reached through a padding.
    assert!(
        r.iter().any(|x| x.0 == ".klp.xsym.mymod.fat.fat_table,0"),
        "{r:?}"
    );
    // Padding another module owns does not stand in for the callee of another.
    let mut opts = cross_target();
    opts.target.as_mut().unwrap().symbols.insert(
        "__pfx_fat_thing".into(),
        TargetSym::OtherModule {
            module: "ext4".into(),
            sympos: 0,
        },
    );
    let (_, out) = changes(&o, &p, &opts);
    let r = reloc_targets(&out, ".text.look");
    assert!(
        r.iter().any(|x| x.0 == ".klp.xsym.mymod.fat.fat_thing,0"),
        "{r:?}"
    );
    assert!(!r.iter().any(|x| x.0.contains("__pfx_")), "{r:?}");
}

#[test]
fn special_section_entries_never_need_another_modules_symbol() {
    // A static call site on fat's tracepoint key: dropped, as for the
    // module's own keys; the call through the trampoline stays.
    let (o, p) = xmod_pair(
        "xmod-sc",
        "trace_fat_ev(a); return a + 1;",
        "trace_fat_ev(a); return a + 2;",
    );
    let (patch, out) = changes(&o, &p, &cross_target());
    assert_eq!(patch.report.changed, vec!["ev"]);
    assert!(out
        .section_by_name(".static_call_sites")
        .is_none_or(|s| s.data.is_empty()));
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("__SCK__tp_func_fat_ev")
                && w.contains("dropped")
                && w.contains("module fat")),
        "{:?}",
        patch.report.warnings
    );
    assert!(reloc_targets(&out, ".text.ev")
        .iter()
        .any(|r| r.0 == ".klp.xsym.mymod.fat.__SCT__tp_func_fat_ev,0"));
    // A jump label on fat's key: refused, naming the key and its module.
    let (o, p) = xmod_pair(
        "xmod-jl",
        "printk(\"keyed %d\\n\", a); return a + 1;",
        "printk(\"keyed %d\\n\", a); return a + 3;",
    );
    match diff(&o, &p, &cross_target()).unwrap() {
        Outcome::Refused(r) => assert!(
            r.refusals.iter().any(|x| x.subject == "fat_key"
                && x.reason.contains("module fat")
                && x.reason.contains("mymod")),
            "{r:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_symbol_orig_defines_is_never_another_modules() {
    // `own` is ORIG's: a table calling it fat's export is contradictory, and
    // the changed `look` that calls it cannot be written.
    let (o, p) = xmod_pair(
        "xmod-def",
        "printk(\"look %d\\n\", a)",
        "printk(\"look5 %d\\n\", a)",
    );
    let mut opts = cross_target();
    opts.target.as_mut().unwrap().symbols.insert(
        "own".into(),
        TargetSym::OtherModule {
            module: "fat".into(),
            sympos: 0,
        },
    );
    match diff(&o, &p, &opts) {
        Err(e) => assert!(
            e.to_string().contains("own") && e.to_string().contains("fat"),
            "{e}"
        ),
        Ok(other) => panic!("{other:?}"),
    }
}

/// Read-only data of the unit a changed function uses: `__func__`, a table
/// read by value and a table of string pointers go into the patch as copies
/// (no klp relocation, so no instance of them in the running kernel needs to
/// be decided); an ops table passed to a register function (it holds function
/// pointers: the kernel may keep and compare its address), a constant table a
/// writable structure points to, and a writable static stay the running
/// kernel's.
const RODATA: &str = r#"
extern int printk(const char *, ...);
struct ops { int (*open)(int); int (*close)(int); };
extern int register_ops(const struct ops *);
static int my_open(int a) { return a + 1; }
static int my_close(int a) { return a - 1; }
static const struct ops my_ops = { my_open, my_close };
static const unsigned char weights[8] = { 3, 1, 4, 1, 5, 9, 2, 6 };
static const char *const names[] = { "zero", "one" };
static const unsigned short ids[4] = { 1, 2, 3, 4 };
struct drv { const unsigned short *ids; };
struct drv the_drv = { ids };
static int counter;
int use(int a) {
    counter += a;
    printk("%s: %d %s %d\n", __func__, weights[a & 7], names[a & 1], ids[a & 3]);
    return register_ops(&my_ops) + counter;
}
"#;

#[test]
fn read_only_local_data_is_copied_unless_its_address_can_matter() {
    let o = compile("rodata-orig", RODATA);
    let p = compile(
        "rodata-patched",
        &RODATA.replace("counter += a;", "counter += a + 1;"),
    );
    // The target table names only what must be reached: the copied data is
    // absent from it, as an instance suture-symbols could not decide would be.
    let mut t = Target {
        objname: "vmlinux".into(),
        symbols: Default::default(),
    };
    for n in [
        "use", "my_ops", "ids", "counter", "my_open", "my_close", "the_drv",
    ] {
        t.symbols
            .insert(n.into(), TargetSym::Unexported { sympos: 0 });
    }
    t.symbols.insert("printk".into(), TargetSym::Exported);
    t.symbols.insert("register_ops".into(), TargetSym::Exported);
    let opts = Options {
        target: Some(t),
        ..Default::default()
    };
    let (patch, out) = changes(&o, &p, &opts);
    assert_eq!(patch.report.changed, vec!["use"]);
    let names: Vec<String> = reloc_targets(&out, ".text.use")
        .into_iter()
        .map(|x| x.0)
        .collect();
    for copied in ["weights", "names"] {
        let s = defined(&out, copied).unwrap_or_else(|| panic!("{copied} is copied: {names:?}"));
        assert_eq!(s.bind, STB_LOCAL);
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with(".klp.") && n.contains(copied)),
            "{names:?}"
        );
    }
    let f = out
        .symbols
        .iter()
        .find(|s| s.name.starts_with("__func__"))
        .expect("__func__ is referenced");
    assert!(f.section().is_some(), "__func__ is a copy in the patch");
    assert!(!out
        .symbols
        .iter()
        .any(|s| s.name.starts_with(".klp.") && s.name.contains("__func__")));
    // The copy holds the same bytes: "use" and the strings `names` points to.
    let fsec = &out.sections[f.section().unwrap()];
    assert_eq!(
        &fsec.data[f.value as usize..(f.value + f.size) as usize],
        b"use\0"
    );
    assert!(!reloc_targets(&out, ".rodata.names")
        .iter()
        .any(|r| r.0.starts_with(".klp.")));
    for kept in [
        ".klp.sym.vmlinux.my_ops,0",
        ".klp.sym.vmlinux.ids,0",
        ".klp.sym.vmlinux.counter,0",
    ] {
        assert!(
            names.iter().any(|n| n == kept),
            "{kept} stays a reference: {names:?}"
        );
    }
    for name in ["my_ops", "ids", "counter"] {
        assert!(defined(&out, name).is_none(), "{name} must not be copied");
    }
}

/// `__sched` code shares `.sched.text`: gcc's calls between its static
/// functions are offsets the assembler fixed, with no relocation. The
/// differ gives each such call the relocation it would have had in a
/// section of its own, so the klp object reaches `helper` and `other` by
/// name (a real rtmutex fix built without this oopsed a 6.1 guest), and an
/// unchanged caller whose offsets merely moved is no change.
#[test]
fn calls_at_fixed_offsets_in_a_shared_section_become_relocations() {
    let src = |k: &str, pad: &str| {
        format!(
            r#"
#define __sched __attribute__((section(".sched.text"), noinline))
static int __sched helper(int a) {{ return a * 3 + {pad}; }}
static int __sched other(int a) {{ return a * 5 - 2; }}
int __sched sched_entry(int a) {{ return helper(a) + other(a) + {k}; }}
int __sched sched_second(int a) {{ return other(a) * 7; }}
"#
        )
    };
    let o = compile("shared-orig", &src("1", "1"));
    let p = compile("shared-patched", &src("2", "1"));
    let (patch, obj) = changes(&o, &p, &Options::default());
    let names: Vec<&str> = patch.replaced.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["sched_entry"], "only the changed function");
    let sec = obj
        .sections
        .iter()
        .find(|x| x.name.contains("sched"))
        .unwrap_or_else(|| {
            panic!(
                "{:?}",
                obj.sections.iter().map(|x| &x.name).collect::<Vec<_>>()
            )
        });
    let targets: Vec<String> = reloc_targets(&obj, &sec.name)
        .into_iter()
        .map(|t| t.0)
        .collect();
    for f in ["helper", "other"] {
        assert!(targets.iter().any(|t| t.contains(f)), "{f}: {targets:?}");
    }
    // A change that only moves the functions after it (helper grows):
    // sched_second's call to `other` keeps its target, so it is unchanged.
    let p2 = compile("shared-moved", &src("1", "1 + (a >> 3) * 11"));
    let (patch, _) = changes(&o, &p2, &Options::default());
    let names: Vec<&str> = patch.replaced.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["helper"], "only helper changed");
}

/// A short (rel8) jump out of a function in a shared section has no room
/// for a relocation: refused, naming the jump's target and the section.
#[test]
fn a_short_jump_out_of_a_function_in_a_shared_section_is_refused() {
    let src = |k: &str| {
        format!(
            r#"
#define __sched __attribute__((section(".sched.text"), noinline, used))
static int __sched helper(int a) {{ return a * 3 + 1; }}
int __sched tail(int a) {{
    if (a == {k})
        asm volatile("jmp helper");
    return a + 1;
}}
"#
        )
    };
    let o = compile("short-orig", &src("7"));
    let p = compile("short-patched", &src("8"));
    let r = refused(&o, &p);
    let x = r
        .refusals
        .iter()
        .find(|x| x.subject == "tail")
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        x.reason.contains("jump to helper") && x.reason.contains(".sched.text"),
        "{x:?}"
    );
}

/// A fix that stops using a constant table (the real cxgb4 fix to
/// t4_sge_decode_idma_state drops its t4_decode/t5_decode tables) drops no
/// state: the read-only statics it still uses travel with it, renumbered or
/// not, without a "starts from its initial value" warning.
#[test]
fn removed_read_only_static_local_reference_is_allowed() {
    let orig = r#"extern int printk(const char *, ...);
int decode(int state, int chip)
{
	static const char * const t4_names[] = { "idle", "busy", "wait" };
	static const char * const t5_names[] = { "IDLE", "BUSY", "WAIT", "DONE" };
	const char * const *names = chip == 4 ? t4_names : t5_names;
	return printk("state %s\n", names[state & 1]);
}
"#;
    let patched = r#"extern int printk(const char *, ...);
int decode(int state, int chip)
{
	static const char * const t5_names[] = { "IDLE", "BUSY", "WAIT", "DONE" };
	return printk("state %s %d\n", t5_names[state & 3], chip);
}
"#;
    let o = compile("rodata-static-orig", orig);
    let p = compile("rodata-static-patched", patched);
    let (patch, _) = changes(&o, &p, &Options::default());
    assert_eq!(patch.report.changed, vec!["decode".to_string()]);
    assert!(
        !patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("initial value")),
        "{:?}",
        patch.report.warnings
    );
}

/// A changed local function ftrace cannot hook (a `static inline` gcc kept
/// out of line is `notrace`) is reached through its callers: they are
/// replaced, it travels with them, and it is not a replaced function
/// itself. The real case is `__do_sys_fsmount` behind `SYSCALL_DEFINE`.
#[test]
fn changed_local_notrace_function_is_reached_through_its_callers() {
    let src = |n: &str| {
        format!(
            r#"extern int printk(const char *, ...);
static __attribute__((noinline, no_instrument_function)) int body(int a)
{{
	return printk("body %d\n", a + {n});
}}
int entry_a(int a) {{ return body(a) + 1; }}
int entry_b(int a) {{ return body(a * 3) - 1; }}
"#
        )
    };
    let o = compile("via-callers-orig", &src("1"));
    let p = compile("via-callers-patched", &src("2"));
    let (patch, out) = changes(&o, &p, &Options::default());
    let mut replaced: Vec<&str> = patch.replaced.iter().map(|f| f.name.as_str()).collect();
    replaced.sort();
    assert_eq!(replaced, ["entry_a", "entry_b"]);
    assert!(
        defined(&out, "body").is_some(),
        "the new body travels with the callers"
    );
    assert!(
        patch
            .report
            .warnings
            .iter()
            .any(|w| w.contains("body") && w.contains("no ftrace hook")),
        "{:?}",
        patch.report.warnings
    );
}

/// The same function with its address in data: a call through that pointer
/// would still reach the old code, so it stays refused.
#[test]
fn changed_local_notrace_function_whose_address_is_taken_is_refused() {
    let src = |n: &str| {
        format!(
            r#"extern int printk(const char *, ...);
static __attribute__((noinline, no_instrument_function)) int body(int a)
{{
	return printk("body %d\n", a + {n});
}}
int (*body_ptr)(int) = body;
int entry_a(int a) {{ return body(a) + 1; }}
"#
        )
    };
    let o = compile("via-ptr-orig", &src("1"));
    let p = compile("via-ptr-patched", &src("2"));
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "body" && x.reason.contains("no ftrace hook")),
        "{r:?}"
    );
}

/// Reached by a tail call (`jmp`), the old code would run with no caller on
/// the task's stack for the transition to wait on: refused.
#[test]
fn changed_local_notrace_function_reached_by_a_tail_call_is_refused() {
    let src = |n: &str| {
        format!(
            r#"extern int printk(const char *, ...);
static __attribute__((noinline, no_instrument_function)) int body(int a)
{{
	return printk("body %d\n", a + {n});
}}
int entry_a(int a) {{ return body(a) + 1; }}
int entry_tail(int a) {{ return body(a); }}
"#
        )
    };
    let o = compile("via-tail-orig", &src("1"));
    let p = compile("via-tail-patched", &src("2"));
    let tail = Object::parse(&o).unwrap();
    let sec = tail.section_by_name(".text.entry_tail").unwrap();
    assert!(sec.data.contains(&0xe9), "gcc made entry_tail a tail call");
    let r = refused(&o, &p);
    assert!(
        r.refusals
            .iter()
            .any(|x| x.subject == "body" && x.reason.contains("no ftrace hook")),
        "{r:?}"
    );
}
