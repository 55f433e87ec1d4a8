//! Who calls a function: for a changed function that ftrace cannot hook.
//!
//! A `static inline` that gcc emitted out of line (`zero_user_segments.constprop.0`
//! in ext4, `__do_sys_fsmount` behind `SYSCALL_DEFINE`) is `notrace`: no
//! `__fentry__` call, so livepatch cannot redirect it. When such a function
//! is local and only ever called directly, replacing its callers reaches it
//! as well: their replacements call its new code, which travels with the
//! patch. That holds only if nothing else can get to the old code (no
//! pointer to it in data, no address taken in code, a `lea` or a `mov` of
//! its address, no reference from outside a function) and if every way in
//! is a `call`: a task still running the old code then has its caller on
//! the stack, a replaced function, and the transition waits for it.

use crate::model::Obj;
use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
use suture_elf::{R_X86_64_PC32, R_X86_64_PLT32, STB_LOCAL, STT_FUNC, STT_SECTION};

/// Sections whose entries describe code at an address (a site inside a
/// function) rather than hold a pointer anything calls through.
fn describes_code(name: &str) -> bool {
    matches!(
        name,
        "__jump_table"
            | "__ex_table"
            | "__bug_table"
            | ".altinstructions"
            | ".parainstructions"
            | ".orc_unwind_ip"
            | ".static_call_sites"
            | ".retpoline_sites"
            | ".return_sites"
            | ".call_sites"
            | ".ibt_endbr_seal"
            | ".smp_locks"
            | "__mcount_loc"
            | "__patchable_function_entries"
    ) || name.starts_with(".discard.")
}

/// Whether the 4-byte field at `field` (an address in the section) is the
/// rel32 operand of a direct call of the function
/// whose code `code` starts at `start`: the instruction is decoded from the
/// function's start, so a displacement of some other instruction (a `lea`
/// taking the address) is not mistaken for one.
fn is_call_operand(code: &[u8], start: u64, field: u64) -> bool {
    let mut d = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    while d.can_decode() {
        let at = d.ip();
        if at > field {
            return false;
        }
        let insn = d.decode();
        let end = at + insn.len() as u64;
        if field < end {
            return end.checked_sub(4) == Some(field)
                && insn.op_count() == 1
                && insn.op0_kind() == OpKind::NearBranch64
                && insn.flow_control() == FlowControl::Call;
        }
    }
    false
}

/// ORIG's functions that call `f` (each once, in symbol order), when direct
/// calls from functions are all that refers to it (a tail call would leave
/// no caller on the stack of a task still running the old `f`, which the
/// transition would then not wait for); else why not (see the module
/// comment). References from inside `f` itself (recursion, its own jumps)
/// do not count.
pub(crate) fn only_callers(o: &Obj, f: usize) -> Result<Vec<usize>, String> {
    let fs = o.sym(f);
    if fs.typ != STT_FUNC || fs.bind != STB_LOCAL {
        return Err("it is not static: other objects may call it, and their callers cannot be replaced from this one".into());
    }
    let Some(fsec) = fs.section() else {
        return Err("it is not defined here".into());
    };
    let (start, end) = (fs.value, fs.value.saturating_add(fs.size.max(1)));
    let mut callers = Vec::new();
    for t in 0..o.elf.sections.len() {
        let relas = o.elf.relas_of(t);
        if relas.is_empty() {
            continue;
        }
        let tsec = o.sec(t);
        for r in relas.iter() {
            let s = o.sym(r.sym);
            let pc32 = matches!(r.rtype, R_X86_64_PC32 | R_X86_64_PLT32);
            let to_f = if r.sym == f {
                true
            } else if s.typ == STT_SECTION && s.section() == Some(fsec) {
                // A PC-relative field's addend is the target minus 4.
                let at = r.addend.wrapping_add(if pc32 { 4 } else { 0 });
                at >= start as i64 && at < end as i64
            } else {
                false
            };
            if !to_f {
                continue;
            }
            if t == fsec && r.offset >= start && r.offset < end {
                continue;
            }
            if describes_code(&tsec.name) {
                continue;
            }
            if !tsec.is_exec() {
                return Err(format!("its address is in {}", tsec.name));
            }
            let Some(caller) = (0..o.elf.symbols.len()).find(|&c| {
                let cs = o.sym(c);
                cs.typ == STT_FUNC
                    && cs.section() == Some(t)
                    && cs.value <= r.offset
                    && r.offset < cs.value.saturating_add(cs.size)
            }) else {
                return Err(format!(
                    "{} refers to it from outside a function",
                    tsec.name
                ));
            };
            let cs = o.sym(caller);
            // Its own cold part jumps back into it: part of it, not a caller.
            let own_part = cs
                .name
                .as_str()
                .strip_prefix(fs.name.as_str())
                .is_some_and(|rest| rest == ".cold" || rest.starts_with(".cold."));
            if own_part {
                continue;
            }
            let code = tsec
                .data
                .get(cs.value as usize..cs.value.saturating_add(cs.size) as usize)
                .unwrap_or_default();
            if !pc32 || !is_call_operand(code, cs.value, r.offset) {
                return Err(format!(
                    "{} reaches it other than by a call (a tail call, or its address taken)",
                    cs.name.as_str()
                ));
            }
            if caller != f && !callers.contains(&caller) {
                callers.push(caller);
            }
        }
    }
    callers.sort_unstable();
    Ok(callers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_operands_are_told_from_other_rel32_fields() {
        // push %rbp; call rel32; jmp rel32; jne rel32; lea rel32(%rip),%rdi
        let code = [
            0x55, 0xe8, 0, 0, 0, 0, 0xe9, 0, 0, 0, 0, 0x0f, 0x85, 0, 0, 0, 0, 0x48, 0x8d, 0x3d, 0,
            0, 0, 0, 0xc3,
        ];
        let base = 0x100;
        assert!(is_call_operand(&code, base, base + 2), "call");
        // A jump leaves no frame: not a call.
        assert!(!is_call_operand(&code, base, base + 7), "jmp");
        assert!(!is_call_operand(&code, base, base + 13), "jne");
        assert!(
            !is_call_operand(&code, base, base + 20),
            "lea takes the address"
        );
        assert!(!is_call_operand(&code, base, base + 3), "inside a field");
        assert!(!is_call_operand(&code, base, base + 100), "past the end");
        assert!(!is_call_operand(&[], base, base));
    }

    #[test]
    fn code_metadata_sections_are_not_references_to_call_through() {
        assert!(describes_code("__jump_table"));
        assert!(describes_code(".orc_unwind_ip"));
        assert!(describes_code(".discard.retpoline_safe"));
        assert!(!describes_code(".data"));
        assert!(!describes_code(".rodata"));
    }
}
