//! Copying images: reflink (FICLONE) where the pool's filesystem can, else a
//! sparse copy with SEEK_DATA/SEEK_HOLE. STUB.

use std::path::Path;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

/// Copies `src` to the new file `dst` (created, mode 0600, fsynced).
pub fn copy_image(src: &Path, dst: &Path) -> Result<CopyMethod> {
    let _ = (src, dst);
    todo!()
}
