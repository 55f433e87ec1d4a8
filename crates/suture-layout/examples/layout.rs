//! `layout ORIG.o [PATCHED.o]`: the types of ORIG, or the layout changes
//! from ORIG to PATCHED, with the time each step took.

// Tests and tools of a pure crate do their own I/O.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    match args.as_slice() {
        [o] => {
            let t = Instant::now();
            let ts = suture_layout::types(&read(o)).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            for t in &ts {
                println!(
                    "{} ({}) {} bytes, {} members",
                    t.subject(),
                    t.file.as_deref().unwrap_or("?"),
                    t.size,
                    t.members.len()
                );
            }
            eprintln!("{} types in {ms:.1} ms", ts.len());
        }
        [o, p] => {
            let (o, p) = (read(o), read(p));
            let t = Instant::now();
            let c = suture_layout::compare(&o, &p).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            for c in &c {
                println!(
                    "{}: {}: {}",
                    c.file.as_deref().unwrap_or("?"),
                    c.subject(),
                    c.reason()
                );
            }
            eprintln!("{} change(s); compared in {ms:.1} ms", c.len());
        }
        _ => {
            eprintln!("usage: layout ORIG.o [PATCHED.o]");
            std::process::exit(1);
        }
    }
}
