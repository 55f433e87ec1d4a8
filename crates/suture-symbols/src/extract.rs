//! Getting the ELF vmlinux out of a bzImage, the way `scripts/extract-vmlinux`
//! does: try every offset where a known compressor's magic occurs and keep the
//! first one that decompresses to an ELF file.

use std::io::Read;

use crate::{Error, Result};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Decompressors in the order extract-vmlinux tries them (gzip, xz, ..., zstd).
/// bzip2, lzma, lzo and lz4 kernels are not supported: no distribution kernel
/// of interest uses them.
const FORMATS: &[(&str, &[u8])] = &[
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
];

/// The compressed payload of a bzImage, decompressed; checked to be an ELF file.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>> {
    // An uncompressed vmlinux passed by mistake is what the caller wanted anyway.
    if bzimage.starts_with(ELF_MAGIC) {
        return Ok(bzimage.to_vec());
    }
    let mut tried = Vec::new();
    for (fmt, magic) in FORMATS {
        for pos in find_all(bzimage, magic) {
            match decompress(fmt, &bzimage[pos..]) {
                Ok(out) if out.starts_with(ELF_MAGIC) => return Ok(out),
                Ok(_) => tried.push(format!("{fmt} at {pos:#x}: not an ELF file")),
                Err(e) => tried.push(format!("{fmt} at {pos:#x}: {e}")),
            }
        }
    }
    let detail = if tried.is_empty() {
        "no gzip, xz or zstd stream found".to_string()
    } else {
        tried.join("; ")
    };
    Err(Error::Image(format!(
        "no compressed vmlinux found in the kernel image ({detail}); pass the bzImage \
         (/boot/vmlinuz-RELEASE) of the target kernel, or an uncompressed vmlinux"
    )))
}

/// A module file as installed: `.ko` as is, `.ko.xz`, `.ko.zst` or `.ko.gz`
/// decompressed (distributions compress modules whole, from byte 0).
pub fn decompress_module(data: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if data.starts_with(ELF_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    for (fmt, magic) in FORMATS {
        if data.starts_with(magic) {
            let out =
                decompress(fmt, data).map_err(|e| Error::Image(format!("module: {fmt}: {e}")))?;
            if !out.starts_with(ELF_MAGIC) {
                return Err(Error::Image(format!(
                    "module: the {fmt} stream does not hold an ELF file"
                )));
            }
            return Ok(std::borrow::Cow::Owned(out));
        }
    }
    Err(Error::Image(
        "module: neither an ELF file nor xz, zstd or gzip; pass the module's .ko file".into(),
    ))
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0];
    let mut from = 0;
    std::iter::from_fn(move || {
        while from + needle.len() <= hay.len() {
            let i = from + hay[from..].iter().position(|&b| b == first)?;
            from = i + 1;
            if hay[i..].starts_with(needle) {
                return Some(i);
            }
        }
        None
    })
}

fn decompress(fmt: &str, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    // The kernel build appends the uncompressed size after the stream, so every
    // decoder must stop at the end of the first stream and ignore what follows.
    let mut out = Vec::with_capacity(80 << 20);
    match fmt {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        "xz" => {
            // The kernel's xz stream uses the x86 BCJ filter, which liblzma handles.
            // Driven by hand: xz2's reader reports the appended size as corruption.
            use xz2::stream::{Action, Status, Stream};
            let mut st = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| e.to_string())?;
            let mut input = data;
            loop {
                if out.capacity() - out.len() < (1 << 20) {
                    out.reserve(16 << 20);
                }
                let (in0, out0) = (st.total_in(), out.len());
                let action = if input.is_empty() {
                    Action::Finish
                } else {
                    Action::Run
                };
                let status = st
                    .process_vec(input, &mut out, action)
                    .map_err(|e| e.to_string())?;
                input = &input[(st.total_in() - in0) as usize..];
                if status == Status::StreamEnd {
                    break;
                }
                if st.total_in() == in0 && out.len() == out0 {
                    return Err("truncated xz stream".into());
                }
            }
        }
        "zstd" => {
            let mut d = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
            d.read_to_end(&mut out).map_err(|e| e.to_string())?;
        }
        _ => return Err(format!("unsupported format {fmt}")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_elf() -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend((0..5000u32).flat_map(|i| (i % 251).to_le_bytes()));
        v
    }

    fn bzimage_around(payload: &[u8]) -> Vec<u8> {
        // A setup header with a decoy magic that does not decompress, then the
        // real payload followed by the 4-byte size the kernel build appends.
        let mut img = b"MZ\x00\x00HdrS".to_vec();
        img.extend_from_slice(b"\x1f\x8b\x08garbage");
        img.extend_from_slice(payload);
        img.extend_from_slice(&1234u32.to_le_bytes());
        img
    }

    #[test]
    fn gzip_payload_with_trailing_size() {
        let elf = fake_elf();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&elf).unwrap();
        let img = bzimage_around(&enc.finish().unwrap());
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn xz_payload_with_trailing_size() {
        let elf = fake_elf();
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&elf).unwrap();
        let img = bzimage_around(&enc.finish().unwrap());
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn zstd_payload_with_trailing_size() {
        let elf = fake_elf();
        let z = ruzstd::encoding::compress_to_vec(
            &elf[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let img = bzimage_around(&z);
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
    }

    #[test]
    fn compressed_modules() {
        let elf = fake_elf();
        assert_eq!(&*decompress_module(&elf).unwrap(), &elf[..]);
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&elf).unwrap();
        assert_eq!(
            &*decompress_module(&enc.finish().unwrap()).unwrap(),
            &elf[..]
        );
        let z = ruzstd::encoding::compress_to_vec(
            &elf[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(&*decompress_module(&z).unwrap(), &elf[..]);
        assert!(decompress_module(b"plain text").is_err());
        assert!(decompress_module(&z[..z.len() / 2]).is_err());
    }

    #[test]
    fn non_elf_payload_is_refused() {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(b"not an elf at all").unwrap();
        let img = bzimage_around(&enc.finish().unwrap());
        let e = extract_vmlinux(&img).unwrap_err().to_string();
        assert!(e.contains("not an ELF"), "{e}");
    }

    #[test]
    fn truncated_image_is_an_error_not_a_panic() {
        let elf = fake_elf();
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&elf).unwrap();
        let img = bzimage_around(&enc.finish().unwrap());
        for cut in [0, 3, 20, img.len() / 2] {
            assert!(extract_vmlinux(&img[..cut]).is_err());
        }
    }
}
