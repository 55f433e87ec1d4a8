//! The `.modinfo` reader: any bytes → a module's info or an error, never a
//! panic; and what it accepts keeps the contract of `suture-abi` (a name and a
//! vermagic release that are safe as paths and script words).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The raw strings too, as if `data` were a `.modinfo` section.
    let _ = suture_host::modinfo::parse_modinfo_strings(data);
    if let Ok(info) = suture_host::modinfo::parse_module(data) {
        if let Err(e) = suture_abi::check_module_name(&info.name) {
            panic!("parse_module accepted a bad name: {e}");
        }
        if let Some(r) = info.release() {
            if let Err(e) = suture_abi::check_release(r) {
                panic!("parse_module accepted a bad release: {e}");
            }
        }
    }
});
