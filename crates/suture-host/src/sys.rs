//! The only place that talks to the kernel through syscalls. Everything else
//! in this crate reads and writes files under a configurable root, so it can
//! be exercised against a temporary directory tree with a fake [`Kernel`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The syscalls `load`/`unload` need. A trait so the orchestration can be
/// tested without loading anything into a real kernel.
pub trait Kernel: Send + Sync {
    /// `uname -r`.
    fn release(&self) -> io::Result<String>;
    /// Loads the module from an open file with the given parameter string.
    fn finit_module(&self, file: &File, params: &str) -> io::Result<()>;
    /// Removes a module without waiting for its references to drop
    /// (`O_NONBLOCK`): a busy module is reported, never waited on in-kernel.
    fn delete_module(&self, name: &str) -> io::Result<()>;
    /// Marks the current end of the kernel log, so that the messages a
    /// failed load produced can be read back with [`Kernel::log_since`].
    fn log_mark(&self) -> LogMark;
    /// Kernel log messages logged after `mark` (best effort, at most the
    /// last 20): the kernel's own explanation of an errno.
    fn log_since(&self, mark: LogMark) -> Vec<String>;
}

/// A position in the kernel log: an open `/dev/kmsg` seeked to its end on
/// a real host, an index for fakes.
#[derive(Debug)]
pub struct LogMark {
    pub kmsg: Option<File>,
    pub index: usize,
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct SysKernel;

impl Kernel for SysKernel {
    fn release(&self) -> io::Result<String> {
        // SAFETY: utsname is plain C arrays of chars: all zeroes is a valid value.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname writes only into the struct it is given, which lives here.
        if unsafe { libc::uname(&mut u) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: Vec<u8> = u
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn finit_module(&self, file: &File, params: &str) -> io::Result<()> {
        let params = std::ffi::CString::new(params)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a descriptor open for this call and a NUL-terminated string
        // that outlives it; the kernel only reads both.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated name that outlives the call; the kernel only reads it.
        let r = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn log_mark(&self) -> LogMark {
        use std::os::unix::fs::OpenOptionsExt;
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            // SAFETY: lseek on a descriptor this File owns; no memory is passed.
            .filter(|f| unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) } >= 0);
        LogMark { kmsg, index: 0 }
    }

    fn log_since(&self, mark: LogMark) -> Vec<String> {
        mark.kmsg
            .map(|f| read_kmsg(f).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Reads `/dev/kmsg` records from the file's position to the end (one
/// record per read; `EAGAIN` marks the end in non-blocking mode).
fn read_kmsg(mut f: File) -> io::Result<Vec<String>> {
    use std::io::Read;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // "prio,seq,usec,flags;message\n continuation lines"
                let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
                let first = msg.lines().next().unwrap_or("").trim_end();
                if !first.is_empty() {
                    lines.push(first.to_string());
                }
            }
            // EPIPE: the record we were at was overwritten; keep reading.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let keep = lines.len().saturating_sub(20);
    Ok(lines.split_off(keep))
}

/// `kexec_file_load` on the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct SysKexec;

impl crate::kexec::KexecSys for SysKexec {
    fn euid(&self) -> u32 {
        // SAFETY: geteuid takes nothing and cannot fail.
        unsafe { libc::geteuid() }
    }

    fn file_load(
        &self,
        kernel: &File,
        initrd: &File,
        cmdline: &std::ffi::CString,
    ) -> io::Result<()> {
        let len = cmdline.as_bytes_with_nul().len() as libc::c_ulong;
        // SAFETY: two descriptors open for this call and a command line of
        // `len` bytes, NUL included, that outlives it; the kernel only reads.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                kernel.as_raw_fd(),
                initrd.as_raw_fd(),
                len,
                cmdline.as_ptr(),
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn file_unload(&self) -> io::Result<()> {
        // SAFETY: KEXEC_FILE_UNLOAD reads no descriptor and no command line.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                -1 as libc::c_int,
                -1 as libc::c_int,
                0 as libc::c_ulong,
                std::ptr::null::<libc::c_char>(),
                libc::KEXEC_FILE_UNLOAD as libc::c_ulong,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn log_mark(&self) -> LogMark {
        SysKernel.log_mark()
    }

    fn log_since(&self, mark: LogMark) -> Vec<String> {
        SysKernel.log_since(mark)
    }
}
