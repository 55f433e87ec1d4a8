//! The state readers (`STATE/RELEASE/NAME.{ko,json,pending,skipped}`): any
//! bytes in those files → an `Installed` entry, never a panic; and state
//! fails closed: an entry the boot unit would load (any guard but
//! `unreadable`) has a record, a crash marker and a skip decision that all
//! parse as what suture writes.
//!
//! Input: up to four pieces separated by 0xFF bytes: NAME.json, NAME.pending,
//! NAME.skipped, NAME.ko; an empty piece is an absent file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use suture_host::state::{Guard, InstallRecord, Pending, Skipped, StateDir};

const REL: &str = "6.1.0-56-amd64";

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("suture-fuzz-state-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let mut pieces = data.splitn(4, |&b| b == 0xff);
    let parts: Vec<&[u8]> = (0..4).map(|_| pieces.next().unwrap_or(&[])).collect();
    let rel = dir().join("state").join(REL);
    std::fs::create_dir_all(&rel).unwrap();
    for (ext, bytes) in ["json", "pending", "skipped", "ko"].iter().zip(&parts) {
        let p = rel.join(format!("fix.{ext}"));
        if bytes.is_empty() && *ext != "ko" {
            let _ = std::fs::remove_file(&p);
        } else {
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let st = StateDir(dir().join("state"));
    let installed = st
        .installed(REL)
        .expect("the release directory is listable");
    assert_eq!(installed.len(), 1);
    let i = &installed[0];
    if i.guard != Guard::Unreadable {
        assert!(i.unreadable.is_empty());
        assert!(
            serde_json::from_slice::<InstallRecord>(parts[0]).is_ok(),
            "loaded without a valid record"
        );
        if !parts[1].is_empty() {
            assert!(
                serde_json::from_slice::<Pending>(parts[1]).is_ok(),
                "a damaged crash marker was ignored"
            );
        }
        if !parts[2].is_empty() {
            assert!(
                serde_json::from_slice::<Skipped>(parts[2]).is_ok(),
                "a damaged skip was ignored"
            );
        }
    } else {
        assert!(!i.unreadable.is_empty());
    }
    let _ = st.releases().expect("the state directory is listable");
});
