//! Layout changes read from objects gcc compiles at test time, with the
//! flags kernel objects get (`-g -O2 -ffunction-sections -fdata-sections`,
//! relocatable: the DWARF's strings and file names go through RELA
//! relocations), the source named relative to the compile directory as
//! kbuild names it.

// Tests and tools of a pure crate do their own I/O.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;

use suture_layout::{compare, types, Change, Error, Kind, MemberChange, Position};

/// Compiles `files` (path, text; the first is the unit) in a directory of
/// their own, from that directory.
fn compile(name: &str, files: &[(&str, &str)], extra: &[&str]) -> Vec<u8> {
    let dir: PathBuf = std::env::temp_dir()
        .join(format!("suture-layout-{}", std::process::id()))
        .join(name);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let out = Command::new("gcc")
        .current_dir(&dir)
        .args([
            "-c",
            "-g",
            "-O2",
            "-fno-pic",
            "-ffunction-sections",
            "-fdata-sections",
            "-Iinclude",
        ])
        .args(extra)
        .args(["-o", "unit.o", files[0].0])
        .output()
        .expect("gcc is needed to build the test objects");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("unit.o")).unwrap()
}

const UNIT: &str = r#"
struct entry {
	struct entry *next;
	unsigned long id;
	int state;
	unsigned char flags[4];
	int (*hook)(struct entry *, int);
};

struct entry *head;

int entry_state(struct entry *e)
{
	return e->state + e->flags[1] + (int)e->id;
}

int run(struct entry *e, int x)
{
	return e->hook(e, x);
}
"#;

fn unit_with(from: &str, to: &str) -> String {
    assert!(UNIT.contains(from), "{from}");
    UNIT.replacen(from, to, 1)
}

fn pair(name: &str, patched: &str) -> Vec<Change> {
    let o = compile(&format!("{name}-orig"), &[("dir/unit.c", UNIT)], &[]);
    let p = compile(&format!("{name}-patched"), &[("dir/unit.c", patched)], &[]);
    compare(&o, &p).unwrap()
}

#[test]
fn a_struct_of_the_c_file_is_read_with_its_members() {
    let o = compile("read", &[("dir/unit.c", UNIT)], &[]);
    let ts = types(&o).unwrap();
    let e = ts.iter().find(|t| t.name == "entry").unwrap();
    assert_eq!(e.kind, Kind::Struct);
    assert_eq!(e.subject(), "struct entry");
    assert_eq!(e.file.as_deref(), Some("dir/unit.c"));
    assert_eq!(e.size, 32);
    let m: Vec<(&str, u64, &str)> = e
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.at.bit_offset / 8, m.type_name.as_str()))
        .collect();
    assert_eq!(
        m,
        [
            ("next", 0, "struct entry *"),
            ("id", 8, "long unsigned int"),
            ("state", 16, "int"),
            ("flags", 20, "unsigned char [4]"),
            ("hook", 24, "int (struct entry *, int) *"),
        ]
    );
}

#[test]
fn a_member_added_in_the_middle_is_refused_naming_the_first_member_that_moved() {
    let c = pair(
        "middle",
        &unit_with("\tint state;\n", "\tvoid *suture_new;\n\tint state;\n"),
    );
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].subject(), "struct entry");
    assert_eq!(c[0].file.as_deref(), Some("dir/unit.c"));
    assert_eq!(
        c[0].reason(),
        "layout changed: size 32 -> 40 bytes, first member moved: state (offset 16 -> 24); existing code uses the old layout: keep the struct as it is and attach new data with shadow variables (docs/patch-author-guide.md)"
    );
}

#[test]
fn a_member_changed_type_or_added_at_the_end_is_a_change() {
    let c = pair(
        "retyped",
        &unit_with("\tint state;\n", "\tunsigned int state;\n"),
    );
    assert_eq!(
        c[0].summary(),
        "layout changed: size 32 bytes, first member changed type: state (int -> unsigned int)"
    );
    let c = pair(
        "hook",
        &unit_with("(struct entry *, int)", "(struct entry *, long)"),
    );
    assert_eq!(
        c[0].first,
        Some(MemberChange::Retyped {
            name: "hook".into(),
            old: "int (struct entry *, int) *".into(),
            new: "int (struct entry *, long int) *".into()
        })
    );
    let c = pair(
        "end",
        &unit_with(
            "\tint (*hook)(struct entry *, int);\n",
            "\tint (*hook)(struct entry *, int);\n\tint suture_new;\n",
        ),
    );
    assert_eq!(
        c[0].summary(),
        "layout changed: size 32 -> 40 bytes, member added: suture_new (offset 32)"
    );
    let c = pair("array", &unit_with("flags[4]", "flags[8]"));
    assert_eq!(
        c[0].summary(),
        "layout changed: size 32 -> 40 bytes, first member changed type: flags (unsigned char [4] -> unsigned char [8])"
    );
}

