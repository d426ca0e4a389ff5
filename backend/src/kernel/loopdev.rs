//! Loop devices through /dev/loop-control and the loop ioctls (loop(4),
//! include/uapi/linux/loop.h), without losetup.
//!
//! Which device backs an image is decided by the backing file's device and
//! inode (LOOP_GET_STATUS64 `lo_device`/`lo_inode`), never by comparing path
//! strings: a path can be renamed, deleted or reached through a bind mount.
//!
//! Races: `LOOP_CTL_GET_FREE` only names a device that is free right now;
//! another process (losetup, another loopvol call) can configure it first, in
//! which case LOOP_CONFIGURE answers EBUSY and we ask again. A device in
//! autoclear teardown can still be listed for a moment, so a reused device is
//! opened first (holding a reference) and then checked again.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// A bound loop device, e.g. `/dev/loop3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
}

impl LoopDevice {
    /// The device `/dev/loop{number}` (bound or not).
    pub fn from_number(number: u32) -> Self {
        LoopDevice { number, path: PathBuf::from(format!("/dev/loop{number}")) }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last
    /// opener (our fd, a mount) goes away, so a crash cannot leak it.
    pub autoclear: bool,
    pub read_only: bool,
    /// LO_FLAGS_DIRECT_IO: the device reads and writes the image with
    /// O_DIRECT, so its pages are cached once (by the filesystem in the
    /// volume), not twice. Granted only where the backing filesystem takes
    /// O_DIRECT at `block_size`; otherwise the device is buffered
    /// ([`Attached::direct_io`] says which).
    pub direct_io: bool,
    /// The device's logical block size; 0 means 512. A filesystem keeps the
    /// sector size it was made with, so this never changes for a volume.
    pub block_size: u32,
}

/// An attached device plus an open fd on it; the fd keeps an autoclear
/// device alive until the caller has mounted it (then drop it).
#[derive(Debug)]
pub struct Attached {
    pub device: LoopDevice,
    /// Held, not read: it keeps an autoclear device bound until dropped.
    #[cfg_attr(not(test), allow(dead_code))]
    pub handle: OwnedFd,
    /// false when an existing device for the image was reused (the tests check it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub created: bool,
    /// The device does direct I/O (as the kernel reports it).
    pub direct_io: bool,
}

/// Raw kernel interface: structs and ioctl wrappers. In a private module
/// because nix's ioctl macros generate `pub` functions.
mod sys {
    // include/uapi/linux/loop.h
    pub const LO_NAME_SIZE: usize = 64;
    pub const LO_KEY_SIZE: usize = 32;
    pub const LO_FLAGS_READ_ONLY: u32 = 1;
    pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
    pub const LO_FLAGS_DIRECT_IO: u32 = 16;

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LoopInfo64 {
        pub lo_device: u64,
        pub lo_inode: u64,
        pub lo_rdevice: u64,
        pub lo_offset: u64,
        pub lo_sizelimit: u64,
        pub lo_number: u32,
        pub lo_encrypt_type: u32,
        pub lo_encrypt_key_size: u32,
        pub lo_flags: u32,
        pub lo_file_name: [u8; LO_NAME_SIZE],
        pub lo_crypt_name: [u8; LO_NAME_SIZE],
        pub lo_encrypt_key: [u8; LO_KEY_SIZE],
        pub lo_init: [u64; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LoopConfig {
        pub fd: u32,
        pub block_size: u32,
        pub info: LoopInfo64,
        pub reserved: [u64; 8],
    }

    impl LoopInfo64 {
        pub fn zeroed() -> Self {
            LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: 0,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            }
        }
    }

    // The loop ioctls predate the _IOC encoding ("bad" ioctls in nix terms).
    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
    nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
    nix::ioctl_write_int_bad!(loop_set_direct_io, 0x4C08);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
    // include/uapi/linux/fs.h: BLKGETSIZE64 _IOR(0x12, 114, size_t), but the
    // kernel writes a u64 whatever size_t is.
    nix::ioctl_read_bad!(blkgetsize64, nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()), u64);

    const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
    const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);
}

const LOOP_CONTROL: &str = "/dev/loop-control";

/// How often attach asks for another free device after losing a race.
const ATTACH_ATTEMPTS: u32 = 64;

