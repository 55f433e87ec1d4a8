//! The differ on a corrupted PATCHED: any verdict or error, never a panic.
//! Input: one byte choosing the split, then ORIG and PATCHED back to back
//! (seed the corpus with real pairs joined that way).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let split = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize % (data.len() - 8);
    let (orig, patched) = data[8..].split_at(split);
    if let Ok(suture_diff::Outcome::Changes(p)) =
        suture_diff::diff(orig, patched, &Default::default())
    {
        suture_elf::Object::parse(&p.object).expect("the differ's output must parse");
    }
});
