//! Units that only add global functions, kept when another unit of the
//! patch calls them.
//!
//! Each unit is judged alone, and a unit whose patch only adds functions
//! (no function replaced, no callback) has nothing to patch by itself. But
//! a fix that spans objects often adds a helper in one (vmlinux's
//! `kernel/audit.c` gains `audit_log_nf_skb()`) and calls it from another
//! (the `nft_log` and `xt_AUDIT` modules): the caller's klp object then has
//! an undefined reference that only the first unit's klp object defines.
//! Dropping that unit as "no change" leaves the module unlinkable, so a
//! provider is kept exactly when a kept unit (or a provider kept for one)
//! references what it defines.

use crate::LiveUnit;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use suture_elf::{Object, STB_GLOBAL, STB_WEAK};

/// A unit that only defines new global symbols, and their names.
#[derive(Debug)]
pub struct Provider {
    pub unit: LiveUnit,
    pub provides: BTreeSet<String>,
}

/// The global symbols `klp_object` defines among `new` (the differ's new
/// functions): what another unit may call.
pub fn new_globals(klp_object: &[u8], new: &[String]) -> Result<BTreeSet<String>> {
    let o = Object::parse(klp_object).context("reading a klp object")?;
    let new: BTreeSet<&str> = new.iter().map(String::as_str).collect();
    Ok(o.symbols
        .iter()
        .filter(|s| !s.is_undef() && matches!(s.bind, STB_GLOBAL | STB_WEAK))
        .map(|s| s.name.as_str())
        .filter(|n| new.contains(n))
        .map(str::to_string)
        .collect())
}

fn undefined_globals(klp_object: &[u8]) -> Result<BTreeSet<String>> {
    let o = Object::parse(klp_object).context("reading a klp object")?;
    Ok(o.symbols
        .iter()
        .filter(|s| s.index != 0 && s.is_undef() && s.bind != suture_elf::STB_LOCAL)
        .map(|s| s.name.as_str().to_string())
        .filter(|n| !n.is_empty())
        .collect())
}

/// For each provider (its klp object and what it defines), the symbols the
/// `live` klp objects reference, directly or through another provider kept:
/// `None` for a provider nothing calls.
pub fn needed(
    live: &[&[u8]],
    providers: &[(&[u8], &BTreeSet<String>)],
) -> Result<Vec<Option<Vec<String>>>> {
    let mut wanted = BTreeSet::new();
    for o in live {
        wanted.extend(undefined_globals(o)?);
    }
    let mut out = vec![None; providers.len()];
    loop {
        let mut grew = false;
        for (i, (object, provides)) in providers.iter().enumerate() {
            if out[i].is_some() || !provides.iter().any(|n| wanted.contains(n)) {
                continue;
            }
            out[i] = Some(
                provides
                    .iter()
                    .filter(|n| wanted.contains(*n))
                    .cloned()
                    .collect(),
            );
            wanted.extend(undefined_globals(object)?);
            grew = true;
        }
        if !grew {
            return Ok(out);
        }
    }
}

/// What [`keep_needed`] decided.
#[derive(Debug, Default)]
pub struct Kept {
    /// Per provider kept: its object and the symbols some unit uses.
    pub used: Vec<(String, Vec<String>)>,
    /// Providers nothing calls: no change.
    pub unused: Vec<String>,
}

/// Moves into `live` every provider [`needed`] keeps, and says which.
pub fn keep_needed(live: &mut Vec<LiveUnit>, providers: Vec<Provider>) -> Result<Kept> {
    let objects: Vec<&[u8]> = live.iter().map(|u| u.klp_object.as_slice()).collect();
    let offered: Vec<(&[u8], &BTreeSet<String>)> = providers
        .iter()
        .map(|p| (p.unit.klp_object.as_slice(), &p.provides))
        .collect();
    let decided = needed(&objects, &offered)?;
    let mut kept = Kept::default();
    for (p, used) in providers.into_iter().zip(decided) {
        match used {
            Some(used) => {
                kept.used.push((p.unit.object.clone(), used));
                live.push(p.unit);
            }
            None => kept.unused.push(p.unit.object),
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as Out, Symbol, SymbolSection};
    use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};

    /// An object defining `defs` (name, global) in .text and referencing `refs`.
    fn obj(defs: &[(&str, bool)], refs: &[&str]) -> Vec<u8> {
        let mut o = Out::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(Vec::new(), b".text".to_vec(), object::SectionKind::Text);
        o.append_section_data(text, &[0xc3; 16], 16);
        for (i, (name, global)) in defs.iter().enumerate() {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: i as u64,
                size: 1,
                kind: SymbolKind::Text,
                scope: if *global {
                    SymbolScope::Linkage
                } else {
                    SymbolScope::Compilation
                },
                weak: false,
                section: SymbolSection::Section(text),
                flags: SymbolFlags::None,
            });
        }
        for name in refs {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Text,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            });
        }
        o.write().unwrap()
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_provider_is_what_it_defines_globally_among_the_new_functions() {
        let o = obj(
            &[("helper", true), ("local_new", false), ("old", true)],
            &["printk"],
        );
        let new = vec!["helper".to_string(), "local_new".to_string()];
        assert_eq!(new_globals(&o, &new).unwrap(), names(&["helper"]));
        assert!(new_globals(&o, &[]).unwrap().is_empty());
        assert!(new_globals(b"not an object", &new).is_err());
    }

    #[test]
    fn a_provider_is_kept_only_when_a_kept_unit_calls_it() {
        let caller = obj(&[("patched", true)], &["helper", "printk"]);
        let helper = obj(&[("helper", true)], &["printk"]);
        let unused = obj(&[("nobody_calls_me", true)], &[]);
        let (h, u) = (names(&["helper"]), names(&["nobody_calls_me"]));
        let got = needed(&[&caller], &[(&helper, &h), (&unused, &u)]).unwrap();
        assert_eq!(got, vec![Some(vec!["helper".to_string()]), None]);
        // Nothing live: nothing calls any provider.
        assert_eq!(needed(&[], &[(&helper, &h)]).unwrap(), vec![None]);
    }

    #[test]
    fn a_provider_kept_for_another_keeps_what_it_calls() {
        let caller = obj(&[("patched", true)], &["a"]);
        let pa = obj(&[("a", true)], &["b"]);
        let pb = obj(&[("b", true)], &[]);
        let (a, b) = (names(&["a"]), names(&["b"]));
        // Listed in the order that needs a second pass.
        let got = needed(&[&caller], &[(&pb, &b), (&pa, &a)]).unwrap();
        assert_eq!(
            got,
            vec![Some(vec!["b".to_string()]), Some(vec!["a".to_string()])]
        );
    }
}
