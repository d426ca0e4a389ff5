//! Shared scaffolding of loopvol's tests, in one dev-only crate: whether
//! privileged tests may run, sandboxes that leak nothing, and views of the
//! mounts and loop devices a test made (built on the backend's own
//! mountinfo parser and loop-device scan, through its `test-hooks` feature).

use std::path::{Path, PathBuf};

use loopvol_backend::test_hooks;

/// True when this process can make loop devices and mounts. Otherwise says so
/// loudly on stderr and returns false, so the caller skips; under
/// `LOOPVOL_REQUIRE_PRIVILEGED=1` (CI) a skip is a failure instead.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let loop_control = Path::new("/dev/loop-control").exists();
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
    pub fn path(&self) -> PathBuf {
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
pub fn cleanup_under(root: &Path) {
    test_hooks::cleanup_under(root);
}

/// Bound loop devices and the paths of their backing files.
pub fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    test_hooks::loop_devices()
}

/// Loop devices backed by files below `root`.
pub fn loops_under(root: &Path) -> usize {
    loop_devices().iter().filter(|(_, backing)| backing.starts_with(root)).count()
}

/// Mount points at or below `root`.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    test_hooks::mounts().into_iter().map(|(point, _, _)| point).filter(|p| p.starts_with(root)).collect()
}

/// How many mounts are stacked exactly at `path`.
pub fn mount_count(path: &Path) -> usize {
    test_hooks::mounts().iter().filter(|(point, _, _)| point == path).count()
}

/// Whether the top mount at `path` is read-only; None when nothing is mounted there.
pub fn mounted_read_only(path: &Path) -> Option<bool> {
    test_hooks::mounts().into_iter().rev().find(|(point, _, _)| point == path).map(|(_, _, ro)| ro)
}

/// The filesystem type of the top mount at `path`.
pub fn mounted_fs_type(path: &Path) -> Option<String> {
    test_hooks::mounts().into_iter().rev().find(|(point, _, _)| point == path).map(|(_, fs, _)| fs)
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
pub fn loops_settle(root: &Path, want: usize) -> usize {
    if eventually(|| loops_under(root) == want) {
        want
    } else {
        loops_under(root)
    }
}

/// Attaches `image` to a loop device nobody mounts (to stage faults: a
/// leaked device, a pool filesystem of a chosen kind) and returns its path.
pub fn attach_loop_device(image: &Path) -> PathBuf {
    test_hooks::attach_loop_device(image).expect("attach a loop device")
}
