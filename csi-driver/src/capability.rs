//! Checks of CSI volume capabilities: which access modes and access types
//! loopvol serves, and what a capability asks of the backend.

use loopvol_backend::{AccessType, FsType};
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_proto::v1::volume_capability::AccessType as CsiAccessType;
use loopvol_proto::v1::VolumeCapability;
use tonic::Status;

/// What one capability asks for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub access_type: AccessType,
    pub mode: Mode,
    /// From the mount capability; None when unset or empty.
    pub fs_type: Option<FsType>,
    pub mount_flags: Vec<String>,
}

impl Wanted {
    /// Single-writer modes refuse a second live target on the node.
    pub fn exclusive(&self) -> bool {
        self.mode == Mode::SingleNodeSingleWriter
    }

    pub fn read_only_mode(&self) -> bool {
        self.mode == Mode::SingleNodeReaderOnly
    }
}

/// Why a well-formed capability cannot be served (ValidateVolumeCapabilities
/// reports this as a message; CreateVolume as INVALID_ARGUMENT).
pub fn unsupported_reason(mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => None,
        Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter => {
            Some("loopvol volumes are node-local: multi-node access modes are not supported")
        }
        Mode::Unknown => Some("access mode is UNKNOWN"),
    }
}

/// Whether a GetCapacity capability constrains anything. external-provisioner
/// up to v4.0 sends one capability whose access mode is UNKNOWN (an empty
/// `AccessMode`) because a StorageClass names no access mode; it means "any
/// volume", so GetCapacity answers as if it had been left out. v5 and later
/// send no capability at all.
pub fn constrains_capacity(cap: &VolumeCapability) -> bool {
    cap.access_mode.as_ref().is_some_and(|m| m.mode() != Mode::Unknown)
}

/// Checks the shape of a capability (access type and mode present, fs type
/// known) and returns what it asks for. Missing or malformed fields are
/// INVALID_ARGUMENT; an unsupported mode is reported separately by
/// [`unsupported_reason`] so that ValidateVolumeCapabilities can answer OK.
pub fn parse(cap: &VolumeCapability) -> Result<Wanted, Status> {
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("volume capability has no access mode"))?
        .mode();
    let (access_type, fs_type, mount_flags) = match &cap.access_type {
        None => return Err(Status::invalid_argument("volume capability has neither block nor mount access type")),
        Some(CsiAccessType::Block(_)) => (AccessType::Block, None, Vec::new()),
        Some(CsiAccessType::Mount(m)) => {
            let fs = if m.fs_type.is_empty() {
                None
            } else {
                Some(m.fs_type.parse::<FsType>().map_err(crate::status::to_status)?)
            };
            (AccessType::Mount, fs, m.mount_flags.clone())
        }
    };
    Ok(Wanted { access_type, mode, fs_type, mount_flags })
}

/// [`parse`] plus a supported mode: what Stage, Publish and Create need.
pub fn require(cap: Option<&VolumeCapability>) -> Result<Wanted, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume capability is required"))?;
    let wanted = parse(cap)?;
    if let Some(reason) = unsupported_reason(wanted.mode) {
        return Err(Status::invalid_argument(reason));
    }
    Ok(wanted)
}

/// Every capability of a CreateVolume request, which must agree on the access
/// type and on the fs type (one image holds one of each).
pub fn require_all(caps: &[VolumeCapability]) -> Result<Wanted, Status> {
    let mut all = caps.iter().map(|c| require(Some(c)));
    let first = all.next().ok_or_else(|| Status::invalid_argument("volume capabilities are required"))??;
    for next in all {
        let next = next?;
        if next.access_type != first.access_type {
            return Err(Status::invalid_argument("volume capabilities mix block and mount access"));
        }
        if next.fs_type.is_some() && first.fs_type.is_some() && next.fs_type != first.fs_type {
            return Err(Status::invalid_argument("volume capabilities ask for different filesystems"));
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopvol_proto::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(mode: Mode, access: Option<CsiAccessType>) -> VolumeCapability {
        VolumeCapability { access_mode: Some(AccessMode { mode: mode as i32 }), access_type: access }
    }

    fn mount(fs: &str) -> Option<CsiAccessType> {
        Some(CsiAccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() }))
    }

    #[test]
    fn an_unknown_access_mode_does_not_constrain_capacity() {
        assert!(!constrains_capacity(&cap(Mode::Unknown, mount(""))));
        assert!(!constrains_capacity(&VolumeCapability { access_mode: None, access_type: mount("") }));
        assert!(constrains_capacity(&cap(Mode::SingleNodeWriter, mount(""))));
        assert!(constrains_capacity(&cap(Mode::MultiNodeMultiWriter, None)));
    }

    #[test]
    fn single_node_modes_are_served_and_multi_node_modes_are_not() {
        let w = require(Some(&cap(Mode::SingleNodeSingleWriter, mount("xfs")))).unwrap();
        assert_eq!(w.fs_type, Some(FsType::Xfs));
        assert!(w.exclusive());
        let block = Some(CsiAccessType::Block(BlockVolume {}));
        assert_eq!(require(Some(&cap(Mode::SingleNodeWriter, block))).unwrap().access_type, AccessType::Block);
        let err = require(Some(&cap(Mode::MultiNodeMultiWriter, mount("")))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(parse(&cap(Mode::MultiNodeMultiWriter, mount(""))).is_ok());
    }

    #[test]
    fn malformed_capabilities_are_invalid() {
        assert!(require(None).is_err());
        assert!(parse(&cap(Mode::SingleNodeWriter, None)).is_err());
        assert!(parse(&cap(Mode::SingleNodeWriter, mount("ntfs"))).is_err());
        let no_mode = VolumeCapability { access_mode: None, access_type: mount("") };
        assert!(parse(&no_mode).is_err());
        let mixed = [
            cap(Mode::SingleNodeWriter, mount("")),
            cap(Mode::SingleNodeWriter, Some(CsiAccessType::Block(BlockVolume {}))),
        ];
        assert!(require_all(&mixed).is_err());
        assert!(require_all(&[]).is_err());
    }
}
