//! The catalog: one durable, versioned JSON record per volume, snapshot and
//! group snapshot. Records are replaced atomically and fsynced
//! (`kernel::record`); what is staged and published on this node is not part
//! of them (see `state`).
//!
//! Versions: a record without a `version` field is version 1 (written before
//! versions existed). Old records are migrated when they are read and written
//! back in the current version the next time they change; a record from a
//! newer loopvol is refused rather than half understood.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::NodeState;
use super::Pool;
use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::id;
use crate::kernel::record;
use crate::types::{AccessType, IoLimits};

/// The volume record version this build writes.
/// 1: no version field; an ephemeral volume was marked by the parameter
///    `csi.storage.k8s.io/ephemeral: "true"`, and node state could be
///    embedded (`staged`, `published`) before it moved to `<id>.state`.
/// 2: `version`, typed `lifecycle`.
/// 3: `io_limits` (absent in older records: unlimited, which they were).
pub const VOLUME_RECORD_VERSION: u32 = 3;
/// The snapshot and group snapshot record version this build writes.
pub const SNAPSHOT_RECORD_VERSION: u32 = 1;

/// The parameter by which version 1 marked an ephemeral volume.
const V1_EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

fn version_1() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Source {
    Snapshot(String),
    Volume(String),
}

/// How long a volume lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Created and deleted by the CO (CSI CreateVolume/DeleteVolume, a
    /// FlexVolume PV or inline volume that outlives its pods).
    #[default]
    Persistent,
    /// Lives as long as the one pod that mounts it (CSI ephemeral inline
    /// volumes): deleted when its last target is unpublished.
    Ephemeral,
}

/// A volume's catalog record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    #[serde(default = "version_1")]
    pub version: u32,
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
    pub lifecycle: Lifecycle,
    /// Free-form parameters kept in the record (StorageClass parameters).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The image is larger than the filesystem on it: grow it at the next stage.
    #[serde(default)]
    pub fs_grow_pending: bool,
    /// A filesystem was made on (or found on) the image and mounted. Once set,
    /// a device on which blkid finds nothing is corrupted, not blank, and is
    /// never formatted again (that would destroy the data for good).
    #[serde(default)]
    pub formatted: bool,
    /// FlexVolume attach mode: the node that holds the volume.
    #[serde(default)]
    pub attached_node: Option<String>,
    /// Attach with direct I/O where the pool's filesystem allows it
    /// (parameter `directIO`; records from before it existed: yes).
    #[serde(default = "yes")]
    pub direct_io: bool,
    /// The logical block size of the volume's loop device, chosen when the
    /// volume was created (or inherited from its content source) and never
    /// changed: its filesystem keeps the sector size it was made with. None:
    /// created before this was recorded, when every device had 512.
    #[serde(default)]
    pub block_size: Option<u32>,
    /// I/O limits for the pods that publish it (mutable parameters).
    #[serde(default)]
    pub io_limits: IoLimits,
}

/// A volume record as version 1 may have stored it, node state included.
#[derive(Deserialize)]
struct StoredVolume {
    #[serde(flatten)]
    volume: Volume,
    #[serde(flatten)]
    embedded_state: NodeState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default = "version_1")]
    pub version: u32,
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
    /// The source volume's block size (see [`Volume::block_size`]), which a
    /// restore keeps.
    #[serde(default)]
    pub block_size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    #[serde(default = "version_1")]
    pub version: u32,
    pub id: String,
    pub name: String,
    pub snapshot_ids: Vec<String>,
    pub source_volume_ids: Vec<String>,
    pub created_at: u64,
    pub ready: bool,
}

/// Brings a volume record to the current version; refuses newer ones.
fn migrate_volume(path: &Path, mut vol: Volume) -> Result<Volume> {
    if vol.version > VOLUME_RECORD_VERSION {
        return Err(newer(path, vol.version, VOLUME_RECORD_VERSION));
    }
    if vol.version < 2 {
        if vol.parameters.remove(V1_EPHEMERAL_KEY).is_some_and(|v| v == "true") {
            vol.lifecycle = Lifecycle::Ephemeral;
        }
        vol.version = 2;
    }
    // 2 -> 3 adds only `io_limits`, whose default is what version 2 meant.
    vol.version = vol.version.max(3);
    Ok(vol)
}

fn newer(path: &Path, found: u32, known: u32) -> Error {
    Error::CorruptRecord {
        path: path.into(),
        reason: format!("record version {found} was written by a newer loopvol (this one knows up to {known})"),
    }
}

/// Reads a snapshot or group record, refusing versions newer than `known`.
fn read_versioned<T: serde::de::DeserializeOwned>(
    path: &Path,
    known: u32,
    version: impl Fn(&T) -> u32,
) -> Result<Option<T>> {
    match record::read::<T>(path)? {
        Some(rec) if version(&rec) > known => Err(newer(path, version(&rec), known)),
        other => Ok(other),
    }
}

impl Volume {
    /// The logical block size its loop device has (512 when not recorded).
    pub fn device_block_size(&self) -> u32 {
        self.block_size.unwrap_or(512)
    }
}

impl Pool {
    pub(crate) fn volume_record_path(&self, id: &str) -> std::path::PathBuf {
        self.root.join("volumes").join(format!("{id}.json"))
    }

    pub(crate) fn snapshot_record_path(&self, id: &str) -> std::path::PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    pub(crate) fn group_record_path(&self, id: &str) -> std::path::PathBuf {
        self.root.join("groups").join(format!("{id}.json"))
    }

