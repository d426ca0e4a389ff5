//! Filesystem tools: probe, mkfs, fsck, grow, statfs, freeze. The tools run
//! through `tools::run` (argv, captured output, C locale).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::filesystem::{FsType, Fsck, Grow};
use crate::kernel::tools;
use crate::types::Usage;

mod sys {
    // include/uapi/linux/fs.h: FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int),
    // FITRIM _IOWR('X', 121, struct fstrim_range).
    nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
    nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);
    nix::ioctl_readwrite!(fitrim, b'X', 121, FstrimRange);

    #[repr(C)]
    pub struct FstrimRange {
        pub start: u64,
        pub len: u64,
        pub minlen: u64,
    }
}

/// FITRIM on the filesystem mounted at `mount_point`: it discards every free
/// block, which a loop device turns into holes in its image, so the space
/// comes back to the pool. Returns the bytes the filesystem says it trimmed
/// (an upper bound: blocks still shared with a reflinked snapshot, or never
/// allocated, free nothing). Idempotent.
///
/// Errors: `Error::Io` opening the directory; `Error::Sys` from FITRIM
/// (EOPNOTSUPP: the device takes no discards; EROFS: mounted read-only).
pub fn trim(mount_point: &Path) -> Result<u64> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(mount_point)
        .map_err(|e| Error::io("open mount point", mount_point, e))?;
    let mut range = sys::FstrimRange { start: 0, len: u64::MAX, minlen: 0 };
    // SAFETY: `dir` is an open directory on the filesystem; the kernel reads
    // and updates the fstrim_range, a #[repr(C)] struct that outlives the call.
    unsafe { sys::fitrim(dir.as_raw_fd(), &mut range) }.map_err(|errno| Error::sys("FITRIM", mount_point, errno))?;
    Ok(range.len)
}

/// What `blkid -p` (low-level probe, no cache) finds on the device:
/// Some("ext4"), Some("dos") for a partition table, ..., None for blank.
///
/// The cache is bypassed on purpose: blkid's cache is keyed by device name,
/// and a reused /dev/loopN would be reported with its previous image's
/// filesystem. Read-only.
///
/// Errors: blkid fails other than with exit 2 ("nothing found"), e.g. 8 for
/// an ambivalent result (several signatures): `Error::Tool`. Never format
/// on an error.
pub fn probe(device: &Path) -> Result<Option<String>> {
    let out = tools::run_any("blkid", &[OsStr::new("-p"), OsStr::new("-o"), OsStr::new("export"), device.as_os_str()])?;
    match out.status.code() {
        Some(0) => Ok(Some(parse_blkid_export(&String::from_utf8_lossy(&out.stdout)))),
        Some(2) => Ok(None),
        _ => Err(tools::tool_error("blkid", &out)),
    }
}

/// The filesystem type (TYPE=) or partition table type (PTTYPE=) in blkid's
/// `-o export` output; "unknown" when blkid found something else, so that a
/// device with any signature is never taken for blank.
fn parse_blkid_export(text: &str) -> String {
    let value =
        |key: &str| text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(str::trim);
    value("TYPE").or_else(|| value("PTTYPE")).filter(|v| !v.is_empty()).unwrap_or("unknown").to_string()
}

/// Makes a filesystem of type `fs` on `device`, overwriting whatever is there
/// (the caller probes first and refuses to format a non-blank device), with
/// the mkfs program and flags of the filesystem's policy. `thick` keeps the
/// image's preallocation: mkfs must not discard (TRIM) the device, which on a
/// loop device punches holes into the image.
///
/// Errors: mkfs fails (`Error::Tool`), e.g. mkfs.xfs on less than 300 MiB.
pub fn format(device: &Path, fs: FsType, thick: bool) -> Result<()> {
    let policy = fs.policy();
    let mut args: Vec<&OsStr> = policy.mkfs_args.iter().map(OsStr::new).collect();
    if thick {
        args.extend(policy.mkfs_nodiscard.iter().map(OsStr::new));
    }
    args.push(device.as_os_str());
    tools::run(policy.mkfs, &args)?;
    Ok(())
}

