use super::*;

/// A `.text.f` section of `data` with `relas`.
fn text_f(data: Vec<u8>, relas: Vec<OutRela>) -> OutSection {
    OutSection {
        name: ".text.f".into(),
        sh_type: SHT_PROGBITS,
        flags: SHF_ALLOC | SHF_EXECINSTR,
        addralign: 16,
        entsize: 0,
        data,
        nobits_size: 0,
        relas,
        rela_flags: 0,
    }
}

fn sample() -> Vec<u8> {
    let mut b = Builder::default();
    let call = OutRela {
        offset: 1,
        sym: 3,
        rtype: R_X86_64_PLT32,
        addend: -4,
    };
    b.sections
        .push(text_f(vec![0xe8, 0, 0, 0, 0, 0xc3], vec![call]));
    b.symbols.push(OutSymbol {
        name: String::new(),
        bind: STB_LOCAL,
        typ: STT_SECTION,
        other: 0,
        section: SymSection::Section(0),
        value: 0,
        size: 0,
    });
    b.symbols.push(OutSymbol {
        name: "f".into(),
        bind: STB_LOCAL,
        typ: STT_FUNC,
        other: 0,
        section: SymSection::Section(0),
        value: 0,
        size: 6,
    });
    b.symbols.push(OutSymbol::undefined_global("__fentry__"));
    b.write().unwrap()
}

#[test]
fn round_trip() {
    let o = Object::parse(&sample()).unwrap();
    let t = o.section_by_name(".text.f").unwrap();
    assert_eq!(t.flags, SHF_ALLOC | SHF_EXECINSTR);
    assert_eq!(t.addralign, 16);
    assert_eq!(o.symbols.len(), 4);
    assert_eq!(o.symbols[2].name, "f");
    assert_eq!(o.symbols[2].section(), Some(t.index));
    assert_eq!(
        o.symbols[1].name, ".text.f",
        "section symbols take their section's name"
    );
    let r = o.relas_of(t.index).to_vec();
    assert_eq!(
        r.as_slice(),
        &[Rela {
            offset: 1,
            sym: 3,
            rtype: R_X86_64_PLT32,
            addend: -4
        }]
    );
    assert_eq!(o.section_symbol(t.index), Some(1));
    assert_eq!(
        o.sections[o.symtab.unwrap()].info,
        3,
        "sh_info is the first global"
    );
}

#[test]
fn locals_after_globals_rejected() {
    let mut b = Builder::default();
    b.symbols.push(OutSymbol::undefined_global("g"));
    b.symbols.push(OutSymbol {
        name: "l".into(),
        bind: STB_LOCAL,
        typ: STT_NOTYPE,
        other: 0,
        section: SymSection::Undef,
        value: 0,
        size: 0,
    });
    assert!(matches!(b.write(), Err(ElfError::Write(_))));
}

#[test]
fn every_truncation_is_an_error() {
    let full = sample();
    for n in 0..full.len() {
        assert!(
            Object::parse(&full[..n]).is_err(),
            "truncated to {n} bytes parsed"
        );
    }
}

#[test]
fn garbage_and_bit_flips_never_panic() {
    assert_eq!(Object::parse(b"hello world").unwrap_err(), ElfError::NotElf);
    let full = sample();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..5000 {
        let mut b = full.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % b.len();
            b[i] = (seed >> 32) as u8;
        }
        let _ = Object::parse(&b);
    }
}

