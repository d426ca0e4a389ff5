//! Test-only crash injection. When the environment variable
//! `LOOPVOL_FAILPOINT` names a point passed to [`hit`], the process aborts
//! there (SIGABRT: no unwinding, no destructors, no flush — as abrupt as a
//! SIGKILL or a power cut for the pool's purposes). The crash tests
//! (csi-driver/tests/csi_crash.rs) use it to stop the server between two
//! steps of an operation and then check that a restart converges.
//!
//! Unset (production), a hit costs one relaxed load of a `OnceLock`.

use std::sync::OnceLock;

/// The environment variable naming the point to abort at.
pub const ENV: &str = "LOOPVOL_FAILPOINT";

/// Aborts the process when `name` is the configured failpoint.
pub fn hit(name: &str) {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if point.as_deref() == Some(name) {
        tracing::error!(failpoint = name, "failpoint hit: aborting");
        std::process::abort();
    }
}
