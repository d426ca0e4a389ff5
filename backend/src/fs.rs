//! Filesystem tools: probe, mkfs, fsck, grow, statfs, freeze. STUB.

use std::path::Path;

use crate::error::Result;
use crate::types::{FsType, Usage};

/// What `blkid -p` (low-level probe, no cache) finds on the device:
/// Some("ext4"), Some("dos") for a partition table, ..., None for blank.
pub fn probe(device: &Path) -> Result<Option<String>> {
    let _ = device;
    todo!()
}

/// mkfs; `thick` keeps the preallocation (no discard).
pub fn format(device: &Path, fs: FsType, thick: bool) -> Result<()> {
    let _ = (device, fs, thick);
    todo!()
}

/// fsck before a read-write mount (ext4 `e2fsck -p`; xfs and btrfs check at mount).
pub fn check(device: &Path, fs: FsType) -> Result<()> {
    let _ = (device, fs);
    todo!()
}

/// Size in bytes of the filesystem on an unmounted device (ext4: dumpe2fs -h),
/// or None where the fs grows only when mounted.
pub fn fs_size(device: &Path, fs: FsType) -> Result<Option<u64>> {
    let _ = (device, fs);
    todo!()
}

/// Grows an unmounted ext4 (e2fsck -f -p, resize2fs). No-op for xfs/btrfs.
pub fn grow_offline(device: &Path, fs: FsType) -> Result<()> {
    let _ = (device, fs);
    todo!()
}

/// Grows a mounted filesystem to fill its device. Error::OnlineGrowRefused when
/// the kernel says no (ext4 here).
pub fn grow_online(device: &Path, mount_point: &Path, fs: FsType) -> Result<()> {
    let _ = (device, mount_point, fs);
    todo!()
}

/// statfs(2) of a mounted path.
pub fn usage(path: &Path) -> Result<Usage> {
    let _ = path;
    todo!()
}

/// FIFREEZE on a mount point; FITHAW when the guard drops.
pub struct Frozen {
    _private: (),
}

pub fn freeze(mount_point: &Path) -> Result<Frozen> {
    let _ = mount_point;
    todo!()
}