/// Set once LOOP_CONFIGURE (Linux 5.8) turned out to be unsupported, so we
/// go straight to LOOP_SET_FD + LOOP_SET_STATUS64.
static NO_LOOP_CONFIGURE: AtomicBool = AtomicBool::new(false);

/// Identity of a file as the loop driver reports it: (major, minor, inode).
/// Kept split because the kernel's `lo_device` (new_encode_dev) and
/// userspace's st_dev (glibc makedev) encode a dev_t differently.
pub type FileId = (u32, u32, u64);

fn file_id_of_meta(meta: &std::fs::Metadata) -> FileId {
    let dev = meta.dev();
    (libc::major(dev), libc::minor(dev), meta.ino())
}

/// Decodes the kernel's huge_encode_dev()/new_encode_dev() form (include/linux/kdev_t.h).
fn decode_kernel_dev(dev: u64) -> (u32, u32) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    // Both masks keep the values under 2^20.
    (u32::try_from(major).unwrap_or(u32::MAX), u32::try_from(minor).unwrap_or(u32::MAX))
}

fn image_id(image: &Path) -> Result<FileId> {
    let meta = std::fs::metadata(image).map_err(|e| Error::io("stat image", image, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidPath {
            path: image.to_path_buf(),
            reason: "a loop device image must be a regular file",
        });
    }
    Ok(file_id_of_meta(&meta))
}

/// LOOP_GET_STATUS64: the backing file's id, and the loop flags; None when
/// the device is not bound (ENXIO).
fn status(fd: &File, device: &Path) -> Result<Option<(FileId, u32)>> {
    let mut info = sys::LoopInfo64::zeroed();
    // SAFETY: `fd` is an open loop device; the kernel writes one loop_info64
    // into `info`, which is a properly sized and aligned #[repr(C)] struct.
    match unsafe { sys::loop_get_status64(fd.as_raw_fd(), &mut info) } {
        Ok(_) => {
            let (major, minor) = decode_kernel_dev(info.lo_device);
            Ok(Some(((major, minor, info.lo_inode), info.lo_flags)))
        }
        Err(Errno::ENXIO) => Ok(None),
        Err(errno) => Err(Error::sys("LOOP_GET_STATUS64", device, errno)),
    }
}

