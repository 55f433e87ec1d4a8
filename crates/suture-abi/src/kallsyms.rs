//! One `/proc/kallsyms` line: `ADDRESS TYPE NAME [MODULE]`. The builder reads
//! a copy of the file (`--kallsyms`), `suture diff --symbols` reads one, and
//! the host reads its own kernel's to find a function in memory; one reader
//! keeps them to one format.

/// A line's fields, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub addr: u64,
    /// The one-letter type (`T`, `t`, `d`, ...; `?` for some).
    pub kind: char,
    pub name: &'a str,
    /// The module the symbol belongs to, without its brackets; `None` for
    /// vmlinux.
    pub module: Option<&'a str>,
}

impl Line<'_> {
    /// `vmlinux` or the module's name: the livepatch object the symbol is in.
    pub fn object(&self) -> &str {
        self.module.unwrap_or("vmlinux")
    }
}

/// Parses one line; the error says which rule it breaks.
pub fn parse_line(line: &str) -> Result<Line<'_>, &'static str> {
    let mut it = line.split_whitespace();
    let (Some(a), Some(t), Some(name)) = (it.next(), it.next(), it.next()) else {
        return Err("too few fields");
    };
    let addr = u64::from_str_radix(a, 16).map_err(|_| "address is not hexadecimal")?;
    let mut tc = t.chars();
    let kind = match (tc.next(), tc.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() || c == '?' => c,
        _ => return Err("type is not one letter"),
    };
    let module = match it.next() {
        None => None,
        Some(m) => Some(
            m.strip_prefix('[')
                .and_then(|m| m.strip_suffix(']'))
                .filter(|m| !m.is_empty())
                .ok_or("module field is not `[name]`")?,
        ),
    };
    if it.next().is_some() {
        return Err("too many fields");
    }
    Ok(Line {
        addr,
        kind,
        name,
        module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_vmlinux_and_of_modules() {
        let l = parse_line("ffffffff81000000 T _text").unwrap();
        assert_eq!(
            (l.addr, l.kind, l.name, l.module),
            (0xffffffff81000000, 'T', "_text", None)
        );
        assert_eq!(l.object(), "vmlinux");
        let m = parse_line("ffffffffc0a01000 t fat_build_inode\t[fat]").unwrap();
        assert_eq!(m.module, Some("fat"));
        assert_eq!(m.object(), "fat");
    }

    #[test]
    fn malformed_lines_say_why() {
        for (l, why) in [
            ("ffff T", "too few fields"),
            ("zz T x", "address is not hexadecimal"),
            ("ffff TT x", "type is not one letter"),
            ("ffff T x fat", "module field is not `[name]`"),
            ("ffff T x []", "module field is not `[name]`"),
            ("ffff T x [fat] y", "too many fields"),
        ] {
            assert_eq!(parse_line(l), Err(why), "{l}");
        }
    }
}
