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
