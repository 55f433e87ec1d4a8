//! What a `.ko` says about itself: the `.modinfo` key=value strings and, as a
//! fallback for the name, `struct module` in `.gnu.linkonce.this_module`.

use object::{Object, ObjectSection};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// The name the kernel will register the module under.
    pub name: String,
    /// Full vermagic string, e.g. "6.1.0-56-amd64 SMP preempt mod_unload modversions ".
    pub vermagic: Option<String>,
    /// `MODULE_INFO(livepatch, "Y")` present.
    pub livepatch: bool,
    pub license: Option<String>,
    pub srcversion: Option<String>,
    pub depends: Vec<String>,
    /// What `suture build` recorded about the patch (all empty for a
    /// module built some other way).
    pub suture: SutureMeta,
}

/// Build-time metadata `suture build` writes into `.modinfo`. Keys are
/// `suture_NAME=VALUE` because `MODULE_INFO(tag, ...)` needs `tag` to be a C
/// identifier; `suture.NAME` is accepted too. Repeatable keys (`suture_cve`,
/// `suture_func`) appear once per value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SutureMeta {
    /// `suture_description`, else the standard `description`
    /// (`MODULE_DESCRIPTION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `suture_cve`, one per CVE id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// `suture_patch_sha256`: hex SHA-256 of the source patch file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_sha256: Option<String>,
    /// `suture_release`: the kernel release the patch was built for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// `suture_release_build_id`: hex GNU build-id of that release's
    /// vmlinux, as `/sys/kernel/notes` shows it on a host running it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_build_id: Option<String>,
    /// `suture_version`: the suture that built the module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `suture_func`, one per replaced function: `OBJ NAME SYMPOS`
    /// (space-separated; OBJ is `vmlinux` or a module name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// `suture_source_version`: for a cumulative module of a distribution
    /// update (`suture triage --build`), the update's source version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// `suture_update_live`: how many of the update's objects it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_live: Option<u32>,
    /// `suture_update_reboot`: how many need a reboot into the update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_reboot: Option<u32>,
    /// `suture_object`, one per object of the update it carries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}

impl SutureMeta {
    fn from_pairs(kv: &[(String, String)]) -> Self {
        let mut m = SutureMeta::default();
        let mut plain_description = None;
        for (k, v) in kv {
            let v = v.trim().to_string();
            if k == "description" {
                plain_description.get_or_insert(v);
                continue;
            }
            let Some(key) = suture_abi::modinfo::normalize(k) else {
                continue;
            };
            use suture_abi::modinfo as keys;
            match key.as_str() {
                keys::DESCRIPTION => m.description = Some(v),
                keys::CVE => {
                    // A single key may also carry a comma/space list.
                    for c in v.split([',', ' ']).filter(|c| !c.is_empty()) {
                        if !m.cves.iter().any(|x| x == c) {
                            m.cves.push(c.to_string());
                        }
                    }
                }
                keys::PATCH_SHA256 => m.patch_sha256 = Some(v.to_ascii_lowercase()),
                keys::RELEASE => m.release = Some(v),
                keys::RELEASE_BUILD_ID => m.release_build_id = Some(v.to_ascii_lowercase()),
                keys::VERSION => m.version = Some(v),
                keys::FUNC => m.functions.push(v),
                // Shown and exported as a label: a version's characters only.
                keys::SOURCE_VERSION => {
                    m.source_version = suture_abi::modinfo::is_version(&v).then_some(v)
                }
                keys::UPDATE_LIVE => m.update_live = v.parse().ok(),
                keys::UPDATE_REBOOT => m.update_reboot = v.parse().ok(),
                keys::OBJECT => m.objects.push(v),
                _ => {}
            }
        }
        if m.description.is_none() {
            m.description = plain_description;
        }
        // The linker may emit .modinfo strings in any order; sorted ids
        // make reports stable.
        m.cves.sort();
        m
    }
}

