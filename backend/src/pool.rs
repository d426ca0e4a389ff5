//! The pool: a directory that holds every volume and snapshot as a sparse
//! image file plus a JSON record, and the controller-side operations on them.
//!
//! Layout:
//! ```text
//! <pool>/volumes/<id>.img   <id>.json
//! <pool>/snapshots/<id>.img <id>.json
//! <pool>/groups/<id>.json
//! <pool>/locks/<name>.lock
//! <pool>/staging/<id>/      staging mounts the pool makes itself (ephemeral volumes)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::types::{AccessType, FsType};

/// Tunables of an open pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How long an operation waits for another holder of the same volume's
    /// lock before giving up with `Error::Busy`.
    pub lock_wait: Duration,
    /// Size of a volume created without a requested size.
    pub default_size: u64,
    /// Filesystem of a mount volume created without an fs type.
    pub default_fs: FsType,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { lock_wait: Duration::from_secs(30), default_size: 1 << 30, default_fs: FsType::Ext4 }
    }
}

/// CSI-style capacity range; 0 means "not set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityRange {
    pub required: u64,
    pub limit: u64,
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

/// A request to create a volume. Idempotent on `name`.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    /// CO-chosen name; the ID is derived from it (see `id::from_name`) unless `id` is set.
    pub name: String,
    /// Explicit ID (FlexVolume's `volumeID`).
    pub id: Option<String>,
    pub capacity: CapacityRange,
    /// None: the pool default for mount volumes.
    pub fs_type: Option<FsType>,
    pub access_type: AccessType,
    /// Preallocate the image (fallocate) instead of leaving it sparse.
    pub thick: bool,
    pub source: Option<Source>,
    /// Free-form parameters kept in the record (StorageClass parameters).
    pub parameters: BTreeMap<String, String>,
}

/// A volume's catalog record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub capacity_bytes: u64,
    pub fs_type: FsType,
    pub access_type: AccessType,
    pub thick: bool,
    pub source: Option<Source>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The image is larger than the filesystem on it: grow it at the next stage.
    #[serde(default)]
    pub fs_grow_pending: bool,
    /// FlexVolume attach mode: the node that holds the volume.
    #[serde(default)]
    pub attached_node: Option<String>,
    /// Node state, reconciled with the kernel before it is trusted.
    #[serde(default)]
    pub staged: Option<crate::node::StageRecord>,
    #[serde(default)]
    pub published: BTreeMap<PathBuf, crate::node::PublishRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    /// Size of the source volume when the snapshot was taken.
    pub size_bytes: u64,
    pub fs_type: FsType,
    pub access_type: AccessType,
    pub created_at: u64,
    /// Set when the snapshot belongs to a group snapshot.
    #[serde(default)]
    pub group_id: Option<String>,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub id: String,
    pub name: String,
    pub snapshot_ids: Vec<String>,
    pub source_volume_ids: Vec<String>,
    pub created_at: u64,
    pub ready: bool,
}

/// Space in the pool. Volumes reserve their whole capacity (thin images are
/// not overcommitted: a full pool would turn into I/O errors inside pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// Largest volume that can still be created.
    pub max_volume_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpandOutcome {
    pub capacity_bytes: u64,
    /// The volume is staged: NodeExpandVolume must grow the filesystem.
    pub node_expansion_required: bool,
}

/// An open pool. Cheap to share between threads (`&Pool` methods); every
/// method takes the file locks it needs.
#[derive(Debug)]
pub struct Pool {
    pub(crate) root: PathBuf,
    pub(crate) options: PoolOptions,
}

impl Pool {
    /// Opens (creating if needed) the pool at `root`.
    pub fn open(root: &Path, options: PoolOptions) -> Result<Pool> {
        let _ = (root, options);
        todo!()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    /// Checks that the pool directory is reachable and writable (CSI Probe).
    pub fn probe(&self) -> Result<()> {
        todo!()
    }

    /// Reconciles every record with the kernel's mounts and loop devices
    /// (the CSI server calls this at start-up; single operations reconcile
    /// the volume they touch).
    pub fn reconcile_all(&self) -> Result<()> {
        todo!()
    }

    /// Creates a volume, or returns the existing one when `name` was already
    /// created with compatible parameters. Errors: InvalidName/InvalidId,
    /// VolumeNameConflict (ALREADY_EXISTS), SnapshotNotFound/VolumeNotFound
    /// for a missing source, SizeOutOfRange, Exhausted.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<Volume> {
        let _ = req;
        todo!()
    }

    /// Deletes a volume; a missing one is success. VolumeInUse while it is
    /// staged or published. Its snapshots stay usable.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    /// VolumeNotFound when missing.
    pub fn volume(&self, id: &str) -> Result<Volume> {
        let _ = id;
        todo!()
    }

    /// All volumes, sorted by ID (stable for pagination).
    pub fn volumes(&self) -> Result<Vec<Volume>> {
        todo!()
    }

    pub fn capacity(&self) -> Result<Capacity> {
        todo!()
    }

    /// Grows a volume's image (and its loop device, and its filesystem when it
    /// is staged and the kernel allows it). Requesting no more than the current
    /// size is success. Shrink is never done; Exhausted when the pool is full.
    pub fn expand_volume(&self, id: &str, new_size: u64) -> Result<ExpandOutcome> {
        let _ = (id, new_size);
        todo!()
    }

    /// Takes a snapshot of a volume (frozen while copied when it is mounted).
    /// Idempotent on `name`; SnapshotNameConflict for the same name with another source.
    pub fn create_snapshot(&self, name: &str, source_volume_id: &str) -> Result<Snapshot> {
        let _ = (name, source_volume_id);
        todo!()
    }

    /// Missing is success.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    pub fn snapshot(&self, id: &str) -> Result<Snapshot> {
        let _ = id;
        todo!()
    }

    /// All snapshots sorted by ID.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        todo!()
    }

    /// Snapshots every volume at one instant: all mounted members are frozen
    /// together, copied, then thawed. Idempotent on `name`.
    pub fn create_group_snapshot(&self, name: &str, volume_ids: &[String]) -> Result<GroupSnapshot> {
        let _ = (name, volume_ids);
        todo!()
    }

    /// Deletes the group and its member snapshots; missing is success.
    pub fn delete_group_snapshot(&self, id: &str) -> Result<()> {
        let _ = id;
        todo!()
    }

    pub fn group_snapshot(&self, id: &str) -> Result<GroupSnapshot> {
        let _ = id;
        todo!()
    }

    /// FlexVolume attach mode: records that `node` holds the volume.
    /// AttachedElsewhere when another node holds it; repeating is success.
    pub fn attach_to_node(&self, id: &str, node: &str) -> Result<()> {
        let _ = (id, node);
        todo!()
    }

    /// Drops the attachment if `node` holds it; anything else is success.
    pub fn detach_from_node(&self, id: &str, node: &str) -> Result<()> {
        let _ = (id, node);
        todo!()
    }
}
