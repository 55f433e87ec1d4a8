//! klp object → livepatch module.
//!
//! The differ's klp objects are linked by the release's own kbuild (out of tree,
//! against `linux-headers-RELEASE`) together with a generated hook that fills
//! `struct klp_patch` and calls `klp_enable_patch()`; the linked `.ko` is then
//! rewritten into the livepatch ELF format ([`postlink`]).

pub mod elf;
pub mod modinfo;
pub mod postlink;
pub mod sign;

use anyhow::{bail, ensure, Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One `klp_func`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Func {
    pub old_name: String,
    pub sympos: u32,
    /// Symbol in the klp object that defines the replacement.
    pub symbol: String,
}

/// One `klp_object`: vmlinux or a module, with the klp objects built for it.
#[derive(Debug, Clone)]
pub struct Object {
    /// `vmlinux` or a module name.
    pub objname: String,
    pub funcs: Vec<Func>,
    /// `struct klp_callbacks` members: (kind, symbol in the klp object that
    /// defines the function), kind one of `pre_patch`, `post_patch`,
    /// `pre_unpatch`, `post_unpatch`, at most once each.
    pub callbacks: Vec<(String, String)>,
}

/// One `struct klp_state`: the kernel refuses a later patch (with atomic
/// replace) that lacks this id or carries a lower version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct State {
    pub id: u64,
    pub version: u32,
}

/// `ID:VERSION`, both decimal (or 0x-hex for the id); the id must not be 0
/// (the kernel's list of states ends at id 0).
pub fn parse_state(s: &str) -> Result<State> {
    let (id, version) = s
        .split_once(':')
        .with_context(|| format!("state {s:?}: expected ID:VERSION, e.g. 1:2"))?;
    let id = match id.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => id.parse(),
    }
    .with_context(|| format!("state {s:?}: the id is not a number"))?;
    let version: u32 = version
        .parse()
        .with_context(|| format!("state {s:?}: the version is not a number"))?;
    ensure!(
        id != 0,
        "state {s:?}: the id must not be 0 (0 ends the kernel's list of states)"
    );
    Ok(State { id, version })
}

#[derive(Debug, Clone)]
pub struct ModuleSpec {
    /// Module name: `/sys/kernel/livepatch/NAME`.
    pub name: String,
    /// Atomic replace: loading this patch disables every earlier one.
    pub replace: bool,
    pub objects: Vec<Object>,
    /// `klp_patch.states`.
    pub states: Vec<State>,
    /// The kernel leaves a module object's livepatch relocations written
    /// when that module goes away (before Linux 6.3's
    /// `klp_clear_object_relocs`): the hook clears them itself.
    pub clear_module_relocs: bool,
}

/// A name the kernel accepts for a module (and so for the livepatch directory).
pub fn check_module_name(name: &str) -> Result<()> {
    // The host checks a module it is given with the same rule.
    suture_abi::check_module_name(name).map_err(anyhow::Error::new)
}

/// `livepatch_` + the patch file's stem, made a valid module name.
pub fn default_module_name(patch: &Path) -> String {
    let stem = patch
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("patch")
        .trim_end_matches(".patch")
        .trim_end_matches(".diff");
    let mut s: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    s = format!("livepatch_{s}");
    s.truncate(55);
    s
}

/// The global alias the hook uses for function `i` of object `o`.
pub fn alias_name(o: usize, i: usize) -> String {
    format!("__suture_new_{o}_{i}")
}

/// The global alias the hook uses for object `o`'s callback of `kind`.
pub fn callback_alias(o: usize, kind: &str) -> String {
    format!("__suture_cb_{o}_{kind}")
}

const CALLBACK_KINDS: [&str; 4] = ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"];

fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c)
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Before Linux 6.3 the livepatch core leaves a module object's relocations
/// written in the patch module when that module goes away, and x86's
/// `apply_relocate_add` refuses to write a non-zero field when it comes back
/// ("existing value is nonzero"): the module could not be loaded again while
/// the patch is (measured on 6.1.0-57: "refusing to load module
/// 'binfmt_misc'"). The hook clears them at the object's post_unpatch, which
/// runs when the module goes away (and when the patch is disabled), the way
/// later kernels' `klp_clear_object_relocs` does: every field of the
/// object's `.klp.rela` sections, kept in memory (`SHF_ALLOC`) and listed in
/// `THIS_MODULE->klp_info`, zeroed with `text_poke` under `text_mutex`.
/// Neither is exported: they are livepatch relocations to vmlinux
/// (`__suture_klp_vmlinux__NAME`, renamed by [`postlink`]).
const CLEAR_RELOCS_C: &str = r#"#include <linux/elf.h>
#include <linux/mutex.h>
#include <linux/string.h>

