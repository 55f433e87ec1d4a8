//! Kernel symbol tables: decoded from the kallsyms tables compiled into a vmlinux,
//! or parsed from a copy of `/proc/kallsyms`.

use std::collections::HashMap;

use crate::image::{u16_at, u32_at, u64_at, Image};
use crate::{Error, Result};

/// One kallsyms entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KSym {
    pub addr: u64,
    /// The type letter as `/proc/kallsyms` prints it (`t`, `T`, `d`, `A`, ...).
    pub kind: char,
    pub name: String,
    /// `None` for vmlinux; the module (or pseudo-module such as `bpf`) otherwise.
    pub module: Option<String>,
}

/// One instance of a name within one object, as livepatch counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Index into [`Kallsyms::symbols`].
    pub index: usize,
    /// 1-based position among the object's symbols of that name, in kallsyms order.
    pub sympos: u32,
    pub addr: u64,
}

/// Symbols in kallsyms order: the order `kallsyms_on_each_symbol` (vmlinux) and
/// `module_kallsyms_on_each_symbol` (modules) walk, which is what livepatch's
/// `sympos` counts.
#[derive(Debug, Clone, Default)]
pub struct Kallsyms {
    symbols: Vec<KSym>,
    by_name: HashMap<String, Vec<usize>>,
    /// The GNU build-id of the vmlinux the table was decoded from.
    pub build_id: Option<String>,
}

impl Kallsyms {
    pub fn from_symbols(symbols: Vec<KSym>) -> Self {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::with_capacity(symbols.len());
        for (i, s) in symbols.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        Kallsyms {
            symbols,
            by_name,
            build_id: None,
        }
    }

    pub fn symbols(&self) -> &[KSym] {
        &self.symbols
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The instances of `name` in `objname` (`vmlinux` or a module name), in order.
    pub fn instances(&self, objname: &str, name: &str) -> Vec<Instance> {
        let want = if objname == "vmlinux" {
            None
        } else {
            Some(objname)
        };
        let Some(idx) = self.by_name.get(name) else {
            return Vec::new();
        };
        idx.iter()
            .filter(|&&i| self.symbols[i].module.as_deref() == want)
            .enumerate()
            .map(|(n, &i)| Instance {
                index: i,
                sympos: n as u32 + 1,
                addr: self.symbols[i].addr,
            })
            .collect()
    }

    /// The address of a vmlinux symbol when its name is unique there.
    pub fn unique_addr(&self, name: &str) -> Option<u64> {
        match self.instances("vmlinux", name).as_slice() {
            [one] => Some(one.addr),
            _ => None,
        }
    }

    /// False when every address is 0, as `/proc/kallsyms` shows them to
    /// unprivileged readers (`kptr_restrict`).
    pub fn addresses_known(&self) -> bool {
        self.symbols.iter().any(|s| s.addr != 0)
    }

    /// Names of the modules present, in order of first appearance.
    pub fn modules(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.symbols
            .iter()
            .filter_map(|s| s.module.as_deref())
            .filter(|m| seen.insert(*m))
            .collect()
    }
}

/// Parses `/proc/kallsyms` text: `ADDR TYPE NAME [MODULE]` per line.
pub fn parse_proc_kallsyms(text: &str) -> Result<Kallsyms> {
    let mut syms = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            Error::Kallsyms(format!(
                "line {}: {why}: {line:?}; expected `ADDRESS TYPE NAME [MODULE]` as in /proc/kallsyms",
                n + 1
            ))
        };
        let l = suture_abi::kallsyms::parse_line(line).map_err(bad)?;
        syms.push(KSym {
            addr: l.addr,
            kind: l.kind,
            name: l.name.to_string(),
            module: l.module.map(str::to_string),
        });
    }
    if syms.is_empty() {
        return Err(Error::Kallsyms(
            "no symbols in the kallsyms file; copy /proc/kallsyms as root".into(),
        ));
    }
    Ok(Kallsyms::from_symbols(syms))
}

