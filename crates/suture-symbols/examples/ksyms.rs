//! `cargo run --release --example ksyms -- /boot/vmlinuz-RELEASE [NAME...]`:
//! extracts the image, decodes its kallsyms, prints timings and the instances
//! of the given names.
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: ksyms BZIMAGE [NAME...]")?;
    let t = Instant::now();
    let bz = std::fs::read(path)?;
    let vmlinux = suture_symbols::extract_vmlinux(&bz)?;
    eprintln!("extract: {:?} ({} bytes)", t.elapsed(), vmlinux.len());
    let t = Instant::now();
    let k = suture_symbols::kallsyms_from_vmlinux(&vmlinux)?;
    eprintln!("kallsyms: {:?} ({} symbols, build-id {:?})", t.elapsed(), k.len(), k.build_id);
    for name in &args[1..] {
        for i in k.instances("vmlinux", name) {
            println!("{name} pos {} addr {:#x} kind {}", i.sympos, i.addr, k.symbols()[i.index].kind);
        }
    }
    if std::env::var_os("DUMP").is_some() {
        for s in k.symbols() {
            println!("{:016x} {} {}", s.addr, s.kind, s.name);
        }
    }
    Ok(())
}
