//! Instruction-level checks with iced-x86: the `__LINE__` heuristic and the
//! explainer's first differing instruction.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic,
    OpKind, Register,
};
use suture_elf::Rela;

use crate::model::{Key, Obj};

/// The SysV argument registers a line number may be loaded into: 2 (`%esi`),
/// 3 (`%edx`), 4 (`%ecx`), 5 (`%r8d`), as bits.
const A2: u8 = 1;
const A3: u8 = 2;
const A4: u8 = 4;
const A5: u8 = 8;

/// Functions that take a line number (WARN, might_sleep, ...), with the
/// argument registers it may be in. kpatch's list accepts argument 2 or 3 for
/// every one of them (kept so, for conformance); the others are `__LINE__`
/// parameters by their prototype, one register each: ext4's error, journal
/// and inode helpers (`ext4_journal_stop()` is `__ext4_journal_stop(__func__,
/// __LINE__, handle)`; a blank line at the top of fs/ext4/inode.c otherwise
/// moves 32 functions).
const LINE_CALLEES: &[(&str, u8)] = &[
    ("__warn_printk", A2 | A3),
    ("warn_slowpath_fmt", A2 | A3),
    ("warn_slowpath_null", A2 | A3),
    ("warn_slowpath_fmt_taint", A2 | A3),
    ("__might_sleep", A2 | A3),
    ("___might_sleep", A2 | A3),
    ("__might_resched", A2 | A3),
    ("__might_fault", A2 | A3),
    ("printk", A2 | A3),
    ("_printk", A2 | A3),
    ("lockdep_rcu_suspicious", A2 | A3),
    ("__btrfs_abort_transaction", A2 | A3),
    ("__btrfs_handle_fs_error", A2 | A3),
    ("__btrfs_panic", A2 | A3),
    // fs/ext4/ext4.h, ext4_jbd2.h, xattr.h (6.1).
    ("__ext4_error", A3),
    ("__ext4_error_inode", A3),
    ("__ext4_error_file", A3),
    ("__ext4_std_error", A3),
    ("__ext4_warning", A3),
    ("__ext4_warning_inode", A3),
    ("__ext4_grp_locked_error", A2),
    ("__ext4_check_dir_entry", A2),
    ("__ext4_iget", A5),
    ("__ext4_mark_inode_dirty", A4),
    ("__ext4_journal_start_sb", A2),
    ("__ext4_journal_start_reserved", A2),
    ("__ext4_journal_stop", A2),
    ("__ext4_journal_get_write_access", A2),
    ("__ext4_journal_get_create_access", A2),
    ("__ext4_handle_dirty_metadata", A2),
    ("__ext4_forget", A2),
    ("__xattr_check_inode", A5),
    ("ext4_check_blockref", A2),
];

fn line_callee(name: &str) -> Option<u8> {
    LINE_CALLEES.iter().find(|c| c.0 == name).map(|c| c.1)
}

fn decode_all(bytes: &[u8]) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut v = Vec::with_capacity(bytes.len() / 4);
    while d.can_decode() {
        v.push(d.decode());
    }
    v
}

/// The argument register (`A2`...) an immediate load writes, if it is one.
fn line_load_arg(i: &Instruction) -> Option<u8> {
    let imm = matches!(
        i.code(),
        Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32 | Code::Mov_r64_imm64
    ) && i.op0_kind() == OpKind::Register;
    if !imm {
        return None;
    }
    match i.op0_register() {
        Register::ESI | Register::RSI => Some(A2),
        Register::EDX | Register::RDX => Some(A3),
        Register::ECX | Register::RCX => Some(A4),
        Register::R8D | Register::R8 => Some(A5),
        _ => None,
    }
}

/// The register that carries the argument before `arg` (`__FILE__` before
/// `__LINE__`).
fn previous_arg(arg: u8) -> [Register; 2] {
    match arg {
        A2 => [Register::RDI, Register::EDI],
        A3 => [Register::RSI, Register::ESI],
        A4 => [Register::RDX, Register::EDX],
        _ => [Register::RCX, Register::ECX],
    }
}

fn callee_at(x: &Obj, f: usize, insn: &Instruction) -> Option<String> {
    let s = x.sym(f);
    let sec = s.section()?;
    let start = s.value + insn.ip();
    let r = x.relas_in(sec, start, start + insn.len() as u64).first()?;
    Some(x.sym(r.sym).name.to_string())
}

/// Whether relocation `r` of section `sec` points to the string `__FILE__`
/// of the unit: one that is, or ends in `/` and, the unit's file name.
fn is_file_string(x: &Obj, sec: usize, r: &Rela, anchors: &[String]) -> bool {
    let Key::Str(st, 0) = x.key(x.target(sec, r), r.rtype, sec) else {
        return false;
    };
    anchors.iter().filter(|a| a.contains('.')).any(|a| {
        st == a.as_bytes()
            || st
                .strip_suffix(a.as_bytes())
                .is_some_and(|h| h.ends_with(b"/"))
    })
}

/// Whether one of `insns` loads `__FILE__` of the unit into one of `regs`
/// (`mov $.LC0, %rdx`, `lea .LC0(%rip), %rdx`).
fn loads_file(
    x: &Obj,
    f: usize,
    insns: &[Instruction],
    regs: [Register; 2],
    anchors: &[String],
) -> bool {
    let s = x.sym(f);
    let Some(sec) = s.section() else { return false };
    insns.iter().any(|i| {
        i.op_count() > 0
            && i.op0_kind() == OpKind::Register
            && regs.contains(&i.op0_register())
            && matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Lea)
            && {
                let start = s.value + i.ip();
                x.relas_in(sec, start, start + i.len() as u64)
                    .iter()
                    .any(|r| is_file_string(x, sec, &r, anchors))
            }
    })
}

