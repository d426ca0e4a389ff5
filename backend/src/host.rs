//! Read-only views of what the host has under a directory — its mounts and
//! the loop devices backed by files there — through the backend's one
//! mountinfo parser and its one loop-device scan. For reports and leak
//! checks (benchmarks, tests); the pool's own operations use `pool::live`.

use std::path::{Path, PathBuf};

use crate::kernel::{loopdev, mountinfo};

/// Mount points at or below `root` (this process' mount namespace).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    mountinfo::read().unwrap_or_default().into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(root)).collect()
}

/// The mounts stacked exactly at `path`, bottom first: whether each is read-only.
pub fn mounts_at(path: &Path) -> Vec<bool> {
    mountinfo::read().unwrap_or_default().iter().filter(|m| m.mount_point == path).map(|m| m.read_only()).collect()
}

/// Every bound loop device and the path of its backing file.
pub fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    loopdev::list().unwrap_or_default().into_iter().map(|e| (e.device.path, e.backing_path)).collect()
}

/// Loop devices whose backing file lies at or below `root`.
pub fn loop_devices_under(root: &Path) -> Vec<PathBuf> {
    loop_devices().into_iter().filter(|(_, backing)| backing.starts_with(root)).map(|(dev, _)| dev).collect()
}
