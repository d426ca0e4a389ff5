//! The one JSON object every call prints, and the mapping of every failure
//! onto it. Kubelet decodes `status`, `message`, `device`, `attached` and
//! `capabilities` (spec §1.1); only the exact strings "Success" and
//! "Not supported" are special, anything else is a failure.

use loopvol_backend::Error;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    Success,
    Failure,
    #[serde(rename = "Not supported")]
    NotSupported,
}

/// Printed by `init`. Every field is always present as a boolean: a missing
/// key would silently take kubelet's default and `null` would crash it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub attach: bool,
    pub selinux_relabel: bool,
    pub fs_group: bool,
    pub supports_metrics: bool,
    #[serde(rename = "requiresFSResize")]
    pub requires_fs_resize: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

impl Reply {
    fn with(status: Status) -> Reply {
        Reply { status, message: None, device: None, attached: None, capabilities: None }
    }

    pub fn success() -> Reply {
        Reply::with(Status::Success)
    }

    pub fn not_supported() -> Reply {
        Reply::with(Status::NotSupported)
    }

    pub fn failure(message: impl Into<String>) -> Reply {
        Reply { message: Some(message.into()), ..Reply::with(Status::Failure) }
    }

    pub fn device(device: impl Into<String>) -> Reply {
        Reply { device: Some(device.into()), ..Reply::success() }
    }

    pub fn attached(attached: bool) -> Reply {
        Reply { attached: Some(attached), ..Reply::success() }
    }

    pub fn message(self, message: impl Into<String>) -> Reply {
        Reply { message: Some(message.into()), ..self }
    }

    pub fn is_success(&self) -> bool {
        self.status == Status::Success
    }

    /// One line of JSON; serialising these plain types cannot fail, but if it
    /// ever did the caller still gets a valid Failure object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"status":"Failure","message":"cannot encode the reply"}"#.to_string())
    }
}

/// Why a call failed before or around the backend.
#[derive(Debug, thiserror::Error)]
pub enum FlexError {
    /// Wrong or missing argv (never answered with usage text, spec P2).
    #[error("{0}")]
    Usage(String),
    /// A kubelet or user option that cannot be used; names the key, never a secret value.
    #[error("option {key}: {reason}")]
    Option { key: String, reason: String },
    /// `.loopvol.json` cannot be read or is invalid.
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error(transparent)]
    Backend(#[from] Error),
}

pub type FlexResult<T> = Result<T, FlexError>;

impl FlexError {
    pub fn usage(message: impl Into<String>) -> Self {
        FlexError::Usage(message.into())
    }

    pub fn option(key: impl Into<String>, reason: impl Into<String>) -> Self {
        FlexError::Option { key: key.into(), reason: reason.into() }
    }

    /// A short class for the log line.
    pub fn class(&self) -> &'static str {
        match self {
            FlexError::Usage(_) => "usage",
            FlexError::Option { .. } => "option",
            FlexError::Config { .. } => "config",
            // The backend's message names the step; its gRPC-style class
            // is the CSI driver's business (csi-driver/src/status.rs).
            FlexError::Backend(_) => "backend",
        }
    }
}

/// The Failure reply for an error. Every flex-level error and every backend
/// error becomes `Failure`: kubelet retries failed calls with backoff, and
/// "Not supported" must never be answered conditionally (spec P23).
pub fn failure(err: &FlexError) -> Reply {
    match err {
        FlexError::Backend(e) => backend_failure(e),
        other => Reply::failure(other.to_string()),
    }
}

/// The one mapping of backend errors to FlexVolume replies, a deliberate arm
/// per variant (no catch-all: a new variant must be looked at here). The
/// message lands in pod events, so where the error alone does not tell the
/// user what to do, a hint is added.
pub fn backend_failure(err: &Error) -> Reply {
    let text = err.to_string();
    let message = match err {
        // Bad input: fix the PV or pod spec.
        Error::InvalidId { .. }
        | Error::InvalidName { .. }
        | Error::UnsupportedFsType { .. }
        | Error::MountOptionNotAllowed { .. }
        | Error::InvalidPath { .. }
        | Error::InvalidArgument(_) => text,
        // Said the way every other option error is.
        Error::InvalidParameter { key, reason } => format!("option {key}: {reason}"),
        Error::VolumeNotFound(_) => format!("{text} (set the option create to \"true\" to create it on first use)"),
        Error::SnapshotNotFound(_) => text,
        Error::NotAtPath { .. } => text,
        Error::VolumeNameConflict { .. } | Error::SnapshotNameConflict { .. } => text,
        Error::IncompatibleAtPath { .. } => {
            format!("{text}; all pods on a node must use the same fsType and mountOptions")
        }
        Error::VolumeInUse { .. } => text,
        Error::StagedElsewhere { .. } => format!("{text}; it is in use by another driver on this node"),
        // attach:true: mountdevice has not run for this volume yet; kubelet retries.
        Error::NotStaged { .. } => text,
        Error::AttachedElsewhere { .. } => format!("{text}; detach it there first"),
        Error::WrongAccessType { .. } => text,
        Error::RefuseFormat { .. } => text,
        Error::FsckFailed { .. } => format!("{text}; repair the filesystem by hand"),
        // Kubelet retries expandfs; the backend grows the filesystem at the next stage.
        Error::OnlineGrowRefused { .. } => text,
        Error::TargetKind { .. } => text,
        Error::SizeOutOfRange { .. } => text,
        Error::Exhausted { .. } => text,
        Error::Busy(_) => format!("{text}; try again"),
        // The kernel and the tools: the message names the step and the path.
        Error::Io { .. } | Error::Sys { .. } | Error::Tool { .. } => text,
        Error::CorruptRecord { .. } => text,
        Error::NoLoopDevice(_) => text,
    };
    Reply::failure(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(Reply::success().to_json(), r#"{"status":"Success"}"#);
        assert_eq!(Reply::not_supported().to_json(), r#"{"status":"Not supported"}"#);
        assert_eq!(Reply::failure("x").to_json(), r#"{"status":"Failure","message":"x"}"#);
        assert_eq!(Reply::device("/dev/loop1").to_json(), r#"{"status":"Success","device":"/dev/loop1"}"#);
        assert_eq!(Reply::attached(false).to_json(), r#"{"status":"Success","attached":false}"#);
    }

    #[test]
    fn every_backend_error_is_a_failure_with_a_message() {
        let errors = [
            Error::VolumeNotFound("v".into()),
            Error::Busy("v".into()),
            Error::AttachedElsewhere { id: "v".into(), node: "n2".into() },
            Error::OnlineGrowRefused { fs_type: "ext4", mount_point: "/m".into(), errno: nix::errno::Errno::EPERM },
        ];
        for e in &errors {
            let r = backend_failure(e);
            assert_eq!(r.status, Status::Failure);
            assert!(!r.message.unwrap().is_empty());
        }
    }
}