/// The raw tables found in a vmlinux's data, as file offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    pub offsets: usize,
    pub relative_base: usize,
    pub num_syms: usize,
    pub names: usize,
    pub markers: usize,
    pub seqs_of_names: Option<usize>,
    pub token_table: usize,
    pub token_index: usize,
    pub count: usize,
}

/// Decodes the kallsyms tables of a (stripped) vmlinux: every symbol's address,
/// type and name in kallsyms order, plus the image's build-id.
pub fn kallsyms_from_vmlinux(vmlinux: &[u8]) -> Result<Kallsyms> {
    let img = Image::parse(vmlinux)?;
    let mut k = decode_tables(vmlinux)?;
    k.build_id = img.build_id();
    Ok(k)
}

/// Finds and decodes the tables in `data` (any byte buffer holding them with the
/// alignment `scripts/kallsyms.c` gives them: every table starts 8-aligned
/// relative to the others).
pub fn decode_tables(data: &[u8]) -> Result<Kallsyms> {
    let not_found = || {
        Error::Kallsyms(
            "no kallsyms tables found in the vmlinux (a kernel built without CONFIG_KALLSYMS, \
             or a layout this decoder does not know); pass --kallsyms FILE with a copy of \
             /proc/kallsyms from a host running this kernel"
                .into(),
        )
    };
    let mut found = None;
    for (tt, ti) in find_token_tables(data) {
        let tokens = read_tokens(data, tt, ti).ok_or_else(not_found)?;
        if let Some(l) = find_names(data, tt, ti) {
            found = Some((l, tokens));
            break;
        }
    }
    let (layout, tokens) = found.ok_or_else(not_found)?;
    decode_with_layout(data, &layout, &tokens)
}

/// Positions (token_table, token_index) of plausible token tables: 256 strictly
/// increasing u16 offsets starting at 0, each the start of a non-empty C string
/// of a table that ends, padded to 8, exactly where the index begins.
fn find_token_tables(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..data.len().saturating_sub(512))
        .step_by(8)
        .filter_map(move |ti| {
            if u16_at(data, ti)? != 0 {
                return None;
            }
            let mut prev = 0u16;
            for i in 1..256 {
                let v = u16_at(data, ti + 2 * i)?;
                // Tokens are short: a gap over 64 bytes is not a token table.
                if v <= prev || v - prev > 64 {
                    return None;
                }
                prev = v;
            }
            let last = prev as usize;
            // The table starts 8-aligned; the last token plus padding ends at `ti`.
            let mut tt = ti.checked_sub(last + 2)? & !7;
            while tt + last < ti {
                if check_token_table(data, tt, ti) {
                    return Some((tt, ti));
                }
                tt = tt.checked_sub(8)?;
                if ti - tt > last + 72 {
                    break;
                }
            }
            None
        })
}

fn check_token_table(data: &[u8], tt: usize, ti: usize) -> bool {
    let mut end = 0;
    for i in 0..256 {
        let Some(off) = u16_at(data, ti + 2 * i) else {
            return false;
        };
        let start = tt + off as usize;
        if start != tt + end {
            return false;
        }
        let Some(s) = data.get(start..ti) else {
            return false;
        };
        let Some(len) = s.iter().position(|&b| b == 0) else {
            return false;
        };
        if len == 0 || !s[..len].iter().all(|b| b.is_ascii_graphic()) {
            return false;
        }
        end = off as usize + len + 1;
    }
    align8(tt + end) == ti
}

fn read_tokens(data: &[u8], tt: usize, ti: usize) -> Option<Vec<Vec<u8>>> {
    (0..256)
        .map(|i| {
            let s = tt + u16_at(data, ti + 2 * i)? as usize;
            let len = data.get(s..ti)?.iter().position(|&b| b == 0)?;
            Some(data[s..s + len].to_vec())
        })
        .collect()
}

fn align8(x: usize) -> usize {
    x.next_multiple_of(8)
}

