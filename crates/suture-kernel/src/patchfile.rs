//! Unified diffs as `git diff` and `diff -u` write them: parsed, checked and
//! applied in memory. Pure: text in, text out.
//!
//! Applying is strict on purpose (no fuzz): a livepatch built from a hunk that
//! landed somewhere its author did not mean is worse than no livepatch. Hunks may
//! move by whole lines (the offset is reported), as GNU patch allows.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// Path relative to the tree root (the `a/`/`b/` prefix removed).
    pub path: String,
    pub kind: FileKind,
    pub hunks: Vec<Hunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Modified,
    Created,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// 1-based first line of the hunk in the old file (0 for an empty old side).
    pub old_start: usize,
    pub lines: Vec<HunkLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    Context(String),
    Remove(String),
    Add(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub file: String,
    pub msg: String,
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.msg)
    }
}

impl std::error::Error for PatchError {}

fn strip_prefix_path(raw: &str) -> Option<String> {
    // `+++ b/fs/proc/cmdline.c\t2024-01-01 ...`: the path ends at a tab.
    let p = raw.split('\t').next().unwrap_or(raw).trim_end();
    if p == "/dev/null" {
        return None;
    }
    let p = p
        .strip_prefix("a/")
        .or_else(|| p.strip_prefix("b/"))
        .unwrap_or(p);
    Some(p.to_string())
}

fn parse_range(s: &str) -> Option<(usize, usize)> {
    // Not `&s[1..]`: the first character may be more than one byte.
    let s = s.get(1..)?;
    match s.split_once(',') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((s.parse().ok()?, 1)),
    }
}

/// Parses every file section of a unified diff. Text outside file sections
/// (commit messages, `diff --git` lines, `index` lines) is skipped.
pub fn parse(name: &str, text: &str) -> Result<Vec<FilePatch>, PatchError> {
    let err = |line: usize, msg: String| PatchError {
        file: name.to_string(),
        msg: format!("line {line}: {msg}"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(old) = lines[i].strip_prefix("--- ") else {
            i += 1;
            continue;
        };
        let Some(new) = lines.get(i + 1).and_then(|l| l.strip_prefix("+++ ")) else {
            i += 1;
            continue;
        };
        let (old_path, new_path) = (strip_prefix_path(old), strip_prefix_path(new));
        let (path, kind) = match (old_path, new_path) {
            (Some(_), Some(n)) => (n, FileKind::Modified),
            (None, Some(n)) => (n, FileKind::Created),
            (Some(o), None) => (o, FileKind::Deleted),
            (None, None) => return Err(err(i + 1, "both sides are /dev/null".into())),
        };
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(err(i + 1, format!("path {path:?} leaves the source tree")));
        }
        i += 2;
        let mut hunks = Vec::new();
        while i < lines.len() && lines[i].starts_with("@@ ") {
            let header = lines[i];
            let mut parts = header.split_whitespace().skip(1);
            let (Some(o), Some(n)) = (parts.next(), parts.next()) else {
                return Err(err(i + 1, format!("bad hunk header {header:?}")));
            };
            let (Some((old_start, mut old_n)), Some((_, mut new_n))) =
                (parse_range(o), parse_range(n))
            else {
                return Err(err(i + 1, format!("bad hunk header {header:?}")));
            };
            i += 1;
            let mut hl = Vec::new();
            while old_n > 0 || new_n > 0 {
                let Some(l) = lines.get(i) else {
                    return Err(err(i, "hunk ends early (truncated patch?)".into()));
                };
                match l.as_bytes().first() {
                    Some(b' ') => {
                        hl.push(HunkLine::Context(l[1..].to_string()));
                        old_n = old_n.saturating_sub(1);
                        new_n = new_n.saturating_sub(1);
                    }
                    // Some editors strip the single space of an empty context line.
                    None => {
                        hl.push(HunkLine::Context(String::new()));
                        old_n = old_n.saturating_sub(1);
                        new_n = new_n.saturating_sub(1);
                    }
                    Some(b'-') => {
                        hl.push(HunkLine::Remove(l[1..].to_string()));
                        old_n = old_n.saturating_sub(1);
                    }
                    Some(b'+') => {
                        hl.push(HunkLine::Add(l[1..].to_string()));
                        new_n = new_n.saturating_sub(1);
                    }
                    Some(b'\\') => {}
                    _ => return Err(err(i + 1, format!("unexpected line in hunk: {l:?}"))),
                }
                i += 1;
            }
            while i < lines.len() && lines[i].starts_with('\\') {
                i += 1;
            }
            hunks.push(Hunk {
                old_start,
                lines: hl,
            });
        }
        if hunks.is_empty() {
            return Err(err(i, format!("no hunks for {path}")));
        }
        out.push(FilePatch { path, kind, hunks });
    }
    if out.is_empty() {
        return Err(PatchError {
            file: name.to_string(),
            msg: "not a unified diff: no `--- a/FILE` / `+++ b/FILE` sections found".into(),
        });
    }
    Ok(out)
}

