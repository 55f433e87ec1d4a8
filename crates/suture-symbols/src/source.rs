//! Where the target's symbols come from for one build, the one loader every
//! command uses: the release's image (decompressed once and cached) or a
//! `/proc/kallsyms` copy; modules from their shipped `.ko`; exports from the
//! headers' `Module.symvers`; the files found through [`ReleasePaths`].

use crate::{Exports, Kallsyms, ReleasePaths, TargetImage};
use anyhow::{bail, Context, Result};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use suture_abi::target::{Target, TargetSym};
use suture_abi::verify::{FuncCheck, MAX_FUNC_LEN};

pub struct SymbolSource {
    kallsyms: Kallsyms,
    /// The extracted vmlinux, when symbols come from the image: its bytes decide
    /// between same-named symbols.
    vmlinux: Option<Vec<u8>>,
    exports: Exports,
    paths: ReleasePaths,
    describe: String,
    /// Modules built by this build (out of tree), by objname.
    built_modules: HashMap<String, Vec<u8>>,
    /// Addresses of the `endbr64` the kernel seals at boot, read when needed.
    sealed: OnceCell<std::collections::HashSet<u64>>,
    /// What the kernel rewrites in its code at boot or run time, read when needed.
    rewritten: OnceCell<Vec<(u64, usize)>>,
}

