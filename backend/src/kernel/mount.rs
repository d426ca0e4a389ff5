//! mount(2)/umount2(2) directly, no mount helper process: no PATH lookup,
//! no /etc/fstab or /etc/mtab, no shell, and the errno comes back unchanged.
//!
//! Every volume mount is nosuid and nodev (a volume is user data; see
//! `mount_options` for why `suid`/`dev` are refused). A block volume's bind
//! is the exception to nodev: it exists to expose a device node.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::kernel::mount_options::MountOptions;

/// Flags every filesystem mount of a volume gets.
const ALWAYS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Mounts the filesystem on `device` at `target` (which must exist) with
/// `opts`, always nosuid and nodev; `read_only` adds MS_RDONLY. The
/// filesystem's policy adds its own data options (xfs: `nouuid`, so a clone
/// with the same UUID mounts beside its source).
///
/// Not idempotent by itself: mounting twice stacks a second mount; the caller
/// checks mountinfo first. Errors: `Error::Sys` with the errno of mount(2)
/// (e.g. EBUSY when the device is mounted elsewhere with other flags, EINVAL
/// for a bad superblock or data option), naming the target.
pub fn mount_fs(device: &Path, target: &Path, fs: FsType, opts: &MountOptions, read_only: bool) -> Result<()> {
    let mut flags = opts.flags | ALWAYS;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut data = opts.data.clone();
    let always = fs.policy().mount_data;
    if !always.is_empty() {
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(always);
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    tracing::debug!(device = %device.display(), target = %target.display(), %fs, ?flags, ?data, "mount");
    nix::mount::mount(Some(device), target, Some(fs.as_str()), flags, data)
        .map_err(|errno| Error::sys("mount filesystem on", target, errno))
}

/// Bind-mounts `source` (dir or file) onto `target` (same kind, must exist).
/// The bind is nosuid, and nodev unless `source` is a block device (a block
/// volume's device node must stay usable). `opts.flags` (noexec, noatime, ...)
/// and `read_only` need a second MS_REMOUNT|MS_BIND pass, as the kernel
/// ignores them on the first (mount(2), "Creating a bind mount"); if that
/// pass fails the bind is undone, so a read-write bind is never left behind
/// for a read-only request. `opts.data` is ignored: filesystem options belong
/// to the filesystem's own mount.
///
/// Not idempotent by itself (a second call stacks). Errors: `Error::Sys`
/// naming the target.
pub fn bind(source: &Path, target: &Path, read_only: bool, opts: &MountOptions) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_block =
        std::fs::metadata(source).map_err(|e| Error::io("stat bind source", source, e))?.file_type().is_block_device();
    let mut flags = opts.flags | MsFlags::MS_NOSUID;
    if !is_block {
        flags |= MsFlags::MS_NODEV;
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    tracing::debug!(source = %source.display(), target = %target.display(), ?flags, "bind mount");
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|errno| Error::sys("bind mount onto", target, errno))?;
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    if let Err(errno) = nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
        // Undo exactly the bind we made (the top of the stack).
        if let Err(undo) = nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            tracing::error!(target = %target.display(), %undo, "could not undo a bind mount after its remount failed");
        }
        return Err(Error::sys("remount bind mount", target, errno));
    }
    Ok(())
}

/// Unmounts everything stacked on `target`, top first, until the kernel says
/// it is not a mount point. Idempotent: returns Ok(false) when nothing was
/// mounted (or `target` does not exist), Ok(true) when something was.
///
/// umount2(2) is called without stat(2)ing the target first, so a corrupted
/// mount (stat would fail with ENOTCONN/ESTALE/EIO, e.g. a dead FUSE or NFS
/// server) is still unmounted. UMOUNT_NOFOLLOW: a symlink planted at the
/// target is not followed.
///
/// Errors: EBUSY (still in use after a few short retries) and anything else
/// from umount2(2) as `Error::Sys` naming the target.
pub fn unmount(target: &Path) -> Result<bool> {
    let mut unmounted = false;
    let mut busy_retries = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {
                tracing::debug!(target = %target.display(), "unmounted");
                unmounted = true;
            }
            // EINVAL: "target is not a mount point" (umount(2)).
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(unmounted),
            // A child that another thread of this process forked holds copies
            // of our fds until it execs (O_CLOEXEC closes them only then); on
            // a loaded node that can take a while and makes umount say EBUSY
            // (measured in the parallel kernel tests). Retry briefly before
            // calling the mount busy.
            Err(Errno::EBUSY) if busy_retries < BUSY_RETRIES => {
                busy_retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10 << busy_retries));
            }
            Err(errno) => return Err(Error::sys("unmount", target, errno)),
        }
    }
}

/// EBUSY retries of [`unmount`]: 20+40+80+160 ms in all.
const BUSY_RETRIES: u32 = 4;

/// Unmounts `target` (everything stacked on it) and removes it: rmdir for a
/// directory (never recursive: data left in an unmounted directory is kept
/// and reported), unlink for anything else. Idempotent: a missing target is
/// success. A corrupted mount at `target` is unmounted too (see [`unmount`]).
///
/// Errors: `Error::Sys` from umount2(2) (EBUSY: still in use) or from
/// rmdir/unlink (ENOTEMPTY: the directory holds files, EBUSY: still a mount
/// point, e.g. of another mount namespace).
pub fn cleanup(target: &Path) -> Result<()> {
    unmount(target)?;
    let meta = match nix::sys::stat::lstat(target) {
        Ok(meta) => meta,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(Error::sys("stat", target, errno)),
    };
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let removed = if is_dir {
        nix::unistd::unlinkat(nix::fcntl::AT_FDCWD, target, nix::unistd::UnlinkatFlags::RemoveDir)
    } else {
        nix::unistd::unlink(target)
    };
    match removed {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(Error::sys(if is_dir { "remove directory" } else { "remove file" }, target, errno)),
    }
}