impl ModuleInfo {
    /// The kernel release the module was built for: vermagic's first word.
    pub fn release(&self) -> Option<&str> {
        self.vermagic
            .as_deref()
            .and_then(|v| v.split_whitespace().next())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModinfoError {
    #[error("the file is {0}-compressed; decompress it first (e.g. `{1}`)")]
    Compressed(&'static str, &'static str),
    #[error("not an ELF kernel module: {0}")]
    NotElf(String),
    #[error("the module has no .modinfo section")]
    NoModinfo,
    #[error(
        "cannot find the module's name (no `name=` in .modinfo and no .gnu.linkonce.this_module)"
    )]
    NoName,
    /// A name or vermagic release no kbuild makes: it would become a path,
    /// a package name and maintainer-script text, so nothing reads further.
    #[error("{0}")]
    BadField(suture_abi::NameError),
    #[error("the module calls itself {0:?} in .modinfo but {1:?} in .gnu.linkonce.this_module, the name the kernel registers")]
    NameMismatch(String, String),
}

/// `.modinfo` is a sequence of NUL-terminated "key=value" strings, possibly
/// with padding NULs between them.
pub fn parse_modinfo_strings(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// `struct module` starts with `enum module_state state` (4 bytes, padded to
/// 8) and `struct list_head list` (16 bytes) on 64-bit, then `char name[]`.
const THIS_MODULE_NAME_OFFSET: usize = 24;
use suture_abi::MODULE_NAME_LEN;

pub fn parse_module(data: &[u8]) -> Result<ModuleInfo, ModinfoError> {
    if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(ModinfoError::Compressed("xz", "unxz FILE.ko.xz"));
    }
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ModinfoError::Compressed("zstd", "unzstd FILE.ko.zst"));
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return Err(ModinfoError::Compressed("gzip", "gunzip FILE.ko.gz"));
    }
    let file = object::File::parse(data).map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let modinfo = file
        .section_by_name(".modinfo")
        .ok_or(ModinfoError::NoModinfo)?
        .data()
        .map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let kv = parse_modinfo_strings(modinfo);
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    // The kernel registers the module under `struct module`'s name, not
    // under `.modinfo`'s: a module whose two names differ would be stored
    // and reported as one module and appear in sysfs as another.
    let this_module = file
        .section_by_name(".gnu.linkonce.this_module")
        .and_then(|s| s.data().ok())
        .and_then(|d| d.get(THIS_MODULE_NAME_OFFSET..THIS_MODULE_NAME_OFFSET + MODULE_NAME_LEN))
        .map(|raw| {
            String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
        })
        .filter(|n| !n.is_empty());
    let name = match (get("name").filter(|n| !n.is_empty()), this_module) {
        (Some(n), Some(t)) if n != t => return Err(ModinfoError::NameMismatch(n, t)),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err(ModinfoError::NoName),
    };
    // Every command reads a module through here: package, install, load and
    // the boot unit get only names and releases that are safe as paths and
    // script words.
    suture_abi::check_module_name(&name).map_err(ModinfoError::BadField)?;
    let vermagic = get("vermagic");
    if let Some(release) = vermagic
        .as_deref()
        .and_then(|v| v.split_whitespace().next())
    {
        suture_abi::check_release(release).map_err(ModinfoError::BadField)?;
    }
    Ok(ModuleInfo {
        name,
        vermagic,
        livepatch: get("livepatch").is_some_and(|v| v == "Y"),
        license: get("license"),
        srcversion: get("srcversion"),
        depends: get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        suture: SutureMeta::from_pairs(&kv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as WObject, StandardSection};
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};

    fn ko(modinfo: &[u8], this_module_name: Option<&str>) -> Vec<u8> {
        let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let t = o.section_id(StandardSection::Text);
        o.append_section_data(t, &[0xc3], 1);
        let mi = o.add_section(vec![], b".modinfo".to_vec(), SectionKind::Data);
        o.append_section_data(mi, modinfo, 1);
        if let Some(n) = this_module_name {
            let s = o.add_section(
                vec![],
                b".gnu.linkonce.this_module".to_vec(),
                SectionKind::Data,
            );
            let mut d = vec![0u8; 0x400];
            d[24..24 + n.len()].copy_from_slice(n.as_bytes());
            o.append_section_data(s, &d, 64);
        }
        o.write().unwrap()
    }

    #[test]
    fn livepatch_module_fields() {
        let data = ko(
            b"livepatch=Y\0license=GPL\0\0\0depends=\0retpoline=Y\0name=livepatch_sample\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0",
            None,
        );
        let m = parse_module(&data).unwrap();
        assert_eq!(m.name, "livepatch_sample");
        assert!(m.livepatch);
        assert_eq!(m.release(), Some("6.1.0-56-amd64"));
        assert_eq!(m.license.as_deref(), Some("GPL"));
        assert!(m.depends.is_empty());
        assert_eq!(m.suture, SutureMeta::default());
    }

    #[test]
    fn suture_metadata_keys() {
        let data = ko(
            b"name=fix\0livepatch=Y\0description=fallback\0suture_cve=CVE-2024-1\0suture.cve=CVE-2024-2,CVE-2024-1\0\
              suture_release=6.1.0-56-amd64\0suture_release_build_id=EB4FBCD0\0suture_patch_sha256=AB12\0\
              suture_version=0.1.0\0suture_func=vmlinux cmdline_proc_show 0\0suture_description=Fix cmdline\0",
            None,
        );
        let m = parse_module(&data).unwrap().suture;
        assert_eq!(m.cves, ["CVE-2024-1", "CVE-2024-2"]);
        assert_eq!(m.release.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(m.release_build_id.as_deref(), Some("eb4fbcd0"));
        assert_eq!(m.patch_sha256.as_deref(), Some("ab12"));
        assert_eq!(m.version.as_deref(), Some("0.1.0"));
        assert_eq!(m.functions, ["vmlinux cmdline_proc_show 0"]);
        assert_eq!(m.description.as_deref(), Some("Fix cmdline"));
        let m = parse_module(&ko(b"name=x\0description=Plain\0", None))
            .unwrap()
            .suture;
        assert_eq!(m.description.as_deref(), Some("Plain"));
    }

    #[test]
    fn name_falls_back_to_this_module_and_livepatch_needs_y() {
        let data = ko(
            b"livepatch=N\0depends=a,b\0vermagic=6.1.0-1-amd64 SMP\0",
            Some("my_mod"),
        );
        let m = parse_module(&data).unwrap();
        assert_eq!(m.name, "my_mod");
        assert!(!m.livepatch);
        assert_eq!(m.depends, ["a", "b"]);
        assert_eq!(
            parse_module(&ko(b"license=GPL\0", None)),
            Err(ModinfoError::NoName)
        );
    }

    #[test]
    fn rejects_non_modules() {
        assert!(matches!(
            parse_module(b"hello"),
            Err(ModinfoError::NotElf(_))
        ));
        assert!(matches!(
            parse_module(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]),
            Err(ModinfoError::Compressed("xz", _))
        ));
        let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let t = o.section_id(StandardSection::Text);
        o.append_section_data(t, &[0xc3], 1);
        assert_eq!(
            parse_module(&o.write().unwrap()),
            Err(ModinfoError::NoModinfo)
        );
    }

    #[test]
    fn names_and_releases_that_would_be_paths_or_shell_are_refused() {
        for name in ["$(id>PWNED)", "../x", "a/b", "x y", "a'b"] {
            let mi = format!("name={name}\0livepatch=Y\0vermagic=6.1.0-56-amd64 SMP \0");
            let e = parse_module(&ko(mi.as_bytes(), None)).unwrap_err();
            assert!(matches!(e, ModinfoError::BadField(_)), "{name}: {e:?}");
            assert!(e.to_string().contains("module name"), "{e}");
        }
        for release in ["../../..", "$(reboot)", ".", "6.1/x"] {
            let mi = format!("name=fix\0livepatch=Y\0vermagic={release} SMP \0");
            let e = parse_module(&ko(mi.as_bytes(), None)).unwrap_err();
            assert!(e.to_string().contains("kernel release"), "{release}: {e}");
        }
        // The fallback name is held to the same rule.
        let e = parse_module(&ko(b"livepatch=Y\0", Some("../../x"))).unwrap_err();
        assert!(matches!(e, ModinfoError::BadField(_)), "{e:?}");
    }

    #[test]
    fn the_two_names_of_a_module_must_agree() {
        let e = parse_module(&ko(b"name=harmless\0livepatch=Y\0", Some("other"))).unwrap_err();
        assert_eq!(
            e,
            ModinfoError::NameMismatch("harmless".into(), "other".into())
        );
        let m = parse_module(&ko(b"name=same\0livepatch=Y\0", Some("same"))).unwrap();
        assert_eq!(m.name, "same");
    }
}