/// Checks the filesystem on an unmounted `device` before a read-write mount,
/// repairing what is safe to repair (ext4: `e2fsck -p`). xfs and btrfs check
/// themselves at mount time (their fsck tools are no-ops or unsafe to
/// automate), so this does nothing for them. Idempotent.
///
/// Errors: e2fsck exits 2 or more (`Error::FsckFailed` with its output):
/// 4 = errors left uncorrected, 8 = operational error (e.g. mounted).
pub fn check(device: &Path, fs: FsType) -> Result<()> {
    match fs.policy().fsck {
        Fsck::E2fsck => e2fsck(device, &["-p"]),
        Fsck::AtMount => Ok(()),
    }
}

/// e2fsck(8) exit codes: 0 clean, 1 errors corrected; anything else is a failure.
fn e2fsck(device: &Path, flags: &[&str]) -> Result<()> {
    let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
    args.push(device.as_os_str());
    let out = tools::run_any("e2fsck", &args)?;
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => {
            let mut detail = tools::trim_stderr(&[out.stdout.as_slice(), out.stderr.as_slice()].concat());
            detail.push_str(&format!(" (e2fsck {})", out.status));
            Err(Error::FsckFailed { device: device.to_path_buf(), detail })
        }
    }
}

/// Size in bytes of the filesystem on an unmounted device, for filesystems
/// that grow offline (ext4: `dumpe2fs -h`: Block count × Block size), or
/// None for the others, which grow only when mounted. Read-only. The tests
/// use it to check growth.
#[cfg(test)]
pub fn fs_size(device: &Path, fs: FsType) -> Result<Option<u64>> {
    if !grows_offline(fs) {
        return Ok(None);
    }
    let out = tools::run("dumpe2fs", &[OsStr::new("-h"), device.as_os_str()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dumpe2fs_size(&text).map(Some).ok_or_else(|| Error::Tool {
        program: "dumpe2fs".into(),
        status: out.status.to_string(),
        stderr: "no \"Block count\" and \"Block size\" in its output".into(),
    })
}

#[cfg(test)]
fn parse_dumpe2fs_size(text: &str) -> Option<u64> {
    let field = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
    };
    field("Block count")?.checked_mul(field("Block size")?)
}

/// Whether the filesystem can grow unmounted ([`grow_offline`]); the others
/// grow only while mounted.
pub fn grows_offline(fs: FsType) -> bool {
    fs.policy().grow == Grow::Resize2fs
}

/// Grows an unmounted filesystem to fill its device, for the filesystems
/// that can ([`grows_offline`]): `e2fsck -f -p` (resize2fs insists on a
/// freshly checked filesystem) then `resize2fs`. No-op for the others.
/// Idempotent: a filesystem that already fills its device is left as is.
///
/// Errors: `Error::FsckFailed` from e2fsck, `Error::Tool` from resize2fs.
pub fn grow_offline(device: &Path, fs: FsType) -> Result<()> {
    match fs.policy().grow {
        Grow::Resize2fs => {
            e2fsck(device, &["-f", "-p"])?;
            tools::run("resize2fs", &[device])?;
            Ok(())
        }
        Grow::AtMountPoint { .. } => Ok(()),
    }
}

/// Grows the filesystem mounted at `mount_point` (from `device`) to fill
/// the device: ext4 `resize2fs <device>`, xfs `xfs_growfs -d <mount_point>`,
/// btrfs `btrfs filesystem resize max <mount_point>`. Idempotent.
///
/// Errors: `Error::OnlineGrowRefused` when the kernel refuses an online ext4
/// resize (EXT4_IOC_RESIZE_FS answering EPERM, as on this project's test
/// kernel, or EOPNOTSUPP/ENOTTY): unmount and use [`grow_offline`].
/// `Error::Tool` for any other failure.
pub fn grow_online(device: &Path, mount_point: &Path, fs: FsType) -> Result<()> {
    let policy = fs.policy();
    match policy.grow {
        Grow::Resize2fs => {
            let out = tools::run_any("resize2fs", &[device])?;
            if out.status.success() {
                return Ok(());
            }
            match refused_errno(&String::from_utf8_lossy(&out.stderr)) {
                Some(errno) => Err(Error::OnlineGrowRefused {
                    fs_type: policy.name,
                    mount_point: mount_point.to_path_buf(),
                    errno,
                }),
                None => Err(tools::tool_error("resize2fs", &out)),
            }
        }
        Grow::AtMountPoint { program, args } => {
            let mut argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            argv.push(mount_point.as_os_str());
            tools::run(program, &argv)?;
            Ok(())
        }
    }
}

/// How resize2fs (C locale, see `tools`) reports that the kernel will not
/// resize this mounted filesystem. EPERM comes from ext4_resize_begin()
/// when the caller lacks CAP_SYS_RESOURCE (measured: that is why the test
/// machine refuses), ENOTTY/EOPNOTSUPP from kernels without online resize.
fn refused_errno(stderr: &str) -> Option<Errno> {
    [
        // online.c prints these for EXT4_IOC_RESIZE_FS' EPERM and ENOTTY.
        ("Permission denied to resize filesystem", Errno::EPERM),
        ("Kernel does not support online resizing", Errno::ENOTTY),
        ("Operation not permitted", Errno::EPERM),
        ("Operation not supported", Errno::EOPNOTSUPP),
        ("Inappropriate ioctl for device", Errno::ENOTTY),
    ]
    .into_iter()
    .find(|(text, _)| stderr.contains(text))
    .map(|(_, errno)| errno)
}

/// statvfs(2) of a mounted path: bytes for unprivileged users (f_bavail),
/// used = total - free. btrfs reports no inode counts (all zero). Read-only.
///
/// Errors: `Error::Sys` from statvfs.
pub fn usage(path: &Path) -> Result<Usage> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|errno| Error::sys("statvfs", path, errno))?;
    let fragment = st.fragment_size();
    let blocks = st.blocks();
    Ok(Usage {
        bytes_total: blocks.saturating_mul(fragment),
        bytes_used: blocks.saturating_sub(st.blocks_free()).saturating_mul(fragment),
        bytes_available: st.blocks_available().saturating_mul(fragment),
        inodes_total: st.files(),
        inodes_used: st.files().saturating_sub(st.files_free()),
        inodes_free: st.files_free(),
    })
}

