//! The one mapping from backend errors to gRPC status codes (CSI spec
//! "Error Scheme" and the per-RPC error tables). Every variant has its own
//! arm on purpose: a new backend error must be given a code deliberately.

use loopvol_backend::Error;
use tonic::{Code, Status};

pub fn to_status(err: Error) -> Status {
    let code = match &err {
        // Bad input.
        Error::InvalidId { .. }
        | Error::InvalidName { .. }
        | Error::UnsupportedFsType { .. }
        | Error::MountOptionNotAllowed { .. }
        | Error::InvalidPath { .. }
        | Error::InvalidArgument(_)
        | Error::InvalidParameter { .. } => Code::InvalidArgument,
        // Lookups.
        Error::VolumeNotFound(_) | Error::SnapshotNotFound(_) | Error::NotAtPath { .. } => Code::NotFound,
        // Same name or path, different arguments.
        Error::VolumeNameConflict { .. } | Error::SnapshotNameConflict { .. } | Error::IncompatibleAtPath { .. } => {
            Code::AlreadyExists
        }
        // The volume's state forbids the call; the CO must change it first.
        Error::VolumeInUse { .. }
        | Error::StagedElsewhere { .. }
        | Error::NotStaged { .. }
        | Error::AttachedElsewhere { .. }
        | Error::WrongAccessType { .. }
        | Error::RefuseFormat { .. }
        | Error::FsckFailed { .. }
        | Error::OnlineGrowRefused { .. }
        | Error::TargetKind { .. } => Code::FailedPrecondition,
        // Sizes.
        Error::SizeOutOfRange { .. } => Code::OutOfRange,
        Error::Exhausted { .. } => Code::ResourceExhausted,
        // Another operation holds the volume: the CO retries with backoff.
        Error::Busy(_) => Code::Aborted,
        // The kernel, the tools or the catalog failed: retryable.
        Error::Io { .. }
        | Error::Sys { .. }
        | Error::Tool { .. }
        | Error::CorruptRecord { .. }
        | Error::NoLoopDevice(_) => Code::Internal,
    };
    Status::new(code, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_tables() {
        assert_eq!(to_status(Error::VolumeNotFound("v".into())).code(), Code::NotFound);
        assert_eq!(to_status(Error::Busy("v".into())).code(), Code::Aborted);
        assert_eq!(to_status(Error::Exhausted { requested: 2, available: 1 }).code(), Code::ResourceExhausted);
        let conflict = Error::SnapshotNameConflict { name: "n".into(), existing_source: "v".into() };
        assert_eq!(to_status(conflict).code(), Code::AlreadyExists);
        let status = to_status(Error::NotStaged { id: "v".into() });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "volume v is not staged");
        assert!(status.details().is_empty());
    }
}