/// Walks the names stream: the offset just past `count` names, checking the
/// markers on the way. `None` if the stream does not fit.
fn walk_names(data: &[u8], names: usize, count: usize, markers: usize) -> Option<usize> {
    let mut off = 0usize;
    for i in 0..count {
        if i % 256 == 0 && u32_at(data, markers + 4 * (i / 256))? as usize != off {
            return None;
        }
        let b0 = *data.get(names + off)? as usize;
        let (len, hdr) = if b0 & 0x80 != 0 {
            (
                (b0 & 0x7f) | ((*data.get(names + off + 1)? as usize) << 7),
                2,
            )
        } else {
            (b0, 1)
        };
        if len == 0 {
            return None;
        }
        off += hdr + len;
        if names + off > markers {
            return None;
        }
    }
    Some(names + off)
}

/// Finds `kallsyms_num_syms` below the token table: the candidate whose count
/// makes the names and markers (and, in the 6.1 order, seqs_of_names) tables
/// line up exactly with the token table; then the offsets table, which sits
/// below num_syms up to 6.2 and after the token index from 6.3 on
/// ("scripts/kallsyms: change the output order").
fn find_names(data: &[u8], tt: usize, ti: usize) -> Option<TableLayout> {
    let lowest = tt.saturating_sub(256 << 20);
    let mut p = tt.checked_sub(16)? & !7;
    while p > lowest + 8 {
        let cand = p;
        p -= 8;
        let Some(n) = u32_at(data, cand) else {
            continue;
        };
        let n = n as usize;
        if !(16..=(1 << 23)).contains(&n) || u32_at(data, cand + 4) != Some(0) {
            continue;
        }
        let names = cand + 8;
        let markers_len = align8(4 * n.div_ceil(256));
        for seqs_between in [true, false] {
            let seqs_len = if seqs_between { align8(3 * n) } else { 0 };
            let Some(markers) = tt.checked_sub(seqs_len + markers_len) else {
                continue;
            };
            if markers <= names || u32_at(data, markers) != Some(0) {
                continue;
            }
            // Cheap filter before walking: the names need at least 2 bytes each.
            if markers - names < 2 * n {
                continue;
            }
            let Some(end) = walk_names(data, names, n, markers) else {
                continue;
            };
            if align8(end) != markers {
                continue;
            }
            let mut l = TableLayout {
                offsets: 0,
                relative_base: 0,
                num_syms: cand,
                names,
                markers,
                seqs_of_names: seqs_between.then_some(markers + markers_len),
                token_table: tt,
                token_index: ti,
                count: n,
            };
            // Up to 6.2: offsets, relative_base, num_syms, ...
            let before = cand
                .checked_sub(8)
                .and_then(|rb| Some((rb.checked_sub(align8(4 * n))?, rb)));
            // From 6.3: ..., token_index, offsets, relative_base, seqs_of_names.
            let after = {
                let off = align8(ti + 512);
                (off, off + align8(4 * n))
            };
            let mut best = None;
            for (offsets, relative_base) in before.into_iter().chain([after]) {
                l.offsets = offsets;
                l.relative_base = relative_base;
                if let Some(disorder) = address_disorder(data, &l) {
                    if !matches!(best, Some((d, _)) if d <= disorder) {
                        best = Some((disorder, l));
                    }
                }
            }
            // kallsyms is sorted by address: the right offsets table decodes to
            // a sorted sequence.
            if let Some((0, l)) = best {
                return Some(l);
            }
        }
    }
    None
}

/// How often the decoded addresses go down: 0 for a real table.
fn address_disorder(data: &[u8], l: &TableLayout) -> Option<usize> {
    let addrs = addresses(data, l)?;
    Some(addrs.windows(2).filter(|w| w[1] < w[0]).count())
}

