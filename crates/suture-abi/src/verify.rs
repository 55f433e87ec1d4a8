//! The `suture_func` record ([`crate::modinfo::FUNC`]): one per function a
//! module replaces, `OBJ NAME SYMPOS [LEN SHA256 MASK]`. `suture build`
//! writes it; `suture verify` reads it back from a module's `.modinfo`,
//! which may be anyone's, so every field is checked before the host turns
//! OBJ into a sysfs path or LEN into a read of `/proc/kcore`.
//!
//! LEN bytes from the function's start, with the MASK ranges (`OFF+LEN,...`
//! sorted and disjoint, or `-` for none) zeroed, hash to SHA256 (hex). The
//! check part is absent for module functions (the host checks them once the
//! module is loaded) and when the build had no image at hand.

use std::fmt;
use std::str::FromStr;

use crate::klp::KLP_SYMNAME_MAX;

/// The longest function the build records bytes for (and so the most the
/// host reads from `/proc/kcore` for one record).
pub const MAX_FUNC_LEN: usize = 1 << 20;

/// One `suture_func` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncRecord {
    /// `vmlinux` or a module name.
    pub object: String,
    pub name: String,
    /// Position among the object's same-named symbols in kallsyms order
    /// from 1; 0 when the name is unique.
    pub sympos: u32,
    pub check: Option<FuncCheck>,
}

/// What the host compares a function's bytes in memory with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncCheck {
    pub len: usize,
    pub sha256: [u8; 32],
    /// `(offset, length)` ranges zeroed before hashing.
    pub mask: Vec<(usize, usize)>,
}

impl FuncCheck {
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for FuncCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.len, self.sha256_hex())?;
        if self.mask.is_empty() {
            return f.write_str("-");
        }
        for (i, (o, l)) in self.mask.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{o}+{l}")?;
        }
        Ok(())
    }
}

impl fmt::Display for FuncRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.object, self.name, self.sympos)?;
        match &self.check {
            Some(c) => write!(f, " {c}"),
            None => Ok(()),
        }
    }
}

/// A record that breaks the format: the record (shortened when long) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncRecordError {
    pub record: String,
    pub reason: String,
}

impl fmt::Display for FuncRecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed suture_func {:?}: {}; want `OBJ NAME SYMPOS [LEN SHA256 MASK]`",
            self.record, self.reason
        )
    }
}

impl std::error::Error for FuncRecordError {}

/// Enough of a record to recognise it in a message; a damaged one may be
/// megabytes long.
const SHOWN: usize = 160;

fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// A decimal number of at most `max`: digits only (no sign, no spaces),
/// as the build writes them.
fn decimal(s: &str, max: u64, what: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {:?} is not a decimal number", shown(s)));
    }
    match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{what} {} is more than {max}", shown(s))),
    }
}

fn parse_check(len: &str, sha: &str, mask: &str) -> Result<FuncCheck, String> {
    let len = decimal(len, MAX_FUNC_LEN as u64, "LEN")? as usize;
    if len == 0 {
        return Err("LEN is 0".into());
    }
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("SHA256 is not 64 hex digits".into());
    }
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    let mut ranges = Vec::new();
    if mask != "-" {
        // Sorted and disjoint, each at least a byte: at most LEN ranges,
        // whatever the record's length.
        let mut end = 0usize;
        for r in mask.split(',') {
            let (o, l) = r
                .split_once('+')
                .ok_or_else(|| format!("mask range {:?} is not OFF+LEN", shown(r)))?;
            let o = decimal(o, len as u64, "mask offset")? as usize;
            let l = decimal(l, len as u64, "mask length")? as usize;
            if l == 0 {
                return Err(format!("mask {o}+{l} is empty"));
            }
            if o + l > len {
                return Err(format!(
                    "mask {o}+{l} reaches past the function's {len} bytes"
                ));
            }
            if o < end {
                return Err(format!(
                    "mask {o}+{l} overlaps or precedes the range before it"
                ));
            }
            end = o + l;
            ranges.push((o, l));
        }
    }
    Ok(FuncCheck {
        len,
        sha256,
        mask: ranges,
    })
}