extern void *__suture_klp_vmlinux__text_poke(void *addr, const void *opcode, size_t len);
extern void __suture_klp_vmlinux__text_poke_sync(void);
extern struct mutex __suture_klp_vmlinux__text_mutex;

static void suture_clear_relocs(const char *objname)
{
	static const u64 zero;
	struct klp_modinfo *info = THIS_MODULE->klp_info;
	char prefix[MODULE_NAME_LEN + 12];
	size_t plen;
	unsigned int i, j;

	if (!info)
		return;
	plen = snprintf(prefix, sizeof(prefix), ".klp.rela.%s.", objname);
	mutex_lock(&__suture_klp_vmlinux__text_mutex);
	for (i = 1; i < info->hdr.e_shnum; i++) {
		Elf64_Shdr *sec = &info->sechdrs[i];
		Elf64_Rela *rel = (void *)sec->sh_addr;

		if (!(sec->sh_flags & SHF_RELA_LIVEPATCH) ||
		    strncmp(info->secstrings + sec->sh_name, prefix, plen))
			continue;
		for (j = 0; j < sec->sh_size / sizeof(*rel); j++) {
			void *loc = (void *)info->sechdrs[sec->sh_info].sh_addr + rel[j].r_offset;
			size_t size;

			switch (ELF64_R_TYPE(rel[j].r_info)) {
			case R_X86_64_64:
			case R_X86_64_PC64:
				size = 8;
				break;
			case R_X86_64_32:
			case R_X86_64_32S:
			case R_X86_64_PC32:
			case R_X86_64_PLT32:
				size = 4;
				break;
			default:
				continue;
			}
			__suture_klp_vmlinux__text_poke(loc, &zero, size);
		}
	}
	__suture_klp_vmlinux__text_poke_sync();
	mutex_unlock(&__suture_klp_vmlinux__text_mutex);
}

"#;

/// The C source of the patch module's hook. Pure.
pub fn hook_source(spec: &ModuleSpec) -> String {
    let mut s = String::new();
    s.push_str(
        "// Generated by suture: the livepatch hook. Do not edit.\n\
         #include <linux/kernel.h>\n#include <linux/module.h>\n#include <linux/livepatch.h>\n\n",
    );
    for (o, obj) in spec.objects.iter().enumerate() {
        for i in 0..obj.funcs.len() {
            let _ = writeln!(s, "extern char {}[];", alias_name(o, i));
        }
        for (kind, _) in &obj.callbacks {
            let ret = if kind == "pre_patch" { "int" } else { "void" };
            let _ = writeln!(
                s,
                "extern {ret} {}(struct klp_object *);",
                callback_alias(o, kind)
            );
        }
    }
    s.push('\n');
    let clear = spec.clear_module_relocs && spec.objects.iter().any(|o| o.objname != "vmlinux");
    if clear {
        s.push_str(CLEAR_RELOCS_C);
        for (o, obj) in spec.objects.iter().enumerate() {
            if obj.objname == "vmlinux" {
                continue;
            }
            let user = if obj.callbacks.iter().any(|(k, _)| k == "post_unpatch") {
                format!("\t{}(obj);\n", callback_alias(o, "post_unpatch"))
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "static void suture_post_unpatch_{o}(struct klp_object *obj)\n{{\n{user}\tsuture_clear_relocs({});\n}}\n",
                c_string(&obj.objname)
            );
        }
    }
    for (o, obj) in spec.objects.iter().enumerate() {
        let _ = writeln!(s, "static struct klp_func suture_funcs_{o}[] = {{");
        for (i, f) in obj.funcs.iter().enumerate() {
            let _ = writeln!(
                s,
                "\t{{ .old_name = {}, .new_func = {}, .old_sympos = {} }},",
                c_string(&f.old_name),
                alias_name(o, i),
                f.sympos
            );
        }
        s.push_str("\t{ }\n};\n\n");
    }
    s.push_str("static struct klp_object suture_objs[] = {\n");
    for (o, obj) in spec.objects.iter().enumerate() {
        let name = if obj.objname == "vmlinux" {
            "NULL".to_string()
        } else {
            c_string(&obj.objname)
        };
        let mut cbs = String::new();
        for kind in CALLBACK_KINDS {
            if clear && kind == "post_unpatch" && obj.objname != "vmlinux" {
                // Calls the patch author's own, then clears.
                let _ = write!(cbs, " .post_unpatch = suture_post_unpatch_{o},");
            } else if obj.callbacks.iter().any(|(k, _)| k == kind) {
                let _ = write!(cbs, " .{kind} = {},", callback_alias(o, kind));
            }
        }
        if cbs.is_empty() {
            let _ = writeln!(s, "\t{{ .name = {name}, .funcs = suture_funcs_{o} }},");
        } else {
            let _ = writeln!(
                s,
                "\t{{ .name = {name}, .funcs = suture_funcs_{o}, .callbacks = {{{cbs} }} }},"
            );
        }
    }
    s.push_str("\t{ }\n};\n\n");
    if !spec.states.is_empty() {
        s.push_str("static struct klp_state suture_states[] = {\n");
        for st in &spec.states {
            let _ = writeln!(s, "\t{{ .id = {}UL, .version = {} }},", st.id, st.version);
        }
        s.push_str("\t{ }\n};\n\n");
    }
    let _ = write!(
        s,
        "static struct klp_patch suture_patch = {{\n\
         \t.mod = THIS_MODULE,\n\
         \t.objs = suture_objs,\n{}\
         \t.replace = {},\n}};\n\n\
         static int __init suture_init(void)\n{{\n\treturn klp_enable_patch(&suture_patch);\n}}\n\n\
         static void __exit suture_exit(void)\n{{\n}}\n\n\
         module_init(suture_init);\nmodule_exit(suture_exit);\n\
         MODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n\
         MODULE_DESCRIPTION(\"suture livepatch {}\");\n",
        if spec.states.is_empty() {
            ""
        } else {
            "\t.states = suture_states,\n"
        },
        if spec.replace { "true" } else { "false" },
        spec.name
    );
    s
}

