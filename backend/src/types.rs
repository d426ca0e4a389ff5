//! Small value types shared by the whole backend.

use serde::{Deserialize, Serialize};

/// How a volume is consumed on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessType {
    /// A filesystem mounted into the pod.
    Mount,
    /// The raw loop device bound onto a file in the pod.
    Block,
}

impl AccessType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessType::Mount => "mount",
            AccessType::Block => "block",
        }
    }
}

/// Per-volume I/O limits, applied on this node to the cgroup of every pod
/// that publishes the volume (cgroup v2 `io.max`, v1 `blkio.throttle.*`).
/// 0 is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    #[serde(default)]
    pub read_iops: u64,
    #[serde(default)]
    pub write_iops: u64,
    #[serde(default)]
    pub read_bytes_per_second: u64,
    #[serde(default)]
    pub write_bytes_per_second: u64,
}

impl IoLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == IoLimits::default()
    }
}

/// Usage of a mounted volume, from statfs(2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

/// Health of a volume as the node sees it (CSI VolumeCondition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub abnormal: bool,
    pub message: String,
}

impl Condition {
    pub fn healthy() -> Self {
        Condition { abnormal: false, message: "volume is healthy".into() }
    }

    pub fn abnormal(message: impl Into<String>) -> Self {
        Condition { abnormal: true, message: message.into() }
    }
}