#[test]
fn code_macros_inline_functions_and_new_types_are_not_layout_changes() {
    let patched = unit_with(
        "int run(",
        "#define SUTURE_X 3\nstruct suture_new { int a; };\nstatic inline int twice(int x) { return 2 * x + SUTURE_X; }\nint use_new(struct suture_new *n) { return twice(n->a); }\nint run(",
    )
    .replace("return e->state + e->flags[1]", "return e->state * 2 + e->flags[2]");
    assert_eq!(pair("code", &patched), vec![]);
    // A type declared in a function is that function's own.
    let local = "int local(int x)\n{\n\tstruct l { int a; int b; } v = { x, 2 };\n\treturn ((volatile struct l *)&v)->b;\n}\n";
    let o = compile(
        "local-orig",
        &[("dir/unit.c", &format!("{UNIT}{local}"))],
        &[],
    );
    let p = compile(
        "local-patched",
        &[(
            "dir/unit.c",
            &format!(
                "{UNIT}{}",
                local.replace("int a; int b;", "int a; long z; int b;")
            ),
        )],
        &[],
    );
    assert_eq!(compare(&o, &p).unwrap(), vec![]);
}

const HEADER: &str = r#"
struct nf_queue_entry {
	struct nf_queue_entry *list;
	unsigned int id;
	unsigned int hook_index;
	void *state;
};
"#;

#[test]
fn a_header_struct_is_named_with_its_header() {
    let unit = "#include <net/nf_queue.h>\nint id_of(struct nf_queue_entry *e) { return e->id + (e->state != 0); }\n";
    let o = compile(
        "header-orig",
        &[("net/q.c", unit), ("include/net/nf_queue.h", HEADER)],
        &[],
    );
    let grown = HEADER.replace(
        "\tunsigned int hook_index;\n",
        "\tunsigned int hook_index;\n\tunsigned long suture_new;\n",
    );
    let p = compile(
        "header-patched",
        &[("net/q.c", unit), ("include/net/nf_queue.h", &grown)],
        &[],
    );
    let c = compare(&o, &p).unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].subject(), "struct nf_queue_entry");
    assert_eq!(c[0].file.as_deref(), Some("include/net/nf_queue.h"));
    assert_eq!(
        c[0].summary(),
        "layout changed: size 24 -> 32 bytes, first member moved: state (offset 16 -> 24)"
    );
}

const NESTED: &str = r#"
typedef struct { int counter; } my_atomic_t;
union key { unsigned long raw; struct { unsigned int lo, hi; } half; };
struct sk {
	union {
		struct sk *next;
		unsigned long cookie;
	};
	my_atomic_t refs;
	union key key;
	unsigned int dead:1, busy:1, zapped:1;
	int tail;
};
int sk_use(struct sk *s) { return s->refs.counter + s->busy + s->tail + (int)s->key.half.hi + (s->next != 0); }
"#;

fn nested(name: &str, from: &str, to: &str, extra: &[&str]) -> Vec<Change> {
    assert!(NESTED.contains(from), "{from}");
    let o = compile(&format!("{name}-orig"), &[("unit.c", NESTED)], extra);
    let p = compile(
        &format!("{name}-patched"),
        &[("unit.c", &NESTED.replacen(from, to, 1))],
        extra,
    );
    compare(&o, &p).unwrap()
}