/// Every symbol's address from the offsets table and the relative base, with
/// the KALLSYMS_ABSOLUTE_PERCPU rule when the table uses it.
fn addresses(data: &[u8], l: &TableLayout) -> Option<Vec<u64>> {
    let base = u64_at(data, l.relative_base)?;
    let offs: Vec<i32> = (0..l.count)
        .map(|i| u32_at(data, l.offsets + 4 * i).map(|v| v as i32))
        .collect::<Option<_>>()?;
    // With ABSOLUTE_PERCPU (x86-64 SMP up to 6.14) every relocatable symbol is
    // stored as a negative offset from base-1 and only the percpu ones are
    // non-negative; without it every entry is an unsigned offset from base.
    let negatives = offs.iter().filter(|&&o| o < 0).count();
    let absolute_percpu = negatives * 2 > offs.len();
    Some(
        offs.iter()
            .map(|&o| {
                if !absolute_percpu {
                    base.wrapping_add(o as u32 as u64)
                } else if o >= 0 {
                    o as u64
                } else {
                    base.wrapping_sub(1).wrapping_sub(o as i64 as u64)
                }
            })
            .collect(),
    )
}

fn decode_with_layout(data: &[u8], l: &TableLayout, tokens: &[Vec<u8>]) -> Result<Kallsyms> {
    let trunc = || Error::Kallsyms("kallsyms tables run past the end of the image".into());
    let addrs = addresses(data, l).ok_or_else(trunc)?;
    let mut syms = Vec::with_capacity(l.count);
    let mut off = l.names;
    let mut name = Vec::with_capacity(128);
    for &addr in &addrs {
        let b0 = *data.get(off).ok_or_else(trunc)? as usize;
        let (len, hdr) = if b0 & 0x80 != 0 {
            (
                (b0 & 0x7f) | ((*data.get(off + 1).ok_or_else(trunc)? as usize) << 7),
                2,
            )
        } else {
            (b0, 1)
        };
        let codes = data.get(off + hdr..off + hdr + len).ok_or_else(trunc)?;
        off += hdr + len;
        name.clear();
        for &c in codes {
            name.extend_from_slice(&tokens[c as usize]);
        }
        let Some((&kind, rest)) = name.split_first() else {
            return Err(Error::Kallsyms("empty symbol in kallsyms_names".into()));
        };
        syms.push(KSym {
            addr,
            kind: kind as char,
            name: String::from_utf8_lossy(rest).into_owned(),
            module: None,
        });
    }
    Ok(Kallsyms::from_symbols(syms))
}

/// How `scripts/kallsyms.c` orders the tables.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Order {
    /// 6.1: offsets, relative_base, num_syms, names, markers, [seqs_of_names,]
    /// token_table, token_index.
    V61 { seqs: bool },
    /// 6.3 on: num_syms, names, markers, token_table, token_index, offsets,
    /// relative_base, seqs_of_names.
    V63,
}

