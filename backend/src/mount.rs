//! mount(2)/umount2(2) directly, no mount helper process.
//! STUB: signatures fixed, bodies being written.

use std::path::Path;

use crate::error::Result;
use crate::mount_options::MountOptions;
use crate::types::FsType;

/// Mounts a filesystem. `read_only` adds MS_RDONLY.
pub fn mount_fs(device: &Path, target: &Path, fs: FsType, opts: &MountOptions, read_only: bool) -> Result<()> {
    let _ = (device, target, fs, opts, read_only);
    todo!()
}

/// Bind-mounts `source` (dir or file) onto `target`; read-only takes a
/// second MS_REMOUNT|MS_BIND|MS_RDONLY pass, as the kernel requires.
pub fn bind(source: &Path, target: &Path, read_only: bool, opts: &MountOptions) -> Result<()> {
    let _ = (source, target, read_only, opts);
    todo!()
}

/// Unmounts everything stacked on `target`. Not mounted is success
/// (returns false). A corrupted mount (ENOTCONN/ESTALE/EIO on stat) is still unmounted.
pub fn unmount(target: &Path) -> Result<bool> {
    let _ = target;
    todo!()
}

/// Unmounts `target` and removes it (dir or file); a missing target is success.
pub fn cleanup(target: &Path) -> Result<()> {
    let _ = target;
    todo!()
}
