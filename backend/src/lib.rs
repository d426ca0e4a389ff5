//! loopvol's backend: everything that touches the kernel, the pool and the
//! catalog. The front ends (CSI, FlexVolume) only translate requests into
//! calls on [`Pool`] and map [`Error`] to their own replies.
//!
//! Data flows one way: `pool`/`node` (orchestration, locking, records) call the
//! kernel-facing modules (`loopdev`, `mount`, `fs`, `copy`, `tools`,
//! `mountinfo`); nothing here calls back up.

pub mod copy;
pub mod doctor;
pub mod error;
pub mod extents;
pub mod failpoint;
pub mod fs;
pub mod id;
pub mod lock;
pub mod loopdev;
pub mod mount;
pub mod mount_options;
pub mod mountinfo;
pub mod node;
pub mod pool;
pub mod quantity;
pub mod record;
pub mod snapshot_metadata;
#[doc(hidden)]
pub mod testing;
pub mod tools;
pub mod types;

pub use error::{Error, Result};
pub use node::{PublishRequest, StageRequest, VolumeStats};
pub use pool::{
    Capacity, CapacityRange, CreateVolume, ExpandOutcome, GroupSnapshot, Pool, PoolOptions, Snapshot, Source, Volume,
};
pub use types::{AccessType, Condition, FsType, Usage};
