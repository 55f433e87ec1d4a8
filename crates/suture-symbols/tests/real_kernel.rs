//! Against Debian's installed 6.1.0-56-amd64 kernel image. Skipped (with a
//! printed reason) only when the image is absent and `CI` is not set.

use std::path::Path;
use std::sync::OnceLock;

use suture_abi::target::TargetSym;
use suture_symbols::*;

/// The 6.1 release under test: `SUTURE_TEST_RELEASE` (scripts/test.sh sets
/// it to the release Debian's linux-image-amd64 installs), else 6.1.0-57;
/// it prints as its name, so it reads as one in messages and paths.
struct Release;
const RELEASE: Release = Release;

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = std::env::var("SUTURE_TEST_RELEASE").unwrap_or_else(|_| "6.1.0-57-amd64".into());
        f.write_str(&r)
    }
}

struct Real {
    vmlinux: Vec<u8>,
    kallsyms: Kallsyms,
    exports: Exports,
    /// How many of `exports` are modules' (Module.symvers lists them too).
    exports_of_modules: usize,
}

fn real() -> Option<&'static Real> {
    static R: OnceLock<Option<Real>> = OnceLock::new();
    R.get_or_init(|| {
        let image = format!("/boot/vmlinuz-{RELEASE}");
        if !Path::new(&image).exists() {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                panic!("CI is set but {image} is missing: install linux-image-{RELEASE}");
            }
            eprintln!("SKIPPED: {image} absent (install linux-image-{RELEASE} to run these tests)");
            return None;
        }
        let paths = ReleasePaths::new(Path::new("/"), &RELEASE.to_string());
        let (vmlinux, kallsyms) = paths.load_vmlinux().unwrap_or_else(|e| panic!("{e}"));
        // Module.symvers comes with linux-headers; without it the image's own
        // export tables serve (they agree, see exports_from_the_image_...).
        let exports = paths.load_exports().or_else(|e| {
            eprintln!("{e}: using the image's export tables");
            Exports::from_vmlinux(&vmlinux)
        });
        let exports = exports.unwrap_or_else(|e| panic!("{e}"));
        let exports_of_modules = exports.iter().filter(|(_, e)| e.owner != "vmlinux").count();
        Some(Real {
            vmlinux,
            kallsyms,
            exports,
            exports_of_modules,
        })
    })
    .as_ref()
}

/// ORIG for drivers/tty/serial/serial_core.c, compiled in the 6.1.0-56 source
/// tree with the Debian config and `-ffunction-sections -fdata-sections`
/// (debug sections stripped to keep it small).
const SERIAL_CORE_O: &[u8] = include_bytes!("data/serial_core.o");

#[test]
fn kallsyms_of_the_real_image() {
    let Some(r) = real() else { return };
    let k = &r.kallsyms;
    eprintln!("{} symbols, build-id {:?}", k.len(), k.build_id);
    assert!((50_000..400_000).contains(&k.len()), "{} symbols", k.len());
    assert_eq!(k.unique_addr("_text"), Some(0xffffffff81000000));
    assert_eq!(k.unique_addr("_stext"), Some(0xffffffff81000000));
    assert_eq!(k.instances("vmlinux", "cmdline_proc_show").len(), 1);
    for name in ["type_show", "name_show"] {
        let inst = k.instances("vmlinux", name);
        assert!(inst.len() >= 5, "{name}: {}", inst.len());
        let mut addrs: Vec<u64> = inst.iter().map(|i| i.addr).collect();
        addrs.dedup();
        assert_eq!(
            addrs.len(),
            inst.len(),
            "{name} instances must have distinct addresses"
        );
    }
    // kallsyms is sorted by address, the absolute percpu symbols first.
    let syms = k.symbols();
    let first_rel = syms.iter().position(|s| s.kind != 'A').unwrap();
    assert!(syms[first_rel..].windows(2).all(|w| w[0].addr <= w[1].addr));
    assert!(syms[..first_rel].iter().all(|s| s.addr < 0x100000));
    let id = k.build_id.as_deref().expect("build-id");
    use object::Object;
    let aligned = r.vmlinux.clone();
    let want: String = object::File::parse(&*aligned)
        .unwrap()
        .build_id()
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id, want);
}

