//! Per-device I/O limits in a pod's cgroup: cgroup v2 `io.max`, or cgroup
//! v1 `blkio.throttle.*`. A limit set on the pod's cgroup holds for all its
//! containers, which are its children.
//!
//! The pod's cgroup is found by its UID under kubelet's two layouts:
//! cgroupfs (`kubepods/burstable/pod<uid>`) and systemd
//! (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice`,
//! dashes in the UID turned into underscores). The UID is only compared with
//! directory names, never joined into a path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::types::IoLimits;

/// How deep below the hierarchy's root a pod's cgroup may be:
/// `[kubelet root/]kubepods/<qos>/pod<uid>`.
const MAX_DEPTH: usize = 4;
/// At most this many cgroups of one pod get v1 rules (the pod's and its
/// containers'; a pod has a handful).
const MAX_V1_CGROUPS: usize = 256;

/// Which cgroup interface a pod's cgroup speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A pod's cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: PathBuf,
    pub version: Version,
}

/// The hierarchy that controls block I/O under `root` (the cgroup mount
/// point, normally `/sys/fs/cgroup`): v1's `blkio` controller where it is
/// mounted (a v1 or hybrid host), else the unified v2 hierarchy.
pub fn io_hierarchy(root: &Path) -> Option<(PathBuf, Version)> {
    let blkio = root.join("blkio");
    if blkio.join("blkio.throttle.read_iops_device").exists() {
        return Some((blkio, Version::V1));
    }
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    controllers.split_whitespace().any(|c| c == "io").then(|| (root.to_path_buf(), Version::V2))
}

/// A pod UID as Kubernetes makes them (a UUID); anything else finds nothing.
pub fn valid_pod_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The cgroup of the pod with this UID, if the node has one.
pub fn find_pod(root: &Path, pod_uid: &str) -> io::Result<Option<PodCgroup>> {
    if !valid_pod_uid(pod_uid) {
        return Ok(None);
    }
    let Some((hierarchy, version)) = io_hierarchy(root) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no blkio (cgroup v1) or io (cgroup v2) controller under {}", root.display()),
        ));
    };
    let cgroupfs = format!("pod{pod_uid}");
    let systemd = format!("pod{}.slice", pod_uid.replace('-', "_"));
    let mut level = vec![hierarchy];
    for depth in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name == cgroupfs || (name.starts_with("kubepods") && name.ends_with(&systemd)) {
                    return Ok(Some(PodCgroup { path: entry.path(), version }));
                }
                // Any top-level directory may hold kubelet's root (its
                // --cgroup-root); below it, only kubepods and QoS classes.
                if depth == 0 || name.contains("kubepods") || name == "burstable" || name == "besteffort" {
                    next.push(entry.path());
                }
            }
        }
        level = next;
    }
    Ok(None)
}

/// Sets `limits` for the device `major:minor` for the pod; zero limits
/// remove the rules. v2 throttles a cgroup's whole subtree, so the pod's
/// cgroup is enough. v1 throttles only the tasks of the cgroup itself (its
/// `blkio.throttle.*` is not hierarchical: measured here, a child cgroup ran
/// 117k IOPS under its parent's 200), so the rules go into the pod's cgroup
/// and every container cgroup below it, and containers started later need
/// this again (see `Pool::resync_io_limits`).
pub fn apply(pod: &PodCgroup, (major, minor): (u64, u64), limits: &IoLimits) -> io::Result<()> {
    match pod.version {
        Version::V2 => write(&pod.path.join("io.max"), &io_max_line(major, minor, limits)),
        Version::V1 => {
            let mut dirs = vec![pod.path.clone()];
            let mut i = 0;
            while i < dirs.len() && dirs.len() < MAX_V1_CGROUPS {
                if let Ok(entries) = fs::read_dir(&dirs[i]) {
                    dirs.extend(
                        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
                    );
                }
                i += 1;
            }
            for (n, dir) in dirs.iter().enumerate() {
                for (file, value) in [
                    ("blkio.throttle.read_iops_device", limits.read_iops),
                    ("blkio.throttle.write_iops_device", limits.write_iops),
                    ("blkio.throttle.read_bps_device", limits.read_bytes_per_second),
                    ("blkio.throttle.write_bps_device", limits.write_bytes_per_second),
                ] {
                    match write(&dir.join(file), &format!("{major}:{minor} {value}")) {
                        // A container cgroup removed while we walked.
                        Err(e) if n > 0 && e.kind() == io::ErrorKind::NotFound => break,
                        other => other?,
                    }
                }
            }
            Ok(())
        }
    }
}

/// Whether limits on `root`'s I/O hierarchy must be re-applied as
/// containers come and go (cgroup v1).
pub fn needs_resync(root: &Path) -> bool {
    io_hierarchy(root).is_some_and(|(_, v)| v == Version::V1)
}

/// The v2 `io.max` line; `max` is unlimited.
pub fn io_max_line(major: u64, minor: u64, l: &IoLimits) -> String {
    let v = |n: u64| if n == 0 { "max".to_string() } else { n.to_string() };
    format!(
        "{major}:{minor} rbps={} wbps={} riops={} wiops={}",
        v(l.read_bytes_per_second),
        v(l.write_bytes_per_second),
        v(l.read_iops),
        v(l.write_iops)
    )
}

fn write(path: &Path, line: &str) -> io::Result<()> {
    // One write(2) per rule: cgroup files take one rule per write.
    fs::write(path, line).map_err(|e| io::Error::new(e.kind(), format!("write {line:?} to {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_lines() {
        let l = IoLimits { read_iops: 100, write_bytes_per_second: 1 << 20, ..IoLimits::default() };
        assert_eq!(io_max_line(7, 3, &l), "7:3 rbps=max wbps=1048576 riops=100 wiops=max");
        assert_eq!(io_max_line(7, 3, &IoLimits::default()), "7:3 rbps=max wbps=max riops=max wiops=max");
    }

    #[test]
    fn pod_uids_are_uuids_only() {
        assert!(valid_pod_uid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        for bad in ["", "../x", "pod/1", "a b", &"a".repeat(65)] {
            assert!(!valid_pod_uid(bad), "{bad:?}");
        }
    }
}
