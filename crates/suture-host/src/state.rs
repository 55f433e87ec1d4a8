//! Installed patches and the crash-loop guard, kept under a state directory
//! (`/var/lib/suture` on a host, a temporary directory in tests):
//!
//! ```text
//! STATE/RELEASE/NAME.ko        the patch, loaded at boot on RELEASE
//! STATE/RELEASE/NAME.json      when and in which order it was installed
//! STATE/RELEASE/NAME.pending   loaded in boot B at uptime U, not yet proven
//! STATE/RELEASE/NAME.skipped   set aside by the crash-loop guard, and why
//! ```
//!
//! A patch is *pending* from the moment it is loaded until it has stayed
//! loaded for a while in the same boot (`suture confirm`, run by a timer) or
//! the system shuts down cleanly (`suture confirm --clean-shutdown`, the boot
//! unit's `ExecStop`). A pending marker from another boot therefore means
//! that boot ended abruptly with the patch freshly loaded: the next boot
//! skips the patch instead of loading it into a crash loop.

use crate::{sysfs, ErrorKind, Host, HostError, LoadOptions, UnloadOptions};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where installed patches live.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl Default for StateDir {
    fn default() -> Self {
        StateDir(PathBuf::from("/var/lib/suture"))
    }
}

/// `NAME.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// Load order at boot: patches are loaded oldest first, so a later
    /// atomic-replace patch ends up the one in effect.
    pub seq: u64,
    /// Seconds since the epoch.
    pub installed_at: u64,
    /// Where it was installed from.
    pub source: String,
    /// sha256 of the stored file: loading it refuses a file changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `NAME.pending`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub boot_id: String,
    /// `/proc/uptime` when the patch was loaded: the wall clock can jump at
    /// boot, uptime cannot.
    pub uptime_at_load: f64,
}

/// `NAME.skipped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub reason: String,
    /// The boot that skipped it.
    pub boot_id: String,
    /// The boot that loaded it and ended abruptly.
    pub crashed_boot_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    pub name: String,
    pub release: String,
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<InstallRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
    /// Build-time metadata from the file's `.modinfo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<crate::modinfo::SutureMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srcversion: Option<String>,
    /// The signer its signature names (not verified here: `suture load`
    /// and `suture verify` check it against the trust store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The file no longer hashes to what the install recorded.
    pub changed_since_install: bool,
    /// State files of this patch that exist but cannot be read or parsed,
    /// or that must exist and do not, each with why. Any entry keeps the
    /// patch from loading at boot: what cannot be read cannot be checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// What the boot-time load will do with it, as `suture list` shows it.
    pub guard: Guard,
}

/// The crash-loop guard's and the integrity checks' verdict on an installed
/// patch, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// A state file is damaged or missing: not loaded at boot.
    Unreadable,
    /// The module no longer hashes to what was installed: refused at load.
    Changed,
    /// Set aside by the crash-loop guard.
    Skipped,
    /// Loaded, not yet proven by `suture confirm`.
    Pending,
    Ok,
}

impl Guard {
    pub fn label(self) -> &'static str {
        match self {
            Guard::Unreadable => "UNREADABLE",
            Guard::Changed => "CHANGED",
            Guard::Skipped => "SKIPPED",
            Guard::Pending => "pending",
            Guard::Ok => "ok",
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a state file suture wrote: `Ok(None)` only when it does not
/// exist. A symlink (suture never makes one here), a directory, a read
/// error or a parse error is an error that names the file: fail closed.
fn read_state(p: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("{shown} is a symlink, which suture never writes"))
        }
        Err(e) => return Err(format!("{shown} cannot be read: {e}")),
    };
    match f.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{shown} is not a regular file")),
        Err(e) => return Err(format!("{shown} cannot be read: {e}")),
    }
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| format!("{shown} cannot be read: {e}"))?;
    Ok(Some(data))
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Option<T>, String> {
    let Some(data) = read_state(p)? else {
        return Ok(None);
    };
    let shown = p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| format!("{shown} is damaged ({e})"))
}