/// Opens a loop device (O_CLOEXEC: a spawned mkfs must not inherit it and so
/// keep an autoclear device alive). `write` decides whether a device we
/// configure is writable: loop_configure() makes the device read-only when
/// it was opened without write access.
fn open_device(path: &Path, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(write).custom_flags(libc::O_CLOEXEC).open(path)
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// Attaches `image` to a loop device and returns it with an open handle.
///
/// Idempotent: when a device already backed by `image` exists (matched by
/// st_dev and st_ino) it is reused (`created: false`; its flags are left as
/// they are: a read-only request can get an existing read-write device, so
/// callers that need a read-only block device check or detach first). Otherwise LOOP_CTL_GET_FREE + LOOP_CONFIGURE (or LOOP_SET_FD +
/// LOOP_SET_STATUS64 on kernels before 5.8), asking for another device when
/// someone else configured ours first. The backing file is verified after
/// attaching. Two concurrent attaches of the same image can still make two
/// devices; callers serialise per volume (the pool's flock).
///
/// Errors: the image is missing or not a regular file (`Error::Io`,
/// `Error::InvalidPath`); an existing device is read-only but read-write was
/// asked for (`Error::Sys` with EROFS); no device could be obtained
/// (`Error::NoLoopDevice`); any other ioctl failure (`Error::Sys`).
pub fn attach(image: &Path, opts: AttachOptions) -> Result<Attached> {
    let id = image_id(image)?;
    for attempt in 0..ATTACH_ATTEMPTS {
        if let Some(attached) = reuse(image, id, opts)? {
            return Ok(attached);
        }
        match configure_free(image, id, opts, NO_LOOP_CONFIGURE.load(Ordering::Relaxed))? {
            Some(attached) => return Ok(attached),
            None => tracing::debug!(image = %image.display(), attempt, "lost a race for a free loop device, retrying"),
        }
    }
    Err(Error::NoLoopDevice(format!(
        "gave up attaching {} after {ATTACH_ATTEMPTS} attempts: free devices kept being taken",
        image.display()
    )))
}

/// The existing device for `id`, opened and re-verified; None when there is
/// none (or it vanished while we looked).
fn reuse(image: &Path, id: FileId, opts: AttachOptions) -> Result<Option<Attached>> {
    for device in list()?.into_iter().filter(|e| e.backing == id).map(|e| e.device) {
        let file = match open_device(&device.path, !opts.read_only) {
            Ok(file) => file,
            Err(e) if matches!(errno_of(&e), Errno::ENOENT | Errno::ENXIO) => continue,
            Err(e) if errno_of(&e) == Errno::EROFS || errno_of(&e) == Errno::EACCES => {
                return Err(Error::sys("open existing read-only loop device read-write", &device.path, Errno::EROFS));
            }
            Err(e) => return Err(Error::io("open loop device", &device.path, e)),
        };
        // Our fd now pins the device; check it did not change hands between
        // listing and opening (autoclear teardown, detach + reuse).
        if let Some((now, flags)) = status(&file, &device.path)? {
            if now == id {
                if !opts.read_only && flags & sys::LO_FLAGS_READ_ONLY != 0 {
                    return Err(Error::sys(
                        "open existing read-only loop device read-write",
                        &device.path,
                        Errno::EROFS,
                    ));
                }
                tracing::debug!(image = %image.display(), device = %device.path.display(), "reusing loop device");
                let direct_io = flags & sys::LO_FLAGS_DIRECT_IO != 0;
                return Ok(Some(Attached { device, handle: file.into(), created: false, direct_io }));
            }
        }
    }
    Ok(None)
}

/// One try at binding `image` to a free device, with LOOP_CONFIGURE unless
/// `legacy`. Ok(None): lost a race, try again.
fn configure_free(image: &Path, id: FileId, opts: AttachOptions, legacy: bool) -> Result<Option<Attached>> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(LOOP_CONTROL)
        .map_err(|e| Error::NoLoopDevice(format!("open {LOOP_CONTROL}: {e}")))?;
    // SAFETY: `control` is an open /dev/loop-control; LOOP_CTL_GET_FREE takes
    // no argument and returns a device number (creating one if needed).
    let number = unsafe { sys::loop_ctl_get_free(control.as_raw_fd()) }
        .map_err(|errno| Error::NoLoopDevice(format!("LOOP_CTL_GET_FREE: {errno}")))?;
    drop(control);
    let device = LoopDevice::from_number(
        u32::try_from(number).map_err(|_| Error::NoLoopDevice(format!("LOOP_CTL_GET_FREE returned {number}")))?,
    );

    let loop_file = match open_device(&device.path, !opts.read_only) {
        Ok(file) => file,
        // Removed (LOOP_CTL_REMOVE) between GET_FREE and open: ask again.
        Err(e) if matches!(errno_of(&e), Errno::ENOENT | Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(Error::io("open loop device", &device.path, e)),
    };
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| Error::io("open image", image, e))?;
    // The image could have been replaced between stat and open.
    let opened_id = file_id_of_meta(&backing.metadata().map_err(|e| Error::io("stat image", image, e))?);
    if opened_id != id {
        return Err(Error::io("open image", image, std::io::Error::other("image was replaced while attaching")));
    }

    let block_size = if opts.block_size == 0 { 512 } else { opts.block_size };
    // Direct I/O only where the backing filesystem takes O_DIRECT at this
    // block size. Where it needs a larger alignment, the kernel would raise
    // the device's logical block size (measured on 6.18 with a 4 KiB-sector
    // pool), changing the sector size under the volume's filesystem: stay
    // buffered instead.
    let want_dio = opts.direct_io
        && match direct_io_alignment(image) {
            DirectIo::Unsupported => false,
            DirectIo::Aligned(align) => align <= block_size,
            DirectIo::Unknown => true,
        };
    let mut info = sys::LoopInfo64::zeroed();
    if opts.autoclear {
        info.lo_flags |= sys::LO_FLAGS_AUTOCLEAR;
    }
    if want_dio {
        info.lo_flags |= sys::LO_FLAGS_DIRECT_IO;
    }
    if opts.read_only {
        info.lo_flags |= sys::LO_FLAGS_READ_ONLY;
    }
    // Informational only (losetup -l shows it); truncated, NUL-terminated.
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(sys::LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);

    let configured = if legacy {
        // Pre-5.8 kernels: buffered, at the default 512-byte block size.
        info.lo_flags &= !sys::LO_FLAGS_DIRECT_IO;
        set_fd_and_status(&loop_file, &backing, &device, &info)?
    } else {
        let fd =
            u32::try_from(backing.as_raw_fd()).map_err(|_| Error::sys("LOOP_CONFIGURE", &device.path, Errno::EBADF))?;
        let config = |info: sys::LoopInfo64| sys::LoopConfig { fd, block_size, info, reserved: [0; 8] };
        // SAFETY: `loop_file` is an open loop device and the loop_config a
        // fully initialised struct that outlives the call; the kernel only reads it.
        let configure = |info| unsafe { sys::loop_configure(loop_file.as_raw_fd(), &config(info)) };
        let mut result = configure(info);
        if result == Err(Errno::EINVAL) && want_dio {
            // The backing file refuses O_DIRECT (ramfs, some FUSE and
            // overlay setups): a buffered device still serves the volume.
            info.lo_flags &= !sys::LO_FLAGS_DIRECT_IO;
            result = configure(info);
        }
        match result {
            Ok(_) => true,
            // Someone else configured this device after GET_FREE answered.
            Err(Errno::EBUSY) => false,
            // LOOP_CONFIGURE is Linux 5.8+; older kernels answer EINVAL or ENOTTY.
            Err(Errno::EINVAL) | Err(Errno::ENOTTY) => {
                tracing::info!("LOOP_CONFIGURE unsupported, using LOOP_SET_FD + LOOP_SET_STATUS64");
                NO_LOOP_CONFIGURE.store(true, Ordering::Relaxed);
                info.lo_flags &= !sys::LO_FLAGS_DIRECT_IO;
                set_fd_and_status(&loop_file, &backing, &device, &info)?
            }
            Err(errno) => return Err(Error::sys("LOOP_CONFIGURE", &device.path, errno)),
        }
    };
    if !configured {
        return Ok(None);
    }
    // The device holds its own reference to the backing file now.
    drop(backing);

    match status(&loop_file, &device.path)? {
        Some((now, flags)) if now == id => {
            let mut direct_io = flags & sys::LO_FLAGS_DIRECT_IO != 0;
            if direct_io && logical_block_size(&device) != Some(block_size) {
                // The kernel raised the block size to suit O_DIRECT: the
                // sector size must not change, so go buffered.
                set_direct_io(&loop_file, &device, false)?;
                direct_io = false;
            }
            tracing::debug!(image = %image.display(), device = %device.path.display(), direct_io, "attached loop device");
            Ok(Some(Attached { device, handle: loop_file.into(), created: true, direct_io }))
        }
        // Cannot happen while we hold the fd, unless someone detached and
        // reused the device in between; it is not ours to detach then.
        _ => Ok(None),
    }
}

