//! The largest corpus pairs, diffed in process (no process start-up, no file I/O).

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;

fn corpus(name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kpatch-unit-objs/x86_64");
    let o = std::fs::read(dir.join(format!("{name}.ORIG.o"))).ok()?;
    let p = std::fs::read(dir.join(format!("{name}.PATCHED.o")))
        .or_else(|_| std::fs::read(dir.join(format!("{name}.PATCHED.FAIL.o"))))
        .ok()?;
    Some((o, p))
}

fn bench(c: &mut Criterion) {
    for name in ["unique-id-pr-1314", "ASSERT_RTNL-detect", "data-read-mostly", "static-local-moved-subfunction-issue-1054"] {
        let Some((o, p)) = corpus(name) else {
            panic!("corpus pair {name} not found beside the repository (shared/kpatch-unit-objs/x86_64)");
        };
        let opts = suture_diff::Options::default();
        c.bench_function(name, |b| b.iter(|| suture_diff::diff(&o, &p, &opts).unwrap()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
