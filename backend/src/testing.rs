//! Support for privileged tests in every crate of the workspace.

/// True when this process can make loop devices and mounts. Otherwise says so
/// loudly on stderr and returns false, so the caller skips; under
/// `LOOPVOL_REQUIRE_PRIVILEGED=1` (CI) a skip is a failure instead.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let loop_control = std::path::Path::new("/dev/loop-control").exists();
    if root && loop_control {
        return true;
    }
    let why = if root { "/dev/loop-control is missing" } else { "not running as root" };
    if std::env::var_os("LOOPVOL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("privileged test {test} cannot run ({why}) and LOOPVOL_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIPPED privileged test {test}: {why} (set LOOPVOL_REQUIRE_PRIVILEGED=1 to make this fail)");
    false
}

/// A temporary directory for one test that, when dropped, unmounts every
/// mount below it and detaches every loop device backed by a file below it,
/// so a failing test leaks nothing.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("loopvol-test-").tempdir().expect("create a temp dir");
        Sandbox { dir }
    }

    /// The sandbox directory, canonical (mountinfo and sysfs report canonical paths).
    pub fn path(&self) -> std::path::PathBuf {
        std::fs::canonicalize(self.dir.path()).expect("canonical temp dir")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        cleanup_under(&self.path());
    }
}

/// Unmounts everything mounted below `root` (deepest first, lazily so a busy
/// mount cannot stop the cleanup) and detaches loop devices backed below it.
pub fn cleanup_under(root: &std::path::Path) {
    for _ in 0..8 {
        let Ok(mounts) = crate::mountinfo::read() else { break };
        let mut under: Vec<_> = mounts.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(root)).collect();
        if under.is_empty() {
            break;
        }
        under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in under {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    for (dev, backing) in loop_devices() {
        if backing.starts_with(root) {
            let _ = crate::loopdev::detach(&dev);
        }
    }
}

/// Bound loop devices and the paths of their backing files.
pub fn loop_devices() -> Vec<(crate::loopdev::LoopDevice, std::path::PathBuf)> {
    crate::loopdev::backing_files()
}

/// Loop devices backed by files below `root`.
pub fn loops_under(root: &std::path::Path) -> usize {
    loop_devices().iter().filter(|(_, backing)| backing.starts_with(root)).count()
}

/// Waits (bounded, 20 s) until `cond` holds and says whether it did. A loop
/// device released by autoclear lingers while udev still has it open, so
/// such states are polled rather than read once: a liveness bound, not a
/// timing assertion.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// The number of loop devices backed below `root` once it reaches `want`, or
/// after 20 s (see [`eventually`]).
pub fn loops_settle(root: &std::path::Path, want: usize) -> usize {
    if eventually(|| loops_under(root) == want) {
        want
    } else {
        loops_under(root)
    }
}
