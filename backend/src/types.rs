//! Small value types shared by the whole backend.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Filesystems loopvol formats and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
    Btrfs,
}

impl FsType {
    pub const ALL: [FsType; 3] = [FsType::Ext4, FsType::Xfs, FsType::Btrfs];

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
        }
    }

    /// The smallest image the filesystem's mkfs accepts (mkfs.xfs refuses
    /// anything under 300 MiB; btrfs needs about 114 MiB with default profiles).
    pub fn min_size(self) -> u64 {
        match self {
            FsType::Ext4 => 1 << 20,
            FsType::Xfs => 300 << 20,
            FsType::Btrfs => 128 << 20,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FsType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            "btrfs" => Ok(FsType::Btrfs),
            other => Err(Error::UnsupportedFsType(crate::id::truncate(other))),
        }
    }
}

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
