//! Snapshot metadata (CSI SnapshotMetadata, changed-block tracking): the
//! allocated ranges of a snapshot, and the ranges that differ between two
//! snapshots of one volume. The range work is in `kernel::extents`; this
//! checks the snapshots and the window and says what the answer cost.
//!
//! Snapshots are immutable and both operations only read their images
//! (through file descriptors opened up front, so a concurrent delete cannot
//! pull an image from under them): no lock is taken.

use super::{Pool, Snapshot};
use crate::error::{Error, Result};
use crate::kernel::extents::{self, Range};

/// The answer to a metadata request: ranges inside `[starting_offset,
/// capacity_bytes)`, normal (sorted, merged), the first one cut to begin at
/// the starting offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRanges {
    /// The volume's capacity when the (target) snapshot was taken.
    pub capacity_bytes: u64,
    pub ranges: Vec<Range>,
}

/// A starting offset past the end is out of range (CSI: OUT_OF_RANGE); one
/// exactly at the end asks for nothing and gets an empty answer.
fn check_offset(starting_offset: u64, capacity: u64) -> Result<()> {
    if starting_offset > capacity {
        return Err(Error::SizeOutOfRange {
            requested: starting_offset,
            reason: format!("the starting offset is past the end of the snapshot ({capacity} bytes)"),
        });
    }
    Ok(())
}

impl Pool {
    /// The allocated (written) ranges of a snapshot from `starting_offset`
    /// on, found with SEEK_DATA/SEEK_HOLE. Read-only, so idempotent.
    ///
    /// Errors: SnapshotNotFound (unknown or invalid ID), SizeOutOfRange
    /// (offset past the end), Io/Sys reading the image.
    pub fn snapshot_allocated(&self, snapshot_id: &str, starting_offset: u64) -> Result<SnapshotRanges> {
        let snap = self.snapshot(snapshot_id)?;
        check_offset(starting_offset, snap.size_bytes)?;
        let ranges = extents::allocated(&self.snapshot_image_path(&snap.id), starting_offset, snap.size_bytes)?;
        tracing::debug!(snapshot = %snap.id, starting_offset, ranges = ranges.len(), "allocated ranges");
        Ok(SnapshotRanges { capacity_bytes: snap.size_bytes, ranges })
    }

    /// The ranges in which the snapshot `target_id` differs from the earlier
    /// snapshot `base_id` of the same volume, from `starting_offset` on (in
    /// blocks of `extents::COMPARE_BLOCK`). Shared extents (reflink pools)
    /// and holes are skipped unread, everything else is compared, so no
    /// changed byte is missed. Read-only, so idempotent; the statistics
    /// (what was skipped, read, and reported) are logged.
    ///
    /// Errors: SnapshotNotFound, InvalidArgument (snapshots of different
    /// volumes), SizeOutOfRange (offset past the end of the target),
    /// Io/Sys reading the images.
    pub fn snapshot_delta(&self, base_id: &str, target_id: &str, starting_offset: u64) -> Result<SnapshotRanges> {
        let mut ranges = Vec::new();
        let capacity_bytes = self.snapshot_delta_each(base_id, target_id, starting_offset, &mut |_, found| {
            ranges.extend_from_slice(found);
            true
        })?;
        Ok(SnapshotRanges { capacity_bytes, ranges })
    }

    /// [`Pool::snapshot_delta`], handing the ranges on as they are found:
    /// `emit(capacity_bytes, ranges)`, in order, merged across calls (none
    /// when nothing changed). `emit` returning false stops the work (the
    /// client is gone). Returns the capacity. Errors: as `snapshot_delta`;
    /// the argument checks fail before the first `emit`.
    pub fn snapshot_delta_each(
        &self,
        base_id: &str,
        target_id: &str,
        starting_offset: u64,
        emit: &mut dyn FnMut(u64, &[Range]) -> bool,
    ) -> Result<u64> {
        let base = self.snapshot(base_id)?;
        let target = self.snapshot(target_id)?;
        check_same_volume(&base, &target)?;
        let capacity = target.size_bytes;
        check_offset(starting_offset, capacity)?;
        let started = std::time::Instant::now();
        let stats = extents::delta_each(
            &self.snapshot_image_path(&base.id),
            &self.snapshot_image_path(&target.id),
            starting_offset,
            capacity,
            &mut |found| emit(capacity, found),
        )?;
        tracing::info!(
            base = %base.id,
            target = %target.id,
            starting_offset,
            ranges = stats.ranges,
            changed_bytes = stats.changed_bytes,
            unchanged_ranges = stats.unchanged_ranges,
            hole_bytes = stats.hole_bytes,
            shared_bytes = stats.shared_bytes,
            compared_bytes = stats.compared_bytes,
            unshared_equal_bytes = stats.unshared_equal_bytes,
            used_extents = stats.used_extents,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "snapshot delta"
        );
        Ok(capacity)
    }
}