/// What the filesystem holding a file says about O_DIRECT on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectIo {
    /// It refuses O_DIRECT (statx reports no alignment: ramfs, some FUSE).
    Unsupported,
    /// O_DIRECT needs offsets aligned to this many bytes.
    Aligned(u32),
    /// The kernel cannot say (no STATX_DIOALIGN before Linux 6.1).
    Unknown,
}

/// statx(2) STATX_DIOALIGN of `path` (`stx_dio_offset_align`).
pub fn direct_io_alignment(path: &Path) -> DirectIo {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return DirectIo::Unknown };
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated path and `stx` a zeroed statx
    // buffer of the right size that the kernel fills in.
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c_path.as_ptr(), 0, libc::STATX_DIOALIGN, stx.as_mut_ptr()) };
    if rc != 0 {
        return DirectIo::Unknown;
    }
    // SAFETY: statx returned 0, so the buffer is initialised.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        DirectIo::Unknown
    } else if stx.stx_dio_offset_align == 0 {
        DirectIo::Unsupported
    } else {
        DirectIo::Aligned(stx.stx_dio_offset_align)
    }
}

/// The block size a new volume's device should have on the filesystem
/// holding `image`: what O_DIRECT needs there, at least 512.
pub fn preferred_block_size(image: &Path) -> u32 {
    match direct_io_alignment(image) {
        DirectIo::Aligned(align) if align.is_power_of_two() && align <= 4096 => align.max(512),
        _ => 512,
    }
}