#[test]
fn anonymous_members_typedefs_unions_and_bit_fields() {
    let o = compile("nested", &[("unit.c", NESTED)], &[]);
    let ts = types(&o).unwrap();
    let sk = ts.iter().find(|t| t.name == "sk").unwrap();
    let names: Vec<&str> = sk.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["next", "cookie", "refs", "key", "dead", "busy", "zapped", "tail"]
    );
    assert_eq!(
        sk.members[5].at,
        Position {
            bit_offset: 8 * 24 + 1,
            bit_size: Some(1)
        }
    );
    assert!(ts
        .iter()
        .any(|t| t.subject() == "my_atomic_t" && t.typedef && t.size == 4));
    let key = ts.iter().find(|t| t.subject() == "union key").unwrap();
    assert_eq!(
        key.members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["raw", "half", "half.lo", "half.hi"]
    );

    // A member of the anonymous union grows: what follows moves.
    let c = nested(
        "anon",
        "unsigned long cookie;",
        "unsigned long cookie[2];",
        &[],
    );
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].summary(), "layout changed: size 32 -> 40 bytes, first member changed type: cookie (long unsigned int -> long unsigned int [2])");
    // The typedef'd anonymous struct is named by its typedef; the struct
    // that holds it changes too.
    let c = nested(
        "typedef",
        "int counter; }",
        "int counter; int suture_new[3]; }",
        &[],
    );
    let subjects: Vec<String> = c.iter().map(|c| c.subject()).collect();
    assert_eq!(subjects, ["my_atomic_t", "struct sk"], "{c:?}");
    assert_eq!(
        c[0].reason().split(';').next().unwrap(),
        "layout changed: size 4 -> 16 bytes, member added: suture_new (offset 4)"
    );
    assert!(c[0].reason().contains("keep the type as it is"));
    assert_eq!(
        c[1].summary(),
        "layout changed: size 32 -> 40 bytes, first member moved: key (offset 16 -> 24)"
    );
    // A member of a named member of anonymous type.
    let c = nested("half", "unsigned int lo, hi;", "unsigned int hi, lo;", &[]);
    assert_eq!(c[0].subject(), "union key");
    assert_eq!(
        c[0].summary(),
        "layout changed: size 8 bytes, first member moved: half.lo (offset 0 -> 4)"
    );
    // Bit-fields, in DWARF 5 and 4.
    for dwarf in ["-gdwarf-5", "-gdwarf-4"] {
        let c = nested(
            &format!("bits{dwarf}"),
            "dead:1, busy:1",
            "dead:1, suture_new:1, busy:1",
            &[dwarf],
        );
        assert_eq!(c.len(), 1, "{dwarf}: {c:?}");
        assert_eq!(
            c[0].summary(),
            "layout changed: size 32 bytes, first member moved: busy (bit offset 193 -> 194)",
            "{dwarf}"
        );
        let c = nested(&format!("width{dwarf}"), "busy:1", "busy:2", &[dwarf]);
        assert_eq!(
            c[0].summary(),
            "layout changed: size 32 bytes, first member moved: busy (bit offset 193, 1 bits -> bit offset 193, 2 bits)",
            "{dwarf}"
        );
    }
}

#[test]
fn an_object_without_debug_information_is_said_as_such() {
    let dir = std::env::temp_dir()
        .join(format!("suture-layout-{}", std::process::id()))
        .join("nodebug");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("u.c"), UNIT).unwrap();
    let st = Command::new("gcc")
        .current_dir(&dir)
        .args(["-c", "-O2", "-o", "u.o", "u.c"])
        .status()
        .unwrap();
    assert!(st.success());
    let o = std::fs::read(dir.join("u.o")).unwrap();
    assert!(matches!(types(&o), Err(Error::NoDebugInfo)));
    assert!(matches!(types(b"not an object"), Err(Error::Object(_))));
}

/// A module built out of tree: kbuild compiles it from the kernel tree with
/// absolute source paths, and suture's copies before and after the patch
/// are different directories. Its own types are still the same types.
#[test]
fn a_unit_named_by_an_absolute_path_outside_the_compile_directory_is_read_from_its_own() {
    let base = std::env::temp_dir()
        .join(format!("suture-layout-{}", std::process::id()))
        .join("oot");
    let tree = base.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut objs = Vec::new();
    for (side, text) in [
        ("oot-orig", UNIT.to_string()),
        (
            "oot-patched",
            unit_with("\tint state;\n", "\tlong suture_new;\n\tint state;\n"),
        ),
    ] {
        let dir = base.join(side);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("m.c"), text).unwrap();
        let out = Command::new("gcc")
            .current_dir(&tree)
            .args(["-c", "-g", "-O2", "-o"])
            .arg(dir.join("m.o"))
            .arg(dir.join("m.c"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        objs.push(std::fs::read(dir.join("m.o")).unwrap());
    }
    let c = compare(&objs[0], &objs[1]).unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(
        (c[0].subject().as_str(), c[0].file.as_deref()),
        ("struct entry", Some("m.c"))
    );
}
