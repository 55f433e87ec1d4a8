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

/// A control-file value on one line: a newline in a module's description or
/// CVE list would start a field of the module's choosing.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
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
        depends.push(one_line(&a.suture_package));
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
        long.push(one_line(&format!("Fixes: {}.", m.cves.join(", "))));
    }
    if let Some(h) = &m.patch_sha256 {
        long.push(one_line(&format!("Source patch SHA-256: {h}.")));
    }
    if let Some(b) = &m.release_build_id {
        long.push(one_line(&format!("Kernel build-id: {b}.")));
    }
    let mut text = format!(
        "Package: {package}\nVersion: {}\nArchitecture: {arch}\nMaintainer: {}\nSection: kernel\nPriority: optional\n\
         Depends: {}\nDescription: {}\n",
        a.version,
        one_line(&a.maintainer),
        depends.join(", "),
        one_line(summary.lines().next().unwrap_or(""))
    );
    for l in long {
        text.push_str(&format!(" {l}\n"));
    }
    Control { package, text }
}

/// `s` as one word of POSIX shell: single quotes, each `'` as `'\''`. The
/// values are already held to the name and release rules; quoting means a
/// future field with a wider rule still cannot become code run as root.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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
release={release}
ko={ko}
case "$1" in
    configure|"")
        if [ "$(uname -r)" = "$release" ]; then
            suture install "$ko"
        else
            suture install --no-load "$ko"
            echo "suture: $release is not running; the patch will be loaded when it boots"
        fi
        ;;
esac
exit 0
"#,
        release = sh_quote(release),
        ko = sh_quote(ko),
    )
}

/// prerm: unload and forget the patch. On upgrade the new version's
/// postinst installs it again right after. Empty `$1`: busybox's dpkg.
pub fn prerm(name: &str) -> String {
    format!(
        r#"#!/bin/sh
set -e
name={name}
case "$1" in
    remove|upgrade|deconfigure|"")
        suture uninstall --missing-ok "$name"
        ;;
esac
exit 0
"#,
        name = sh_quote(name),
    )
}

/// A new file in the staging directory (created, never opened through a
/// link: the directory is fresh and private).
fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    // The mode given to open() is masked by the umask.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
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
                suture_host::modinfo_refusal(&a.module, &e),
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

    std::fs::create_dir_all(&a.out_dir)?;
    // A fresh, randomly named staging directory beside the output (removed
    // on drop): dpkg-deb writes the package in it, and only a complete
    // package is renamed into place.
    let stage = tempfile::Builder::new()
        .prefix(".suture-package.")
        .tempdir_in(&a.out_dir)?;
    let root = stage.path().join("root");
    let ko_dir = format!("usr/lib/suture/patches/{release}");
    let ko_rel = format!("{ko_dir}/{}.ko", info.name);
    std::fs::create_dir_all(root.join(&ko_dir))?;
    std::fs::create_dir_all(root.join("DEBIAN"))?;
    write(&root.join(&ko_rel), &data, 0o644)?;
    write(&root.join("DEBIAN/control"), ctl.text.as_bytes(), 0o644)?;
    write(
        &root.join("DEBIAN/postinst"),
        postinst(&format!("/{ko_rel}"), &release).as_bytes(),
        0o755,
    )?;
    write(
        &root.join("DEBIAN/prerm"),
        prerm(&info.name).as_bytes(),
        0o755,
    )?;
    for d in walk_dirs(&root)? {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let built = stage.path().join("package.deb");
    // gzip rather than dpkg's default xz: busybox's dpkg (the test guest's)
    // and old tools read it too, and a module compresses either way.
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&built)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run dpkg-deb ({e}): apt-get install dpkg"))?;
    if !out.status.success() {
        anyhow::bail!(
            "dpkg-deb --build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::set_permissions(&built, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&built, &deb)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", deb.display()))?;
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
            p.contains("release='R'")
                && p.contains("if [ \"$(uname -r)\" = \"$release\" ]")
                && p.contains("suture install --no-load \"$ko\""),
            "{p}"
        );
        assert!(
            prerm("x").contains("name='x'")
                && prerm("x").contains("suture uninstall --missing-ok \"$name\"")
        );
    }

    /// Runs a script's assignments with sh and prints the variables back.
    fn sh_values(script: &str, vars: &[&str]) -> Vec<String> {
        let assigns: String = script
            .lines()
            .filter(|l| vars.iter().any(|v| l.starts_with(&format!("{v}="))))
            .map(|l| format!("{l}\n"))
            .collect();
        let print: String = vars
            .iter()
            .map(|v| format!("printf '%s\\n' \"${v}\"\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{assigns}{print}"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the script ran a command"
        );
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn script_values_are_single_shell_words() {
        // Names are validated before they get here; quoting holds even so.
        for hostile in [
            "$(id>PWNED)",
            "a'b",
            "`touch PWNED`",
            "x; touch PWNED",
            "\"$(touch PWNED)\"",
        ] {
            assert_eq!(sh_values(&prerm(hostile), &["name"]), [hostile]);
            assert_eq!(
                sh_values(&postinst(hostile, hostile), &["release", "ko"]),
                [hostile, hostile]
            );
        }
    }

    #[test]
    fn control_values_cannot_add_fields() {
        let meta = suture_host::modinfo::SutureMeta {
            description: Some("fix\nPre-Depends: evil".into()),
            cves: vec!["CVE-2024-1\nEssential: yes".into()],
            ..Default::default()
        };
        let info = suture_host::ModuleInfo {
            name: "fix".into(),
            vermagic: Some("6.1.0-56-amd64 SMP".into()),
            livepatch: true,
            license: None,
            srcversion: None,
            depends: vec![],
            suture: meta,
        };
        let a = Args {
            module: "fix.ko".into(),
            out_dir: ".".into(),
            version: "1".into(),
            maintainer: "me\nEssential: yes".into(),
            suture_package: "suture".into(),
            json: false,
        };
        let c = control(&info, "6.1.0-56-amd64", "amd64", &a);
        for line in c.text.lines() {
            assert!(
                line.starts_with(' ')
                    || !line.starts_with("Essential") && !line.starts_with("Pre-Depends"),
                "{}",
                c.text
            );
        }
    }
}
