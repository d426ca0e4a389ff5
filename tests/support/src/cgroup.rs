//! Real cgroups laid out as kubelet makes a pod's, for I/O limit tests:
//! `<hierarchy>/loopvol-test-<pid>-<n>/kubepods/burstable/pod<uid>`
//! (cgroupfs driver) or `.../kubepods.slice/kubepods-burstable.slice/
//! kubepods-burstable-pod<uid_>.slice` (systemd driver), removed on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The cgroup mount point the driver is given (`--cgroup-root`).
pub const ROOT: &str = "/sys/fs/cgroup";

pub struct TestPodCgroup {
    /// The pod's UID, as kubelet passes it.
    pub uid: String,
    /// The pod's cgroup directory.
    pub dir: PathBuf,
    /// cgroup v2 (`io.max`); else v1 (`blkio.throttle.*`).
    pub v2: bool,
    /// Directories made, outermost first.
    made: Vec<PathBuf>,
}

impl TestPodCgroup {
    /// A pod cgroup in the hierarchy that controls block I/O here (v1
    /// `blkio`, else v2 with the `io` controller). Panics when there is none:
    /// the privileged tests need one.
    pub fn new(systemd: bool) -> TestPodCgroup {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let uid = format!("{pid:08x}-{n:04x}-4000-8000-00000000abcd");
        let blkio = Path::new(ROOT).join("blkio");
        let (hierarchy, v2) = if blkio.join("blkio.throttle.read_iops_device").exists() {
            (blkio, false)
        } else {
            let controllers = fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "io"),
                "no blkio (v1) or io (v2) cgroup controller under {ROOT}"
            );
            (PathBuf::from(ROOT), true)
        };
        let top = hierarchy.join(format!("loopvol-test-{pid}-{n}"));
        let chain: Vec<PathBuf> = if systemd {
            let under = uid.replace('-', "_");
            let a = top.join("kubepods.slice");
            let b = a.join("kubepods-burstable.slice");
            let c = b.join(format!("kubepods-burstable-pod{under}.slice"));
            vec![top, a, b, c]
        } else {
            let a = top.join("kubepods");
            let b = a.join("burstable");
            let c = b.join(format!("pod{uid}"));
            vec![top, a, b, c]
        };
        let mut me = TestPodCgroup { uid, dir: chain[3].clone(), v2, made: Vec::new() };
        if v2 {
            // The io controller must be enabled down to the pod's parent.
            let _ = fs::write(Path::new(ROOT).join("cgroup.subtree_control"), "+io");
        }
        for dir in chain {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            me.made.push(dir.clone());
            if v2 && me.made.len() < 4 {
                fs::write(dir.join("cgroup.subtree_control"), "+io")
                    .unwrap_or_else(|e| panic!("enable io in {}: {e}", dir.display()));
            }
        }
        me
    }

    /// A container's cgroup below the pod's, made now (as kubelet does after
    /// the pod's volumes are mounted).
    pub fn add_container(&mut self, name: &str) -> TestPodCgroup {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.made.push(dir.clone());
        TestPodCgroup { uid: self.uid.clone(), dir, v2: self.v2, made: Vec::new() }
    }

    /// The rule for `major:minor` in one of the pod's limit files, as the
    /// kernel shows it: v1 `blkio.throttle.<file>` (its number), or the
    /// `io.max` key for the same limit (`riops` for `read_iops_device` and
    /// so on). 0: no rule.
    pub fn rule(&self, rdev: (u64, u64), v1_file: &str) -> u64 {
        let device = format!("{}:{}", rdev.0, rdev.1);
        if self.v2 {
            let key = match v1_file {
                "read_iops_device" => "riops",
                "write_iops_device" => "wiops",
                "read_bps_device" => "rbps",
                "write_bps_device" => "wbps",
                other => panic!("unknown limit file {other}"),
            };
            let text = fs::read_to_string(self.dir.join("io.max")).expect("read io.max");
            text.lines()
                .filter(|l| l.split_whitespace().next() == Some(device.as_str()))
                .flat_map(|l| l.split_whitespace().skip(1).map(str::to_string).collect::<Vec<_>>())
                .find_map(|f| f.strip_prefix(&format!("{key}=")).map(|v| v.parse().unwrap_or(0)))
                .unwrap_or(0)
        } else {
            let text = fs::read_to_string(self.dir.join(format!("blkio.throttle.{v1_file}"))).expect("read limit");
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(d, _)| *d == device)
                .map(|(_, v)| v.trim().parse().expect("a number"))
                .unwrap_or(0)
        }
    }
}

impl Drop for TestPodCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The device number of a device node.
pub fn rdev(device: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let r = fs::metadata(device).unwrap_or_else(|e| panic!("stat {}: {e}", device.display())).rdev();
    (nix::sys::stat::major(r), nix::sys::stat::minor(r))
}
