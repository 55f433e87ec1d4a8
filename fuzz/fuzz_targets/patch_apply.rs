//! The unified-diff parser and the strict applier: any bytes → sections or an
//! error, and every section applied (alone, then all in order) → text or an
//! error, never a panic. Input: the patch text, a NUL, then the original file
//! text that every section's file reads as (seed with `examples/*.patch` and
//! the old side of their hunks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use suture_kernel::patchfile::{self, FileKind, PatchError};

fuzz_target!(|data: &[u8]| {
    let (patch, orig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (patch, orig) = (
        String::from_utf8_lossy(patch),
        String::from_utf8_lossy(orig),
    );
    let Ok(fps) = patchfile::parse("fuzz.patch", &patch) else {
        return;
    };
    for fp in &fps {
        assert!(!fp.hunks.is_empty());
        let old = if fp.kind == FileKind::Created {
            ""
        } else {
            &orig
        };
        if let Ok(a) = patchfile::apply(fp, old) {
            assert_eq!(a.offsets.len(), fp.hunks.len());
        }
    }
    // A created file is absent from the tree; every other one reads as ORIG.
    if let Ok(rs) = patchfile::apply_in_order::<PatchError>(&fps, |fp| {
        Ok((fp.kind != FileKind::Created).then(|| orig.to_string()))
    }) {
        for r in &rs {
            assert!(fps.iter().any(|fp| fp.path == r.path));
        }
    }
});
