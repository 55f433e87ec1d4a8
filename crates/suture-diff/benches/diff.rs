//! The largest corpus pairs, diffed in process (no process start-up, no file
//! I/O): the whole differ, and the pipeline cut after each stage (`NAME/parse`,
//! `/correlate`, `/compare`, `/include+write`; each includes the stages before
//! it, so a stage costs the difference to the previous line).

// Tests and tools of a pure crate do their own I/O.
#![allow(clippy::disallowed_methods)]

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::PathBuf;

fn corpus(name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kpatch-unit-objs/x86_64");
    let o = std::fs::read(dir.join(format!("{name}.ORIG.o"))).ok()?;
    let p = std::fs::read(dir.join(format!("{name}.PATCHED.o")))
        .or_else(|_| std::fs::read(dir.join(format!("{name}.PATCHED.FAIL.o"))))
        .ok()?;
    Some((o, p))
}

fn bench(c: &mut Criterion) {
    for name in [
        "unique-id-pr-1314",
        "ASSERT_RTNL-detect",
        "data-read-mostly",
        "static-local-moved-subfunction-issue-1054",
    ] {
        let Some((o, p)) = corpus(name) else {
            panic!("corpus pair {name} not found beside the repository (shared/kpatch-unit-objs/x86_64)");
        };
        let opts = suture_diff::Options::default();
        c.bench_function(name, |b| {
            b.iter(|| suture_diff::diff(&o, &p, &opts).unwrap())
        });
        let (o, p): (suture_diff::Shared, suture_diff::Shared) =
            (std::sync::Arc::new(o), std::sync::Arc::new(p));
        for (i, stage) in ["parse", "correlate", "compare", "include+write"]
            .iter()
            .enumerate()
        {
            c.bench_function(&format!("{name}/{stage}"), |b| {
                b.iter(|| suture_diff::run_stages(o.clone(), p.clone(), &opts, i as u8).unwrap())
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