impl SymbolSource {
    /// The release's symbols: `cache` is the directory that keeps its
    /// decompressed image (`vmlinux`, keyed by the image's size and time).
    pub fn open(
        r: &ReleasePaths,
        kallsyms: Option<&Path>,
        cache: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<Self> {
        let exports = r.load_exports()?;
        // The image's bytes decide between same-named symbols either way.
        let vmlinux = extracted_vmlinux(&r.image, cache, progress)?;
        let (ks, describe) = match kallsyms {
            Some(p) => {
                let text =
                    fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                let ks = crate::parse_proc_kallsyms(&text)
                    .with_context(|| format!("{} is not a /proc/kallsyms copy", p.display()))?;
                if !ks.addresses_known() {
                    bail!(
                        "{} has all-zero addresses: copy /proc/kallsyms as root (kptr_restrict hides them otherwise)",
                        p.display()
                    );
                }
                let ks = unslide(ks, &vmlinux).with_context(|| {
                    format!(
                        "{} does not come from a host running this build of {}",
                        p.display(),
                        r.release
                    )
                })?;
                (ks, format!("kallsyms copy {}", p.display()))
            }
            None => {
                let ks = crate::kallsyms_from_vmlinux(&vmlinux).with_context(|| {
                    format!(
                        "reading the kallsyms tables of {} (pass --kallsyms FILE with a /proc/kallsyms copy from a host running {} instead)",
                        r.image.display(),
                        r.release
                    )
                })?;
                (
                    ks,
                    format!("the kallsyms tables inside {}", r.image.display()),
                )
            }
        };
        let vmlinux = Some(vmlinux);
        Ok(SymbolSource {
            kallsyms: ks,
            vmlinux,
            exports,
            paths: r.clone(),
            describe,
            built_modules: HashMap::new(),
            sealed: OnceCell::new(),
            rewritten: OnceCell::new(),
        })
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// What `suture verify` compares on a host for a replaced vmlinux function
    /// (the check part of its [`suture_abi::verify::FuncRecord`]): LEN, SHA256
    /// and MASK of the function as the image has it, LEN running to
    /// the next symbol (as the host measures it from /proc/kallsyms), MASK
    /// covering what the kernel legitimately changes in memory: every 5-byte
    /// rel32 call/jmp (the fentry call is nopped at boot, return-thunk and
    /// retpoline sites are rewritten) and every 32-bit displacement or
    /// immediate (relocated addresses). `None` when the image is not at hand.
    pub fn verify_record(&self, name: &str, sympos: u32) -> Option<FuncCheck> {
        let vmlinux = self.vmlinux.as_deref()?;
        let image = crate::Image::parse(vmlinux).ok()?;
        let inst = self.kallsyms.instances("vmlinux", name);
        let addr = match sympos {
            0 if inst.len() == 1 => inst[0].addr,
            0 => return None,
            n => inst.iter().find(|i| i.sympos == n)?.addr,
        };
        let next = self
            .kallsyms
            .symbols()
            .iter()
            .filter(|s| s.module.is_none() && s.addr > addr)
            .map(|s| s.addr)
            .min()?;
        let len = usize::try_from(next - addr)
            .ok()
            .filter(|&l| l <= MAX_FUNC_LEN)?;
        let code = image.bytes_at(addr, len)?;
        let rewritten = match self.rewritten.get() {
            Some(r) => r,
            None => {
                let r = crate::runtime_rewritten_sites(vmlinux, &self.kallsyms).ok()?;
                self.rewritten.get_or_init(|| r)
            }
        };
        let mask = runtime_mask(code, addr, rewritten);
        let mut b = code.to_vec();
        for &(o, l) in &mask {
            let end = (o + l).min(b.len());
            b[o..end].fill(0);
        }
        use sha2::{Digest, Sha256};
        Some(FuncCheck {
            len,
            sha256: Sha256::digest(&b).into(),
            mask,
        })
    }

    /// Whether the kernel seals the `endbr64` at the start of vmlinux function
    /// `name` (position `sympos`) at boot: nothing in vmlinux takes its address.
    pub fn endbr_sealed(&self, name: &str, sympos: u32) -> Result<bool> {
        let sealed = match self.sealed.get() {
            Some(s) => s,
            None => {
                let vmlinux = self
                    .vmlinux
                    .as_deref()
                    .context("the release's image is needed for its IBT seal list")?;
                let list = crate::ibt_sealed_sites(vmlinux, &self.kallsyms)
                    .context("reading the IBT seal list of the image")?;
                self.sealed.get_or_init(|| list.into_iter().collect())
            }
        };
        let inst = self.kallsyms.instances("vmlinux", name);
        let addr = match sympos {
            0 if inst.len() == 1 => inst[0].addr,
            n => match inst.iter().find(|i| i.sympos == n) {
                Some(i) => i.addr,
                None => return Ok(false),
            },
        };
        Ok(sealed.contains(&addr))
    }

    /// Globals PATCHED references and ORIG does not: the target, built from
    /// ORIG, does not know them. A vmlinux symbol that is not exported but has
    /// a unique name is reached through a livepatch relocation (with its
    /// `__pfx_` padding, for calls, when it has one); exported ones stay
    /// normal references. A module's patch reaches vmlinux through exports,
    /// and other modules' exports through livepatch relocations of the module
    /// (new ones added here), placed in those modules' kallsyms from their `.ko`.
    pub fn add_new_references(
        &self,
        objname: &str,
        patched: &[u8],
        target: &mut Target,
    ) -> Result<()> {
        let o = suture_elf::Object::parse(patched).context("reading the patched object")?;
        if objname != "vmlinux" {
            return self.other_modules(objname, &o, target);
        }
        for s in &o.symbols {
            if !s.is_undef()
                || s.bind != suture_elf::STB_GLOBAL
                || s.name.is_empty()
                || target.symbols.contains_key(s.name.as_str())
            {
                continue;
            }
            if self.exports.reachable_from(objname, &s.name) {
                continue;
            }
            for name in [s.name.to_string(), format!("__pfx_{}", s.name)] {
                if let [_] = self.kallsyms.instances("vmlinux", &name).as_slice() {
                    target
                        .symbols
                        .entry(name)
                        .or_insert(TargetSym::Unexported { sympos: 0 });
                }
            }
        }
        Ok(())
    }

    /// Module `objname`'s references to other modules' exports, ORIG's and
    /// PATCHED's, with their positions in those modules.
    fn other_modules(
        &self,
        objname: &str,
        patched: &suture_elf::Object,
        target: &mut Target,
    ) -> Result<()> {
        for s in &patched.symbols {
            if s.is_undef() && s.bind == suture_elf::STB_GLOBAL && !s.name.is_empty() {
                if let Some(m) = self.exports.exporting_module(objname, &s.name) {
                    target
                        .symbols
                        .entry(s.name.to_string())
                        .or_insert(TargetSym::OtherModule {
                            module: m.to_string(),
                            sympos: 0,
                        });
                }
            }
        }
        self.own_globals(objname, patched, target)?;
        let mut modules: Vec<String> = target
            .symbols
            .values()
            .filter_map(|t| match t {
                TargetSym::OtherModule { module, .. } => Some(module.clone()),
                _ => None,
            })
            .collect();
        modules.sort();
        modules.dedup();
        for m in modules {
            let ko = match self.built_modules.get(&m) {
                Some(ko) => ko.clone(),
                None => {
                    let path = self.module_path(&m)?;
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
            };
            crate::place_module_exports(target, &m, &ko).with_context(|| {
                format!("placing the exports of module {m} that {objname} uses")
            })?;
        }
        Ok(())
    }

    /// PATCHED's references to module `objname`'s own globals that ORIG did
    /// not make (a fix to `nf_conntrack_proto_sctp.c` newly calling
    /// `nf_ct_l4proto_log_invalid`, which `nf_conntrack_proto.c` of the same
    /// module defines and exports): the module's own symbols, reached through
    /// klp relocations of the module, resolved when it loads. A normal
    /// relocation would make the patch depend on the very module it patches,
    /// and fail to load while that module is not loaded.
    fn own_globals(
        &self,
        objname: &str,
        patched: &suture_elf::Object,
        target: &mut Target,
    ) -> Result<()> {
        let wanted: Vec<&str> = patched
            .symbols
            .iter()
            .filter(|s| s.is_undef() && s.bind == suture_elf::STB_GLOBAL && !s.name.is_empty())
            .map(|s| s.name.as_str())
            .filter(|n| {
                !target.symbols.contains_key(*n) && !self.exports.reachable_from(objname, n)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let data = match self.built_modules.get(objname) {
            Some(ko) => ko.clone(),
            None => {
                let path = self.module_path(objname)?;
                fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            }
        };
        let ko = crate::decompress_module(&data)?;
        let obj = crate::obj::Obj::parse("target module", &ko)?;
        let kept = crate::module::kept_symbols(&obj);
        for name in wanted {
            let same: Vec<usize> = kept
                .iter()
                .copied()
                .filter(|&i| obj.symbols[i].name == name)
                .collect();
            // Position among same-named symbols in the module's kallsyms
            // order, as for its other symbols; 0 when the name is unique.
            let Some(pos) = same
                .iter()
                .position(|&i| obj.symbols[i].bind == suture_elf::STB_GLOBAL)
            else {
                continue;
            };
            let sympos = if same.len() == 1 { 0 } else { pos as u32 + 1 };
            target
                .symbols
                .insert(name.to_string(), TargetSym::Unexported { sympos });
        }
        Ok(())
    }

    /// The GNU build-id of the release's vmlinux: what `suture load` compares
    /// with the running kernel's (`/sys/kernel/notes`).
    pub fn build_id(&self) -> Option<String> {
        crate::Image::parse(self.vmlinux.as_deref()?)
            .ok()?
            .build_id()
    }

    /// The differ's view of `objname` for the translation unit `orig`.
    /// A module the release does not ship (built out of tree): its symbols
    /// come from this `.ko`.
    pub fn add_module(&mut self, objname: String, ko: Vec<u8>) {
        self.built_modules.insert(objname, ko);
    }

    /// The differ's view of `objname` for the translation unit `orig`, with
    /// what the comparison of ORIG's code with the image found. Symbols whose
    /// instance could not be decided are left out of the target: they only
    /// matter if the patch references them, which the differ then reports.
    pub fn target(&self, objname: &str, orig: &[u8]) -> Result<crate::TargetReport> {
        let report = if objname == "vmlinux" {
            let image = TargetImage::Vmlinux {
                kallsyms: &self.kallsyms,
                vmlinux: self.vmlinux.as_deref(),
            };
            crate::build_target_report(image, &self.exports, objname, orig)?
        } else if let Some(ko) = self.built_modules.get(objname) {
            crate::build_target_report(TargetImage::Module { ko }, &self.exports, objname, orig)?
        } else {
            let path = self.module_path(objname)?;
            let ko = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            crate::build_target_report(
                TargetImage::Module { ko: &ko },
                &self.exports,
                objname,
                orig,
            )?
        };
        Ok(report)
    }

    fn module_path(&self, objname: &str) -> Result<PathBuf> {
        Ok(self.paths.module_path(objname)?)
    }
}

/// Moves a running kernel's symbol addresses (KASLR slides them) back to the
/// image's link-time addresses, checked on the symbols both name once.
fn unslide(copy: Kallsyms, vmlinux: &[u8]) -> Result<Kallsyms> {
    let image = crate::kallsyms_from_vmlinux(vmlinux)?;
    let (Some(ours), Some(theirs)) = (copy.unique_addr("_text"), image.unique_addr("_text")) else {
        bail!("no _text symbol to align the copy with the image");
    };
    let slide = ours.wrapping_sub(theirs);
    let syms: Vec<crate::KSym> = copy
        .symbols()
        .iter()
        .map(|s| {
            let mut s = s.clone();
            // Absolute (per-CPU) symbols do not move with the kernel.
            if s.module.is_none() && !matches!(s.kind, 'a' | 'A') {
                s.addr = s.addr.wrapping_sub(slide);
            }
            s
        })
        .collect();
    let out = Kallsyms::from_symbols(syms);
    for probe in [
        "_stext",
        "_etext",
        "start_kernel",
        "cmdline_proc_show",
        "klp_enable_patch",
    ] {
        if let (Some(a), Some(b)) = (out.unique_addr(probe), image.unique_addr(probe)) {
            if a != b {
                bail!("{probe} is at {a:#x} in the copy but at {b:#x} in the image");
            }
        }
    }
    Ok(out)
}

/// The ranges of a function's bytes (`code`, at address `ip`) that may differ
/// in the running kernel's memory without the code being another build's:
/// every 5-byte rel32 call/jmp and 6-byte rel32 jcc (the fentry call, return
/// thunks, retpolines, static calls and call-depth thunks are retargeted or
/// rewritten whole), every 32-bit displacement or immediate (relocated
/// addresses), and the `rewritten` sites (address, length; sorted) the image's
/// own tables list: alternatives, static keys, paravirt sites, sealed endbr64.
/// Sorted and merged.
pub fn runtime_mask(code: &[u8], ip: u64, rewritten: &[(u64, usize)]) -> Vec<(usize, usize)> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut mask = Vec::new();
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    while d.can_decode() {
        let off = d.position();
        let insn = d.decode();
        let c = d.get_constant_offsets(&insn);
        let is_jcc32 = insn.len() == 6 && code[off] == 0x0f && code[off + 1] & 0xf0 == 0x80;
        if (insn.len() == 5 && matches!(code[off], 0xe8 | 0xe9)) || is_jcc32 {
            mask.push((off, insn.len()));
            continue;
        }
        if c.has_displacement() && c.displacement_size() == 4 {
            mask.push((off + c.displacement_offset(), 4));
        }
        if c.has_immediate() && c.immediate_size() == 4 {
            mask.push((off + c.immediate_offset(), 4));
        }
    }
    let end = ip + code.len() as u64;
    // Sites are short: one starting up to 64 bytes before `ip` may reach into it.
    let first = rewritten.partition_point(|&(a, _)| a + 64 < ip);
    for &(a, l) in rewritten[first..].iter().take_while(|&&(a, _)| a < end) {
        let (from, to) = (a.max(ip), (a + l as u64).min(end));
        if from < to {
            mask.push(((from - ip) as usize, (to - from) as usize));
        }
    }
    mask.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (o, l) in mask {
        match merged.last_mut() {
            Some((mo, ml)) if o <= *mo + *ml => *ml = (*ml).max(o + l - *mo),
            _ => merged.push((o, l)),
        }
    }
    merged
}

type Pending = (PathBuf, std::thread::JoinHandle<Result<Vec<u8>>>);

/// A decompression of the image running in the background (see [`prefetch_vmlinux`]).
static PREFETCH: std::sync::Mutex<Option<Pending>> = std::sync::Mutex::new(None);

/// Starts decompressing (or reading the cached copy of) the release's image on
/// another thread, so that on a cold build it overlaps with extracting and
/// preparing the source tree, which keep only one core busy much of the time.
pub fn prefetch_vmlinux(image: &Path, dir: &Path) {
    let (image, dir) = (image.to_path_buf(), dir.to_path_buf());
    let key = image.clone();
    let handle = std::thread::spawn(move || extracted_vmlinux_now(&image, &dir, &|_| {}));
    *PREFETCH.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, handle));
}

fn extracted_vmlinux(image: &Path, dir: &Path, progress: &dyn Fn(&str)) -> Result<Vec<u8>> {
    let pending = PREFETCH.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((key, handle)) = pending {
        if key == image {
            if let Ok(r) = handle.join() {
                return r;
            }
        }
    }
    extracted_vmlinux_now(image, dir, progress)
}

/// The decompressed image, cached: decompressing 65 MB each build would cost
/// seconds for nothing.
fn extracted_vmlinux_now(image: &Path, dir: &Path, progress: &dyn Fn(&str)) -> Result<Vec<u8>> {
    let cached = dir.join("vmlinux");
    let meta = fs::metadata(image).with_context(|| format!("reading {}", image.display()))?;
    let key = format!(
        "{} {} {:?}",
        image.display(),
        meta.len(),
        meta.modified().ok()
    );
    let key_file = dir.join("vmlinux.key");
    if fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        if let Ok(b) = fs::read(&cached) {
            return Ok(b);
        }
    }
    progress(&format!("extracting vmlinux from {}", image.display()));
    let bz = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let v = crate::extract_vmlinux(&bz)?;
    fs::create_dir_all(dir)?;
    write_atomic(&cached, &v)?;
    write_atomic(&key_file, key.as_bytes())?;
    Ok(v)
}

/// Writes through a temporary file in the same directory, then renames: a
/// reader never sees half a file. The temporary name is random and created
/// with O_EXCL (never a planted file or symlink), and removed unless the
/// rename happens, as `suture_kernel::tree::write_atomic` does (this crate
/// does not depend on the kernel tree's).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".suture-cache.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runtime_mask;

