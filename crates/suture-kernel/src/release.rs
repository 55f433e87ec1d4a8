//! A Debian kernel release (`6.1.0-56-amd64`) and the installed files that
//! describe it: image, config, headers, modules, and the version of the source
//! package that built it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The parts of a Debian release string. Pure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseName {
    pub release: String,
    /// `6.1`: names the source package (`linux-source-6.1`).
    pub series: String,
}

impl ReleaseName {
    pub fn parse(release: &str) -> Result<Self> {
        // Debian: UPSTREAM-ABI-FLAVOUR with UPSTREAM `6.1.0` (or `6.12.12+deb12`).
        let bad = || {
            anyhow::anyhow!(
                "{release:?} is not a Debian kernel release string (expected something like 6.1.0-56-amd64; `uname -r` on the target host prints it)"
            )
        };
        // The release names the cache directory and the host's state
        // directory: the one rule every stage applies.
        if suture_abi::check_release(release).is_err() {
            return Err(bad());
        }
        let (upstream, rest) = release.split_once('-').ok_or_else(bad)?;
        let mut nums = upstream.split(['.', '+']);
        let major = nums
            .next()
            .filter(|s| s.parse::<u32>().is_ok())
            .ok_or_else(bad)?;
        let minor = nums
            .next()
            .filter(|s| s.parse::<u32>().is_ok())
            .ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        Ok(ReleaseName {
            release: release.to_string(),
            series: format!("{major}.{minor}"),
        })
    }
}

/// Everything installed for one release, found on this machine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Release {
    pub name: ReleaseName,
    pub image: PathBuf,
    pub config: PathBuf,
    /// `/usr/src/linux-headers-RELEASE`: kbuild for external modules, `Module.symvers`.
    pub headers: PathBuf,
    pub modules: PathBuf,
    /// Version of the Debian `linux` source package this release was built from
    /// (the headers package's version), e.g. `6.1.192-2`.
    pub source_version: String,
    /// The compiler command the release was built with (`gcc-12`), from
    /// `CONFIG_CC_VERSION_TEXT`.
    pub cc: String,
    pub cc_version_text: String,
}

impl Release {
    pub fn source_package(&self) -> String {
        format!("linux-source-{}", self.name.series)
    }

    /// Finds the release's files under `root` (`/` on a real host).
    pub fn find(release: &str, root: &Path) -> Result<Release> {
        let name = ReleaseName::parse(release)?;
        let r = &name.release;
        let image = root.join(format!("boot/vmlinuz-{r}"));
        let config = root.join(format!("boot/config-{r}"));
        let headers = root.join(format!("usr/src/linux-headers-{r}"));
        let modules = root.join(format!("lib/modules/{r}"));
        if !image.exists() || !config.exists() {
            bail!(
                "kernel release {r} is not installed here ({} missing).\n\
                 Install it with: apt-get install linux-image-{r} linux-headers-{r}\n\
                 (`apt-cache search linux-image-` lists the releases Debian has)",
                if image.exists() {
                    config.display()
                } else {
                    image.display()
                }
            );
        }
        if !headers.join("Module.symvers").exists() {
            bail!(
                "the headers of {r} are not installed ({} missing).\n\
                 Install them with: apt-get install linux-headers-{r}",
                headers.join("Module.symvers").display()
            );
        }
        let source_version = package_version(&format!("linux-headers-{r}"))?;
        let cfg = std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?;
        let cc_version_text = config_value(&cfg, "CONFIG_CC_VERSION_TEXT")
            .ok_or_else(|| anyhow::anyhow!("{} has no CONFIG_CC_VERSION_TEXT", config.display()))?;
        let cc = cc_version_text
            .split_whitespace()
            .next()
            .unwrap_or("gcc")
            .to_string();
        // It is run by name and becomes a file name (the launcher wrapper).
        if cc.is_empty()
            || cc.starts_with(['-', '.'])
            || !cc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            bail!(
                "{}: CONFIG_CC_VERSION_TEXT names the compiler {cc:?}, which is not a program name",
                config.display()
            );
        }
        Ok(Release {
            name,
            image,
            config,
            headers,
            modules,
            source_version,
            cc,
            cc_version_text,
        })
    }
}

/// The unquoted value of `KEY=...` in a kernel `.config`.
pub fn config_value(config: &str, key: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim_matches('"').to_string())
    })
}

/// The installed version of a Debian package.
pub fn package_version(pkg: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .context("running dpkg-query (is this a Debian system?)")?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        bail!("package {pkg} is not installed: apt-get install {pkg}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_release_strings() {
        let r = ReleaseName::parse("6.1.0-56-amd64").unwrap();
        assert_eq!(r.series, "6.1");
        let r = ReleaseName::parse("6.12.12+deb12-amd64").unwrap();
        assert_eq!(r.series, "6.12");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "amd64",
            "6.1.0",
            "x.y-1",
            "6.1.0-56 amd64",
            "../../etc-1",
        ] {
            assert!(ReleaseName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_release_says_how_to_install() {
        let dir = std::env::temp_dir();
        let e = Release::find("6.1.0-999-amd64", &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not installed"), "{e}");
        assert!(
            e.contains("apt-get install linux-image-6.1.0-999-amd64"),
            "{e}"
        );
    }

    #[test]
    fn reads_config_values() {
        let c = "# x\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14) 12.2.0\"\nCONFIG_LIVEPATCH=y\n";
        assert_eq!(config_value(c, "CONFIG_LIVEPATCH").as_deref(), Some("y"));
        assert_eq!(
            config_value(c, "CONFIG_CC_VERSION_TEXT").as_deref(),
            Some("gcc-12 (Debian 12.2.0-14) 12.2.0")
        );
        assert_eq!(config_value(c, "CONFIG_LIVE"), None);
    }
}