/// How one hunk was placed: `offset` lines away from where its header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub text: String,
    pub offsets: Vec<isize>,
}

/// Applies one file's hunks to `old` (the file's current text; empty for a
/// created file). Each hunk must match exactly; it may have moved.
pub fn apply(fp: &FilePatch, old: &str) -> Result<Applied, PatchError> {
    let had_final_newline = old.is_empty() || old.ends_with('\n');
    let src: Vec<&str> = old.lines().collect();
    if fp.kind == FileKind::Created && !src.is_empty() {
        return Err(PatchError {
            file: fp.path.clone(),
            msg: "the patch creates this file, but it already exists".into(),
        });
    }
    let mut offsets = Vec::new();
    // Hunks apply top to bottom; none may start inside what an earlier one consumed.
    let mut floor = 0usize;
    let mut result: Vec<String> = Vec::with_capacity(src.len() + 16);
    for (hi, h) in fp.hunks.iter().enumerate() {
        let want: Vec<&str> = h
            .lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(s) | HunkLine::Remove(s) => Some(s.as_str()),
                HunkLine::Add(_) => None,
            })
            .collect();
        // Saturating: a header line past isize::MAX (`@@ -9223372036854775809`)
        // wrapped to a negative nominal, and `found - nominal` overflowed.
        let nominal = isize::try_from(h.old_start.max(1) - 1).unwrap_or(isize::MAX);
        let found = find_hunk(&src, &want, nominal, floor).ok_or_else(|| PatchError {
            file: fp.path.clone(),
            msg: format!(
                "hunk {} (at line {}) does not apply: its context does not match the source of this kernel release",
                hi + 1,
                h.old_start
            ),
        })?;
        offsets.push(found as isize - nominal);
        result.extend(src[floor..found].iter().map(|s| s.to_string()));
        for l in &h.lines {
            if let HunkLine::Context(s) | HunkLine::Add(s) = l {
                result.push(s.clone());
            }
        }
        floor = found + want.len();
    }
    result.extend(src[floor..].iter().map(|s| s.to_string()));
    if fp.kind == FileKind::Deleted {
        return Ok(Applied {
            text: String::new(),
            offsets,
        });
    }
    let mut text = result.join("\n");
    if !result.is_empty() && had_final_newline {
        text.push('\n');
    }
    Ok(Applied { text, offsets })
}

/// One file after every section that changes it, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResult {
    pub path: String,
    /// Whether the file existed before the first section for it.
    pub existed: bool,
    /// `None`: the file is deleted in the end.
    pub text: Option<String>,
    /// Hunks placed away from where their header said, in words.
    pub notes: Vec<String>,
}

/// Applies file sections in order, as `patch` applies several patch files (and
/// several sections for one file) one after another: each sees the text the
/// previous ones produced. `read` gives a file's current text, `None` when
/// the tree has no such file. Results come in order of first appearance.
pub fn apply_in_order<E: From<PatchError>>(
    patches: &[FilePatch],
    mut read: impl FnMut(&FilePatch) -> Result<Option<String>, E>,
) -> Result<Vec<FileResult>, E> {
    let mut out: Vec<FileResult> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for fp in patches {
        let i = match at.get(fp.path.as_str()) {
            Some(&i) => i,
            None => {
                let text = read(fp)?;
                out.push(FileResult {
                    path: fp.path.clone(),
                    existed: text.is_some(),
                    text,
                    notes: Vec::new(),
                });
                at.insert(&fp.path, out.len() - 1);
                out.len() - 1
            }
        };
        let r = &mut out[i];
        let old = match (&r.text, fp.kind) {
            (Some(t), _) => t.clone(),
            (None, FileKind::Created) => String::new(),
            (None, _) => {
                return Err(PatchError {
                    file: fp.path.clone(),
                    msg: "the patch changes this file, but it does not exist (or an earlier patch deleted it)".into(),
                }
                .into())
            }
        };
        let applied = apply(fp, &old)?;
        for (h, off) in applied.offsets.iter().enumerate() {
            if *off != 0 {
                let (n, dir) = (
                    off.unsigned_abs(),
                    if *off > 0 { "later" } else { "earlier" },
                );
                let lines = if n == 1 { "line" } else { "lines" };
                r.notes.push(format!(
                    "{}: hunk {} applied {n} {lines} {dir}",
                    fp.path,
                    h + 1
                ));
            }
        }
        r.text = if fp.kind == FileKind::Deleted {
            None
        } else {
            Some(applied.text)
        };
    }
    Ok(out)
}