#[test]
fn wrong_machine() {
    let mut b = sample();
    b[18] = 183; // EM_AARCH64
    match Object::parse(&b) {
        Err(ElfError::Unsupported(m)) => assert!(m.contains("x86_64"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_range_symbol_in_relocation() {
    let mut b = Builder::default();
    b.sections.push(OutSection {
        name: ".text".into(),
        sh_type: SHT_PROGBITS,
        flags: SHF_ALLOC | SHF_EXECINSTR,
        addralign: 1,
        entsize: 0,
        data: vec![0; 8],
        nobits_size: 0,
        relas: vec![OutRela {
            offset: 0,
            sym: 1,
            rtype: R_X86_64_64,
            addend: 0,
        }],
        rela_flags: 0,
    });
    assert!(b.write().is_err(), "writer checks symbol indices");
}

#[test]
fn extended_section_numbering_round_trips() {
    // More sections than a 16-bit index holds: SHN_XINDEX, SHT_SYMTAB_SHNDX and
    // the counts in section header 0.
    let n = 0xff10;
    let mut b = Builder::default();
    for i in 0..n {
        b.sections.push(OutSection {
            name: format!(".data.v{i}"),
            sh_type: SHT_PROGBITS,
            flags: SHF_ALLOC | SHF_WRITE,
            addralign: 1,
            entsize: 0,
            data: vec![i as u8],
            nobits_size: 0,
            relas: Vec::new(),
            rela_flags: 0,
        });
    }
    let last = n - 1;
    b.symbols.push(OutSymbol {
        name: "last".into(),
        bind: STB_GLOBAL,
        typ: STT_OBJECT,
        other: 0,
        section: SymSection::Section(last),
        value: 0,
        size: 1,
    });
    b.sections[last].relas.push(OutRela {
        offset: 0,
        sym: 1,
        rtype: R_X86_64_NONE,
        addend: 0,
    });
    let bytes = b.write().unwrap();
    let o = Object::parse(&bytes).unwrap();
    let s = o.symbols.iter().find(|s| s.name == "last").unwrap();
    let sec = s.section().expect("resolved through SHT_SYMTAB_SHNDX");
    assert!(sec >= SHN_LORESERVE as usize);
    assert_eq!(o.sections[sec].name, format!(".data.v{last}"));
    assert_eq!(o.relas_of(sec).len(), 1);
}

/// An object whose `.text.f` has the relocations `offsets`, in that order.
fn with_relocations(offsets: &[u64]) -> Object {
    let mut b = Builder::default();
    let relas = offsets
        .iter()
        .map(|&offset| OutRela {
            offset,
            sym: 1,
            rtype: R_X86_64_PC32,
            addend: offset as i64 - 4,
        })
        .collect();
    b.sections.push(text_f(vec![0x90; 64], relas));
    b.symbols.push(OutSymbol::undefined_global("g"));
    Object::parse(&b.write().unwrap()).unwrap()
}

#[test]
fn relocations_read_in_place_or_sorted() {
    for offsets in [&[4u64, 12, 12, 30][..], &[30, 4, 12, 20]] {
        let o = with_relocations(offsets);
        let t = o.section_by_name(".text.f").unwrap().index;
        let r = o.relas_of(t);
        let mut want = offsets.to_vec();
        want.sort();
        let got: Vec<u64> = r.iter().map(|r| r.offset).collect();
        assert_eq!(got, want, "sorted by offset whatever the input order");
        // Each relocation keeps its own fields through the sort.
        assert!(r
            .iter()
            .all(|r| r.addend == r.offset as i64 - 4 && r.rtype == R_X86_64_PC32));
        assert_eq!(r.iter().next_back().unwrap().offset, 30);
        let a = r.partition_point(|r| r.offset < 12);
        let b = r.partition_point(|r| r.offset < 21);
        let mid: Vec<u64> = r.slice(a..b).iter().map(|r| r.offset).collect();
        assert_eq!(mid, want[1..want.len() - 1]);
        assert!(r.slice(b..100).len() == 1 && r.get(4).is_none());
    }
    let o = with_relocations(&[]);
    assert!(o.relas_of(1).is_empty());
    assert_eq!(o.relocated_sections().count(), 0);
}

#[test]
fn names_point_into_the_string_table() {
    let o = Object::parse(&sample()).unwrap();
    let f = &o.symbols[2].name;
    assert_eq!(f.as_str(), "f");
    assert_eq!(f, &Name::from("f"));
    assert_eq!(format!("{f}|{f:?}"), "f|\"f\"");
    let set: std::collections::HashSet<Name> = o.symbols.iter().map(|s| s.name.clone()).collect();
    assert!(set.contains("f") && set.contains(".text.f") && set.contains("__fentry__"));
}

/// Every relocation type suture handles, as the x86-64 psABI defines its
/// field (word64, word32, word16, word8) and calculation (`- P` or not).
#[test]
fn relocation_fields_follow_the_psabi() {
    let table: [(u32, usize, bool); 15] = [
        (R_X86_64_NONE, 0, false),
        (R_X86_64_64, 8, false),
        (R_X86_64_PC32, 4, true),
        (R_X86_64_PLT32, 4, true),
        (R_X86_64_GOTPCREL, 4, true),
        (R_X86_64_32, 4, false),
        (R_X86_64_32S, 4, false),
        (R_X86_64_16, 2, false),
        (R_X86_64_PC16, 2, true),
        (R_X86_64_8, 1, false),
        (R_X86_64_PC8, 1, true),
        (R_X86_64_PC64, 8, true),
        (R_X86_64_GOTOFF64, 8, false),
        (R_X86_64_GOTPCRELX, 4, true),
        (R_X86_64_REX_GOTPCRELX, 4, true),
    ];
    for (t, width, pc) in table {
        assert_eq!(rela_field(t), Some((width, pc)), "type {t}");
        assert_eq!((rela_width(t), rela_is_pcrel(t)), (width, pc), "type {t}");
    }
    for t in 0..64 {
        if !table.iter().any(|e| e.0 == t) {
            assert_eq!(rela_field(t), None, "type {t}");
            assert_eq!((rela_width(t), rela_is_pcrel(t)), (4, false), "type {t}");
        }
    }
}
