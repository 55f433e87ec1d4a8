//! `suture package FILE.ko`: a Debian package per kernel release, so that
//! an apt mirror, Ansible or Salt delivers livepatches as they deliver any
//! package. The package ships the module under
//! /usr/lib/suture/patches/RELEASE/, depends on that release's image
//! package, and its maintainer scripts call `suture install` (postinst: load
//! now if that kernel runs, else store it for its next boot) and `suture
//! uninstall` (prerm).
//!
//! Exit status: 0 package written; 1 error; 2 refused (not a livepatch
//! module, no release in its vermagic).

use crate::host_cmd::fail;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use suture_host::{ErrorKind, HostError};

#[derive(clap::Args)]
pub struct Args {
    /// The livepatch module (.ko) to package.
    pub module: PathBuf,
    /// Directory the .deb is written to.
    #[arg(short = 'o', long, default_value = ".")]
    pub out_dir: PathBuf,
    /// The package version (Debian syntax; raise it for each new build of
    /// the same patch so apt upgrades).
    #[arg(long = "pkg-version", default_value = "1")]
    pub version: String,
    #[arg(long, default_value = "suture <root@localhost>")]
    pub maintainer: String,
    /// The package providing the `suture` command on hosts, added to
    /// Depends; empty to leave it out.
    #[arg(long, default_value = "suture")]
    pub suture_package: String,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A Debian package name: lowercase letters, digits, `+-.`, starting with
/// an alphanumeric (Debian Policy 5.6.1).
pub fn package_name(module: &str, release: &str) -> String {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("suture-patch-{}-{}", clean(module), clean(release))
}

fn valid_version(v: &str) -> bool {
    v.chars().next().is_some_and(|c| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
}

/// Debian architecture of an ELF module.
fn deb_arch(data: &[u8]) -> Option<&'static str> {
    let machine = u16::from_le_bytes(data.get(18..20)?.try_into().ok()?);
    match machine {
        62 => Some("amd64"),
        183 => Some("arm64"),
        3 => Some("i386"),
        _ => None,
    }
}

pub struct Control {
    pub package: String,
    pub text: String,
}

/// The control file: one paragraph, the extended description lists what
/// the module says about itself.
pub fn control(info: &suture_host::ModuleInfo, release: &str, arch: &str, a: &Args) -> Control {
    let package = package_name(&info.name, release);
    let m = &info.suture;
    let mut depends = vec![format!("linux-image-{release}")];
    if !a.suture_package.is_empty() {
        depends.push(a.suture_package.clone());
    }
    let summary = m
        .description
        .clone()
        .unwrap_or_else(|| format!("livepatch {} for Linux {release}", info.name));
    let mut long = vec![
        format!(
            "Livepatch module {} for the Linux kernel {release}, applied",
            info.name
        ),
        "without a reboot by suture and again at every boot of that kernel.".to_string(),
    ];
    if !m.cves.is_empty() {
        long.push(format!("Fixes: {}.", m.cves.join(", ")));
    }
    if let Some(h) = &m.patch_sha256 {
        long.push(format!("Source patch SHA-256: {h}."));
    }
    if let Some(b) = &m.release_build_id {
        long.push(format!("Kernel build-id: {b}."));
    }
    let mut text = format!(
        "Package: {package}\nVersion: {}\nArchitecture: {arch}\nMaintainer: {}\nSection: kernel\nPriority: optional\n\
         Depends: {}\nDescription: {}\n",
        a.version,
        a.maintainer,
        depends.join(", "),
        summary.lines().next().unwrap_or("").trim()
    );
    for l in long {
        text.push_str(&format!(" {l}\n"));
    }
    Control { package, text }
}

/// postinst: load now when the packaged release runs; otherwise store it
/// for that kernel's next boot. A failed load fails the installation, so
/// apt reports it and the package is left unconfigured rather than
/// silently inactive. An empty `$1` counts as `configure`: busybox's dpkg
/// runs maintainer scripts without arguments.
pub fn postinst(ko: &str, release: &str) -> String {
    format!(
        r#"#!/bin/sh
set -e
case "$1" in
    configure|"")
        if [ "$(uname -r)" = "{release}" ]; then
            suture install {ko}
        else
            suture install --no-load {ko}
            echo "suture: {release} is not running; the patch will be loaded when it boots"
        fi
        ;;
esac
exit 0
"#
    )
}

