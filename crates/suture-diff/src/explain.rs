//! `suture diff --explain FUNC`: why a function counts as changed.

use crate::pipeline::Diff;
use crate::Explanation;

pub fn explain(d: &Diff, func: &str) -> Explanation {
    let mut lines = Vec::new();
    let pi = d.p.elf.symbols.iter().position(|s| {
        s.typ == suture_elf::STT_FUNC
            && s.section().is_some()
            && (s.name == func || d.orig_name(s.index) == func)
    });
    let Some(pi) = pi else {
        let in_orig =
            d.o.elf
                .symbols
                .iter()
                .any(|s| s.name == func && s.section().is_some());
        lines.push(if in_orig {
            format!("{func} is defined in ORIG but not in PATCHED: it was removed or inlined")
        } else {
            format!("no function named {func} in PATCHED")
        });
        return Explanation {
            function: func.to_string(),
            lines,
        };
    };
    let Some(oi) = d.twin_p[pi] else {
        lines.push(format!(
            "{} is new: ORIG has no function it correlates with",
            d.p.sym(pi).name
        ));
        return Explanation {
            function: func.to_string(),
            lines,
        };
    };
    let (os, ps) = (d.o.sym(oi), d.p.sym(pi));
    if os.name != ps.name {
        lines.push(format!(
            "correlated: ORIG {} ↔ PATCHED {}",
            os.name, ps.name
        ));
    }
    if os.size != ps.size {
        lines.push(format!(
            "size: ORIG {:#x} bytes, PATCHED {:#x} bytes",
            os.size, ps.size
        ));
    }
    let (osec, psec) = (os.section().unwrap(), ps.section().unwrap());
    let or =
        d.o.relas_in(osec, os.value, os.value.saturating_add(os.size.max(1)));
    let pr =
        d.p.relas_in(psec, ps.value, ps.value.saturating_add(ps.size.max(1)));
    // Strings that differ only in the unit's line numbers: said, not counted.
    let mut line_strings = Vec::new();
    for k in 0..or.len().max(pr.len()) {
        match (or.get(k), pr.get(k)) {
            (Some(a), Some(b)) => {
                let same_place = a.offset - os.value == b.offset - ps.value && a.rtype == b.rtype;
                if let (true, Some((sa, sb))) = (same_place, d.line_only_string(osec, &a, psec, &b))
                {
                    line_strings.push(format!("relocation #{k}: only line numbers differ in the string: ORIG {sa:?}  PATCHED {sb:?}"));
                }
                if !same_place || !d.key_eq(osec, &a, psec, &b) {
                    lines.push(format!(
                        "first differing relocation (#{k}): ORIG {}  PATCHED {}",
                        Diff::describe_rela(&d.o, osec, os.value, &a),
                        Diff::describe_rela(&d.p, psec, ps.value, &b)
                    ));
                    break;
                }
            }
            (Some(a), None) => {
                lines.push(format!(
                    "relocation #{k} only in ORIG: {}",
                    Diff::describe_rela(&d.o, osec, os.value, &a)
                ));
                break;
            }
            (None, Some(b)) => {
                lines.push(format!(
                    "relocation #{k} only in PATCHED: {}",
                    Diff::describe_rela(&d.p, psec, ps.value, &b)
                ));
                break;
            }
            (None, None) => break,
        }
    }
    lines.extend(crate::insn::first_difference(&d.o, oi, &d.p, pi));
    if lines.is_empty()
        || (os.size == ps.size
            && d.o.bytes(oi) != d.p.bytes(pi)
            && crate::insn::line_macro_only(&d.o, oi, &d.p, pi, &d.line_anchors))
    {
        let only_lines = !line_strings.is_empty();
        lines.append(&mut line_strings);
        if d.o.bytes(oi) == d.p.bytes(pi) && only_lines {
            lines.push("only line numbers of the unit's source file differ (in strings): not a functional change".into());
        } else if d.o.bytes(oi) == d.p.bytes(pi) {
            lines.push("no difference: code and relocations are equal".into());
        } else {
            lines.push("only __LINE__ constants passed to WARN-style calls differ: not a functional change".into());
        }
    }
    Explanation {
        function: func.to_string(),
        lines,
    }
}
