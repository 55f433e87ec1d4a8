//! The ELF reader must turn any bytes into an object or an error, never a panic;
//! what it accepts must survive a write/parse round trip of its sections.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = suture_elf::Object::parse(data) {
        for s in &o.sections {
            let _ = o.relas_of(s.index);
            let _ = o.section_symbol(s.index);
        }
        for s in &o.symbols {
            if let Some(sec) = s.section() {
                assert!(sec < o.sections.len());
            }
        }
    }
});