    /// The record, migrated to the current version, and the node state a
    /// version 1 record carried inside it (None when it carried none).
    pub(crate) fn read_volume_record(&self, id: &str) -> Result<Option<(Volume, Option<NodeState>)>> {
        let path = self.volume_record_path(id);
        let Some(stored) = record::read::<StoredVolume>(&path)? else { return Ok(None) };
        let embedded = Some(stored.embedded_state).filter(|s| !s.is_empty());
        Ok(Some((migrate_volume(&path, stored.volume)?, embedded)))
    }

    /// The volume's record, migrated; None when missing.
    pub(crate) fn read_volume(&self, id: &str) -> Result<Option<Volume>> {
        Ok(self.read_volume_record(id)?.map(|(vol, _)| vol))
    }

    /// Writes the record durably, in the current version.
    pub(crate) fn write_volume(&self, vol: &Volume) -> Result<()> {
        let vol = Volume { version: VOLUME_RECORD_VERSION, ..vol.clone() };
        record::write(&self.volume_record_path(&vol.id), &vol)
    }

    /// The volume's record. Errors: VolumeNotFound when missing, InvalidId.
    pub fn volume(&self, id: &str) -> Result<Volume> {
        id::validate(id)?;
        self.read_volume(id)?.ok_or_else(|| Error::VolumeNotFound(id.to_string()))
    }

    /// All volumes, sorted by ID (stable for pagination). A volume deleted
    /// while listing is left out.
    pub fn volumes(&self) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for id in self.volume_ids()? {
            out.extend(self.read_volume(&id)?);
        }
        Ok(out)
    }

    /// The IDs of all volumes, sorted, from the directory alone (a page of a
    /// listing then reads only its own records).
    pub fn volume_ids(&self) -> Result<Vec<String>> {
        Ok(self.record_names("volumes")?.into_iter().filter(|id| id::validate(id).is_ok()).collect())
    }

    pub(crate) fn read_snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        read_versioned(&self.snapshot_record_path(id), SNAPSHOT_RECORD_VERSION, |s: &Snapshot| s.version)
    }

    pub(crate) fn write_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let snap = Snapshot { version: SNAPSHOT_RECORD_VERSION, ..snap.clone() };
        record::write(&self.snapshot_record_path(&snap.id), &snap)
    }

    pub(crate) fn read_group(&self, id: &str) -> Result<Option<GroupSnapshot>> {
        read_versioned(&self.group_record_path(id), SNAPSHOT_RECORD_VERSION, |g: &GroupSnapshot| g.version)
    }

    pub(crate) fn write_group(&self, group: &GroupSnapshot) -> Result<()> {
        let group = GroupSnapshot { version: SNAPSHOT_RECORD_VERSION, ..group.clone() };
        record::write(&self.group_record_path(&group.id), &group)
    }

    /// Errors: SnapshotNotFound when missing (or the ID cannot exist).
    pub fn snapshot(&self, id: &str) -> Result<Snapshot> {
        id::validate(id).map_err(|_| Error::SnapshotNotFound(id::truncate(id)))?;
        self.read_snapshot(id)?.ok_or_else(|| Error::SnapshotNotFound(id.to_string()))
    }

    /// All snapshots sorted by ID. One deleted while listing is left out.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for id in self.record_names("snapshots")? {
            out.extend(self.read_snapshot(&id)?);
        }
        Ok(out)
    }

    /// Errors: SnapshotNotFound when missing (or the ID cannot exist).
    pub fn group_snapshot(&self, id: &str) -> Result<GroupSnapshot> {
        id::validate(id).map_err(|_| Error::SnapshotNotFound(id::truncate(id)))?;
        self.read_group(id)?.ok_or_else(|| Error::SnapshotNotFound(id.to_string()))
    }

    /// The names (without `.json`) of the records in a pool directory, sorted.
    fn record_names(&self, dir: &str) -> Result<Vec<String>> {
        let names = super::list_names(&self.root.join(dir))?;
        Ok(names
            .into_iter()
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_records_migrate_on_read() {
        let v1 = r#"{"id":"e1","name":"e1","capacity_bytes":1048576,"fs_type":"ext4","access_type":"mount",
            "thick":false,"source":null,"created_at":1,
            "parameters":{"csi.storage.k8s.io/ephemeral":"true","fsType":"ext4"}}"#;
        let stored: StoredVolume = serde_json::from_str(v1).unwrap();
        let vol = migrate_volume(Path::new("/p"), stored.volume).unwrap();
        assert_eq!((vol.version, vol.lifecycle), (VOLUME_RECORD_VERSION, Lifecycle::Ephemeral));
        assert!(vol.io_limits.is_unlimited());
        assert_eq!(vol.parameters.keys().collect::<Vec<_>>(), ["fsType"]);
        assert!(stored.embedded_state.is_empty());
    }

    #[test]
    fn newer_records_are_refused() {
        let vol: StoredVolume = serde_json::from_str(
            r#"{"version":99,"id":"a","name":"a","capacity_bytes":1,"fs_type":"xfs","access_type":"block",
                "thick":true,"source":null,"created_at":1}"#,
        )
        .unwrap();
        assert!(matches!(migrate_volume(Path::new("/p"), vol.volume), Err(Error::CorruptRecord { .. })));
    }
}