/// The entries of a state directory: none when it does not exist, an
/// error when it exists and cannot be listed (not a directory, no access).
fn list_dir(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
}

/// Writes through a temporary file in the same directory and renames it,
/// so a crash leaves either the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A random name created with O_EXCL (never a planted file or symlink),
    // removed unless the rename happens.
    let mut tmp = tempfile::Builder::new()
        .prefix(".suture-state.")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename itself must reach the disk before a crash matters.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StateDir {
    pub fn release_dir(&self, release: &str) -> PathBuf {
        self.0.join(release)
    }
    fn file(&self, release: &str, name: &str, ext: &str) -> PathBuf {
        self.release_dir(release).join(format!("{name}.{ext}"))
    }

    /// Every writer and remover checks the two names that make its path,
    /// whoever called it: a module's fields and a command line's name are
    /// both untrusted.
    fn check_names(release: &str, name: &str) -> io::Result<()> {
        suture_abi::check_release(release)
            .and_then(|()| suture_abi::check_module_name(name))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Releases that have a directory here, sorted. An entry that is not a
    /// directory is an error: it is where a release's patches should be.
    pub fn releases(&self) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in list_dir(&self.0)? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // write_atomic's temporaries.
                continue;
            }
            if !e.file_type()?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a directory", e.path().display()),
                ));
            }
            v.push(name);
        }
        v.sort();
        Ok(v)
    }

    /// The patches installed for `release`, in load order (damaged ones
    /// included, marked [`Guard::Unreadable`]).
    pub fn installed(&self, release: &str) -> io::Result<Vec<Installed>> {
        let dir = self.release_dir(release);
        let mut v = Vec::new();
        for e in list_dir(&dir)? {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = f.strip_suffix(".ko") {
                v.push(self.read_installed(release, name));
            }
        }
        v.sort_by_key(|i| {
            (
                i.record.as_ref().map_or(u64::MAX, |r| r.seq),
                i.name.clone(),
            )
        });
        Ok(v)
    }

    fn read_installed(&self, release: &str, name: &str) -> Installed {
        let path = self.file(release, name, "ko");
        let mut unreadable = Vec::new();
        fn note<T>(r: Result<Option<T>, String>, unreadable: &mut Vec<String>) -> Option<T> {
            r.unwrap_or_else(|e| {
                unreadable.push(e);
                None
            })
        }
        let data = note(read_state(&path), &mut unreadable);
        let record: Option<InstallRecord> = note(
            read_json(&self.file(release, name, "json")),
            &mut unreadable,
        );
        let pending: Option<Pending> = note(
            read_json(&self.file(release, name, "pending")),
            &mut unreadable,
        );
        let skipped: Option<Skipped> = note(
            read_json(&self.file(release, name, "skipped")),
            &mut unreadable,
        );
        let info = data
            .as_ref()
            .and_then(|d| match crate::modinfo::parse_module(d) {
                Ok(i) => Some(i),
                Err(e) => {
                    unreadable.push(format!("{name}.ko: {e}"));
                    None
                }
            });
        let recorded = record.as_ref().and_then(|r| r.sha256.as_deref());
        if record.is_none()
            && !unreadable
                .iter()
                .any(|u| u.starts_with(&format!("{name}.json")))
        {
            // Every install writes it: without it the install-time hash
            // cannot be checked.
            unreadable.push(format!("{name}.json is missing"));
        }
        let changed_since_install = match (recorded, &data) {
            (Some(want), Some(d)) => sha256_hex(d) != want,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let guard = if !unreadable.is_empty() {
            Guard::Unreadable
        } else if changed_since_install {
            Guard::Changed
        } else if skipped.is_some() {
            Guard::Skipped
        } else if pending.is_some() {
            Guard::Pending
        } else {
            Guard::Ok
        };
        Installed {
            name: name.to_string(),
            release: release.to_string(),
            changed_since_install,
            signer: data.as_ref().and_then(|d| {
                crate::modsig::check(d, &crate::modsig::TrustStore::default())
                    .ok()
                    .flatten()
                    .map(|s| s.signer)
            }),
            record,
            pending,
            skipped,
            srcversion: info.as_ref().and_then(|i| i.srcversion.clone()),
            meta: info.map(|i| i.suture),
            path,
            unreadable,
            guard,
        }
    }

    /// The install record of `path` when it is a patch stored here
    /// (`STATE/RELEASE/NAME.ko`), so that loading it by path checks its hash.
    /// An error when it is stored here and its record cannot be read: the
    /// hash check must not silently drop out.
    pub fn record_of(&self, path: &Path) -> Result<Option<InstallRecord>, String> {
        let stored = || -> Option<(String, String)> {
            let path = path.canonicalize().ok()?;
            let root = self.0.canonicalize().ok()?;
            let rel = path.strip_prefix(&root).ok()?;
            let mut parts = rel.iter();
            let (release, file) = (parts.next()?.to_str()?, parts.next()?.to_str()?);
            if parts.next().is_some() {
                return None;
            }
            Some((release.to_string(), file.strip_suffix(".ko")?.to_string()))
        };
        let Some((release, name)) = stored() else {
            return Ok(None);
        };
        match read_json(&self.file(&release, &name, "json"))? {
            Some(r) => Ok(Some(r)),
            None => Err(format!("{name}.json is missing")),
        }
    }

    pub fn get(&self, release: &str, name: &str) -> Option<Installed> {
        self.file(release, name, "ko")
            .is_file()
            .then(|| self.read_installed(release, name))
    }

    /// Copies the module in and records its place in the load order. A
    /// reinstall keeps nothing of the previous one (a skip included).
    pub fn store(&self, release: &str, name: &str, src: &Path) -> io::Result<Installed> {
        self.store_data(release, name, src, &std::fs::read(src)?)
    }

    /// [`StateDir::store`] of bytes already read (and checked) from `src`.
    pub fn store_data(
        &self,
        release: &str,
        name: &str,
        src: &Path,
        data: &[u8],
    ) -> io::Result<Installed> {
        Self::check_names(release, name)?;
        let dir = self.release_dir(release);
        std::fs::create_dir_all(&dir)?;
        let seq = self
            .installed(release)?
            .iter()
            .filter(|i| i.name != name)
            .filter_map(|i| i.record.as_ref().map(|r| r.seq))
            .max()
            .map_or(1, |m| m + 1);
        write_atomic(&self.file(release, name, "ko"), data)?;
        let rec = InstallRecord {
            seq,
            installed_at: now_secs(),
            source: src.display().to_string(),
            sha256: Some(sha256_hex(data)),
        };
        write_atomic(
            &self.file(release, name, "json"),
            &serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?,
        )?;
        let _ = std::fs::remove_file(self.file(release, name, "skipped"));
        let _ = std::fs::remove_file(self.file(release, name, "pending"));
        Ok(self.read_installed(release, name))
    }

    /// Removes every file of an installed patch; `false` if there was none.
    pub fn remove(&self, release: &str, name: &str) -> io::Result<bool> {
        Self::check_names(release, name)?;
        let mut any = false;
        for ext in ["ko", "json", "pending", "skipped"] {
            match std::fs::remove_file(self.file(release, name, ext)) {
                Ok(()) => any = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(any)
    }

    pub fn mark_pending(&self, release: &str, name: &str, p: &Pending) -> io::Result<()> {
        Self::check_names(release, name)?;
        write_atomic(
            &self.file(release, name, "pending"),
            &serde_json::to_vec_pretty(p).map_err(io::Error::other)?,
        )
    }

    pub fn clear_pending(&self, release: &str, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.file(release, name, "pending")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn mark_skipped(&self, release: &str, name: &str, s: &Skipped) -> io::Result<()> {
        Self::check_names(release, name)?;
        write_atomic(
            &self.file(release, name, "skipped"),
            &serde_json::to_vec_pretty(s).map_err(io::Error::other)?,
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub name: String,
    pub release: String,
    pub path: PathBuf,
    /// `None` when the same module was already loaded and was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<crate::LoadReport>,
    /// The systemd units written or enabled for boot-time loading.
    pub units: UnitsReport,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UnitsReport {
    pub written: Vec<PathBuf>,
    pub enabled: Vec<PathBuf>,
    /// `suture.service` was started (systemd runs).
    pub started: bool,
    /// Why boot-time loading is not set up, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// What `load --all` did with each installed patch of the running release.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootReport {
    pub release: String,
    pub boot_id: Option<String>,
    pub loaded: Vec<String>,
    /// Already loaded before this run (the unit restarted, or `install`).
    pub already_loaded: Vec<String>,
    /// Set aside by the crash-loop guard, now or in an earlier boot.
    pub skipped: Vec<SkipEntry>,
    pub failed: Vec<FailEntry>,
    /// Installed for other releases: left alone.
    pub other_releases: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkipEntry {
    pub name: String,
    pub reason: String,
    /// True when this run made the decision; false for an earlier skip.
    pub new: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailEntry {
    pub name: String,
    pub error: HostError,
}

/// Where systemd unit files are read from and written to.
#[derive(Debug, Clone)]
pub struct UnitDirs {
    /// Administrator units, where suture writes its own when no package
    /// shipped them: `/etc/systemd/system`.
    pub etc: PathBuf,
    /// Package units, only read: `/lib/systemd/system`, `/usr/lib/systemd/system`.
    pub lib: Vec<PathBuf>,
    /// Present while systemd runs: `/run/systemd/system`.
    pub running_marker: PathBuf,
}

impl Default for UnitDirs {
    fn default() -> Self {
        UnitDirs {
            etc: "/etc/systemd/system".into(),
            lib: vec![
                "/lib/systemd/system".into(),
                "/usr/lib/systemd/system".into(),
            ],
            running_marker: "/run/systemd/system".into(),
        }
    }
}

/// The units shipped in the repository's `systemd/` directory, with the
/// `[Install]` target each is enabled under.
pub const UNITS: &[(&str, &str, Option<&str>)] = &[
    (
        "suture.service",
        include_str!("../../../systemd/suture.service"),
        Some("sysinit.target"),
    ),
    (
        "suture-confirm.service",
        include_str!("../../../systemd/suture-confirm.service"),
        None,
    ),
    (
        "suture-confirm.timer",
        include_str!("../../../systemd/suture-confirm.timer"),
        Some("timers.target"),
    ),
];

/// Makes sure the boot units exist and are enabled: a unit a package
/// shipped is used as is; otherwise suture writes its own copy to
/// `dirs.etc`, pointing `ExecStart` at `exe`. Enabling is the symlink
/// `systemctl enable` would make, so it also works in a chroot or image.
pub fn enable_units(dirs: &UnitDirs, exe: &Path) -> io::Result<UnitsReport> {
    let mut rep = UnitsReport::default();
    for (unit, text, wanted_by) in UNITS {
        let shipped = dirs.lib.iter().map(|d| d.join(unit)).find(|p| p.is_file());
        let path = match shipped {
            Some(p) => p,
            None => {
                let p = dirs.etc.join(unit);
                let text = text.replace("/usr/bin/suture", &exe.display().to_string());
                if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                    std::fs::create_dir_all(&dirs.etc)?;
                    write_atomic(&p, text.as_bytes())?;
                    rep.written.push(p.clone());
                }
                p
            }
        };
        if let Some(target) = wanted_by {
            let wants = dirs.etc.join(format!("{target}.wants"));
            let link = wants.join(unit);
            if std::fs::read_link(&link).ok().as_deref() != Some(path.as_path()) {
                std::fs::create_dir_all(&wants)?;
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&path, &link)?;
                rep.enabled.push(link);
            }
        }
    }
    if dirs.running_marker.is_dir() {
        if !rep.written.is_empty() {
            let _ = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status();
        }
        // Started now, not only at the next boot: the unit's stop action is
        // what confirms a freshly installed patch on an orderly shutdown;
        // without it a reboot soon after an install would look like a
        // crash. Starting runs `load --all`, which finds the patch loaded.
        match std::process::Command::new("systemctl")
            .args(["start", "suture.service", "suture-confirm.timer"])
            .output()
        {
            Ok(o) if o.status.success() => rep.started = true,
            Ok(o) => {
                rep.warning = Some(format!(
                    "systemctl start suture.service failed: {}; an orderly reboot before the patch is confirmed \
                     (see suture-confirm.timer) would make the next boot skip it",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => rep.warning = Some(format!("cannot run systemctl: {e}")),
        }
    }
    Ok(rep)
}

impl Host {
    fn release(&self) -> Result<String, HostError> {
        self.kernel
            .release()
            .map_err(|e| HostError::io("uname".into(), &e))
    }

    fn pending_now(&self) -> Pending {
        Pending {
            boot_id: sysfs::boot_id(&self.root).unwrap_or_default(),
            uptime_at_load: sysfs::uptime(&self.root).unwrap_or(0.0),
        }
    }

    /// Checks the module, stores it for its release, loads it (unless the
    /// same build is loaded already), and marks it pending. A module that
    /// fails to load is not kept: it would fail again at every boot.
    pub fn install(
        &self,
        state: &StateDir,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<(Installed, Option<crate::LoadReport>), HostError> {
        let data = std::fs::read(path)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        let checked = self.check_data(path, &data)?;
        let name = checked.info.name.clone();
        let release = checked.release.clone();
        // Kept to put back if the new build fails to load.
        let previous = ["ko", "json"].map(|ext| {
            let f = state.file(&release, &name, ext);
            std::fs::read(&f).ok().map(|d| (f, d))
        });
        let loaded = sysfs::module_state(&self.root, &name);
        if loaded.loaded
            && loaded.srcversion.is_some()
            && loaded.srcversion != checked.info.srcversion
        {
            return Err(HostError::new(
                ErrorKind::AlreadyLoaded,
                format!(
                    "another build of {name} is loaded (srcversion {} here, {} in {})",
                    loaded.srcversion.as_deref().unwrap_or("?"),
                    checked.info.srcversion.as_deref().unwrap_or("?"),
                    path.display()
                ),
            )
            .hint(format!(
                "`suture unload {name}` first, or build the new patch under another --name"
            )));
        }
        let installed = store(state, &release, &name, path, &data)?;
        if loaded.loaded {
            return Ok((installed, None));
        }
        let pending = self.pending_now();
        let _ = state.mark_pending(&release, &name, &pending);
        let opts = LoadOptions {
            installed_sha256: installed.record.as_ref().and_then(|r| r.sha256.clone()),
            ..opts.clone()
        };
        match self.load(&installed.path, &opts) {
            Ok(r) => Ok((state.get(&release, &name).unwrap_or(installed), Some(r))),
            Err(e) => {
                let _ = state.remove(&release, &name);
                for (f, d) in previous.into_iter().flatten() {
                    let _ = write_atomic(&f, &d);
                }
                Err(e)
            }
        }
    }

    /// Stores a patch for the release it was built for without loading it:
    /// for a kernel installed but not running yet (a package installed
    /// before the reboot into its kernel). Only the signature and the
    /// livepatch tag are checked; release and build are checked when it
    /// loads at boot.
    pub fn install_for_boot(&self, state: &StateDir, path: &Path) -> Result<Installed, HostError> {
        let data = std::fs::read(path)
            .map_err(|e| HostError::io(format!("cannot read {}", path.display()), &e))?;
        self.check_signature(path, &data)?;
        let info =
            crate::modinfo::parse_module(&data).map_err(|e| crate::modinfo_refusal(path, &e))?;
        if !info.livepatch {
            return Err(HostError::new(
                ErrorKind::NotLivepatch,
                format!(
                    "refusing to install {}: module {:?} is not a livepatch module",
                    path.display(),
                    info.name
                ),
            ));
        }
        let release = info.release().map(str::to_string).ok_or_else(|| {
            HostError::new(
                ErrorKind::ReleaseMismatch,
                format!(
                    "{} has no vermagic: cannot tell its kernel release",
                    path.display()
                ),
            )
        })?;
        store(state, &release, &info.name, path, &data)
    }

    /// Unloads the patch if it is loaded, then removes its files. On an
    /// unload failure the files stay, so the state still says what runs.
    pub fn uninstall(
        &self,
        state: &StateDir,
        name: &str,
        opts: &UnloadOptions,
    ) -> Result<(bool, Option<crate::UnloadReport>), HostError> {
        let name = name.replace('-', "_");
        suture_abi::check_module_name(&name).map_err(|e| {
            HostError::new(ErrorKind::BadInput, e.to_string())
                .hint("see `suture list` for the names of installed patches")
        })?;
        let release = self.release()?;
        let installed = state.get(&release, &name).is_some();
        let loaded = self.root.patch_dir(&name).is_dir() || self.root.module_dir(&name).is_dir();
        if !installed && !loaded {
            let elsewhere: Vec<String> = state
                .releases()
                .map_err(|e| state_unreadable(state, &e))?
                .into_iter()
                .filter(|r| state.get(r, &name).is_some())
                .collect();
            if !elsewhere.is_empty() {
                // Uninstalling a patch for a kernel that is not running is
                // only file removal: nothing to unload.
                for r in &elsewhere {
                    state
                        .remove(r, &name)
                        .map_err(|e| HostError::io(format!("removing {name} for {r}"), &e))?;
                }
                return Ok((true, None));
            }
            return Err(HostError::new(
                ErrorKind::NotLoaded,
                format!("no patch named {name:?} is installed or loaded"),
            )
            .hint("see `suture list`"));
        }
        let report = if loaded {
            Some(self.unload(&name, opts)?)
        } else {
            None
        };
        state.remove(&release, &name).map_err(|e| {
            HostError::io(
                format!(
                    "removing {name} from {}",
                    state.release_dir(&release).display()
                ),
                &e,
            )
        })?;
        Ok((installed, report))
    }

    /// The boot-time load: every installed patch of the running release in
    /// install order, except those the crash-loop guard sets aside.
    pub fn load_all(&self, state: &StateDir, opts: &LoadOptions) -> Result<BootReport, HostError> {
        let release = self.release()?;
        let boot = sysfs::boot_id(&self.root);
        let mut rep = BootReport {
            release: release.clone(),
            boot_id: boot.clone(),
            other_releases: state
                .releases()
                .map_err(|e| state_unreadable(state, &e))?
                .into_iter()
                .filter(|r| *r != release)
                .collect(),
            ..Default::default()
        };
        let installed = state
            .installed(&release)
            .map_err(|e| state_unreadable(state, &e))?;
        for inst in installed {
            let name = inst.name.clone();
            if inst.guard == Guard::Unreadable {
                // Whatever the damaged file said (a hash, a crash-loop
                // decision, a crash) cannot be honoured: not loaded.
                rep.failed.push(FailEntry {
                    error: HostError::new(
                        ErrorKind::StateUnreadable,
                        format!("not loaded: its state is unreadable: {}", inst.unreadable.join("; ")),
                    )
                    .hint(format!(
                        "reinstall it (`suture install FILE.ko`) or remove it (`suture uninstall {name}`); the files are in {}",
                        state.release_dir(&release).display()
                    )),
                    name,
                });
                continue;
            }
            if let Some(s) = &inst.skipped {
                rep.skipped.push(SkipEntry {
                    name,
                    reason: s.reason.clone(),
                    new: false,
                });
                continue;
            }
            if let (Some(p), Some(b)) = (&inst.pending, &boot) {
                if &p.boot_id != b {
                    let reason = format!(
                        "loaded during boot {} (at {:.0} s uptime), which ended without a clean shutdown before the \
                         patch was confirmed: suspected of crashing or hanging the system",
                        p.boot_id, p.uptime_at_load
                    );
                    let _ = state.mark_skipped(
                        &release,
                        &name,
                        &Skipped {
                            reason: reason.clone(),
                            boot_id: b.clone(),
                            crashed_boot_id: p.boot_id.clone(),
                        },
                    );
                    let _ = state.clear_pending(&release, &name);
                    rep.skipped.push(SkipEntry {
                        name,
                        reason,
                        new: true,
                    });
                    continue;
                }
            }
            if self.root.module_dir(&name).is_dir() {
                rep.already_loaded.push(name);
                continue;
            }
            // The marker must be on disk before the kernel runs the patch:
            // a crash during the load is exactly what it records.
            let _ = state.mark_pending(&release, &name, &self.pending_now());
            let opts = LoadOptions {
                installed_sha256: inst.record.as_ref().and_then(|r| r.sha256.clone()),
                ..opts.clone()
            };
            match self.load(&inst.path, &opts) {
                Ok(_) => rep.loaded.push(name),
                Err(error) => {
                    let _ = state.clear_pending(&release, &name);
                    rep.failed.push(FailEntry { name, error });
                }
            }
        }
        Ok(rep)
    }

    /// Clears pending markers of this boot: those loaded for at least
    /// `min_loaded`, or all of them on a clean shutdown. Returns the names
    /// confirmed. Markers of other boots are left for `load_all` to judge.
    pub fn confirm(
        &self,
        state: &StateDir,
        min_loaded: Duration,
        clean_shutdown: bool,
    ) -> Result<Vec<String>, HostError> {
        let release = self.release()?;
        let boot = sysfs::boot_id(&self.root);
        let up = sysfs::uptime(&self.root).unwrap_or(0.0);
        let mut done = Vec::new();
        let installed = state
            .installed(&release)
            .map_err(|e| state_unreadable(state, &e))?;
        for inst in installed {
            let Some(p) = &inst.pending else { continue };
            if boot.as_deref() != Some(p.boot_id.as_str()) {
                continue;
            }
            if clean_shutdown || up - p.uptime_at_load >= min_loaded.as_secs_f64() {
                state
                    .clear_pending(&release, &inst.name)
                    .map_err(|e| HostError::io(format!("confirming {}", inst.name), &e))?;
                done.push(inst.name);
            }
        }
        Ok(done)
    }
}

/// A state directory that exists and cannot be listed.
pub fn state_unreadable(state: &StateDir, e: &io::Error) -> HostError {
    HostError::new(
        ErrorKind::StateUnreadable,
        format!("the state directory {} cannot be read: {e}", state.0.display()),
    )
    .hint("it holds STATE/RELEASE/NAME.{ko,json}: repair or remove what is not a directory there, then reinstall the patches")
}

/// Stores the bytes suture checked (not the file again) under the release.
fn store(
    state: &StateDir,
    release: &str,
    name: &str,
    path: &Path,
    data: &[u8],
) -> Result<Installed, HostError> {
    state.store_data(release, name, path, data).map_err(|e| {
        HostError::io(
            format!(
                "storing {} in {}",
                path.display(),
                state.release_dir(release).display()
            ),
            &e,
        )
    })
}