/// The device's logical block size (sysfs).
fn logical_block_size(device: &LoopDevice) -> Option<u32> {
    let path = format!("/sys/block/loop{}/queue/logical_block_size", device.number);
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// LOOP_SET_DIRECT_IO: switches an attached device between direct and
/// buffered I/O (the kernel refuses direct I/O it cannot do: EINVAL).
fn set_direct_io(file: &File, device: &LoopDevice, on: bool) -> Result<()> {
    // SAFETY: `file` is an open loop device; LOOP_SET_DIRECT_IO takes an int.
    unsafe { sys::loop_set_direct_io(file.as_raw_fd(), libc::c_int::from(on)) }
        .map_err(|errno| Error::sys("LOOP_SET_DIRECT_IO", &device.path, errno))?;
    Ok(())
}

/// Switches an attached device to direct (`on`) or buffered I/O while it is
/// in use. Returns whether it does direct I/O now: false when the kernel
/// refuses direct I/O for the backing file (EINVAL), or would have to raise
/// the device's logical block size for it, which a filesystem made with the
/// old sector size cannot follow.
pub fn switch_direct_io(device: &LoopDevice, on: bool, block_size: u32) -> Result<bool> {
    let file = File::open(&device.path).map_err(|e| Error::io("open", &device.path, e))?;
    match set_direct_io(&file, device, on) {
        Ok(()) => {}
        Err(Error::Sys { errno: Errno::EINVAL, .. }) if on => return Ok(false),
        Err(e) => return Err(e),
    }
    if on && logical_block_size(device).is_some_and(|now| now != block_size) {
        set_direct_io(&file, device, false)?;
        return Ok(false);
    }
    Ok(uses_direct_io(device))
}

/// Whether the attached device does direct I/O (sysfs `loop/dio`).
pub fn uses_direct_io(device: &LoopDevice) -> bool {
    let path = format!("/sys/block/loop{}/loop/dio", device.number);
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

/// The pre-5.8 way: LOOP_SET_FD then LOOP_SET_STATUS64 (a window in which
/// the device is bound without autoclear; undone on failure). Ok(false): lost a race.
fn set_fd_and_status(loop_file: &File, backing: &File, device: &LoopDevice, info: &sys::LoopInfo64) -> Result<bool> {
    let fd = libc::c_int::from(backing.as_raw_fd());
    // SAFETY: `loop_file` is an open loop device; LOOP_SET_FD takes the
    // backing file's descriptor as an integer argument, which is open.
    match unsafe { sys::loop_set_fd(loop_file.as_raw_fd(), fd) } {
        Ok(_) => {}
        Err(Errno::EBUSY) => return Ok(false),
        Err(errno) => return Err(Error::sys("LOOP_SET_FD", &device.path, errno)),
    }
    // SAFETY: `info` is a fully initialised loop_info64 that outlives the
    // call; the kernel only reads it. (LO_FLAGS_READ_ONLY is ignored here:
    // LOOP_SET_FD took read-only-ness from how the files were opened.)
    if let Err(errno) = unsafe { sys::loop_set_status64(loop_file.as_raw_fd(), info) } {
        // SAFETY: `loop_file` is the loop device we just bound; LOOP_CLR_FD takes no argument.
        let _ = unsafe { sys::loop_clr_fd(loop_file.as_raw_fd()) };
        return Err(Error::sys("LOOP_SET_STATUS64", &device.path, errno));
    }
    Ok(true)
}

/// One bound loop device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopEntry {
    pub device: LoopDevice,
    /// The device's own number (`st_rdev` of its node), as mountinfo shows it.
    pub rdev: (u32, u32),
    /// The backing file's identity: (major, minor) of its filesystem and its
    /// inode (LOOP_GET_STATUS64); compare with [`file_id`] of an image.
    pub backing: FileId,
    /// The backing file's path as sysfs reports it (" (deleted)" stripped):
    /// a name for reports and a candidate for lookups, never proof of identity.
    pub backing_path: PathBuf,
    /// LO_FLAGS_AUTOCLEAR: the kernel releases it when its last opener goes.
    pub autoclear: bool,
}

/// The identity of a file to compare with [`LoopEntry::backing`]; None when
/// it cannot be stat'ed.
pub fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| file_id_of_meta(&m))
}

/// The device currently backed by `image`, if any (the lowest-numbered one
/// when several are). Read-only lookup.
///
/// Errors: `image` cannot be stat'ed or is not a regular file; /sys/block
/// cannot be read; a LOOP_GET_STATUS64 failure other than ENXIO.
pub fn find(image: &Path) -> Result<Option<LoopDevice>> {
    let id = image_id(image)?;
    Ok(list()?.into_iter().find(|e| e.backing == id).map(|e| e.device))
}