impl FromStr for FuncRecord {
    type Err = FuncRecordError;

    /// Fields separated by single spaces, as written: OBJ a module name
    /// ([`crate::check_module_name`]; `vmlinux` is one), NAME 1 to 511
    /// printable ASCII bytes (a kallsyms name), SYMPOS, LEN (1 to
    /// [`MAX_FUNC_LEN`]) and the mask's numbers decimal digits, SHA256 64
    /// hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| FuncRecordError {
            record: shown(s),
            reason,
        };
        let w: Vec<&str> = s.splitn(7, ' ').collect();
        if w.iter().any(|f| f.is_empty()) {
            return Err(err(
                "an empty field (fields are separated by single spaces)".into(),
            ));
        }
        if w.len() != 3 && w.len() != 6 {
            return Err(err(format!(
                "{} fields where 3 or 6 are wanted",
                if w.len() > 6 {
                    "more than 6".into()
                } else {
                    w.len().to_string()
                }
            )));
        }
        if crate::check_module_name(w[0]).is_err() {
            return Err(err(format!(
                "OBJ {:?} is not vmlinux or a module name (1 to 55 letters, digits and underscores)",
                shown(w[0])
            )));
        }
        if w[1].len() > KLP_SYMNAME_MAX || !w[1].bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(format!(
                "NAME is not 1 to {KLP_SYMNAME_MAX} printable ASCII characters"
            )));
        }
        let sympos = decimal(w[2], u32::MAX.into(), "SYMPOS").map_err(err)? as u32;
        let check = if w.len() == 6 {
            Some(parse_check(w[3], w[4], w[5]).map_err(err)?)
        } else {
            None
        };
        Ok(FuncRecord {
            object: w[0].to_string(),
            name: w[1].to_string(),
            sympos,
            check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha() -> String {
        "0123456789abcdef".repeat(4)
    }

    /// The bytes `suture build` wrote before the record had a type.
    #[test]
    fn writes_todays_format() {
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][i % 8];
        }
        let r = FuncRecord {
            object: "vmlinux".into(),
            name: "cmdline_proc_show".into(),
            sympos: 0,
            check: Some(FuncCheck {
                len: 64,
                sha256,
                mask: vec![(0, 5), (20, 4)],
            }),
        };
        let today = format!("vmlinux cmdline_proc_show 0 64 {} 0+5,20+4", sha());
        assert_eq!(r.to_string(), today);
        assert_eq!(today.parse::<FuncRecord>().unwrap(), r);
        let bare = FuncRecord {
            object: "ext4".into(),
            name: "ext4_foo.isra.0".into(),
            sympos: 2,
            check: None,
        };
        assert_eq!(bare.to_string(), "ext4 ext4_foo.isra.0 2");
        assert_eq!(
            "ext4 ext4_foo.isra.0 2".parse::<FuncRecord>().unwrap(),
            bare
        );
        let unmasked = FuncRecord {
            check: Some(FuncCheck {
                len: 12,
                sha256,
                mask: Vec::new(),
            }),
            ..bare
        };
        assert_eq!(
            unmasked.to_string(),
            format!("ext4 ext4_foo.isra.0 2 12 {} -", sha())
        );
    }

    #[test]
    fn round_trips() {
        for s in [
            "vmlinux f 0".to_string(),
            format!("vmlinux f 4294967295 {MAX_FUNC_LEN} {} 0+1,2+3", sha()),
            format!("vmlinux f 1 8 {} 0+8", sha()),
            format!("vmlinux {} 0 1 {} -", "f".repeat(KLP_SYMNAME_MAX), sha()),
            format!("{} f 0", "m".repeat(55)),
        ] {
            let r: FuncRecord = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<FuncRecord>().unwrap(), r);
        }
        // Upper-case hex is read; written back lower-case.
        let r: FuncRecord = format!("vmlinux f 0 8 {} -", sha().to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(r.to_string(), format!("vmlinux f 0 8 {} -", sha()));
    }

    #[test]
    fn refuses_malformed_records() {
        let h = sha();
        let long = "x".repeat(100_000);
        for (s, why) in [
            ("".to_string(), "empty field"),
            ("vmlinux f".into(), "fields"),
            ("vmlinux f 0 8".into(), "fields"),
            (format!("vmlinux f 0 8 {h} - x"), "fields"),
            ("vmlinux  f 0".into(), "empty field"),
            (" vmlinux f 0".into(), "empty field"),
            ("vmlinux f 0 ".into(), "empty field"),
            ("vmlinux\tf 0".into(), "fields"),
            // OBJ
            ("../etc f 0".into(), "module name"),
            ("a/b f 0".into(), "module name"),
            (format!("{} f 0", "m".repeat(56)), "module name"),
            ("vm-linux f 0".into(), "module name"),
            // NAME
            (
                format!("vmlinux {} 0", "f".repeat(KLP_SYMNAME_MAX + 1)),
                "NAME",
            ),
            ("vmlinux f\u{1b}[2J 0".into(), "NAME"),
            ("vmlinux f\u{e9} 0".into(), "NAME"),
            ("vmlinux f\0 0".into(), "NAME"),
            // SYMPOS
            ("vmlinux f -1".into(), "SYMPOS"),
            ("vmlinux f +1".into(), "SYMPOS"),
            ("vmlinux f x".into(), "SYMPOS"),
            ("vmlinux f 4294967296".into(), "SYMPOS"),
            ("vmlinux f 99999999999999999999999".into(), "SYMPOS"),
            // LEN
            (format!("vmlinux f 0 0 {h} -"), "LEN is 0"),
            (format!("vmlinux f 0 {} {h} -", MAX_FUNC_LEN + 1), "LEN"),
            (format!("vmlinux f 0 0x10 {h} -"), "LEN"),
            (format!("vmlinux f 0 +8 {h} -"), "LEN"),
            // SHA256
            ("vmlinux f 0 8 nothex -".into(), "SHA256"),
            (format!("vmlinux f 0 8 {} -", &h[..63]), "SHA256"),
            (format!("vmlinux f 0 8 {h}0 -"), "SHA256"),
            (format!("vmlinux f 0 8 {}g -", &h[..63]), "SHA256"),
            (format!("vmlinux f 0 8 +{} -", &h[..63]), "SHA256"),
            // MASK
            (format!("vmlinux f 0 8 {h} 6+4"), "past"),
            (
                format!("vmlinux f 0 8 {h} 18446744073709551615+1"),
                "mask offset",
            ),
            (
                format!("vmlinux f 0 8 {h} 1+18446744073709551615"),
                "mask length",
            ),
            (format!("vmlinux f 0 8 {h} 0+0"), "empty"),
            (format!("vmlinux f 0 8 {h} 4+2,0+1"), "precedes"),
            (format!("vmlinux f 0 8 {h} 0+4,3+1"), "overlaps"),
            (format!("vmlinux f 0 8 {h} 0+4,"), "OFF+LEN"),
            (format!("vmlinux f 0 8 {h} ,0+4"), "OFF+LEN"),
            (format!("vmlinux f 0 8 {h} 0-4"), "OFF+LEN"),
            (format!("vmlinux f 0 8 {h} 0+4+1"), "mask length"),
            (format!("vmlinux f 0 8 {h} -1+2"), "mask offset"),
            (format!("vmlinux f 0 8 {h} --"), "OFF+LEN"),
            (format!("vmlinux f 0 8 {h} {long}"), "OFF+LEN"),
            (format!("vmlinux {long} 0"), "NAME"),
        ] {
            let e = s.parse::<FuncRecord>().unwrap_err();
            assert!(e.reason.contains(why), "{s:?}: {e}");
            assert!(e.record.len() <= SHOWN + 3, "{e}");
            assert!(e.to_string().starts_with("malformed suture_func"), "{e}");
        }
    }
}