    /// `endbr64; push %rbp; call f; mov %rax,%rbx; clac (3 bytes, an
    /// alternative); jne f (rel32); jmp return_thunk`, at 0x1000.
    const CODE: [u8; 28] = [
        0xf3, 0x0f, 0x1e, 0xfa, // 0: endbr64
        0x55, // 4: push %rbp
        0xe8, 1, 2, 3, 4, // 5: call
        0x48, 0x89, 0xc3, // 10: mov %rax,%rbx
        0x0f, 0x01, 0xca, // 13: clac
        0x0f, 0x85, 1, 2, 3, 4, // 16: jne rel32
        0xe9, 1, 2, 3, 4,    // 22: jmp
        0xc3, // 27: ret
    ];

    #[test]
    fn sealed_endbr_alternatives_and_branches_are_masked() {
        let rewritten = [(0x0ff0, 4), (0x1000, 4), (0x100d, 3), (0x2000, 5)];
        let m = runtime_mask(&CODE, 0x1000, &rewritten);
        assert_eq!(m, [(0, 4), (5, 5), (13, 14)]);
        // Without the tables only the branches are masked.
        assert_eq!(runtime_mask(&CODE, 0x1000, &[]), [(5, 5), (16, 11)]);
    }

    /// A real difference stays visible: the register operand of the `mov`,
    /// the `push`, and the final `ret` are never masked.
    #[test]
    fn other_bytes_are_compared() {
        let m = runtime_mask(&CODE, 0x1000, &[(0x1000, 4), (0x100d, 3)]);
        for off in [4usize, 10, 11, 12, 27] {
            assert!(
                !m.iter().any(|&(o, l)| o <= off && off < o + l),
                "byte {off} masked: {m:?}"
            );
        }
    }
}
