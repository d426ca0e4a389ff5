//! User-supplied mount options, checked against an allow-list and split into
//! mount(2) flags and filesystem data. STUB.

use crate::error::Result;
use crate::types::FsType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: nix::mount::MsFlags,
    /// Comma-separated data string passed to the filesystem.
    pub data: String,
    /// The options as given (normalised), for comparing with an existing mount.
    pub given: Vec<String>,
}

impl MountOptions {
    /// Validates options; `suid`, `dev` and unknown options are refused.
    pub fn parse<S: AsRef<str>>(options: &[S], fs: Option<FsType>) -> Result<Self> {
        let _ = (options, fs);
        todo!()
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { flags: nix::mount::MsFlags::empty(), data: String::new(), given: Vec::new() }
    }
}
