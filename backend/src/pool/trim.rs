//! Space reclaim: a sparse image grows as the filesystem in it writes and
//! never shrinks when files are deleted. A discard on a loop device punches
//! a hole into its image, so trimming a staged filesystem (FITRIM) gives the
//! space of deleted files back to the pool.
//!
//! What a trim cannot return: blocks a snapshot or clone still shares with
//! the volume (reflink pools keep them for the snapshot), and nothing of a
//! thick volume, whose preallocation is kept on purpose (never trimmed).
//! Trims take the volume's lock, so they never run during a snapshot or an
//! expansion of the same volume.

use std::os::unix::fs::MetadataExt;

use super::Pool;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kernel::fstools;
use crate::types::AccessType;

/// What a trim of one volume did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimOutcome {
    pub id: String,
    /// Why the volume was not trimmed (not staged, thick, block, read-only,
    /// busy); None when it was.
    pub skipped: Option<&'static str>,
    /// Bytes allocated to the image before and after.
    pub allocated_before: u64,
    pub allocated_after: u64,
}

impl TrimOutcome {
    /// Bytes the trim gave back to the pool.
    pub fn returned_bytes(&self) -> u64 {
        self.allocated_before.saturating_sub(self.allocated_after)
    }
}

impl Pool {
    /// Bytes of the pool's filesystem allocated to a volume's image.
    pub fn allocated_bytes(&self, id: &str) -> Result<u64> {
        crate::id::validate(id)?;
        let image = self.volume_image_path(id);
        let meta = std::fs::metadata(&image).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::VolumeNotFound(id.to_string()),
            _ => Error::io("stat image", &image, e),
        })?;
        Ok(meta.blocks() * 512)
    }

    /// Trims the volume's staged filesystem (FITRIM) under its lock and
    /// reports what came back. A volume that is not staged, is thick, is a
    /// block volume or is staged read-only is skipped, not an error.
    ///
    /// Errors: VolumeNotFound; Busy when its lock is held past the wait;
    /// Sys from FITRIM.
    pub fn trim(&self, id: &str) -> Result<TrimOutcome> {
        let _guard = self.lock_volume(id)?;
        let (vol, mut state) = self.load(id)?;
        let live = self.reconcile(&vol, &mut state)?;
        let before = self.allocated_bytes(id)?;
        let skip = |why| {
            Ok(TrimOutcome { id: id.into(), skipped: Some(why), allocated_before: before, allocated_after: before })
        };
        if vol.thick {
            return skip("thick volumes keep their preallocation");
        }
        let Some(staged) = state.staged.as_ref().filter(|_| live.staged) else { return skip("not staged") };
        if staged.access_type == AccessType::Block {
            return skip("a block volume has no filesystem to trim");
        }
        if staged.read_only {
            return skip("staged read-only");
        }
        failpoint::hit("trim.before-fitrim");
        let trimmed = fstools::trim(&staged.staging_path)?;
        failpoint::hit("trim.after-fitrim");
        let after = self.allocated_bytes(id)?;
        tracing::info!(volume = %id, trimmed, returned = before.saturating_sub(after), "volume trimmed");
        Ok(TrimOutcome { id: id.into(), skipped: None, allocated_before: before, allocated_after: after })
    }
}