/// Lays out tables as `scripts/kallsyms.c` (`--base-relative
/// --absolute-percpu`) does, for tests of the decoder. Symbols must come sorted
/// by address; the last field says which are absolute (percpu). Tokens: every
/// byte stands for itself except the codes given in `multi`. Returns the data
/// and the offset of the markers table.
#[cfg(test)]
pub(crate) fn encode_tables(
    syms: &[(u64, char, &str, bool)],
    multi: &[(u8, &str)],
    order: Order,
) -> (Vec<u8>, usize) {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for (code, s) in multi {
        tokens[*code as usize] = s.as_bytes().to_vec();
    }
    // Tokens must be printable for the finder; unused non-printable codes get a
    // filler, as the real tool reuses unused codes for multi-char tokens.
    for (i, t) in tokens.iter_mut().enumerate() {
        if !t.iter().all(|b| b.is_ascii_graphic()) {
            *t = format!("~{i:x}").into_bytes();
        }
    }
    let enc = |s: &str| -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        'outer: while i < b.len() {
            for (code, m) in multi {
                if b[i..].starts_with(m.as_bytes()) {
                    out.push(*code);
                    i += m.len();
                    continue 'outer;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        out
    };
    let pad = |v: &mut Vec<u8>| {
        while v.len() & 7 != 0 {
            v.push(0);
        }
    };
    let base = syms.iter().find(|s| !s.3).map(|s| s.0).unwrap();
    let offsets = |out: &mut Vec<u8>| {
        for s in syms {
            let o: i32 = if s.3 {
                s.0 as i32
            } else {
                (base as i64 - s.0 as i64 - 1) as i32
            };
            out.extend_from_slice(&o.to_le_bytes());
        }
        pad(out);
        out.extend_from_slice(&base.to_le_bytes());
    };
    let seqs_table = |out: &mut Vec<u8>| {
        out.extend_from_slice(&vec![0x11; 3 * syms.len()]);
        pad(out);
    };
    let mut out = vec![0xaau8; 24]; // unrelated data before the tables
    if let Order::V61 { .. } = order {
        offsets(&mut out);
    }
    out.extend_from_slice(&(syms.len() as u32).to_le_bytes());
    pad(&mut out);
    let names = out.len();
    let mut markers = Vec::new();
    for (i, s) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.push((out.len() - names) as u32);
        }
        let e = enc(&format!("{}{}", s.1, s.2));
        if e.len() > 0x7f {
            out.push((e.len() as u8 & 0x7f) | 0x80);
            out.push((e.len() >> 7) as u8);
        } else {
            out.push(e.len() as u8);
        }
        out.extend_from_slice(&e);
    }
    pad(&mut out);
    let markers_at = out.len();
    for m in markers {
        out.extend_from_slice(&m.to_le_bytes());
    }
    pad(&mut out);
    if let Order::V61 { seqs: true } = order {
        seqs_table(&mut out);
    }
    let tt = out.len();
    let mut idx = Vec::new();
    for t in &tokens {
        idx.push((out.len() - tt) as u16);
        out.extend_from_slice(t);
        out.push(0);
    }
    pad(&mut out);
    for i in idx {
        out.extend_from_slice(&i.to_le_bytes());
    }
    if let Order::V63 = order {
        pad(&mut out);
        offsets(&mut out);
        seqs_table(&mut out);
    }
    out.extend_from_slice(&[0x55; 40]);
    (out, markers_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(u64, char, String, bool)> {
        let mut v = vec![
            (0x0, 'A', "fixed_percpu_data".to_string(), true),
            (0x1000, 'A', "cpu_number".to_string(), true),
            (0xffffffff81000000, 'T', "_text".to_string(), false),
            (0xffffffff81000000, 'T', "startup_64".to_string(), false),
        ];
        // Enough symbols for several markers, with duplicated names.
        for i in 0..700u64 {
            let name = if i % 100 == 7 {
                "type_show".to_string()
            } else {
                format!("func_{i}_show")
            };
            v.push((
                0xffffffff81001000 + 0x40 * i,
                if i % 3 == 0 { 'T' } else { 't' },
                name,
                false,
            ));
        }
        // One name long enough for a two-byte length.
        v.push((0xffffffff82000000, 'd', "x".repeat(200), false));
        v
    }

    fn encode(v: &[(u64, char, String, bool)], order: Order) -> (Vec<u8>, usize) {
        let r: Vec<(u64, char, &str, bool)> =
            v.iter().map(|s| (s.0, s.1, s.2.as_str(), s.3)).collect();
        encode_tables(
            &r,
            &[(0x01, "_show"), (0x02, "func_"), (0xc3, "xxxx")],
            order,
        )
    }

    #[test]
    fn decodes_synthetic_tables_in_order() {
        for order in [
            Order::V61 { seqs: true },
            Order::V61 { seqs: false },
            Order::V63,
        ] {
            let v = sample();
            let (data, _) = encode(&v, order);
            let k = decode_tables(&data).unwrap();
            assert_eq!(k.len(), v.len());
            for (got, want) in k.symbols().iter().zip(&v) {
                assert_eq!(
                    (got.addr, got.kind, got.name.as_str()),
                    (want.0, want.1, want.2.as_str())
                );
            }
            let inst = k.instances("vmlinux", "type_show");
            assert_eq!(inst.len(), 7);
            assert_eq!(
                inst.iter().map(|i| i.sympos).collect::<Vec<_>>(),
                (1..=7).collect::<Vec<_>>()
            );
            assert_eq!(inst[2].addr, 0xffffffff81001000 + 0x40 * 207);
            assert_eq!(k.unique_addr("_text"), Some(0xffffffff81000000));
        }
    }

    #[test]
    fn absent_or_truncated_tables_are_errors() {
        assert!(decode_tables(&[0u8; 4096]).is_err());
        assert!(decode_tables(&[]).is_err());
        for order in [Order::V61 { seqs: false }, Order::V63] {
            let (data, markers) = encode(&sample(), order);
            assert_eq!(decode_tables(&data).unwrap().len(), 705);
            // Cut inside the names: the count no longer fits.
            assert!(decode_tables(&data[..markers - 200]).is_err());
            // A wrong second marker must make the layout fail.
            let mut bad = data.clone();
            bad[markers + 4] ^= 0x01;
            assert!(decode_tables(&bad).is_err(), "{order:?}");
        }
        // V63 keeps offsets and relative_base after the token index: cut
        // inside relative_base (before 40 tail bytes and 2120 of seqs), no table.
        let (data, _) = encode(&sample(), Order::V63);
        assert!(decode_tables(&data[..data.len() - 40 - 2120 - 4]).is_err());
        assert!(decode_tables(&data[..data.len() - 40 - 2120]).is_ok());
    }

    /// Corrupted tables give errors or (wrong) tables, never panics.
    #[test]
    fn corrupted_tables_do_not_panic() {
        let (data, _) = encode(&sample(), Order::V61 { seqs: true });
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut d = data.clone();
            for k in 0..8 {
                let i = (seed.rotate_left(k * 8) as usize) % d.len();
                d[i] = (seed >> (k * 8)) as u8;
            }
            let _ = decode_tables(&d);
        }
    }

    #[test]
    fn parses_proc_kallsyms() {
        let text = "ffffffff81000000 T _text\n\
                    ffffffff81000000 T startup_64\n\
                    ffffffff811c0000 t name_show\n\
                    ffffffff811c8000 t name_show\n\
                    0000000000000000 A fixed_percpu_data\n\
                    ffffffffc0a00000 t name_show\t[snd_hda_core]\n\
                    ffffffffc0a00100 t init_thing\t[snd_hda_core]\n\
                    ffffffffc0b00000 t bpf_prog_6deef7357e7b4530\t[bpf]\n";
        let k = parse_proc_kallsyms(text).unwrap();
        assert_eq!(k.len(), 8);
        let v: Vec<_> = k
            .instances("vmlinux", "name_show")
            .iter()
            .map(|i| (i.sympos, i.addr))
            .collect();
        assert_eq!(v, vec![(1, 0xffffffff811c0000), (2, 0xffffffff811c8000)]);
        let m = k.instances("snd_hda_core", "name_show");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].sympos, 1);
        assert_eq!(k.modules(), vec!["snd_hda_core", "bpf"]);
        assert!(k.addresses_known());
        assert_eq!(k.symbols()[4].kind, 'A');
    }

    #[test]
    fn proc_kallsyms_errors_name_the_line() {
        for bad in [
            "zz T foo",
            "ffff TT foo",
            "ffff T",
            "ffff T foo bar",
            "ffff T foo [x] y",
            "",
        ] {
            let e = parse_proc_kallsyms(bad).unwrap_err().to_string();
            assert!(
                e.contains("line 1") || e.contains("no symbols"),
                "{bad}: {e}"
            );
        }
        let hidden =
            parse_proc_kallsyms("0000000000000000 T _text\n0000000000000000 t x\n").unwrap();
        assert!(!hidden.addresses_known());
    }
}
