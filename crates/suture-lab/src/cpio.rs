//! A newc ("070701") cpio writer and the gzip wrapper the kernel's initramfs
//! unpacker accepts. Pure: entries in, bytes out, so it is unit-testable
//! without booting anything.

use std::collections::BTreeMap;
use std::io::Write;

/// What one archive member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// A character device node. `/dev/console` must exist before devtmpfs is
    /// mounted, otherwise the kernel starts `/init` without stdout.
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// One archive member: a guest path without the leading `/`, permission bits
/// (the file-type bits are derived from `kind`), and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub path: String,
    pub perm: u32,
    pub kind: NodeKind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn pad4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let namesize = name.len() + 1;
    // newc: magic then 13 eight-digit hex fields; uid/gid 0 so the guest sees
    // root-owned files whatever user built the archive.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        filesize as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Serialises `entries` in order as a newc archive ending with `TRAILER!!!`.
/// The caller is responsible for putting directories before their contents
/// (see [`FileTree`], which does).
pub fn write_newc(entries: &[CpioEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let name = e.path.trim_start_matches('/');
        let perm = e.perm & 0o7777;
        match &e.kind {
            NodeKind::Dir => header(&mut out, ino, S_IFDIR | perm, 2, 0, (0, 0), name),
            NodeKind::File(data) => {
                header(&mut out, ino, S_IFREG | perm, 1, data.len(), (0, 0), name);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            NodeKind::Symlink(target) => {
                header(
                    &mut out,
                    ino,
                    S_IFLNK | 0o777,
                    1,
                    target.len(),
                    (0, 0),
                    name,
                );
                out.extend_from_slice(target.as_bytes());
                pad4(&mut out);
            }
            NodeKind::CharDev { major, minor } => {
                header(&mut out, ino, S_IFCHR | perm, 1, 0, (*major, *minor), name)
            }
        }
    }
    header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
    out
}

/// Compresses with gzip. The fast level is deliberate: the archive holds
/// multi-megabyte binaries and the guest pays nothing for a larger file.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}

/// A set of guest paths that creates missing parent directories and lets a
/// later addition replace an earlier one at the same path.
#[derive(Debug, Clone, Default)]
pub struct FileTree {
    nodes: BTreeMap<String, (u32, NodeKind)>,
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl FileTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a node; parents are created as 0755 directories.
    pub fn insert(&mut self, guest_path: &str, perm: u32, kind: NodeKind) {
        let path = normalize(guest_path);
        if path.is_empty() {
            return;
        }
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.nodes
                .entry(parent.clone())
                .or_insert((0o755, NodeKind::Dir));
        }
        self.nodes.insert(path, (perm, kind));
    }

    pub fn contains(&self, guest_path: &str) -> bool {
        self.nodes.contains_key(&normalize(guest_path))
    }

    pub fn get(&self, guest_path: &str) -> Option<&NodeKind> {
        self.nodes.get(&normalize(guest_path)).map(|(_, k)| k)
    }

    /// Entries ordered so that every directory precedes its contents
    /// (lexical order on `/`-joined paths guarantees a parent sorts first).
    pub fn entries(&self) -> Vec<CpioEntry> {
        self.nodes
            .iter()
            .map(|(p, (perm, k))| CpioEntry {
                path: p.clone(),
                perm: *perm,
                kind: k.clone(),
            })
            .collect()
    }

    pub fn to_newc(&self) -> Vec<u8> {
        write_newc(&self.entries())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal newc reader, independent of the writer's helpers, to check
    /// what the kernel's unpacker would see.
    fn parse(mut data: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let start = data.as_ptr() as usize;
        loop {
            assert_eq!(&data[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&data[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let mode = field(1);
            let filesize = field(6) as usize;
            let rdevmaj = field(9);
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&data[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(data[110 + namesize - 1], 0);
            let mut off = 110 + namesize;
            let align = |off: usize, base: usize| {
                let abs = base + off;
                off + (4 - abs % 4) % 4
            };
            let base = data.as_ptr() as usize - start;
            off = align(off, base);
            let body = data[off..off + filesize].to_vec();
            off = align(off + filesize, base);
            if name == "TRAILER!!!" {
                assert_eq!((base + off) % 4, 0);
                return out;
            }
            out.push((name, mode, rdevmaj, filesize as u32, body));
            data = &data[off..];
        }
    }

    #[test]
    fn newc_roundtrip_with_odd_sizes_and_types() {
        let mut t = FileTree::new();
        t.insert("/bin/busybox", 0o755, NodeKind::File(b"abcde".to_vec()));
        t.insert("/bin/sh", 0o777, NodeKind::Symlink("busybox".into()));
        t.insert(
            "dev/console",
            0o600,
            NodeKind::CharDev { major: 5, minor: 1 },
        );
        t.insert("/a/b/c/x", 0o644, NodeKind::File(vec![]));
        let bytes = t.to_newc();
        assert_eq!(bytes.len() % 4, 0);
        let got = parse(&bytes);
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/b",
                "a/b/c",
                "a/b/c/x",
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        let bb = got.iter().find(|g| g.0 == "bin/busybox").unwrap();
        assert_eq!(bb.1, 0o100755);
        assert_eq!(bb.4, b"abcde");
        let sh = got.iter().find(|g| g.0 == "bin/sh").unwrap();
        assert_eq!(sh.1 & 0o170000, 0o120000);
        assert_eq!(sh.4, b"busybox");
        let con = got.iter().find(|g| g.0 == "dev/console").unwrap();
        assert_eq!(con.1, 0o020600);
        assert_eq!(con.2, 5);
        assert_eq!(got.iter().find(|g| g.0 == "a/b").unwrap().1, 0o040755);
    }

    #[test]
    fn later_insert_replaces_and_paths_are_normalized() {
        let mut t = FileTree::new();
        t.insert("init", 0o755, NodeKind::File(b"old".to_vec()));
        t.insert("//./init", 0o700, NodeKind::File(b"new".to_vec()));
        let e = t.entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, NodeKind::File(b"new".to_vec()));
        assert_eq!(e[0].perm, 0o700);
    }

    #[test]
    fn gzip_roundtrips() {
        use std::io::Read;
        let data = write_newc(&[CpioEntry {
            path: "x".into(),
            perm: 0o644,
            kind: NodeKind::File(vec![7; 1000]),
        }]);
        let gz = gzip(&data).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
