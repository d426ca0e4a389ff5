//! The backend's one error type. Every variant names the failing step and the
//! volume or path involved; the front ends map each variant to a gRPC code
//! (csi-driver/src/status.rs) and to FlexVolume JSON (flexvolume/src/reply.rs).

use std::path::PathBuf;

use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- bad input (INVALID_ARGUMENT) ----
    #[error("invalid volume id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("unsupported filesystem type {given:?} (supported: {supported})")]
    UnsupportedFsType { given: String, supported: String },
    #[error("mount option {option:?} is not allowed: {reason}")]
    MountOptionNotAllowed { option: String, reason: &'static str },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid parameter {key:?}: {reason}")]
    InvalidParameter { key: String, reason: String },

    // ---- lookups (NOT_FOUND) ----
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("volume {id} is not staged or published at {path:?}")]
    NotAtPath { id: String, path: PathBuf },

    // ---- conflicts (ALREADY_EXISTS) ----
    #[error("volume name {name:?} already exists with different parameters: {reason}")]
    VolumeNameConflict { name: String, reason: String },
    #[error("snapshot name {name:?} already exists for a different source volume {existing_source}")]
    SnapshotNameConflict { name: String, existing_source: String },
    #[error("volume {id} is already {what} at {path:?} with different options")]
    IncompatibleAtPath { id: String, what: &'static str, path: PathBuf },

    // ---- state (FAILED_PRECONDITION) ----
    #[error("volume {id} is in use: {reason}")]
    VolumeInUse { id: String, reason: String },
    #[error("volume {id} is already staged at {existing:?}")]
    StagedElsewhere { id: String, existing: PathBuf },
    #[error("volume {id} is not staged")]
    NotStaged { id: String },
    #[error("volume {id} is attached to node {node}")]
    AttachedElsewhere { id: String, node: String },
    #[error("volume {id} is a {actual} volume, not {wanted}")]
    WrongAccessType { id: String, actual: &'static str, wanted: &'static str },
    #[error("refusing to format {device:?} for volume {id}: {reason}")]
    RefuseFormat { id: String, device: PathBuf, reason: String },
    #[error("filesystem check of {device:?} found errors it could not fix: {detail}")]
    FsckFailed { device: PathBuf, detail: String },
    #[error("the kernel refused to grow the mounted {fs_type} filesystem at {mount_point:?} online ({errno}); it will be grown at the next stage")]
    OnlineGrowRefused { fs_type: &'static str, mount_point: PathBuf, errno: Errno },
    #[error("target {path:?} is a {actual}, a {wanted} is needed")]
    TargetKind { path: PathBuf, actual: &'static str, wanted: &'static str },

    // ---- sizes (OUT_OF_RANGE / RESOURCE_EXHAUSTED) ----
    #[error("requested size {requested} is out of range: {reason}")]
    SizeOutOfRange { requested: u64, reason: String },
    #[error("pool exhausted: {requested} bytes requested, {available} bytes available")]
    Exhausted { requested: u64, available: u64 },

    // ---- concurrency (ABORTED) ----
    #[error("an operation on {0} is already in progress")]
    Busy(String),

    // ---- the kernel and the tools (INTERNAL) ----
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path:?}: {errno}")]
    Sys { op: &'static str, path: PathBuf, errno: Errno },
    #[error("{program} failed ({status}): {stderr}")]
    Tool { program: String, status: String, stderr: String },
    #[error("catalog record {path:?} is corrupt: {reason}")]
    CorruptRecord { path: PathBuf, reason: String },
    #[error("no free loop device: {0}")]
    NoLoopDevice(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Error::Sys { op, path: path.into(), errno }
    }

    /// The kernel ran out of space (or quota) for the step.
    pub(crate) fn is_no_space(&self) -> bool {
        let errno = match self {
            Error::Sys { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        };
        matches!(errno, Some(Errno::ENOSPC | Errno::EDQUOT))
    }
}
