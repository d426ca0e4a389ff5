//! Running external programs with argv (never a shell), output captured. STUB.

use std::ffi::OsStr;
use std::process::Output;

use crate::error::Result;

/// Runs `program` (looked up in /usr/sbin, /sbin, /usr/bin, /bin) with `args`,
/// stdin null, stdout and stderr captured. A non-zero exit is Error::Tool.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let _ = (program, args);
    todo!()
}

/// Like `run` but returns the output whatever the exit status.
pub fn run_any<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let _ = (program, args);
    todo!()
}