/// FIFREEZE on a mount point; FITHAW when the guard drops. The guard keeps
/// the directory fd the freeze was made through.
#[derive(Debug)]
pub struct Frozen {
    fd: OwnedFd,
    mount_point: PathBuf,
    thawed: bool,
}

// The snapshot path only drops the guard; the tests use the rest.
#[cfg_attr(not(test), allow(dead_code))]
impl Frozen {
    /// The mount point that is frozen.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Thaws now and reports the result (drop thaws too, but can only log).
    ///
    /// Errors: `Error::Sys` from FITHAW (EINVAL: it was not frozen any more).
    pub fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        thaw_fd(&self.fd, &self.mount_point)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            if let Err(e) = thaw_fd(&self.fd, &self.mount_point) {
                tracing::error!(error = %e, "could not thaw a frozen filesystem");
            }
        }
    }
}

fn thaw_fd(fd: &OwnedFd, mount_point: &Path) -> Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: `fd` is an open directory on the frozen filesystem; FITHAW
    // ignores its argument, which is a valid c_int anyway.
    unsafe { sys::fithaw(fd.as_raw_fd(), &mut arg) }.map_err(|errno| Error::sys("FITHAW", mount_point, errno))?;
    Ok(())
}

/// Thaws the filesystem mounted at `mount_point` if it is frozen. The kernel
/// does not thaw when the freezing process dies, so a crash while a
/// [`Frozen`] guard lived (a snapshot copy) would block every write of the
/// volume for good. The pool calls this when it reconciles a staged volume,
/// holding the volume's lock: only its holder freezes, so a frozen
/// filesystem found then is stale. Returns whether it was frozen.
///
/// Errors: `Error::Io` opening the directory; `Error::Sys` from FITHAW
/// other than EINVAL (not frozen).
pub fn thaw_stale(mount_point: &Path) -> Result<bool> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(mount_point)
        .map_err(|e| Error::io("open mount point", mount_point, e))?;
    match thaw_fd(&dir.into(), mount_point) {
        Ok(()) => Ok(true),
        Err(Error::Sys { errno: Errno::EINVAL, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Freezes the filesystem mounted at `mount_point` (FIFREEZE): writes block
/// and the on-disk state is consistent until the returned guard is dropped
/// or [`Frozen::thaw`]ed, e.g. while its image is copied for a snapshot.
/// Not idempotent: freezing a frozen filesystem fails with EBUSY.
///
/// Errors: `Error::Io` opening the directory; `Error::Sys` from FIFREEZE
/// (EBUSY: already frozen, EOPNOTSUPP: the filesystem cannot freeze).
pub fn freeze(mount_point: &Path) -> Result<Frozen> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(mount_point)
        .map_err(|e| Error::io("open mount point", mount_point, e))?;
    let mut arg: libc::c_int = 0;
    // SAFETY: `dir` is an open directory fd; FIFREEZE ignores its argument,
    // which is a valid c_int anyway.
    unsafe { sys::fifreeze(dir.as_raw_fd(), &mut arg) }.map_err(|errno| Error::sys("FIFREEZE", mount_point, errno))?;
    Ok(Frozen { fd: dir.into(), mount_point: mount_point.to_path_buf(), thawed: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_types() {
        let fs = "DEVNAME=/dev/loop3\nUUID=1234\nVERSION=1.0\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(parse_blkid_export(fs), "ext4");
        let pt = "DEVNAME=/dev/loop3\nPTUUID=abcd\nPTTYPE=dos\n";
        assert_eq!(parse_blkid_export(pt), "dos");
        // SEC_TYPE must not be taken for TYPE.
        assert_eq!(parse_blkid_export("SEC_TYPE=ext2\nTYPE=ext3\n"), "ext3");
        assert_eq!(parse_blkid_export("DEVNAME=/dev/loop3\nUSAGE=other\n"), "unknown");
        assert_eq!(parse_blkid_export("TYPE=\n"), "unknown");
    }

    #[test]
    fn dumpe2fs_size() {
        let text = "dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   <none>\nBlock count:              262144\n\
                    Reserved block count:     13107\nFree blocks:              249189\nBlock size:               4096\n";
        assert_eq!(parse_dumpe2fs_size(text), Some(262144 * 4096));
        assert_eq!(parse_dumpe2fs_size("Block count: 10\n"), None);
        assert_eq!(parse_dumpe2fs_size("Block count: x\nBlock size: 1024\n"), None);
    }

    #[test]
    fn resize2fs_refusals() {
        let stderr = "resize2fs 1.47.0 (5-Feb-2023)\nFilesystem at /dev/loop3 is mounted on /tmp/x; on-line resizing required\n\
                      old_desc_blocks = 1, new_desc_blocks = 1\nresize2fs: Operation not permitted While checking for on-line resizing support\n";
        assert_eq!(refused_errno(stderr), Some(Errno::EPERM));
        // What resize2fs 1.47 prints when the kernel answers EPERM (measured).
        let stderr = "resize2fs 1.47.0 (5-Feb-2023)\n/usr/sbin/resize2fs: Permission denied to resize filesystem";
        assert_eq!(refused_errno(stderr), Some(Errno::EPERM));
        assert_eq!(refused_errno("resize2fs: No space left on device while trying to resize"), None);
    }
}