/// prerm: unload and forget the patch. On upgrade the new version's
/// postinst installs it again right after. Empty `$1`: busybox's dpkg.
pub fn prerm(name: &str) -> String {
    format!(
        r#"#!/bin/sh
set -e
case "$1" in
    remove|upgrade|deconfigure|"")
        suture uninstall --missing-ok {name}
        ;;
esac
exit 0
"#
    )
}

fn write(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let data = match std::fs::read(&a.module) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                "package",
                HostError::io(format!("cannot read {}", a.module.display()), &e),
                a.json,
            )
        }
    };
    let info = match suture_host::modinfo::parse_module(&data) {
        Ok(i) => i,
        Err(e) => {
            return fail(
                "package",
                HostError::new(
                    ErrorKind::NotAModule,
                    format!("{} is not a kernel module: {e}", a.module.display()),
                ),
                a.json,
            )
        }
    };
    if !info.livepatch {
        return fail(
            "package",
            HostError::new(
                ErrorKind::NotLivepatch,
                format!("{} is not a livepatch module", a.module.display()),
            ),
            a.json,
        );
    }
    let Some(release) = info.release().map(str::to_string) else {
        return fail(
            "package",
            HostError::new(
                ErrorKind::ReleaseMismatch,
                format!(
                    "{} has no vermagic: cannot tell its release",
                    a.module.display()
                ),
            ),
            a.json,
        );
    };
    if !valid_version(&a.version) {
        anyhow::bail!("--pkg-version {:?} is not a Debian version (start with a digit; letters, digits, .+-~:)", a.version);
    }
    let arch = deb_arch(&data)
        .ok_or_else(|| anyhow::anyhow!("{}: unknown ELF machine", a.module.display()))?;
    let ctl = control(&info, &release, arch, &a);
    let deb = a.out_dir.join(format!(
        "{}_{}_{arch}.deb",
        ctl.package,
        a.version.replace(':', "%3a")
    ));

    let stage = tempdir(&a.out_dir)?;
    let root = stage.0.join("root");
    let ko_dir = format!("usr/lib/suture/patches/{release}");
    let ko_rel = format!("{ko_dir}/{}.ko", info.name);
    std::fs::create_dir_all(root.join(&ko_dir))?;
    std::fs::create_dir_all(root.join("DEBIAN"))?;
    std::fs::write(root.join(&ko_rel), &data)?;
    std::fs::set_permissions(root.join(&ko_rel), std::fs::Permissions::from_mode(0o644))?;
    write(&root.join("DEBIAN/control"), &ctl.text, 0o644)?;
    write(
        &root.join("DEBIAN/postinst"),
        &postinst(&format!("/{ko_rel}"), &release),
        0o755,
    )?;
    write(&root.join("DEBIAN/prerm"), &prerm(&info.name), 0o755)?;
    for d in walk_dirs(&root)? {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::create_dir_all(&a.out_dir)?;
    // gzip rather than dpkg's default xz: busybox's dpkg (the test guest's)
    // and old tools read it too, and a module compresses either way.
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run dpkg-deb ({e}): apt-get install dpkg"))?;
    if !out.status.success() {
        anyhow::bail!(
            "dpkg-deb --build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "package": { "name": ctl.package, "version": a.version, "architecture": arch, "release": release, "path": deb }
            }))?
        );
    } else {
        println!(
            "wrote {} ({} {} for {release})",
            deb.display(),
            ctl.package,
            a.version
        );
    }
    Ok(0)
}

fn walk_dirs(p: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = vec![p.to_path_buf()];
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            v.extend(walk_dirs(&e.path())?);
        }
    }
    Ok(v)
}

/// A staging directory beside the output, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(near: &Path) -> anyhow::Result<TempDir> {
    std::fs::create_dir_all(near)?;
    let p = near.join(format!(".suture-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir(&p)?;
    Ok(TempDir(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert_eq!(
            package_name("fix_cmdline", "6.1.0-56-amd64"),
            "suture-patch-fix-cmdline-6.1.0-56-amd64"
        );
        assert!(valid_version("1") && valid_version("2:1.0+b1~rc1"));
        assert!(!valid_version("v1") && !valid_version("") && !valid_version("1 2"));
    }

    #[test]
    fn scripts_branch_on_the_running_release() {
        let p = postinst("/usr/lib/suture/patches/R/x.ko", "R");
        assert!(
            p.contains("if [ \"$(uname -r)\" = \"R\" ]") && p.contains("suture install --no-load"),
            "{p}"
        );
        assert!(prerm("x").contains("suture uninstall --missing-ok x"));
    }
}