#[test]
fn damaged_images_are_errors_not_panics() {
    let Some(r) = real() else { return };
    let bz = std::fs::read(format!("/boot/vmlinuz-{RELEASE}")).unwrap();
    let e = extract_vmlinux(&bz[..bz.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no compressed vmlinux"), "{e}");
    // Before .rodata there are no tables; inside them the layout no longer fits.
    for cut in [16 << 20, 0x1200000 + 0x300000] {
        let e = kallsyms_from_vmlinux(&r.vmlinux[..cut])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kallsyms"), "{e}");
    }
}

/// Independent check of the decoded addresses: each `__ksymtab` entry holds
/// (PREL32) the address and name of an exported symbol.
#[test]
fn addresses_agree_with_ksymtab() {
    use object::{Object, ObjectSection};
    let Some(r) = real() else { return };
    let elf = object::File::parse(&*r.vmlinux).unwrap();
    let img = Image::parse(&r.vmlinux).unwrap();
    let mut checked = 0;
    for secname in ["__ksymtab", "__ksymtab_gpl"] {
        let sec = elf.section_by_name(secname).unwrap();
        let data = sec.data().unwrap();
        for (i, e) in data.chunks_exact(12).enumerate() {
            let ea = sec.address() + 12 * i as u64;
            let rel = |o: usize| i32::from_le_bytes(e[o..o + 4].try_into().unwrap()) as i64;
            let value = ea.wrapping_add(rel(0) as u64);
            let name_at = (ea + 4).wrapping_add(rel(4) as u64);
            let name = img.bytes_at(name_at, 128).unwrap();
            let name =
                std::str::from_utf8(&name[..name.iter().position(|&b| b == 0).unwrap()]).unwrap();
            let inst = r.kallsyms.instances("vmlinux", name);
            assert!(
                inst.iter().any(|i| i.addr == value),
                "{name}: ksymtab says {value:#x}, kallsyms {inst:?}"
            );
            checked += 1;
        }
    }
    eprintln!("{checked} ksymtab entries agree with kallsyms");
    assert_eq!(checked, r.exports.len() - r.exports_of_modules);
}

/// Which instances of `name` call `callee` (a uniquely named function): read
/// straight from the image's call instructions, independently of build_target.
fn instances_calling(r: &Real, name: &str, callee: &str) -> Vec<u32> {
    let img = Image::parse(&r.vmlinux).unwrap();
    let target = r.kallsyms.unique_addr(callee).unwrap();
    r.kallsyms
        .instances("vmlinux", name)
        .iter()
        .filter(|i| {
            let code = img.bytes_at(i.addr, 64).unwrap();
            (0..60).any(|o| {
                code[o] == 0xe8
                    && i.addr
                        .wrapping_add(o as u64 + 5)
                        .wrapping_add(i32::from_le_bytes(code[o + 1..o + 5].try_into().unwrap())
                            as i64 as u64)
                        == target
            })
        })
        .map(|i| i.sympos)
        .collect()
}

#[test]
fn build_target_picks_serial_cores_type_show() {
    let Some(r) = real() else { return };
    let rep = build_target_report(
        TargetImage::Vmlinux {
            kallsyms: &r.kallsyms,
            vmlinux: Some(&r.vmlinux),
        },
        &r.exports,
        "vmlinux",
        SERIAL_CORE_O,
    )
    .unwrap();
    for d in &rep.decisions {
        eprintln!(
            "decided {} -> {} of {} by {}",
            d.name, d.sympos, d.instances, d.how
        );
    }
    eprintln!(
        "unresolved {:?}\nabsent {:?}\nmismatched {:?}",
        rep.unresolved, rep.absent, rep.mismatched
    );
    // Every function of ORIG is in the image, byte-identical.
    let funcs = {
        use object::{Object, ObjectSymbol, SymbolKind};
        let aligned = SERIAL_CORE_O.to_vec();
        let elf = object::File::parse(&*aligned).unwrap();
        let n = elf
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
            .count();
        n
    };
    eprintln!(
        "{} of ORIG's {funcs} functions verified, and {} objects",
        rep.verified_functions, rep.verified_objects
    );
    assert_eq!(rep.verified_functions, funcs);
    assert!(rep.unresolved.is_empty());
    assert!(rep.mismatched.is_empty(), "{:?}", rep.mismatched);
    let t = &rep.target.symbols;
    for (name, callee) in [
        ("type_show", "uart_get_info"),
        ("irq_show", "uart_get_info"),
        ("flags_show", "uart_get_info"),
    ] {
        let calling = instances_calling(r, name, callee);
        assert_eq!(calling.len(), 1, "{name}: {calling:?}");
        assert_eq!(
            t[name],
            TargetSym::Unexported { sympos: calling[0] },
            "{name}"
        );
    }
    assert_eq!(t["uart_get_info"], TargetSym::Unexported { sympos: 0 });
    assert_eq!(t["uart_write_wakeup"], TargetSym::Exported);
    assert_eq!(t["sprintf"], TargetSym::Exported);
}

#[test]
fn kallsyms_only_cannot_decide_and_says_why() {
    let Some(r) = real() else { return };
    let err = build_target(
        TargetImage::Vmlinux {
            kallsyms: &r.kallsyms,
            vmlinux: None,
        },
        &r.exports,
        "vmlinux",
        SERIAL_CORE_O,
    )
    .unwrap_err();
    let Error::Ambiguous(list) = &err else {
        panic!("{err}")
    };
    let ts = list
        .iter()
        .find(|u| u.name == "type_show")
        .expect("type_show listed");
    assert!(
        ts.why.contains("17 instances") && ts.why.contains("vmlinuz"),
        "{}",
        ts.why
    );
    assert!(err.to_string().contains("type_show"));
}

#[test]
fn verify_function_against_the_image() {
    use object::{Object, ObjectSection};
    let Some(r) = real() else { return };
    for f in [
        "uart_get_info",
        "type_show",
        "irq_show",
        "uart_update_timeout",
        "uart_proc_show.cold",
    ] {
        verify_function(&r.vmlinux, &r.kallsyms, SERIAL_CORE_O, f)
            .unwrap_or_else(|m| panic!("{m}"));
    }
    // The same object with one instruction byte of type_show changed must be refused.
    let aligned = SERIAL_CORE_O.to_vec();
    let elf = object::File::parse(&*aligned).unwrap();
    let sec = elf.section_by_name(".text.type_show").unwrap();
    let (off, _) = sec.file_range().unwrap();
    let mut bad = SERIAL_CORE_O.to_vec();
    // Byte 0 is the first byte of the 5-byte __fentry__ call, not a relocated field.
    bad[off as usize] ^= 0x01;
    let m = verify_function(&r.vmlinux, &r.kallsyms, &bad, "type_show").unwrap_err();
    assert_eq!(m.offset, Some(0), "{m}");
    assert!(m.to_string().contains("rebuild"), "{m}");
    let m =
        verify_function(&r.vmlinux, &r.kallsyms, SERIAL_CORE_O, "no_such_function").unwrap_err();
    assert!(m.to_string().contains("does not define"), "{m}");
}

/// ORIG for kernel/irq/irqdesc.c: `generic_handle_irq` ends in a tail call
/// `jmp handle_irq_desc`, a 5-byte jump with a relocation in ORIG (one section
/// per function) that the assembler shortened to 2 bytes in Debian's build.
const IRQDESC_O: &[u8] = include_bytes!("data/irqdesc.o");

#[test]
fn relaxed_jumps_match_and_still_tell_their_target() {
    let Some(r) = real() else { return };
    verify_function(&r.vmlinux, &r.kallsyms, IRQDESC_O, "generic_handle_irq")
        .unwrap_or_else(|m| panic!("{m}"));
    let rep = build_target_report(
        TargetImage::Vmlinux {
            kallsyms: &r.kallsyms,
            vmlinux: Some(&r.vmlinux),
        },
        &r.exports,
        "vmlinux",
        IRQDESC_O,
    )
    .unwrap();
    assert!(
        rep.mismatched.is_empty() && rep.unresolved.is_empty(),
        "{:?} {:?}",
        rep.mismatched,
        rep.unresolved
    );
    for name in ["type_show", "name_show", "wakeup_show"] {
        let TargetSym::Unexported { sympos } = rep.target.symbols[name] else {
            panic!("{name}")
        };
        // Independent of the byte comparison: the chosen instance lies in
        // irqdesc.c's block of text, after the last function of the object
        // linked before it (kernel/printk) and before irqdesc.c's first global.
        let addr = r.kallsyms.instances("vmlinux", name)[sympos as usize - 1].addr;
        let lo = r.kallsyms.unique_addr("prb_record_text_space").unwrap();
        let hi = r.kallsyms.unique_addr("irq_free_descs").unwrap();
        assert!(
            lo < addr && addr < hi,
            "{name} at {addr:#x} not in [{lo:#x}, {hi:#x}]"
        );
    }
}

/// ORIG for drivers/platform/x86/dell/dell-wmi-sysman/int-attributes.c, one of
/// five files of the dell-wmi-sysman module that each define static
/// `current_value_show`, `display_name_show`, `type_show`, ...
const DELL_INT_O: &[u8] = include_bytes!("data/dell-wmi-sysman-int-attributes.o");

#[test]
fn module_target_disambiguates_by_bytes_and_relocations() {
    let Some(_) = real() else { return };
    let ko = ReleasePaths::new(Path::new("/"), &RELEASE.to_string())
        .load_module("dell-wmi-sysman")
        .unwrap_or_else(|e| panic!("{e}"));
    let syms = module_symbols(&ko, "dell-wmi-sysman.ko").unwrap();
    assert_eq!(syms.modules(), vec!["dell_wmi_sysman"]);
    // .init.text symbols are freed after init and not listed; .exit.text ones are.
    for init in [
        "sysman_init",
        "init_module",
        "__UNIQUE_ID___addressable_init_module276",
    ] {
        assert!(syms.instances("dell_wmi_sysman", init).is_empty(), "{init}");
    }
    for core in ["sysman_exit", "cleanup_module", "init_bios_attributes"] {
        assert_eq!(syms.instances("dell_wmi_sysman", core).len(), 1, "{core}");
    }
    assert_eq!(
        syms.instances("dell_wmi_sysman", "current_value_show")
            .len(),
        3
    );

    let exports = &real().unwrap().exports;
    let rep = build_target_report(
        TargetImage::Module { ko: &ko },
        exports,
        "dell_wmi_sysman",
        DELL_INT_O,
    )
    .unwrap();
    for d in &rep.decisions {
        eprintln!(
            "decided {} -> {} of {} by {}",
            d.name, d.sympos, d.instances, d.how
        );
    }
    assert!(rep.unresolved.is_empty(), "{:?}", rep.unresolved);
    assert!(rep.mismatched.is_empty(), "{:?}", rep.mismatched);
    // Independent of the byte comparison: ld -r lays out int-attributes.c's
    // .text as one block, after enum-attributes.c's exit_enum_attributes and
    // ending with its own globals (alloc_int_data first).
    let off = |name: &str| syms.instances("dell_wmi_sysman", name)[0].addr;
    let (lo, hi) = (off("exit_enum_attributes"), off("alloc_int_data"));
    let mut checked = 0;
    for name in [
        "current_value_show",
        "display_name_show",
        "default_value_show",
        "type_show",
        "dell_modifier_show",
        "current_value_store",
    ] {
        let inside: Vec<u32> = syms
            .instances("dell_wmi_sysman", name)
            .iter()
            .filter(|i| i.addr > lo && i.addr < hi)
            .map(|i| i.sympos)
            .collect();
        assert_eq!(inside.len(), 1, "{name}");
        assert_eq!(
            rep.target.symbols[name],
            TargetSym::Unexported { sympos: inside[0] },
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    // serial_core.o is no part of this module: refused as such.
    let e = build_target(
        TargetImage::Module { ko: &ko },
        exports,
        "dell_wmi_sysman",
        SERIAL_CORE_O,
    )
    .unwrap_err();
    assert!(matches!(e, Error::WrongTarget(_)), "{e}");
    // The module's own globals are unique; vmlinux exports stay normal relocations.
    assert_eq!(
        rep.target.symbols["alloc_int_data"],
        TargetSym::Unexported { sympos: 0 }
    );
    assert_eq!(rep.target.symbols["kstrtoint"], TargetSym::Exported);
}

#[test]
fn proc_kallsyms_of_this_host_parses() {
    // The host runs another kernel; its /proc/kallsyms is a sample of the format.
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        eprintln!("SKIPPED: no /proc/kallsyms");
        return;
    };
    let k = parse_proc_kallsyms(&text).unwrap();
    assert_eq!(k.len(), text.lines().count());
    let vmlinux = k.symbols().iter().filter(|s| s.module.is_none()).count();
    eprintln!(
        "{} symbols, {vmlinux} of vmlinux, {} modules",
        k.len(),
        k.modules().len()
    );
    assert!(vmlinux > 10_000);
    assert_eq!(k.instances("vmlinux", "_text").len(), 1);
}

/// ORIG for drivers/base/cacheinfo.c: its `id_show` is, relocated fields
/// masked, byte-identical to two other `id_show`s; and it defines weak
/// functions that arch/x86 overrides.
const CACHEINFO_O: &[u8] = include_bytes!("data/cacheinfo.o");

#[test]
fn identical_code_is_told_apart_by_what_it_references() {
    let Some(r) = real() else { return };
    let rep = build_target_report(
        TargetImage::Vmlinux {
            kallsyms: &r.kallsyms,
            vmlinux: Some(&r.vmlinux),
        },
        &r.exports,
        "vmlinux",
        CACHEINFO_O,
    )
    .unwrap();
    let d = rep.decisions.iter().find(|d| d.name == "id_show").unwrap();
    assert_eq!(d.how, "bytes+relocations");
    // Independent of the comparison: the instance lies in cacheinfo.c's block
    // of text, between two functions only cacheinfo.c defines.
    let addr = r.kallsyms.instances("vmlinux", "id_show")[d.sympos as usize - 1].addr;
    let lo = r
        .kallsyms
        .unique_addr("physical_line_partition_show")
        .unwrap();
    let hi = r.kallsyms.unique_addr("get_cpu_cacheinfo").unwrap();
    assert!(lo < addr && addr < hi, "{addr:#x}");
    // The weak defaults whose names arch/x86/kernel/cpu/cacheinfo.c took over
    // are reported apart, not as a failed reproduction, and left out.
    assert_eq!(
        rep.weak_overridden,
        [
            "cache_get_priv_group",
            "init_cache_level",
            "populate_cache_leaves"
        ]
    );
    assert!(rep.mismatched.is_empty() && rep.unresolved.is_empty());
    assert!(!rep.target.symbols.contains_key("init_cache_level"));
    // The weak default nobody overrides is ORIG's own.
    assert_eq!(
        rep.target.symbols["cache_setup_acpi"],
        TargetSym::Unexported { sympos: 0 }
    );
}

/// ORIG for fs/proc/cmdline.c.
const CMDLINE_O: &[u8] = include_bytes!("data/cmdline.o");

/// The masked byte pattern of `cmdline_proc_show` occurs exactly once in the
/// image's text, at the address kallsyms gives: a brute-force search,
/// independent of the decoder and the resolver.
#[test]
fn cmdline_proc_show_occurs_once_in_the_image() {
    use object::{Object, ObjectSection, ObjectSymbol};
    let Some(r) = real() else { return };
    verify_function(&r.vmlinux, &r.kallsyms, CMDLINE_O, "cmdline_proc_show")
        .unwrap_or_else(|m| panic!("{m}"));
    let aligned = CMDLINE_O.to_vec();
    let orig = object::File::parse(&*aligned).unwrap();
    let sec = orig.section_by_name(".text.cmdline_proc_show").unwrap();
    let code = sec.data().unwrap();
    let mut masked = vec![false; code.len()];
    for (off, _) in sec.relocations() {
        for m in masked.iter_mut().skip(off as usize).take(4) {
            *m = true;
        }
    }
    let vm = object::File::parse(&*r.vmlinux).unwrap();
    let text = vm.section_by_name(".text").unwrap();
    let t = text.data().unwrap();
    let hits: Vec<u64> = (0..t.len() - code.len())
        .filter(|&i| t[i] == code[0] && (1..code.len()).all(|j| masked[j] || t[i + j] == code[j]))
        .map(|i| text.address() + i as u64)
        .collect();
    assert_eq!(
        hits,
        vec![r.kallsyms.unique_addr("cmdline_proc_show").unwrap()]
    );
    let sym = orig
        .symbols()
        .find(|s| s.name() == Ok("cmdline_proc_show"))
        .unwrap();
    assert_eq!(sym.size() as usize, code.len());
}

/// The exports read from the image equal Module.symvers' vmlinux part,
/// namespaces, GPL-only flags and CRCs included.
#[test]
fn exports_from_the_image_equal_module_symvers() {
    let Some(r) = real() else { return };
    let from_image = Exports::from_vmlinux(&r.vmlinux).unwrap();
    let symvers = format!("/usr/src/linux-headers-{RELEASE}/Module.symvers");
    let Ok(text) = std::fs::read_to_string(&symvers) else {
        eprintln!("SKIPPED: {symvers} absent (install linux-headers-{RELEASE})");
        return;
    };
    let from_symvers = Exports::parse(&text).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f[2] != "vmlinux" {
            continue;
        }
        let e = from_image
            .get(f[1])
            .unwrap_or_else(|| panic!("{} not exported by the image", f[1]));
        assert_eq!(from_symvers.get(f[1]), Some(e), "{}", f[1]);
        n += 1;
    }
    assert_eq!(n, from_image.len());
    eprintln!("{n} exports read from the image agree with Module.symvers");
}

/// The sites 6.1 rewrites in its own code come from the image's tables: its
/// alternatives use 12-byte entries (6.12's are 14), `lock` prefixes and
/// paravirt sites are listed, and nothing is sealed (no IBT).
#[test]
fn runtime_rewritten_sites_of_61_come_from_the_images_own_tables() {
    let Some(r) = real() else { return };
    assert!(ibt_sealed_sites(&r.vmlinux, &r.kallsyms)
        .unwrap()
        .is_empty());
    for t in [
        "__alt_instructions",
        "__smp_locks",
        "__parainstructions",
        "__start___jump_table",
    ] {
        assert!(r.kallsyms.unique_addr(t).is_some(), "no {t} in kallsyms");
    }
    let sites = runtime_rewritten_sites(&r.vmlinux, &r.kallsyms).unwrap();
    assert!(sites.len() > 10_000, "{} sites", sites.len());
    // Every `lock` prefix site holds 0xf0 in the image.
    let image = Image::parse(&r.vmlinux).unwrap();
    let locks = sites
        .iter()
        .filter(|(_, l)| *l == 1)
        .take(200)
        .collect::<Vec<_>>();
    assert!(!locks.is_empty());
    for &&(a, _) in &locks {
        assert_eq!(image.bytes_at(a, 1), Some(&[0xf0u8][..]), "{a:#x}");
    }
}
