//! Read-only views of the kernel layer and a forced clean-up, for the
//! workspace's test support crate (`tests/support`), and the pure parsers of
//! the kernel layer for the fuzz targets (`tests/fuzz`). Compiled only with
//! the `test-hooks` feature, which no shipped binary enables.

use std::path::{Path, PathBuf};

use crate::kernel::{loopdev, mountinfo};

/// The mountinfo parser (pure), for fuzzing.
pub mod mountinfo_parser {
    pub use crate::kernel::mountinfo::{parse, MountEntry};
}
/// Image deltas with their statistics, for the snapshot delta benchmark.
pub mod extents {
    pub use crate::kernel::extents::{delta, DeltaStats};
}
/// The mount option allow-list (pure), for fuzzing.
pub use crate::kernel::mount_options::MountOptions;

/// Unmounts everything mounted below `root` (deepest first, lazily so a busy
/// mount cannot stop the clean-up) and detaches loop devices backed below it.
pub fn cleanup_under(root: &Path) {
    for _ in 0..8 {
        let Ok(mounts) = mountinfo::read() else { break };
        let mut under: Vec<_> = mounts.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(root)).collect();
        if under.is_empty() {
            break;
        }
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in under {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    for entry in loopdev::list().unwrap_or_default() {
        if entry.backing_path.starts_with(root) {
            let _ = loopdev::detach(&entry.device);
        }
    }
}

/// Detaches one loop device (tests that leave one behind on purpose).
pub fn detach_loop_device(device: &Path) {
    let Some(number) = device.to_str().and_then(|d| d.strip_prefix("/dev/loop")).and_then(|n| n.parse().ok()) else {
        return;
    };
    let _ = loopdev::detach(&loopdev::LoopDevice::from_number(number));
}

/// Attaches `image` to a loop device without autoclear (nothing mounts it)
/// and returns the device path.
pub fn attach_loop_device(image: &Path) -> crate::Result<PathBuf> {
    let attached =
        loopdev::attach(image, loopdev::AttachOptions { autoclear: false, read_only: false, ..Default::default() })?;
    Ok(attached.device.path)
}
