//! Black-box tooling for loopvol: the pieces of `csi-bench`, which the
//! cross-driver tests in `tests/tests/` reuse (a CSI client over a unix socket).

#![forbid(unsafe_code)]

pub mod bench;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A workspace binary (`loopvol`, `loopvol-csi`), as `cargo test --workspace`
/// builds it beside the test executables; built on demand when a test runs
/// alone (`cargo test -p loopvol-tests`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let package = if name == "loopvol" { "loopvol-flexvolume" } else { "loopvol-csi" };
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name}");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}
