//! Instruction-level checks with iced-x86: the `__LINE__` heuristic and the
//! explainer's first differing instruction.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, OpKind,
    Register,
};

use crate::model::Obj;

/// Functions whose argument 2 or 3 is a line number (WARN, might_sleep, ...).
const LINE_CALLEES: &[&str] = &[
    "__warn_printk",
    "warn_slowpath_fmt",
    "warn_slowpath_null",
    "warn_slowpath_fmt_taint",
    "__might_sleep",
    "___might_sleep",
    "__might_resched",
    "__might_fault",
    "printk",
    "_printk",
    "lockdep_rcu_suspicious",
    "__btrfs_abort_transaction",
    "__btrfs_handle_fs_error",
    "__btrfs_panic",
];

fn decode_all(bytes: &[u8]) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut v = Vec::with_capacity(bytes.len() / 4);
    while d.can_decode() {
        v.push(d.decode());
    }
    v
}

/// An immediate load into the second or third argument register.
fn is_line_load(i: &Instruction) -> bool {
    matches!(
        i.code(),
        Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32 | Code::Mov_r64_imm64
    ) && i.op0_kind() == OpKind::Register
        && matches!(
            i.op0_register(),
            Register::ESI | Register::EDX | Register::RSI | Register::RDX
        )
}

fn callee_at(x: &Obj, f: usize, insn: &Instruction) -> Option<String> {
    let s = x.sym(f);
    let sec = s.section()?;
    let start = s.value + insn.ip();
    let r = x.relas_in(sec, start, start + insn.len() as u64).first()?;
    Some(x.sym(r.sym).name.to_string())
}

/// Whether every differing byte could be the immediate of a `mov $imm, reg`
/// ([`is_line_load`]): its opcode (`b8+r`, or `c7` after a REX prefix) sits at
/// most 9 bytes before the byte. A necessary condition, checked without the
/// decoder, whose tables cost more to build than a whole small diff.
fn diffs_follow_mov_imm(ob: &[u8], pb: &[u8]) -> bool {
    let opcode = |b: u8| matches!(b, 0xba | 0xbe | 0xc7);
    ob.iter()
        .zip(pb)
        .enumerate()
        .all(|(k, (a, b))| a == b || ob[k.saturating_sub(9)..k].iter().any(|&c| opcode(c)))
}

/// Same-size functions with equal relocations whose only differences are
/// immediate line numbers passed to a WARN-style callee.
pub fn line_macro_only(o: &Obj, oi: usize, p: &Obj, pi: usize) -> bool {
    // Every difference must precede a call to a line callee, so a function
    // that calls none cannot qualify; checking that first keeps most processes
    // from building the decoder's tables at all (a third of a small diff).
    let s = o.sym(oi);
    let Some(sec) = s.section() else { return false };
    let calls_line_callee = o
        .relas_in(sec, s.value, s.value.saturating_add(s.size))
        .iter()
        .any(|r| LINE_CALLEES.contains(&o.sym(r.sym).name.as_str()));
    if !calls_line_callee {
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
        if a.code() != b.code() || !is_line_load(a) || a.op0_register() != b.op0_register() {
            return false;
        }
        let call = oa[k + 1..]
            .iter()
            .take(12)
            .find(|i| matches!(i.flow_control(), FlowControl::Call));
        let Some(call) = call else { return false };
        match callee_at(o, oi, call) {
            Some(n) if LINE_CALLEES.contains(&n.as_str()) => any = true,
            _ => return false,
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
