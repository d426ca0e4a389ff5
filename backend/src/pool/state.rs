//! Node state: what is staged and published on this node, in `<id>.state`
//! beside the volume's record. It describes mounts, which a power loss takes
//! away too, so it is written atomically but never fsynced, and every
//! operation reconciles it with the kernel (`live`) before trusting it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Pool, Volume};
use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::kernel::record;
use crate::types::AccessType;

/// What `<id>.state` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    #[serde(default)]
    pub staged: Option<StageRecord>,
    #[serde(default)]
    pub published: BTreeMap<PathBuf, PublishRecord>,
}

impl NodeState {
    pub fn is_empty(&self) -> bool {
        self.staged.is_none() && self.published.is_empty()
    }
}

/// What was staged, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub staging_path: PathBuf,
    pub access_type: AccessType,
    pub fs_type: FsType,
    pub read_only: bool,
    pub mount_options: Vec<String>,
    /// The loop device at staging time (informational; re-looked-up by backing file).
    pub device: PathBuf,
    /// The device does direct I/O (false: the pool's filesystem refused it).
    #[serde(default)]
    pub direct_io: bool,
}

/// What was published at one target, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    pub access_type: AccessType,
    /// Published with a single-writer access mode: no second target allowed.
    #[serde(default)]
    pub exclusive: bool,
    pub read_only: bool,
    pub mount_options: Vec<String>,
    /// The pod the target is for, when the CO said (I/O limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Why the volume's I/O limits are not in force for that pod (its
    /// cgroup was not found, or refused them); None when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limits_problem: Option<String>,
}

impl PublishRecord {
    /// The same publish as asked for (what the kernel made of it aside).
    pub fn same_request(&self, other: &PublishRecord) -> bool {
        (self.access_type, self.exclusive, self.read_only, &self.mount_options, &self.pod_uid)
            == (other.access_type, other.exclusive, other.read_only, &other.mount_options, &other.pod_uid)
    }
}

impl Pool {
    fn node_state_path(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{id}.state"))
    }

    /// The state file; None when there is none. A state file that does not
    /// parse (a power loss caught it mid-write) reads as empty: the mounts it
    /// described died with the machine, and the kernel is asked anyway.
    pub(crate) fn read_state_file(&self, id: &str) -> Option<NodeState> {
        match record::read::<NodeState>(&self.node_state_path(id)) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(volume = %id, error = %e, "node state unreadable; asking the kernel instead");
                Some(NodeState::default())
            }
        }
    }

    /// The volume's record and its node state as recorded (not yet checked
    /// against the kernel). Without a state file, the state a version 1
    /// record carried inside itself counts.
    /// Errors: VolumeNotFound, InvalidId, CorruptRecord.
    pub(crate) fn load(&self, id: &str) -> Result<(Volume, NodeState)> {
        crate::id::validate(id)?;
        let Some((vol, embedded)) = self.read_volume_record(id)? else {
            return Err(Error::VolumeNotFound(id.to_string()));
        };
        let state = self.read_state_file(id).or(embedded).unwrap_or_default();
        Ok((vol, state))
    }

    /// Writes the node state without any fsync (see the module docs): this
    /// keeps fsyncs, and the journal commits they force, off NodePublish and
    /// NodeUnpublish.
    pub(crate) fn write_node_state(&self, id: &str, state: &NodeState) -> Result<()> {
        record::write_with(&self.node_state_path(id), state, record::Durability::Volatile)
    }

    /// Writes node state that only dropped entries (unpublish, unstage, a
    /// reconcile). On a full pool the write of the temp file fails with
    /// ENOSPC, and teardown must not fail with it, or every retry would too:
    /// the file is removed (which frees its blocks) and written again, and
    /// if even that fails it stays removed, which reads as "ask the kernel".
    pub(crate) fn write_shrunk_node_state(&self, id: &str, state: &NodeState) -> Result<()> {
        match self.write_node_state(id, state) {
            Err(e) if e.is_no_space() => {
                tracing::warn!(volume = %id, error = %e, "pool full: rewriting the node state in place");
                self.remove_node_state(id)?;
                match self.write_node_state(id, state) {
                    Err(e) if e.is_no_space() => Ok(()),
                    other => other,
                }
            }
            other => other,
        }
    }

    pub(crate) fn remove_node_state(&self, id: &str) -> Result<()> {
        record::remove(&self.node_state_path(id))
    }

    /// What is recorded as staged and published for the volume on this node
    /// (for reports; node operations check it against the kernel first).
    pub fn node_state(&self, id: &str) -> Result<NodeState> {
        self.load(id).map(|(_, state)| state)
    }
}
