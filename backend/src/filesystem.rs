//! The filesystems loopvol formats and mounts, and everything that differs
//! between them, in one table ([`POLICIES`]): mkfs program and flags, fsck or
//! not, how the filesystem grows, its minimum size, and which filesystem
//! mount options it accepts. Adding a filesystem means a variant of
//! [`FsType`], one table entry, and its tests; nothing else matches on it.

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

/// How a filesystem is checked before a read-write mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fsck {
    /// The filesystem checks itself at mount time (xfs, btrfs: their fsck
    /// tools are no-ops or unsafe to automate).
    AtMount,
    /// `e2fsck -p`: repair what is safe, fail on the rest.
    E2fsck,
}

/// How a filesystem grows to fill a larger device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grow {
    /// `resize2fs <device>` while mounted; a kernel may refuse it (EPERM
    /// without CAP_SYS_RESOURCE), and then the filesystem grows unmounted:
    /// `e2fsck -f -p`, `resize2fs <device>`.
    Resize2fs,
    /// `program args... <mount point>` while mounted; there is no offline way.
    AtMountPoint { program: &'static str, args: &'static [&'static str] },
}

/// Everything loopvol needs to know about one filesystem.
#[derive(Debug)]
pub(crate) struct Policy {
    pub fs: FsType,
    pub name: &'static str,
    /// The smallest image its mkfs accepts.
    pub min_size: u64,
    pub mkfs: &'static str,
    /// mkfs flags before the device: overwrite whatever is there, quietly
    /// (the caller has probed the device and found it blank).
    pub mkfs_args: &'static [&'static str],
    /// Added for thick volumes, to keep their preallocation: mkfs must not
    /// discard the device, and must leave nothing for the kernel to zero
    /// lazily later, because both reach the loop device as hole punches
    /// (the kernel's lazy zeroing is a write-zeroes without NOUNMAP, which
    /// the loop driver turns into FALLOC_FL_PUNCH_HOLE; mkfs's own zeroing
    /// keeps the blocks allocated).
    pub mkfs_thick: &'static [&'static str],
    pub fsck: Fsck,
    pub grow: Grow,
    /// Data options every mount gets.
    pub mount_data: &'static str,
    /// Filesystem (data) mount options a user may give; see
    /// `kernel::mount_options` for their values and conflicts.
    pub data_options: &'static [&'static str],
}

/// The table. Order is the order in messages.
pub(crate) const POLICIES: [Policy; 3] = [
    Policy {
        fs: FsType::Ext4,
        name: "ext4",
        min_size: 1 << 20,
        // mkfs.ext4(8): -F even if it looks in use; -q quiet; thick: no
        // discard, inode tables and journal zeroed now (measured: lazy init
        // at first mount punched 64 MiB out of a thick 4 GiB image).
        mkfs: "mkfs.ext4",
        mkfs_args: &["-F", "-q"],
        mkfs_thick: &["-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
        fsck: Fsck::E2fsck,
        grow: Grow::Resize2fs,
        mount_data: "",
        // Documentation/admin-guide/ext4.rst. errors=panic is not offered: a
        // user's volume must not be able to panic the node.
        data_options: &[
            "discard",
            "nodiscard",
            "data",
            "commit",
            "barrier",
            "nobarrier",
            "errors",
            "usrquota",
            "grpquota",
            "prjquota",
        ],
    },
    Policy {
        fs: FsType::Xfs,
        name: "xfs",
        // mkfs.xfs refuses anything under 300 MiB.
        min_size: 300 << 20,
        // mkfs.xfs(8): -f overwrite, -q quiet, -K do not discard.
        mkfs: "mkfs.xfs",
        mkfs_args: &["-f", "-q"],
        mkfs_thick: &["-K"],
        fsck: Fsck::AtMount,
        grow: Grow::AtMountPoint { program: "xfs_growfs", args: &["-d"] },
        // xfs refuses a second filesystem with a UUID that is already
        // mounted: a clone must mount beside its source.
        mount_data: "nouuid",
        // Documentation/admin-guide/xfs.rst.
        data_options: &[
            "discard",
            "nodiscard",
            "usrquota",
            "grpquota",
            "prjquota",
            "inode64",
            "noquota",
            "logbsize",
            "allocsize",
        ],
    },
    Policy {
        fs: FsType::Btrfs,
        name: "btrfs",
        // About 114 MiB with default profiles.
        min_size: 128 << 20,
        // mkfs.btrfs(8): -f overwrite, -q quiet, -K (--nodiscard).
        mkfs: "mkfs.btrfs",
        mkfs_args: &["-f", "-q"],
        mkfs_thick: &["-K"],
        fsck: Fsck::AtMount,
        grow: Grow::AtMountPoint { program: "btrfs", args: &["filesystem", "resize", "max"] },
        mount_data: "",
        // btrfs(5).
        data_options: &[
            "discard",
            "nodiscard",
            "commit",
            "compress",
            "compress-force",
            "ssd",
            "nossd",
            "space_cache",
            "autodefrag",
        ],
    },
];

impl FsType {
    /// Every supported filesystem, in table order.
    pub fn all() -> impl Iterator<Item = FsType> {
        POLICIES.iter().map(|p| p.fs)
    }

    pub(crate) fn policy(self) -> &'static Policy {
        POLICIES.iter().find(|p| p.fs == self).expect("every FsType has a row in POLICIES")
    }

    pub fn as_str(self) -> &'static str {
        self.policy().name
    }

    /// The smallest image the filesystem's mkfs accepts.
    pub fn min_size(self) -> u64 {
        self.policy().min_size
    }

    /// "ext4, xfs, btrfs": for messages.
    pub fn supported_list() -> String {
        POLICIES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
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
        POLICIES.iter().find(|p| p.name == s).map(|p| p.fs).ok_or_else(|| Error::UnsupportedFsType {
            given: crate::id::truncate(s),
            supported: FsType::supported_list(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_row_and_round_trips() {
        for fs in FsType::all() {
            assert_eq!(POLICIES.iter().filter(|p| p.fs == fs).count(), 1);
            assert_eq!(fs.as_str().parse::<FsType>().unwrap(), fs);
            let json = serde_json::to_string(&fs).unwrap();
            assert_eq!(json, format!("\"{}\"", fs.as_str()));
        }
        assert_eq!(FsType::supported_list(), "ext4, xfs, btrfs");
        let e = "ntfs".parse::<FsType>().unwrap_err().to_string();
        assert!(e.contains("ntfs") && e.contains("ext4, xfs, btrfs"), "{e}");
    }
}
