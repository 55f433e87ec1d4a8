//! IBT and sealing: objtool lists in vmlinux every `endbr64` at the start of a
//! function whose address nothing in vmlinux takes, and the kernel turns each
//! into a NOP at boot (`suture_symbols::ibt_sealed_sites`). A livepatch that
//! newly takes the address of such a function gets a pointer to code without
//! `endbr64`: on CET hardware an indirect call through it traps. QEMU's TCG
//! has no CET, so the lab would not notice; the build has to.

use anyhow::{Context, Result};
use suture_elf::{Object, SHF_EXECINSTR};

const R_X86_64_64: u32 = 1;
const R_X86_64_PC32: u32 = 2;
const R_X86_64_32: u32 = 10;
const R_X86_64_32S: u32 = 11;

/// A place where the klp object takes the address of a symbol of `objname`
/// it reaches through a livepatch relocation: (name, sympos, section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressTaken {
    pub name: String,
    pub sympos: u32,
    pub section: String,
}

/// Every livepatch-relocated reference in `klp_object` (the differ's output)
/// to the start of a symbol of `objname` that is not a call or jump: a pointer
/// the patch takes (`lea sym(%rip)`, `mov $sym`, `.quad sym` in data).
pub fn addresses_taken(klp_object: &[u8], objname: &str) -> Result<Vec<AddressTaken>> {
    let o = Object::parse(klp_object).context("reading the klp object")?;
    let prefix = format!(".klp.sym.{objname}.");
    let mut found = Vec::new();
    for sec in o.relocated_sections() {
        let relas = o.relas_of(sec);
        let s = &o.sections[sec];
        let exec = s.flags & SHF_EXECINSTR != 0;
        for r in relas {
            let Some((name, pos)) = o
                .symbols
                .get(r.sym)
                .and_then(|y| y.name.strip_prefix(&prefix))
                .and_then(|n| n.rsplit_once(','))
            else {
                continue;
            };
            let at = r.offset as usize;
            let starts_symbol = match r.rtype {
                R_X86_64_64 | R_X86_64_32 | R_X86_64_32S => r.addend == 0,
                // In code, a rel32 right after e8/e9 (call/jmp) or 0f 8x (jcc)
                // is a branch; otherwise an instruction operand such as lea's,
                // pointing at the symbol when the field ends the instruction.
                R_X86_64_PC32 if exec => {
                    let d = &s.data;
                    let branch = (at >= 1 && matches!(d.get(at - 1), Some(0xe8 | 0xe9)))
                        || (at >= 2
                            && d.get(at - 2) == Some(&0x0f)
                            && d.get(at - 1).is_some_and(|b| b & 0xf0 == 0x80));
                    !branch && r.addend == -4
                }
                R_X86_64_PC32 => r.addend == 0,
                _ => false,
            };
            if starts_symbol {
                let sympos = pos.parse().with_context(|| {
                    format!("livepatch symbol {prefix}{name},{pos}: bad position")
                })?;
                let t = AddressTaken {
                    name: name.to_string(),
                    sympos,
                    section: s.name.to_string(),
                };
                if !found.contains(&t) {
                    found.push(t);
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.name, a.sympos, &a.section).cmp(&(&b.name, b.sympos, &b.section)));
    Ok(found)
}

/// The refusal for a pointer to a sealed function, naming it and why.
pub fn sealed_reason(t: &AddressTaken) -> String {
    format!(
        "the patch takes the address of {} (in {}), whose endbr64 the running kernel seals at boot because nothing in vmlinux takes its address (X86_KERNEL_IBT): an indirect call through the pointer would trap on CET hardware; call it directly, or add a new function that calls it and take that one's address",
        t.name, t.section
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use suture_elf::{Builder, OutRela, OutSection, OutSymbol, SHF_ALLOC, SHT_PROGBITS};

    fn rela(offset: u64, sym: usize, rtype: u32, addend: i64) -> OutRela {
        OutRela {
            offset,
            sym,
            rtype,
            addend,
        }
    }

    /// A klp object with code that calls, jumps to, branches to and takes the
    /// address of livepatch symbols, and data that points to one.
    fn object() -> Vec<u8> {
        let mut code = Vec::new();
        code.extend_from_slice(&[0xe8, 0, 0, 0, 0]); // 0: call called
        code.extend_from_slice(&[0xe9, 0, 0, 0, 0]); // 5: jmp jumped
        code.extend_from_slice(&[0x0f, 0x85, 0, 0, 0, 0]); // 10: jne branched
        code.extend_from_slice(&[0x48, 0x8d, 0x05, 0, 0, 0, 0]); // 16: lea pointed(%rip), %rax
        code.extend_from_slice(&[0x48, 0xc7, 0xc0, 0, 0, 0, 0]); // 23: mov $imm, %rax
        code.extend_from_slice(&[0x48, 0x8d, 0x05, 0, 0, 0, 0]); // 30: lea called+8(%rip): not its start
        let text = OutSection {
            name: ".text.f".into(),
            sh_type: SHT_PROGBITS,
            flags: SHF_ALLOC | SHF_EXECINSTR,
            addralign: 16,
            entsize: 0,
            data: code,
            nobits_size: 0,
            relas: vec![
                rela(1, 1, 2, -4),
                rela(6, 2, 4, -4),
                rela(12, 3, 2, -4),
                rela(19, 4, 2, -4),
                rela(26, 5, 11, 0),
                rela(33, 1, 2, 4),
            ],
            rela_flags: 0,
        };
        let data = OutSection {
            name: ".data.ops".into(),
            sh_type: SHT_PROGBITS,
            flags: SHF_ALLOC,
            addralign: 8,
            entsize: 0,
            data: vec![0; 16],
            nobits_size: 0,
            relas: vec![rela(0, 6, 1, 0), rela(8, 7, 1, 0)],
            rela_flags: 0,
        };
        let b = Builder {
            sections: vec![text, data],
            symbols: vec![
                OutSymbol::undefined_global(".klp.sym.vmlinux.called,0"),
                OutSymbol::undefined_global(".klp.sym.vmlinux.jumped,0"),
                OutSymbol::undefined_global(".klp.sym.vmlinux.branched,0"),
                OutSymbol::undefined_global(".klp.sym.vmlinux.pointed,2"),
                OutSymbol::undefined_global(".klp.sym.vmlinux.immediate,0"),
                OutSymbol::undefined_global(".klp.sym.vmlinux.in_data.part,0"),
                OutSymbol::undefined_global("exported_function"),
            ],
        };
        b.write().unwrap()
    }

    #[test]
    fn only_pointers_to_livepatch_symbols_count_not_branches() {
        let got = addresses_taken(&object(), "vmlinux").unwrap();
        let names: Vec<(&str, u32, &str)> = got
            .iter()
            .map(|t| (t.name.as_str(), t.sympos, t.section.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("immediate", 0, ".text.f"),
                ("in_data.part", 0, ".data.ops"),
                ("pointed", 2, ".text.f")
            ],
            "{got:?}"
        );
        // Another object's symbols are not this object's.
        assert!(addresses_taken(&object(), "binfmt_misc")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_reason_names_the_function_and_ibt() {
        let r = sealed_reason(&AddressTaken {
            name: "kernel_clone".into(),
            sympos: 0,
            section: ".text.f".into(),
        });
        assert!(
            r.contains("kernel_clone")
                && r.contains("endbr64")
                && r.contains("IBT")
                && r.contains("call it directly"),
            "{r}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(addresses_taken(b"not an object", "vmlinux").is_err());
    }
}
