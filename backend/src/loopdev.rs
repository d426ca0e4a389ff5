//! Loop devices through /dev/loop-control and the loop ioctls (loop(4)).
//! STUB: signatures fixed, bodies being written.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// A bound loop device, e.g. `/dev/loop3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last
    /// opener (our fd, a mount) goes away, so a crash cannot leak it.
    pub autoclear: bool,
    pub read_only: bool,
}

/// An attached device plus an open fd on it; the fd keeps an autoclear
/// device alive until the caller has mounted it (then drop it).
#[derive(Debug)]
pub struct Attached {
    pub device: LoopDevice,
    pub handle: OwnedFd,
    /// false when an existing device for the image was reused.
    pub created: bool,
}

/// Idempotent: reuses the device already backed by `image` (matched by st_dev
/// and st_ino), else LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retrying on races.
pub fn attach(image: &Path, opts: AttachOptions) -> Result<Attached> {
    let _ = (image, opts);
    todo!()
}

/// The device currently backed by `image`, if any.
pub fn find(image: &Path) -> Result<Option<LoopDevice>> {
    let _ = image;
    todo!()
}

/// Every bound loop device with the (st_dev, st_ino) of its backing file.
pub fn list() -> Result<Vec<(LoopDevice, u64, u64)>> {
    todo!()
}

/// LOOP_CLR_FD; a device that is already free is success.
pub fn detach(device: &LoopDevice) -> Result<()> {
    let _ = device;
    todo!()
}

/// LOOP_SET_CAPACITY after the backing file grew.
pub fn refresh_capacity(device: &LoopDevice) -> Result<()> {
    let _ = device;
    todo!()
}

/// BLKGETSIZE64 of any block device.
pub fn size_bytes(device: &Path) -> Result<u64> {
    let _ = device;
    todo!()
}
