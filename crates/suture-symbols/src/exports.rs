//! What the kernel exports to modules, from `Module.symvers`.

use std::collections::HashMap;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// `vmlinux`, or the exporting module's name as the kernel spells it
    /// (`fs/ext4/ext4` → `ext4`, dashes turned into underscores).
    pub owner: String,
    /// The symbol namespace (`EXPORT_SYMBOL_NS`), if any.
    pub namespace: Option<String>,
    pub gpl_only: bool,
    pub crc: u32,
}

/// Exported symbols by name.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    map: HashMap<String, Export>,
}

impl Exports {
    /// Parses `Module.symvers`: `CRC<TAB>SYMBOL<TAB>MODULE<TAB>EXPORT_TYPE<TAB>NAMESPACE`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let bad = |why: &str| {
                Error::Symvers(format!(
                    "line {}: {why}: {line:?}; use the Module.symvers of the target release \
                     (/usr/src/linux-headers-RELEASE/Module.symvers from linux-headers-RELEASE)",
                    n + 1
                ))
            };
            if f.len() < 4 {
                return Err(bad("expected at least 4 tab-separated fields"));
            }
            let crc = u32::from_str_radix(f[0].trim_start_matches("0x"), 16)
                .map_err(|_| bad("bad CRC"))?;
            if f[1].is_empty() || f[2].is_empty() {
                return Err(bad("empty symbol or module"));
            }
            let gpl_only = match f[3] {
                "EXPORT_SYMBOL" => false,
                "EXPORT_SYMBOL_GPL" | "EXPORT_SYMBOL_GPL_FUTURE" | "EXPORT_UNUSED_SYMBOL_GPL" => {
                    true
                }
                "EXPORT_UNUSED_SYMBOL" => false,
                _ => return Err(bad("unknown export type")),
            };
            let namespace = f.get(4).filter(|s| !s.is_empty()).map(|s| s.to_string());
            let owner = if f[2] == "vmlinux" {
                "vmlinux".to_string()
            } else {
                crate::module_name(f[2])
            };
            map.insert(
                f[1].to_string(),
                Export {
                    owner,
                    namespace,
                    gpl_only,
                    crc,
                },
            );
        }
        Ok(Exports { map })
    }

    /// vmlinux's exports read from the image itself (`__ksymtab`,
    /// `__ksymtab_gpl`, `__kcrctab*`), for when Module.symvers (linux-headers)
    /// is not at hand. Needs the extracted vmlinux's section headers and the
    /// PREL32 `struct kernel_symbol` of x86-64 (value, name, namespace offsets).
    pub fn from_vmlinux(vmlinux: &[u8]) -> Result<Self> {
        use object::{Object, ObjectSection};
        let bad = |m: String| {
            Error::Symvers(format!(
                "vmlinux: {m}; pass Module.symvers (install linux-headers-RELEASE)"
            ))
        };
        let buf = crate::obj::Aligned::new(vmlinux);
        let elf = object::File::parse(buf.bytes()).map_err(|e| bad(e.to_string()))?;
        let img = crate::Image::parse(vmlinux)?;
        let cstr = |addr: u64| -> Option<String> {
            let mut n = Vec::new();
            for i in 0..512u64 {
                match img.bytes_at(addr + i, 1)?[0] {
                    0 => return String::from_utf8(n).ok(),
                    b => n.push(b),
                }
            }
            None
        };
        let mut map = HashMap::new();
        for (tab, crcs, gpl_only) in [
            ("__ksymtab", "__kcrctab", false),
            ("__ksymtab_gpl", "__kcrctab_gpl", true),
        ] {
            let Some(sec) = elf.section_by_name(tab) else {
                return Err(bad(format!("no {tab} section")));
            };
            let data = sec.data().map_err(|e| bad(e.to_string()))?;
            let crc_data = elf.section_by_name(crcs).and_then(|s| s.data().ok());
            for (i, e) in data.chunks_exact(12).enumerate() {
                let at = sec.address() + 12 * i as u64;
                let rel =
                    |o: usize| i32::from_le_bytes(e[o..o + 4].try_into().unwrap()) as i64 as u64;
                let name = cstr((at + 4).wrapping_add(rel(4)))
                    .ok_or_else(|| bad(format!("{tab} entry {i}: bad name")))?;
                let namespace = match rel(8) {
                    0 => None,
                    off => cstr((at + 8).wrapping_add(off)).filter(|n| !n.is_empty()),
                };
                let crc = crc_data
                    .and_then(|c| c.get(4 * i..4 * i + 4))
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
                map.insert(
                    name,
                    Export {
                        owner: "vmlinux".into(),
                        namespace,
                        gpl_only,
                        crc,
                    },
                );
            }
        }
        Ok(Exports { map })
    }

    pub fn get(&self, name: &str) -> Option<&Export> {
        self.map.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Export)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether code of `objname` reaches `name` through a normal relocation:
    /// vmlinux exports it. A module's own exports are still reached through
    /// kallsyms, since the patch may load before the module; another module's
    /// through a klp relocation of `objname` (see [`Self::exporting_module`]).
    pub fn reachable_from(&self, _objname: &str, name: &str) -> bool {
        self.map.get(name).is_some_and(|e| e.owner == "vmlinux")
    }

    /// The module, other than `objname`, that exports `name`, when code of
    /// module `objname` can reach it: the module `objname` depends on for it.
    /// `None` for vmlinux's exports, for `objname`'s own, for a name nobody
    /// exports, and for any name when `objname` is vmlinux (vmlinux reaches
    /// no module's symbols).
    pub fn exporting_module(&self, objname: &str, name: &str) -> Option<&str> {
        if objname == "vmlinux" {
            return None;
        }
        self.map
            .get(name)
            .map(|e| e.owner.as_str())
            .filter(|o| *o != "vmlinux" && *o != objname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symvers() {
        let t = "0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n\
                 0x84b45156\tinsert_resource_expand_to_fit\tvmlinux\tEXPORT_SYMBOL_GPL\tCXL\n\
                 0x12345678\text4_thing\tfs/ext4/ext4\tEXPORT_SYMBOL\t\n\
                 0x00000001\tsnd_x\tsound/core/snd-pcm\tEXPORT_SYMBOL_GPL\t\n";
        let e = Exports::parse(t).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e.get("phys_base").unwrap().owner, "vmlinux");
        assert!(!e.get("phys_base").unwrap().gpl_only);
        let ns = e.get("insert_resource_expand_to_fit").unwrap();
        assert_eq!(ns.namespace.as_deref(), Some("CXL"));
        assert!(ns.gpl_only);
        assert_eq!(e.get("ext4_thing").unwrap().owner, "ext4");
        assert_eq!(e.get("snd_x").unwrap().owner, "snd_pcm");
        assert!(e.reachable_from("vmlinux", "phys_base"));
        assert!(e.reachable_from("ext4", "phys_base"));
        // Another module's export is no normal relocation: the patch module
        // would depend on that module.
        assert!(!e.reachable_from("snd_pcm", "ext4_thing"));
        assert!(!e.reachable_from("ext4", "ext4_thing"));
        assert!(!e.reachable_from("vmlinux", "not_exported"));
    }

    /// The module column says who exports a symbol: the differ reaches another
    /// module's export through a klp relocation of the patched module.
    #[test]
    fn the_module_column_names_the_exporting_module() {
        let t = "0xab507ec4\tfat_search_long\tfs/fat/fat\tEXPORT_SYMBOL_GPL\t\n\
                 0x1d586ebe\tfat_build_inode\tfs/fat/fat\tEXPORT_SYMBOL_GPL\t\n\
                 0x00000002\tsvc_x\tnet/sunrpc/sunrpc\tEXPORT_SYMBOL_GPL\tSUNRPC\n\
                 0x00000003\tsnd_y\tsound/core/snd-pcm\tEXPORT_SYMBOL\t\n\
                 0x4c9d28b0\tphys_base\tvmlinux\tEXPORT_SYMBOL\t\n";
        let e = Exports::parse(t).unwrap();
        assert_eq!(e.get("fat_build_inode").unwrap().owner, "fat");
        assert_eq!(e.exporting_module("vfat", "fat_build_inode"), Some("fat"));
        assert_eq!(e.exporting_module("msdos", "fat_search_long"), Some("fat"));
        assert_eq!(e.exporting_module("nfsd", "svc_x"), Some("sunrpc"));
        // Basename, dashes turned into underscores.
        assert_eq!(e.exporting_module("snd_seq", "snd_y"), Some("snd_pcm"));
        // The module's own export, vmlinux's, nobody's; and vmlinux never
        // reaches a module.
        assert_eq!(e.exporting_module("fat", "fat_build_inode"), None);
        assert_eq!(e.exporting_module("vfat", "phys_base"), None);
        assert_eq!(e.exporting_module("vfat", "nothing"), None);
        assert_eq!(e.exporting_module("vmlinux", "fat_build_inode"), None);
    }

    #[test]
    fn bad_lines_are_errors() {
        for t in [
            "zz\tx\tvmlinux\tEXPORT_SYMBOL\t",
            "0x1\tx\tvmlinux",
            "0x1\tx\tvmlinux\tEXPORT_WHAT\t",
        ] {
            assert!(Exports::parse(t)
                .unwrap_err()
                .to_string()
                .contains("line 1"));
        }
    }
}