/// Whether every differing byte could be the immediate of a `mov $imm, reg`
/// ([`line_load_arg`]): its opcode (`b8+r`: `b8` for `%r8d` after REX.B,
/// `b9` `%ecx`, `ba` `%edx`, `be` `%esi`; or `c7` after a REX prefix) sits at
/// most 9 bytes before the byte. A necessary condition, checked without the
/// decoder, whose tables cost more to build than a whole small diff.
fn diffs_follow_mov_imm(ob: &[u8], pb: &[u8]) -> bool {
    let opcode = |b: u8| matches!(b, 0xb8 | 0xb9 | 0xba | 0xbe | 0xc7);
    ob.iter()
        .zip(pb)
        .enumerate()
        .all(|(k, (a, b))| a == b || ob[k.saturating_sub(9)..k].iter().any(|&c| opcode(c)))
}

/// Same-size functions with equal relocations whose only differences are
/// immediate line numbers: each a `mov $imm` into an argument register
/// followed by a call (or tail call) that takes a line number there, by the
/// callee ([`LINE_CALLEES`]) or because the argument before it is the
/// unit's `__FILE__` (`printk(fmt, __func__, __FILE__, __LINE__)` in ext4's
/// `ASSERT()`, `assfail(mp, expr, __FILE__, __LINE__)`: the `__FILE__,
/// __LINE__` pair of any callee). `anchors` are the unit's file names
/// ([`crate::model::line_number_anchors`]).
pub fn line_macro_only(o: &Obj, oi: usize, p: &Obj, pi: usize, anchors: &[String]) -> bool {
    // Every difference must precede a call to a line callee or follow a load
    // of __FILE__, so a function with neither cannot qualify; checking that
    // first keeps most processes from building the decoder's tables at all
    // (a third of a small diff).
    let s = o.sym(oi);
    let Some(sec) = s.section() else { return false };
    let relas = o.relas_in(sec, s.value, s.value.saturating_add(s.size));
    let candidate = relas
        .iter()
        .any(|r| line_callee(&o.sym(r.sym).name).is_some())
        || relas.iter().any(|r| is_file_string(o, sec, &r, anchors));
    if !candidate {
        return false;
    }
    let (ob, pb) = (o.bytes(oi), p.bytes(pi));
    if ob.len() != pb.len() || !diffs_follow_mov_imm(ob, pb) {
        return false;
    }
    let (oa, pa) = (decode_all(ob), decode_all(pb));
    if oa.len() != pa.len() {
        return false;
    }
    let mut any = false;
    for (k, (a, b)) in oa.iter().zip(&pa).enumerate() {
        if a.len() != b.len() || a.ip() != b.ip() {
            return false;
        }
        let r = a.ip() as usize..a.ip() as usize + a.len();
        if ob[r.clone()] == pb[r] {
            continue;
        }
        let Some(arg) = line_load_arg(a) else {
            return false;
        };
        if a.code() != b.code() || a.op0_register() != b.op0_register() {
            return false;
        }
        let takes_line = |i: &Instruction| {
            callee_at(o, oi, i)
                .and_then(|n| line_callee(&n))
                .is_some_and(|args| args & arg != 0)
        };
        // The call the argument is for: the first within 12 instructions, or
        // a tail call (`jmp __ext4_journal_stop`) to a line callee before it.
        let end = (k + 13).min(oa.len());
        let Some(c) = (k + 1..end).find(|&c| match oa[c].flow_control() {
            FlowControl::Call => true,
            FlowControl::UnconditionalBranch => takes_line(&oa[c]),
            _ => false,
        }) else {
            return false;
        };
        if takes_line(&oa[c]) {
            any = true;
            continue;
        }
        // The arguments of this call are loaded after the previous one.
        let mut from = k;
        while from > 0
            && k - from < 12
            && !matches!(
                oa[from - 1].flow_control(),
                FlowControl::Call | FlowControl::UnconditionalBranch | FlowControl::Return
            )
        {
            from -= 1;
        }
        if loads_file(o, oi, &oa[from..c], previous_arg(arg), anchors) {
            any = true;
        } else {
            return false;
        }
    }
    any
}

fn fmt(i: &Instruction) -> String {
    let mut f = GasFormatter::new();
    let mut s = String::new();
    f.format(i, &mut s);
    s
}

/// The first instruction that differs, decoded on each side, as text lines.
pub fn first_difference(o: &Obj, oi: usize, p: &Obj, pi: usize) -> Vec<String> {
    let (ob, pb) = (o.bytes(oi), p.bytes(pi));
    let (oa, pa) = (decode_all(ob), decode_all(pb));
    for (a, b) in oa.iter().zip(&pa) {
        let ra = a.ip() as usize..a.ip() as usize + a.len();
        let rb = b.ip() as usize..b.ip() as usize + b.len();
        if a.ip() != b.ip() || ob[ra.clone()] != pb[rb.clone()] {
            let hex = |x: &[u8]| {
                x.iter()
                    .map(|c| format!("{c:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return vec![
                format!(
                    "first differing instruction: ORIG +{:#x}: {}   [{}]",
                    a.ip(),
                    fmt(a),
                    hex(&ob[ra])
                ),
                format!(
                    "                             PATCHED +{:#x}: {}   [{}]",
                    b.ip(),
                    fmt(b),
                    hex(&pb[rb])
                ),
            ];
        }
    }
    if oa.len() != pa.len() {
        return vec![format!(
            "instruction count differs: ORIG {} PATCHED {} (one is a prefix of the other)",
            oa.len(),
            pa.len()
        )];
    }
    Vec::new()
}