fn check_same_volume(base: &Snapshot, target: &Snapshot) -> Result<()> {
    if base.source_volume_id != target.source_volume_id {
        return Err(Error::InvalidArgument(format!(
            "snapshots {} and {} are of different volumes ({} and {})",
            base.id, target.id, base.source_volume_id, target.source_volume_id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::pool::{CapacityRange, CreateVolume, Lifecycle, PoolOptions};
    use crate::types::AccessType;

    const MIB: u64 = 1 << 20;

    fn block_volume(pool: &Pool, name: &str) -> String {
        let req = CreateVolume {
            io_limits: Default::default(),
            name: name.into(),
            id: None,
            capacity: CapacityRange { required: 64 * MIB, limit: 0 },
            fs_type: None,
            access_type: AccessType::Block,
            thick: false,
            source: None,
            parameters: BTreeMap::new(),
            lifecycle: Lifecycle::Persistent,
            direct_io: true,
        };
        pool.create_volume(&req).unwrap().id
    }

    fn write(pool: &Pool, vol: &str, offset: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(pool.volume_image_path(vol)).unwrap();
        f.write_all_at(data, offset).unwrap();
        f.sync_all().unwrap();
    }

    /// Unprivileged: the pool is a temp dir and the volume image is written
    /// directly (the gRPC tests go through loop devices on ext4/xfs pools).
    #[test]
    fn allocated_and_delta_of_two_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(&dir.path().join("pool"), PoolOptions::default()).unwrap();
        let vol = block_volume(&pool, "v");
        write(&pool, &vol, 0, &[1; 8192]);
        write(&pool, &vol, 32 * MIB, &[2; 4096]);
        let s1 = pool.create_snapshot("s1", &vol).unwrap().id;
        write(&pool, &vol, 4096, &[3; 4096]);
        write(&pool, &vol, 48 * MIB, &[4; 100]);
        let s2 = pool.create_snapshot("s2", &vol).unwrap().id;

        let all = pool.snapshot_allocated(&s2, 0).unwrap();
        assert_eq!(all.capacity_bytes, 64 * MIB);
        for (off, len) in [(0, 8192), (32 * MIB, 4096), (48 * MIB, 100)] {
            assert!(all.ranges.iter().any(|r| r.offset <= off && r.end() >= off + len), "{off}: {all:?}");
        }
        let delta = pool.snapshot_delta(&s1, &s2, 0).unwrap();
        assert_eq!(delta.ranges, vec![Range::new(4096, 4096), Range::new(48 * MIB, 4096)]);
        assert_eq!(delta.capacity_bytes, 64 * MIB);
        // Resuming after the first range gives the rest.
        let rest = pool.snapshot_delta(&s1, &s2, 8192).unwrap();
        assert_eq!(rest.ranges, vec![Range::new(48 * MIB, 4096)]);
        // At the very end: nothing, and no error.
        assert!(pool.snapshot_delta(&s1, &s2, 64 * MIB).unwrap().ranges.is_empty());
        assert!(pool.snapshot_allocated(&s1, 64 * MIB).unwrap().ranges.is_empty());
    }

    #[test]
    fn errors() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(&dir.path().join("pool"), PoolOptions::default()).unwrap();
        let (a, b) = (block_volume(&pool, "a"), block_volume(&pool, "b"));
        let sa = pool.create_snapshot("sa", &a).unwrap().id;
        let sb = pool.create_snapshot("sb", &b).unwrap().id;
        assert!(matches!(pool.snapshot_allocated("nope", 0), Err(Error::SnapshotNotFound(_))));
        assert!(matches!(pool.snapshot_allocated("../x", 0), Err(Error::SnapshotNotFound(_))));
        assert!(matches!(pool.snapshot_delta(&sa, "nope", 0), Err(Error::SnapshotNotFound(_))));
        assert!(matches!(pool.snapshot_delta("nope", &sa, 0), Err(Error::SnapshotNotFound(_))));
        assert!(matches!(pool.snapshot_delta(&sa, &sb, 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(pool.snapshot_allocated(&sa, 64 * MIB + 1), Err(Error::SizeOutOfRange { .. })));
        assert!(matches!(pool.snapshot_delta(&sa, &sa, 64 * MIB + 1), Err(Error::SizeOutOfRange { .. })));
    }
}
