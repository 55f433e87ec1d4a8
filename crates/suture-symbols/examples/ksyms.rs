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
    eprintln!(
        "kallsyms: {:?} ({} symbols, build-id {:?})",
        t.elapsed(),
        k.len(),
        k.build_id
    );
    for name in &args[1..] {
        for i in k.instances("vmlinux", name) {
            println!(
                "{name} pos {} addr {:#x} kind {}",
                i.sympos,
                i.addr,
                k.symbols()[i.index].kind
            );
        }
    }
    // ORIG=path/to/object.o SYMVERS=Module.symvers: time build_target on it.
    if let (Some(orig), Some(symvers)) = (std::env::var_os("ORIG"), std::env::var_os("SYMVERS")) {
        let orig = std::fs::read(orig)?;
        let exports = suture_symbols::Exports::parse(&std::fs::read_to_string(symvers)?)?;
        // MODULE=path/to/x.ko: ORIG belongs to that module instead.
        let ko = std::env::var_os("MODULE")
            .filter(|v| !v.is_empty())
            .map(std::fs::read)
            .transpose()?;
        let (image, objname) = match &ko {
            Some(ko) => {
                let name =
                    suture_symbols::module_symbols(ko, "module.ko")?.modules()[0].to_string();
                (suture_symbols::TargetImage::Module { ko }, name)
            }
            None => (
                suture_symbols::TargetImage::Vmlinux {
                    kallsyms: &k,
                    vmlinux: Some(&vmlinux),
                },
                "vmlinux".to_string(),
            ),
        };
        let t = Instant::now();
        let rep = suture_symbols::build_target_report(image, &exports, &objname, &orig)?;
        eprintln!(
            "build_target: {:?} ({} symbols, {} decided, {} unresolved, {} absent, {} mismatched, \
             {} functions and {} objects verified)",
            t.elapsed(),
            rep.target.symbols.len(),
            rep.decisions.len(),
            rep.unresolved.len(),
            rep.absent.len(),
            rep.mismatched.len(),
            rep.verified_functions,
            rep.verified_objects
        );
        for d in &rep.decisions {
            println!("{} -> {} of {} ({})", d.name, d.sympos, d.instances, d.how);
        }
        for m in &rep.mismatched {
            println!(
                "MISMATCHED {m}: {:?}",
                suture_symbols::verify_function(&vmlinux, &k, &orig, m).err()
            );
        }
        if std::env::var_os("ABSENT").is_some() {
            println!("ABSENT {:?}", rep.absent);
        }
        for f in &rep.unverified_functions {
            println!("UNVERIFIED {f}");
        }
        for u in &rep.unresolved {
            println!("UNRESOLVED {}: {}", u.name, u.why);
        }
    }
    if std::env::var_os("DUMP").is_some() {
        for s in k.symbols() {
            println!("{:016x} {} {}", s.addr, s.kind, s.name);
        }
    }
    Ok(())
}