/// The position closest to `nominal` (and not before `floor`) where `want` matches.
fn find_hunk(src: &[&str], want: &[&str], nominal: isize, floor: usize) -> Option<usize> {
    if want.is_empty() {
        return Some((nominal.max(floor as isize) as usize).min(src.len()));
    }
    let last = src.len().checked_sub(want.len())?;
    let matches = |at: usize| at >= floor && at <= last && src[at..at + want.len()] == *want;
    let nominal = nominal.clamp(0, last as isize) as usize;
    for d in 0..=src.len() {
        if matches(nominal + d) {
            return Some(nominal + d);
        }
        if d <= nominal && matches(nominal - d) {
            return Some(nominal - d);
        }
        if nominal + d > last && d > nominal {
            break;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "a\nb\nc\nd\ne\nf\n";

    #[test]
    fn parses_git_diff_and_applies() {
        let p = "diff --git a/x.c b/x.c\nindex 1..2 100644\n--- a/x.c\n+++ b/x.c\n@@ -2,3 +2,3 @@\n b\n-c\n+C\n d\n";
        let fps = parse("p", p).unwrap();
        assert_eq!(fps.len(), 1);
        assert_eq!(fps[0].path, "x.c");
        assert_eq!(fps[0].kind, FileKind::Modified);
        let a = apply(&fps[0], SRC).unwrap();
        assert_eq!(a.text, "a\nb\nC\nd\ne\nf\n");
        assert_eq!(a.offsets, vec![0]);
    }

    #[test]
    fn moved_hunk_reports_offset() {
        let p = "--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,3 @@\n d\n+new\n e\n";
        let a = apply(&parse("p", p).unwrap()[0], SRC).unwrap();
        assert_eq!(a.text, "a\nb\nc\nd\nnew\ne\nf\n");
        assert_eq!(a.offsets, vec![3]);
    }

    #[test]
    fn mismatched_context_is_refused() {
        let p = "--- a/x.c\n+++ b/x.c\n@@ -2,2 +2,2 @@\n b\n-zzz\n+C\n";
        let e = apply(&parse("p", p).unwrap()[0], SRC).unwrap_err();
        assert!(e.msg.contains("hunk 1"), "{e}");
        assert!(e.msg.contains("does not apply"), "{e}");
    }

    #[test]
    fn created_and_deleted_files() {
        let p = "--- /dev/null\n+++ b/new.c\n@@ -0,0 +1,2 @@\n+int x;\n+int y;\n";
        let fp = &parse("p", p).unwrap()[0];
        assert_eq!(fp.kind, FileKind::Created);
        assert_eq!(apply(fp, "").unwrap().text, "int x;\nint y;\n");
        let d = "--- a/old.c\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n";
        let fp = &parse("p", d).unwrap()[0];
        assert_eq!(fp.kind, FileKind::Deleted);
        assert_eq!(apply(fp, "a\nb\n").unwrap().text, "");
    }

    #[test]
    fn rejects_non_diffs_truncation_and_escaping_paths() {
        assert!(parse("p", "hello\nworld\n")
            .unwrap_err()
            .msg
            .contains("not a unified diff"));
        let t = "--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n-b\n";
        assert!(parse("p", t).unwrap_err().msg.contains("truncated"));
        let esc = "--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n";
        assert!(parse("p", esc)
            .unwrap_err()
            .msg
            .contains("leaves the source tree"));
    }

    #[test]
    fn a_multibyte_character_in_a_hunk_header_is_an_error_not_a_panic() {
        // Found by the `patch_apply` fuzz target (which reads its input as
        // lossy UTF-8): the new range began with U+FFFD, three bytes, and
        // the range parser sliced it at byte 1.
        let raw = b"--- a/fs/binfmt_misc.c\n+++ b/fs/binfmt_misc.c\n@@ -847,7 \xd5\xc7\xcb\xc8\xd3\xc8\xdf\xba@\n a\n";
        let p = String::from_utf8_lossy(raw);
        assert!(parse("p", &p).unwrap_err().msg.contains("bad hunk header"));
        let p = "--- a/x.c\n+++ b/x.c\n@@ \u{e9}1 +1 @@\n-a\n+b\n";
        assert!(parse("p", p).unwrap_err().msg.contains("bad hunk header"));
    }

    #[test]
    fn a_hunk_header_line_past_isize_max_is_no_overflow() {
        // `found as isize - nominal` with the line wrapped to isize::MIN:
        // "attempt to subtract with overflow" in a debug build.
        let p =
            "--- a/x.c\n+++ b/x.c\n@@ -9223372036854775809,1 +9223372036854775809,1 @@\n-b\n+B\n";
        let a = apply(&parse("p", p).unwrap()[0], SRC).unwrap();
        assert_eq!(a.text, "a\nB\nc\nd\ne\nf\n");
        assert!(
            a.offsets[0] < 0,
            "the hunk moved up from where its header said: {:?}",
            a.offsets
        );
        // usize::MAX had wrapped to -2: the hunk was said to move 3 lines later.
        let p = "--- a/x.c\n+++ b/x.c\n@@ -18446744073709551615,1 +1,1 @@\n-b\n+B\n";
        assert!(apply(&parse("p", p).unwrap()[0], SRC).unwrap().offsets[0] < 0);
    }

    #[test]
    fn two_hunks_in_order() {
        let p = "--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n-a\n+A\n b\n@@ -5,2 +5,2 @@\n e\n-f\n+F\n";
        let a = apply(&parse("p", p).unwrap()[0], SRC).unwrap();
        assert_eq!(a.text, "A\nb\nc\nd\ne\nF\n");
    }

    #[test]
    fn sections_for_one_file_apply_in_order() {
        let a = "--- a/x.c\n+++ b/x.c\n@@ -2,1 +2,1 @@\n-b\n+B\n";
        let b = "--- a/x.c\n+++ b/x.c\n@@ -20,2 +20,2 @@\n e\n-f\n+F\n";
        let mut fps = parse("a.patch", a).unwrap();
        fps.extend(parse("b.patch", b).unwrap());
        let mut reads = 0;
        let r = apply_in_order::<PatchError>(&fps, |_| {
            reads += 1;
            Ok(Some(SRC.to_string()))
        })
        .unwrap();
        assert_eq!(
            reads, 1,
            "the second section sees the first one's result, not the file again"
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].text.as_deref(),
            Some("a\nB\nc\nd\ne\nF\n"),
            "both changes are kept"
        );
        assert_eq!(r[0].notes, vec!["x.c: hunk 1 applied 15 lines earlier"]);
        // The second section must match the first one's output: a conflicting
        // second change to the same line is refused, not silently won.
        let c = "--- a/x.c\n+++ b/x.c\n@@ -2,1 +2,1 @@\n-b\n+b2\n";
        let mut fps = parse("a.patch", a).unwrap();
        fps.extend(parse("c.patch", c).unwrap());
        assert!(apply_in_order::<PatchError>(&fps, |_| Ok(Some(SRC.to_string()))).is_err());
    }

    #[test]
    fn a_deleted_file_cannot_be_changed_later() {
        let d = "--- a/x.c\n+++ /dev/null\n@@ -1,6 +0,0 @@\n-a\n-b\n-c\n-d\n-e\n-f\n";
        let m = "--- a/x.c\n+++ b/x.c\n@@ -2,1 +2,1 @@\n-b\n+B\n";
        let mut fps = parse("d", d).unwrap();
        fps.extend(parse("m", m).unwrap());
        let e = apply_in_order::<PatchError>(&fps, |_| Ok(Some(SRC.to_string()))).unwrap_err();
        assert!(e.msg.contains("does not exist"), "{e}");
        let r = apply_in_order::<PatchError>(&fps[..1], |_| Ok(Some(SRC.to_string()))).unwrap();
        assert_eq!((r[0].existed, r[0].text.clone()), (true, None));
    }
}
