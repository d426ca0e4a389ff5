//! loopvol's backend: everything that touches the kernel, the pool and the
//! catalog. The front ends (CSI, FlexVolume) only translate requests into
//! calls on [`Pool`] and map [`Error`] to their own replies.
//!
//! The public API is [`Pool`] with its request, record and error types, the
//! parameter parser ([`params`]), the pure helpers the front ends share
//! (`id`, `quantity`, `ranges`) and read-only views of the host for
//! reports ([`host`]). Data flows one way: `pool` (orchestration, locking,
//! records) calls the crate-private `kernel` layer (loop devices, mounts,
//! mountinfo, filesystem tools, copies, locks, record files); nothing in
//! `kernel` calls back up.

pub mod error;
pub mod failpoint;
mod filesystem;
pub mod host;
pub mod id;
mod kernel;
pub mod params;
mod pool;
pub mod quantity;
/// Byte ranges of volume images and their paging (snapshot metadata).
pub mod ranges {
    pub use crate::kernel::extents::{pages, Range};
}
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
mod types;

pub use error::{Error, Result};
pub use filesystem::FsType;
pub use pool::{
    clean_path, Capacity, CapacityRange, CreateVolume, ExpandOutcome, Finding, FindingKind, GroupSnapshot, Lifecycle,
    NodeState, Pool, PoolOptions, PrivateMount, PublishRecord, PublishRequest, Snapshot, SnapshotRanges, Source,
    StageRecord, StageRequest, TrimOutcome, Volume, VolumeStats, SNAPSHOT_RECORD_VERSION, VOLUME_RECORD_VERSION,
};
pub use types::{AccessType, Condition, IoLimits, Usage};
