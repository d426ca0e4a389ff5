//! Node-side operations: stage, publish, unpublish, unstage, stats, expand.
//! Every one is idempotent and takes the volume's lock; the kernel's mount
//! table is the truth, the records only remember what was asked for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pool::Pool;
use crate::types::{AccessType, Condition, FsType, Usage};

#[derive(Debug, Clone)]
pub struct StageRequest {
    pub staging_path: PathBuf,
    pub access_type: AccessType,
    /// None: the volume's own fs type.
    pub fs_type: Option<FsType>,
    pub read_only: bool,
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub access_type: AccessType,
    pub read_only: bool,
    pub mount_options: Vec<String>,
    /// Single-writer access modes: refuse a second live target (VolumeInUse).
    pub exclusive: bool,
}

/// What was staged, as remembered in the volume record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub staging_path: PathBuf,
    pub access_type: AccessType,
    pub fs_type: FsType,
    pub read_only: bool,
    pub mount_options: Vec<String>,
    /// The loop device at staging time (informational; re-looked-up by backing file).
    pub device: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub access_type: AccessType,
    pub read_only: bool,
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    /// None for block volumes.
    pub usage: Option<Usage>,
    /// Size of the block device (block volumes) or filesystem total.
    pub total_bytes: u64,
    pub condition: Condition,
}

impl Pool {
    /// Attaches the image to a loop device, formats it when blank (never for a
    /// read-only request, never over anything blkid finds), checks it, grows it
    /// when the image outgrew it, and mounts it at the staging path. Block
    /// volumes are only attached. Repeating with the same arguments is success;
    /// different arguments at the same path are IncompatibleAtPath; another
    /// staging path while staged is StagedElsewhere.
    pub fn stage(&self, id: &str, req: &StageRequest) -> Result<StageRecord> {
        let _ = (id, req);
        todo!()
    }

    /// Unmounts the staging path (the autoclear loop device then goes away) or,
    /// for block volumes, detaches the device. Not staged is success;
    /// VolumeInUse while a target is still published. `remove_dir` also removes
    /// the staging directory (FlexVolume owns its staging dirs; CSI's belong to kubelet).
    pub fn unstage(&self, id: &str, staging_path: &Path, remove_dir: bool) -> Result<()> {
        let _ = (id, staging_path, remove_dir);
        todo!()
    }

    /// Bind-mounts the staged filesystem (or the loop device, for block) onto
    /// the target, creating the target (directory or file). NotStaged when the
    /// staging mount is missing.
    pub fn publish(&self, id: &str, req: &PublishRequest) -> Result<()> {
        let _ = (id, req);
        todo!()
    }

    /// Unmounts and removes the target; a missing target is success.
    pub fn unpublish(&self, id: &str, target_path: &Path) -> Result<()> {
        let _ = (id, target_path);
        todo!()
    }

    /// Usage and condition of the volume at `path` (its staging path or a
    /// published target). NotAtPath when the volume is not mounted there.
    pub fn stats(&self, id: &str, path: &Path) -> Result<VolumeStats> {
        let _ = (id, path);
        todo!()
    }

    /// Health of a volume wherever it is (ControllerGetVolume).
    pub fn condition(&self, id: &str) -> Result<Condition> {
        let _ = id;
        todo!()
    }

    /// Grows the image to at least `new_size` if needed, refreshes the loop
    /// device and grows the mounted filesystem. Returns the new capacity.
    /// OnlineGrowRefused when the kernel will not grow the mounted filesystem.
    pub fn node_expand(&self, id: &str, new_size: u64) -> Result<u64> {
        let _ = (id, new_size);
        todo!()
    }

    /// The volume whose filesystem or device is mounted at `path`, if any
    /// (FlexVolume `unmount` gets nothing but the path).
    pub fn volume_at(&self, path: &Path) -> Result<Option<String>> {
        let _ = path;
        todo!()
    }

    /// Paths where the volume is mounted besides its staging path (live publishes).
    pub fn users(&self, id: &str) -> Result<Vec<PathBuf>> {
        let _ = id;
        todo!()
    }

    /// Attaches the loop device without mounting (FlexVolume waitforattach,
    /// block staging); returns the device path.
    pub fn attach_device(&self, id: &str) -> Result<PathBuf> {
        let _ = id;
        todo!()
    }
}