/// Links `klp_objects` (one per translation unit, in the order of
/// `spec.objects`' functions) into `NAME.ko` with the release's kbuild, in
/// `workdir`, and returns the finished livepatch module's bytes.
pub fn build_module(
    spec: &ModuleSpec,
    klp_objects: &[(usize, Vec<u8>)],
    headers: &Path,
    workdir: &Path,
) -> Result<(Vec<u8>, postlink::PostLink)> {
    check_module_name(&spec.name)?;
    ensure!(!spec.objects.is_empty(), "nothing to patch");
    for obj in &spec.objects {
        for kind in CALLBACK_KINDS {
            let n = obj.callbacks.iter().filter(|(k, _)| k == kind).count();
            ensure!(
                n <= 1,
                "{n} {kind} callbacks for {}: the kernel keeps one per object; call the others from one function",
                obj.objname
            );
        }
        for (kind, _) in &obj.callbacks {
            ensure!(
                CALLBACK_KINDS.contains(&kind.as_str()),
                "unknown callback kind {kind}"
            );
        }
    }
    let mut ids: Vec<u64> = spec.states.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(ids.len() == spec.states.len(), "a state id is given twice");
    let dir = workdir.join("module");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut parts = vec!["suture_hook.o".to_string()];
    for (n, (obj_index, bytes)) in klp_objects.iter().enumerate() {
        let obj = spec
            .objects
            .get(*obj_index)
            .context("klp object for an unknown target object")?;
        // Aliases are added to the klp object that defines the function.
        let mut aliases = Vec::new();
        for (i, f) in obj.funcs.iter().enumerate() {
            if has_defined_symbol(bytes, &f.symbol)? {
                aliases.push((f.symbol.clone(), alias_name(*obj_index, i)));
            }
        }
        for (kind, sym) in &obj.callbacks {
            if has_defined_symbol(bytes, sym)? {
                aliases.push((sym.clone(), callback_alias(*obj_index, kind)));
            }
        }
        let with_aliases = postlink::add_aliases(bytes, &aliases)?;
        let file = format!("klp{n}.o");
        fs::write(dir.join(format!("{file}_shipped")), with_aliases)?;
        // modpost reads each object's kbuild command file (for srcversion); a
        // shipped object has none, so say where it came from.
        fs::write(
            dir.join(format!(".{file}.cmd")),
            format!(
                "cmd_{file} := suture diff\n\nsource_{file} := {file}_shipped\n\ndeps_{file} := \n"
            ),
        )?;
        parts.push(file);
    }
    fs::write(dir.join("suture_hook.c"), hook_source(spec))?;
    fs::write(
        dir.join("Kbuild"),
        format!("obj-m := {0}.o\n{0}-y := {1}\n", spec.name, parts.join(" ")),
    )?;
    let out = Command::new("make")
        .arg("-C")
        .arg(headers)
        .arg(format!("M={}", dir.display()))
        // The `.klp.sym.*` references are resolved by livepatch, not by modpost.
        .arg("KBUILD_MODPOST_WARN=1")
        .arg("modules")
        .stdin(Stdio::null())
        .output()
        .context("running make (install make and gcc)")?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(dir.join("build.log"), &log)?;
    let ko = dir.join(format!("{}.ko", spec.name));
    if !out.status.success() || !ko.exists() {
        bail!("linking the livepatch module failed:\n{}", tail(&log, 30));
    }
    check_modpost(&log)?;
    let bytes = fs::read(&ko)?;
    postlink::post_link(&bytes)
}

