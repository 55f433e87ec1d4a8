//! `suture verify`: compares the functions a patch replaces with the running
//! kernel's memory, read through `/proc/kcore` at the addresses
//! `/proc/kallsyms` gives. Ksplice's run-pre check, on the host: a patch
//! built from other sources, another config or another compiler replaces
//! functions whose bytes differ from what runs, and is refused.
//!
//! What to compare comes from the module: one `suture_func` record per
//! replaced function ([`suture_abi::verify::FuncRecord`], where its format
//! is defined and checked). The build masks what legitimately differs
//! in memory: relocated fields and the sites the kernel rewrites at boot or
//! at run time (the fentry call, alternatives, retpoline and return-thunk
//! sites, jump labels, static calls).

use crate::sysfs::Root;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::FileExt;
use suture_abi::verify::FuncRecord;

/// One `suture_func` record, as `suture verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FuncSpec {
    pub object: String,
    pub name: String,
    pub sympos: u32,
    /// Present when the build recorded what to compare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<FuncCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FuncCheck {
    pub len: usize,
    pub sha256: String,
    pub mask: Vec<(usize, usize)>,
}

impl From<FuncRecord> for FuncSpec {
    fn from(r: FuncRecord) -> Self {
        FuncSpec {
            object: r.object,
            name: r.name,
            sympos: r.sympos,
            check: r.check.map(|c| FuncCheck {
                len: c.len,
                sha256: c.sha256_hex(),
                mask: c.mask,
            }),
        }
    }
}

/// Parses `OBJ NAME SYMPOS [LEN SHA256 MASK]`; the module is untrusted, so
/// every field is checked ([`FuncRecord`]'s `FromStr`).
pub fn parse_func(s: &str) -> Result<FuncSpec, String> {
    s.parse::<FuncRecord>()
        .map(FuncSpec::from)
        .map_err(|e| e.to_string())
}

/// Zeroes the masked ranges and hashes.
pub fn masked_sha256(bytes: &[u8], mask: &[(usize, usize)]) -> String {
    let mut b = bytes.to_vec();
    for &(o, l) in mask {
        let end = (o + l).min(b.len());
        if o < end {
            b[o..end].fill(0);
        }
    }
    Sha256::digest(&b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A symbol's address in the running kernel, and the distance to the next
/// symbol (an upper bound on its size). `sympos` counts same-named symbols
/// of the object in kallsyms order from 1; 0 means the name must be unique.
pub fn kallsyms_lookup(
    root: &Root,
    object: &str,
    name: &str,
    sympos: u32,
) -> io::Result<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(root.proc_dir().join("kallsyms"))?;
    let mut addrs: Vec<u64> = Vec::new();
    let mut hits = Vec::new();
    for line in text.lines() {
        let Ok(l) = suture_abi::kallsyms::parse_line(line) else {
            continue;
        };
        let (a, n) = (l.addr, l.name);
        if l.object() == object {
            addrs.push(a);
            if n == name {
                hits.push(a);
            }
        }
    }
    if hits.iter().all(|&a| a == 0) && !hits.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "/proc/kallsyms shows zero addresses: run as root (kernel.kptr_restrict hides them otherwise)",
        ));
    }
    let addr = match (sympos, hits.len()) {
        (_, 0) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{object}:{name} is not in /proc/kallsyms"),
            ))
        }
        (0, 1) => hits[0],
        (0, n) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{object}:{name} is defined {n} times and the module gives no position"),
            ))
        }
        (p, n) if (p as usize) <= n => hits[p as usize - 1],
        (p, n) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{object}:{name} has {n} definition(s), the module wants number {p}"),
            ))
        }
    };
    addrs.sort_unstable();
    let next = addrs.iter().find(|&&a| a > addr).map(|&a| a - addr);
    Ok((addr, next))
}

/// Reads `len` bytes of kernel memory at virtual address `addr` from
/// `/proc/kcore` (an ELF core file whose `PT_LOAD` segments map kernel
/// virtual addresses to file offsets).
pub fn read_kcore(root: &Root, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let path = root.proc_dir().join("kcore");
    let f = std::fs::File::open(&path)?;
    // The file is as large as the kernel's address space: only the header and
    // the program headers are read (object reads what it is asked for, no
    // more), then the one range.
    let headers = object::ReadCache::new(&f);
    let offset = load_offset(&headers, addr, len)
        .map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        })?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{addr:#x}+{len} is in no PT_LOAD segment of {}",
                    path.display()
                ),
            )
        })?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// The file offset of `addr` in the core's `PT_LOAD` segment that holds all of