/// The entry of `device` when it is bound to `image` (same device and
/// inode): a few syscalls on a device known from a record, where [`find`]
/// and [`list`] read every loop device on the node. None when it is
/// unbound, bound to another file, or not a loop device's path.
///
/// Errors: `image` cannot be stat'ed or is not a regular file; the device
/// cannot be opened or queried for another reason than being gone.
pub fn bound_to(device: &Path, image: &Path) -> Result<Option<LoopEntry>> {
    let number = device.to_str().and_then(|p| p.strip_prefix("/dev/loop")).and_then(|n| n.parse::<u32>().ok());
    let Some(number) = number else { return Ok(None) };
    let id = image_id(image)?;
    Ok(entry(number)?.filter(|e| e.backing == id))
}

/// Every bound loop device, sorted by number: the one scan of loop devices
/// in loopvol. Read-only; devices that are unbound while we look are left out.
///
/// Errors: /sys/block cannot be read (`Error::Io`); LOOP_GET_STATUS64 fails
/// other than with ENXIO (`Error::Sys`).
pub fn list() -> Result<Vec<LoopEntry>> {
    let mut numbers = bound_numbers()?;
    numbers.sort_unstable();
    let mut out = Vec::with_capacity(numbers.len());
    for number in numbers {
        out.extend(entry(number)?);
    }
    Ok(out)
}

/// `/dev/loop<number>` as the kernel reports it; None when it is unbound or
/// gone.
fn entry(number: u32) -> Result<Option<LoopEntry>> {
    let device = LoopDevice::from_number(number);
    let file = match open_device(&device.path, false) {
        Ok(file) => file,
        // Gone (LOOP_CTL_REMOVE) or no node for it in this /dev.
        Err(e) if matches!(errno_of(&e), Errno::ENOENT | Errno::ENXIO | Errno::ENODEV) => return Ok(None),
        Err(e) => return Err(Error::io("open loop device", &device.path, e)),
    };
    let Some((backing, flags)) = status(&file, &device.path)? else { return Ok(None) };
    let rdev = file.metadata().map(|m| m.rdev()).unwrap_or(0);
    let sys = format!("/sys/block/loop{number}/loop/backing_file");
    let backing_path = std::fs::read_to_string(sys).unwrap_or_default();
    let backing_path = PathBuf::from(backing_path.trim_end().trim_end_matches(" (deleted)"));
    let autoclear = flags & sys::LO_FLAGS_AUTOCLEAR != 0;
    Ok(Some(LoopEntry { device, rdev: (libc::major(rdev), libc::minor(rdev)), backing, backing_path, autoclear }))
}

/// Numbers of loop devices with a backing file: /sys/block/loopN/loop
/// exists only while the device is bound (drivers/block/loop.c, loop_sysfs_init).
fn bound_numbers() -> Result<Vec<u32>> {
    const SYS_BLOCK: &str = "/sys/block";
    let entries = std::fs::read_dir(SYS_BLOCK).map_err(|e| Error::io("read directory", SYS_BLOCK, e))?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", SYS_BLOCK, e))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("loop")).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.path().join("loop").exists() {
            numbers.push(number);
        }
    }
    Ok(numbers)
}