/// modpost may only complain about the `.klp.sym.*` (and `.klp.xsym.*`, see
/// [`postlink`]) references that livepatch resolves; any other undefined
/// symbol would make the module fail to load.
fn check_modpost(log: &str) -> Result<()> {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("undefined!")
                && !l.contains("\".klp.sym.")
                && !l.contains("\".klp.xsym.")
                && !l.contains(&format!("\"{}", postlink::HOOK_VMLINUX_PREFIX))
        })
        .collect();
    if !bad.is_empty() {
        bail!(
            "the patch module would reference symbols the kernel cannot resolve:\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}

fn has_defined_symbol(obj: &[u8], name: &str) -> Result<bool> {
    let e = elf::Elf::parse(obj.to_vec())?;
    let symtab = e.symtab()?;
    let strtab = e.shdrs[symtab].link as usize;
    for s in e.syms(symtab)? {
        if s.shndx != elf::SHN_UNDEF && e.str_at(strtab, s.name)? == name {
            return Ok(true);
        }
    }
    Ok(false)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where a finished module goes: written next to its final name, then renamed,
/// so that a failed build never leaves a half-written module behind.
/// The temporary name is random and created with `O_EXCL` (a file or symlink
/// planted there is never opened), and removed unless the rename happens.
pub fn write_module(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".suture-module.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_module_never_follows_a_planted_symlink() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let victim = dir.join("victim");
        fs::write(&victim, b"keep").unwrap();
        // The old fixed temporary name.
        std::os::unix::fs::symlink(&victim, dir.join("fix.ko.tmp")).unwrap();
        let out = dir.join("fix.ko");
        write_module(&out, b"module").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&out).unwrap(), b"module");
        // Only the output, the victim and the planted link are left.
        assert_eq!(fs::read_dir(dir).unwrap().count(), 3);
        // Onto a directory: fails and leaves no temporary file behind.
        let d = dir.join("d.ko");
        fs::create_dir(&d).unwrap();
        assert!(write_module(&d, b"module").is_err());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 4);
    }

    #[test]
    fn hook_names_objects_and_positions() {
        let spec = ModuleSpec {
            name: "livepatch_x".into(),
            replace: true,
            objects: vec![
                Object {
                    objname: "vmlinux".into(),
                    funcs: vec![Func {
                        old_name: "type_show".into(),
                        sympos: 3,
                        symbol: "type_show".into(),
                    }],
                    callbacks: vec![],
                },
                Object {
                    objname: "binfmt_misc".into(),
                    funcs: vec![Func {
                        old_name: "bm_status_read".into(),
                        sympos: 0,
                        symbol: "bm_status_read".into(),
                    }],
                    callbacks: vec![
                        ("pre_patch".into(), "pre".into()),
                        ("post_unpatch".into(), "post".into()),
                    ],
                },
            ],
            states: vec![],
            clear_module_relocs: false,
        };
        let c = hook_source(&spec);
        assert!(
            c.contains(".old_name = \"type_show\", .new_func = __suture_new_0_0, .old_sympos = 3"),
            "{c}"
        );
        assert!(
            c.contains("{ .name = NULL, .funcs = suture_funcs_0 }"),
            "{c}"
        );
        assert!(
            c.contains("{ .name = \"binfmt_misc\", .funcs = suture_funcs_1, .callbacks = { .pre_patch = __suture_cb_1_pre_patch, .post_unpatch = __suture_cb_1_post_unpatch, } }"),
            "{c}"
        );
        assert!(
            c.contains("extern int __suture_cb_1_pre_patch(struct klp_object *);"),
            "{c}"
        );
        assert!(
            c.contains("extern void __suture_cb_1_post_unpatch(struct klp_object *);"),
            "{c}"
        );
        assert!(c.contains(".replace = true"));
        assert!(!c.contains("states"), "no states asked for: {c}");
        assert!(c.contains("MODULE_INFO(livepatch, \"Y\");"));
    }

    #[test]
    fn module_objects_clear_their_relocations_where_the_kernel_does_not() {
        let objects = vec![
            Object {
                objname: "vmlinux".into(),
                funcs: vec![],
                callbacks: vec![],
            },
            Object {
                objname: "binfmt_misc".into(),
                funcs: vec![],
                callbacks: vec![("post_unpatch".into(), "post".into())],
            },
            Object {
                objname: "vfat".into(),
                funcs: vec![],
                callbacks: vec![],
            },
        ];
        let spec = |clear| ModuleSpec {
            name: "lp".into(),
            replace: true,
            objects: objects.clone(),
            states: vec![],
            clear_module_relocs: clear,
        };
        let c = hook_source(&spec(true));
        // The author's callback still runs, first.
        assert!(
            c.contains("static void suture_post_unpatch_1(struct klp_object *obj)\n{\n\t__suture_cb_1_post_unpatch(obj);\n\tsuture_clear_relocs(\"binfmt_misc\");\n}"),
            "{c}"
        );
        assert!(c.contains("static void suture_post_unpatch_2(struct klp_object *obj)\n{\n\tsuture_clear_relocs(\"vfat\");\n}"), "{c}");
        assert!(c.contains("{ .name = \"vfat\", .funcs = suture_funcs_2, .callbacks = { .post_unpatch = suture_post_unpatch_2, } }"), "{c}");
        assert!(
            c.contains("{ .name = NULL, .funcs = suture_funcs_0 }"),
            "vmlinux never goes away: {c}"
        );
        assert!(
            c.contains("__suture_klp_vmlinux__text_poke(loc, &zero, size);"),
            "{c}"
        );
        let plain = hook_source(&spec(false));
        assert!(
            !plain.contains("suture_clear_relocs")
                && plain.contains(".post_unpatch = __suture_cb_1_post_unpatch,"),
            "{plain}"
        );
    }

    #[test]
    fn states_are_listed_and_parsed() {
        let spec = ModuleSpec {
            name: "livepatch_s".into(),
            replace: true,
            objects: vec![Object {
                objname: "vmlinux".into(),
                funcs: vec![],
                callbacks: vec![],
            }],
            states: vec![parse_state("7:2").unwrap(), parse_state("0x10:1").unwrap()],
            clear_module_relocs: false,
        };
        let c = hook_source(&spec);
        assert!(
            c.contains("{ .id = 7UL, .version = 2 },\n\t{ .id = 16UL, .version = 1 },\n\t{ }"),
            "{c}"
        );
        assert!(c.contains(".states = suture_states,"), "{c}");
        assert!(parse_state("0:1").is_err());
        assert!(parse_state("1").is_err());
        assert!(parse_state("x:1").is_err());
    }

    #[test]
    fn module_names() {
        assert_eq!(
            default_module_name(Path::new("/x/cmdline-fix.patch")),
            "livepatch_cmdline_fix"
        );
        assert!(check_module_name("livepatch_ok_1").is_ok());
        assert!(check_module_name("bad-name").is_err());
        assert!(check_module_name(&"x".repeat(56)).is_err());
        assert!(check_module_name("").is_err());
    }

    #[test]
    fn modpost_may_only_leave_klp_symbols_undefined() {
        assert!(
            check_modpost("WARNING: modpost: \".klp.sym.vmlinux.x,0\" [/t/m.ko] undefined!\n")
                .is_ok()
        );
        assert!(check_modpost(
            "WARNING: modpost: \".klp.xsym.vfat.fat.fat_build_inode,0\" [/t/m.ko] undefined!\n"
        )
        .is_ok());
        assert!(check_modpost("WARNING: modpost: \"foo\" [/t/m.ko] undefined!\n").is_err());
        assert!(check_modpost(
            "WARNING: modpost: \"__suture_klp_vmlinux__text_poke\" [/t/m.ko] undefined!\n"
        )
        .is_ok());
    }
}
