//! Build metadata in the module's `.modinfo`: `key=value` strings that
//! `modinfo` and the host side (`suture status`, `suture verify`, `suture
//! load`) read. Added to the finished module, before signing, by appending a
//! grown copy of the section: `.modinfo` carries no relocations and the loader
//! reads it from the file, so moving it is safe.

use crate::elf::Elf;
use anyhow::{ensure, Context, Result};

/// Appends `key=value` entries (repeated keys allowed) to `.modinfo`.
pub fn add_modinfo(ko: &[u8], entries: &[(String, String)]) -> Result<Vec<u8>> {
    for (k, v) in entries {
        ensure!(
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "modinfo key {k:?} must be a C identifier"
        );
        ensure!(
            !v.contains('\0'),
            "modinfo value for {k} contains a NUL byte"
        );
    }
    let mut e = Elf::parse(ko.to_vec())?;
    let sec = (0..e.shdrs.len())
        .find(|&i| e.section_name(i).map(|n| n == ".modinfo").unwrap_or(false))
        .context("the module has no .modinfo section")?;
    let mut data = e.data(sec)?.to_vec();
    for (k, v) in entries {
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    let align = e.shdrs[sec].addralign.max(1) as usize;
    let at = e.append(&data, align);
    e.shdrs[sec].offset = at;
    e.shdrs[sec].size = data.len() as u64;
    e.finish()
}

/// The `key=value` strings of a module's `.modinfo`, in order.
pub fn read_modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let e = Elf::parse(ko.to_vec())?;
    let sec = (0..e.shdrs.len())
        .find(|&i| e.section_name(i).map(|n| n == ".modinfo").unwrap_or(false))
        .context("the module has no .modinfo section")?;
    Ok(e.data(sec)?
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}