/// Waits (polling, at most `wait`) until no loop device is backed by the file
/// with identity `backing` any more; returns whether that happened. An
/// autoclear device whose mount just went is released by the kernel only once
/// its last opener (udev, blkid probing after the umount event) closes it.
pub fn wait_released(backing: FileId, wait: std::time::Duration) -> Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if !list()?.iter().any(|e| e.backing == backing) {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Detaches `device` with LOOP_CLR_FD. Idempotent: a device that is already
/// free (ENXIO) or gone (ENOENT) is success. A device that is still open or
/// mounted is only marked autoclear by the kernel and goes away when its last
/// user does.
///
/// Errors: any other open or ioctl failure (`Error::Io`, `Error::Sys`).
pub fn detach(device: &LoopDevice) -> Result<()> {
    let file = match open_device(&device.path, false) {
        Ok(file) => file,
        Err(e) if matches!(errno_of(&e), Errno::ENOENT | Errno::ENXIO) => return Ok(()),
        Err(e) => return Err(Error::io("open loop device", &device.path, e)),
    };
    // SAFETY: `file` is an open loop device; LOOP_CLR_FD takes no argument.
    match unsafe { sys::loop_clr_fd(file.as_raw_fd()) } {
        Ok(_) | Err(Errno::ENXIO) => {
            tracing::debug!(device = %device.path.display(), "detached loop device");
            Ok(())
        }
        Err(errno) => Err(Error::sys("LOOP_CLR_FD", &device.path, errno)),
    }
}

/// LOOP_SET_CAPACITY after the backing file grew: the device (and a
/// filesystem on it) sees the new size. Idempotent.
///
/// Note: opening and closing an autoclear device that nobody else holds
/// detaches it; callers hold the device (mounted or via `Attached::handle`).
///
/// Errors: the device is missing or unbound (`Error::Io`/`Error::Sys` ENXIO).
pub fn refresh_capacity(device: &LoopDevice) -> Result<()> {
    let file = open_device(&device.path, false).map_err(|e| Error::io("open loop device", &device.path, e))?;
    // SAFETY: `file` is an open loop device; LOOP_SET_CAPACITY takes no argument.
    unsafe { sys::loop_set_capacity(file.as_raw_fd()) }
        .map_err(|errno| Error::sys("LOOP_SET_CAPACITY", &device.path, errno))?;
    Ok(())
}

/// Size in bytes of any block device (BLKGETSIZE64). Read-only.
///
/// Errors: cannot open (`Error::Io`); not a block device (`Error::Sys` ENOTTY).
pub fn size_bytes(device: &Path) -> Result<u64> {
    let file = open_device(device, false).map_err(|e| Error::io("open block device", device, e))?;
    let mut size: u64 = 0;
    // SAFETY: `file` is open; BLKGETSIZE64 writes one u64 into `size`.
    unsafe { sys::blkgetsize64(file.as_raw_fd(), &mut size) }
        .map_err(|errno| Error::sys("BLKGETSIZE64", device, errno))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kernel_dev_encoding() {
        // new_encode_dev(MKDEV(254, 0)) and a large minor.
        assert_eq!(decode_kernel_dev(0xfe00), (254, 0));
        let (major, minor) = (0x123u64, 0x45678u64);
        let encoded = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(decode_kernel_dev(encoded), (0x123, 0x45678));
        // glibc's makedev round-trips through libc::major/minor.
        let dev = libc::makedev(0x123, 0x45678);
        assert_eq!((libc::major(dev), libc::minor(dev)), (0x123, 0x45678));
    }

    /// Detaches on drop, so a failing test leaks no device.
    struct Detach(Option<LoopDevice>);
    impl Drop for Detach {
        fn drop(&mut self) {
            if let Some(d) = self.0.take() {
                let _ = detach(&d);
            }
        }
    }

    /// The pre-5.8 path (LOOP_SET_FD + LOOP_SET_STATUS64), which this
    /// kernel never takes by itself because LOOP_CONFIGURE works.
    #[test]
    fn legacy_set_fd_path_sets_flags() {
        if !loopvol_test_support::privileged("legacy_set_fd_path_sets_flags") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("legacy.img");
        File::create(&image).unwrap().set_len(8 << 20).unwrap();
        let id = image_id(&image).unwrap();
        let opts = AttachOptions { autoclear: true, read_only: false, ..Default::default() };
        let attached = (0..ATTACH_ATTEMPTS).find_map(|_| configure_free(&image, id, opts, true).unwrap()).unwrap();
        let guard = Detach(Some(attached.device.clone()));
        assert!(attached.created);
        let sys = format!("/sys/block/loop{}", attached.device.number);
        assert_eq!(std::fs::read_to_string(format!("{sys}/loop/autoclear")).unwrap().trim(), "1");
        assert_eq!(std::fs::read_to_string(format!("{sys}/ro")).unwrap().trim(), "0");
        assert_eq!(find(&image).unwrap(), Some(attached.device.clone()));
        assert_eq!(size_bytes(&attached.device.path).unwrap(), 8 << 20);
        drop(attached);
        drop(guard);
        // The autoclear rundown after the last close is asynchronous.
        let mut gone = false;
        for _ in 0..1000 {
            gone = find(&image).unwrap().is_none();
            if gone {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(gone);
    }

    #[test]
    fn device_path_from_number() {
        assert_eq!(LoopDevice::from_number(7).path, Path::new("/dev/loop7"));
    }
}