/// `addr..addr+len`; `None` when none does.
fn load_offset<'d, R: object::ReadRef<'d>>(
    core: R,
    addr: u64,
    len: usize,
) -> Result<Option<u64>, String> {
    use object::elf::{FileHeader64, ProgramHeader64, PN_XNUM, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::LittleEndian as LE;
    let not_core = |why: String| format!("not a 64-bit little-endian ELF core ({why})");
    let header = FileHeader64::<LE>::parse(core).map_err(|e| not_core(e.to_string()))?;
    if !header.is_little_endian() {
        return Err(not_core("big-endian".into()));
    }
    // The table is read into memory: no larger than e_phnum itself can count
    // (extended numbering could claim 2^32 entries).
    let phnum = header
        .phnum(LE, core)
        .map_err(|e| format!("program header count: {e}"))?;
    if phnum > usize::from(PN_XNUM) {
        return Err(format!("{phnum} program headers"));
    }
    if usize::from(header.e_phentsize(LE)) != size_of::<ProgramHeader64<LE>>() {
        return Err(format!(
            "program headers of {} bytes, not {}",
            header.e_phentsize(LE),
            size_of::<ProgramHeader64<LE>>()
        ));
    }
    let phdrs = header
        .program_headers(LE, core)
        .map_err(|e| format!("truncated program headers ({e})"))?;
    for ph in phdrs.iter().filter(|ph| ph.p_type(LE) == PT_LOAD) {
        let (off, vaddr, filesz) = (ph.p_offset(LE), ph.p_vaddr(LE), ph.p_filesz(LE));
        if addr >= vaddr && addr.saturating_add(len as u64) <= vaddr.saturating_add(filesz) {
            return off
                .checked_add(addr - vaddr)
                .map(Some)
                .ok_or_else(|| format!("segment at {vaddr:#x} has offset {off:#x} past any file"));
        }
    }
    Ok(None)
}

/// What `verify` found for one function.
#[derive(Debug, Clone, Serialize)]
pub struct FuncResult {
    #[serde(flatten)]
    pub spec: FuncSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `match`, `differs`, `unchecked` (the module records no hash),
    /// `absent` (the object is not loaded: nothing runs to compare),
    /// or `error`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Compares each function against memory.
pub fn verify_functions(root: &Root, specs: &[FuncSpec]) -> Vec<FuncResult> {
    specs
        .iter()
        .map(|spec| {
            let mut r = FuncResult { spec: spec.clone(), address: None, outcome: "error".into(), detail: None };
            if spec.object != "vmlinux" && !root.module_dir(&spec.object).is_dir() {
                r.outcome = "absent".into();
                r.detail = Some(format!("module {} is not loaded; it is checked when it is", spec.object));
                return r;
            }
            let (addr, _) = match kallsyms_lookup(root, &spec.object, &spec.name, spec.sympos) {
                Ok(a) => a,
                Err(e) => {
                    r.detail = Some(e.to_string());
                    return r;
                }
            };
            r.address = Some(format!("{addr:#x}"));
            let Some(c) = &spec.check else {
                r.outcome = "unchecked".into();
                r.detail = Some("the module records no bytes to compare (rebuild it with a suture that writes them)".into());
                return r;
            };
            match read_kcore(root, addr, c.len) {
                Ok(bytes) => {
                    let got = masked_sha256(&bytes, &c.mask);
                    if got == c.sha256 {
                        r.outcome = "match".into();
                    } else {
                        r.outcome = "differs".into();
                        r.detail = Some(format!("masked sha256 in memory {got}, at build {}", c.sha256));
                    }
                }
                Err(e) => r.detail = Some(format!("reading /proc/kcore: {e}")),
            }
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::testutil::FakeRoot;

    /// An ELF64 core with one PT_LOAD mapping `vaddr` to the bytes `data`.
    fn fake_kcore(vaddr: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let p = 64;
        f[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
        f[p + 8..p + 16].copy_from_slice(&(120u64).to_le_bytes());
        f[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn malformed_cores_are_errors() {
        let vaddr = 0xffff_ffff_8100_0000u64;
        let good = fake_kcore(vaddr, &[0x90; 16]);
        assert_eq!(load_offset(&good[..], vaddr + 4, 8), Ok(Some(124)));
        assert_eq!(load_offset(&good[..], vaddr + 12, 8), Ok(None));
        let err = |core: &[u8]| load_offset(core, vaddr, 4).unwrap_err();
        for cut in [0, 4, 63] {
            assert!(err(&good[..cut]).contains("not a 64-bit"), "cut at {cut}");
        }
        for cut in [64, 100, 119] {
            assert!(
                err(&good[..cut]).contains("truncated program headers"),
                "cut at {cut}"
            );
        }
        let with = |at: usize, bytes: &[u8]| {
            let mut c = good.clone();
            c[at..at + bytes.len()].copy_from_slice(bytes);
            c
        };
        assert!(err(&with(4, &[1])).contains("not a 64-bit"));
        assert!(err(&with(5, &[2])).contains("big-endian"));
        assert!(err(&with(0x36, &[40, 0])).contains("of 40 bytes"));
        // A table that claims more entries than the file holds is not read.
        assert!(err(&with(0x38, &[0xfe, 0xff])).contains("truncated"));
        // Extended numbering: the count in section 0's sh_info, here 2^24.
        let mut x = with(0x38, &[0xff, 0xff]);
        let shoff = x.len() as u64;
        x[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        x[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        let mut sh0 = [0u8; 64];
        sh0[0x2c..0x30].copy_from_slice(&(1u32 << 24).to_le_bytes());
        x.extend_from_slice(&sh0);
        assert!(err(&x).contains("16777216 program headers"));
        let far = with(64 + 8, &u64::MAX.to_le_bytes());
        assert!(load_offset(&far[..], vaddr + 4, 4)
            .unwrap_err()
            .contains("past any file"));
    }

    /// /proc/kcore's size is the kernel's address space: only its headers and
    /// the range asked for are read.
    #[test]
    fn reads_a_sparse_kcore_in_two_places() {
        let f = FakeRoot::new("kcore-sparse");
        let vaddr = 0xffff_ffff_8100_0000u64;
        let far = 1u64 << 36;
        let mut core = fake_kcore(vaddr, &[]);
        core[64 + 8..64 + 16].copy_from_slice(&far.to_le_bytes());
        core[64 + 32..64 + 40].copy_from_slice(&(1u64 << 30).to_le_bytes());
        let path = f.0.join("proc/kcore");
        std::fs::write(&path, &core).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(far + (1 << 30)).unwrap();
        file.write_all_at(b"\x0f\x1f\x44\x00\x00", far + 0x40)
            .unwrap();
        let got = read_kcore(&f.root(), vaddr + 0x40, 5).unwrap();
        assert_eq!(got, b"\x0f\x1f\x44\x00\x00");
    }

    #[test]
    fn a_short_kcore_is_an_error_naming_it() {
        let f = FakeRoot::new("kcore-short");
        f.write("proc/kcore", "\x7fELF\x02\x01\x01");
        let e = read_kcore(&f.root(), 0xffff_ffff_8100_0000, 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("proc/kcore: not a 64-bit"), "{e}");
    }

    #[test]
    fn parses_func_records() {
        let s = parse_func("vmlinux cmdline_proc_show 0").unwrap();
        assert_eq!((s.object.as_str(), s.sympos, s.check), ("vmlinux", 0, None));
        let h = "ab".repeat(32);
        let s = parse_func(&format!("ext4 ext4_foo 2 64 {h} 0+5,20+4")).unwrap();
        assert_eq!(s.check.unwrap().mask, [(0, 5), (20, 4)]);
        assert!(parse_func("vmlinux f").is_err());
        assert!(parse_func(&format!("vmlinux f 0 8 {h} 6+4"))
            .unwrap_err()
            .contains("past"));
        assert!(parse_func("vmlinux f 0 8 nothex -").is_err());
        // OBJ names a sysfs directory.
        assert!(parse_func("../../tmp f 0").is_err());
    }

    #[test]
    fn finds_functions_in_kcore_and_compares_masked_bytes() {
        let f = FakeRoot::new("kcore");
        let base = 0xffff_ffff_8100_0000u64;
        let mut mem = vec![0xccu8; 0x100];
        // "function" at base+0x40: a 5-byte nop (the fentry site), a call
        // with a relocated field, ret.
        let func = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 1, 2, 3, 4, 0xc3, 0xcc];
        mem[0x40..0x40 + func.len()].copy_from_slice(&func);
        std::fs::write(f.0.join("proc/kcore"), fake_kcore(base, &mem)).unwrap();
        f.write(
            "proc/kallsyms",
            &format!(
                "{base:016x} T _text\n{:016x} t dup\n{:016x} t target\n{:016x} t dup\n{:016x} t dup\t[ext4]\n",
                base + 0x20,
                base + 0x40,
                base + 0x4c,
                base + 0x80
            ),
        );
        let root = f.root();
        assert_eq!(
            kallsyms_lookup(&root, "vmlinux", "target", 0).unwrap(),
            (base + 0x40, Some(0xc))
        );
        assert_eq!(
            kallsyms_lookup(&root, "vmlinux", "dup", 2).unwrap().0,
            base + 0x4c
        );
        assert_eq!(
            kallsyms_lookup(&root, "ext4", "dup", 1).unwrap().0,
            base + 0x80
        );
        assert!(kallsyms_lookup(&root, "vmlinux", "dup", 0).is_err());
        assert!(kallsyms_lookup(&root, "vmlinux", "dup", 3).is_err());
        assert_eq!(read_kcore(&root, base + 0x40, 12).unwrap(), func);
        assert!(read_kcore(&root, base + 0xf8, 16).is_err());

        // The build's view: the call target differs (relocated) and the
        // fentry site holds a call instead of the nop; both masked.
        let mut built = func;
        built[..5].copy_from_slice(&[0xe8, 0, 0, 0, 0]);
        built[6..10].fill(0);
        let mask = [(0, 5), (6, 4)];
        let good = FuncSpec {
            object: "vmlinux".into(),
            name: "target".into(),
            sympos: 0,
            check: Some(FuncCheck {
                len: 12,
                sha256: masked_sha256(&built, &mask),
                mask: mask.to_vec(),
            }),
        };
        let mut other = built;
        other[10] = 0x90; // a different instruction outside the masks
        let bad = FuncSpec {
            check: Some(FuncCheck {
                len: 12,
                sha256: masked_sha256(&other, &mask),
                mask: mask.to_vec(),
            }),
            ..good.clone()
        };
        let gone = FuncSpec {
            object: "xfs".into(),
            ..good.clone()
        };
        let r = verify_functions(&root, &[good, bad, gone]);
        assert_eq!(
            r.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            ["match", "differs", "absent"]
        );
        assert_eq!(r[0].address.as_deref(), Some("0xffffffff81000040"));
    }
}

/// `suture verify`'s answer for one module.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub release: String,
    /// The running kernel's build-id and whether the module's matched
    /// (`false` when the module records none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub build_id_checked: bool,
    /// Who signed the module and the trusted certificate it verified
    /// against (`verified_by` absent: the trust store is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::modsig::SignatureReport>,
    pub functions: Vec<FuncResult>,
    /// Every function with recorded bytes matched and at least one had them.
    pub verified: bool,
}

impl crate::Host {
    /// The load-time checks (livepatch, release, build-id), then each
    /// replaced function's bytes against `/proc/kcore`. Loads nothing.
    pub fn verify(&self, path: &std::path::Path) -> Result<VerifyReport, crate::HostError> {
        let c = self.check_module(path)?;
        let mut specs = Vec::new();
        for f in &c.info.suture.functions {
            specs.push(parse_func(f).map_err(|e| {
                crate::HostError::new(
                    crate::ErrorKind::NotAModule,
                    format!("{}: {e}", path.display()),
                )
                .hint("the module's suture_func records are damaged; rebuild it")
            })?);
        }
        let functions = verify_functions(&self.root, &specs);
        let verified = functions.iter().any(|f| f.outcome == "match")
            && functions
                .iter()
                .all(|f| matches!(f.outcome.as_str(), "match" | "absent"));
        Ok(VerifyReport {
            name: c.info.name,
            release: c.release,
            build_id: c.running_build_id,
            build_id_checked: c.build_id_checked,
            signature: c.signature,
            functions,
            verified,
        })
    }
}
