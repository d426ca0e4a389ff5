//! Volume parameters from every front end, parsed in one place: StorageClass
//! parameters (CSI CreateVolume, and the requests that only check them), the
//! volume attributes of CSI ephemeral inline volumes, and FlexVolume options
//! (which `migrate-flexvolume` reads too), and the mutable parameters of
//! ModifyVolume (a VolumeAttributesClass). Each source names the same
//! settings with its own keys ([`Dialect`]); the values mean the same
//! everywhere, and every boolean goes through [`parse_bool`].

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::quantity;
use crate::types::IoLimits;

/// Where a set of parameters comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// StorageClass `parameters` (CSI CreateVolume). Unknown keys are refused;
    /// the sidecars' `csi.storage.k8s.io/*` keys are ignored, except the fs type.
    StorageClass,
    /// `volumeAttributes` of a CSI ephemeral inline volume. Unknown keys are
    /// refused; kubelet's `csi.storage.k8s.io/*` keys are ignored.
    EphemeralVolume,
    /// A FlexVolume options object (kubelet's `kubernetes.io/*` keys plus the
    /// PV's `flexVolume.options`). Keys of no concern to the volume (pod
    /// information, secrets, FlexVolume's own keys) are left to the caller.
    FlexVolume,
    /// Mutable parameters (CSI `mutable_parameters`: a VolumeAttributesClass's
    /// `parameters`): only [`MUTABLE_KEYS`]; any other key is refused by name.
    Mutable,
}

/// StorageClass: the filesystem type.
pub const FS_TYPE: &str = "fsType";
/// StorageClass, ephemeral volumes, FlexVolume: preallocate the image.
pub const THICK: &str = "thick";
/// StorageClass, ephemeral volumes, FlexVolume: attach with direct I/O
/// (default true).
pub const DIRECT_IO: &str = "directIO";
/// Ephemeral volumes, FlexVolume: the size (a Kubernetes quantity).
pub const SIZE: &str = "size";
/// FlexVolume: comma-separated mount options of the staging mount.
pub const MOUNT_OPTIONS: &str = "mountOptions";
/// I/O limits (Kubernetes quantities; 0 or absent: unlimited).
pub const READ_IOPS: &str = "readIOPS";
pub const WRITE_IOPS: &str = "writeIOPS";
pub const READ_BYTES_PER_SECOND: &str = "readBytesPerSecond";
pub const WRITE_BYTES_PER_SECOND: &str = "writeBytesPerSecond";
/// What ModifyVolume may change on a live volume.
pub const MUTABLE_KEYS: &[&str] =
    &[DIRECT_IO, THICK, READ_IOPS, WRITE_IOPS, READ_BYTES_PER_SECOND, WRITE_BYTES_PER_SECOND];
/// The sidecars' (and kubelet's) key prefix.
pub const K8S_PREFIX: &str = "csi.storage.k8s.io/";
/// The fs type external-provisioner passes (`--extra-create-metadata`, `csi.storage.k8s.io/fstype`).
pub const K8S_FS_TYPE: &str = "csi.storage.k8s.io/fstype";
/// FlexVolume: kubelet's fs type key (the PV's `fsType`).
pub const FLEX_FS_TYPE: &str = "kubernetes.io/fsType";
/// FlexVolume: the volume's ID, when it is not the PV (or inline volume) name.
pub const FLEX_VOLUME_ID: &str = "volumeID";
/// FlexVolume: kubelet's name of the PV or inline volume.
pub const FLEX_PV_OR_VOLUME_NAME: &str = "kubernetes.io/pvOrVolumeName";

/// FlexVolume: create the volume when missing (default true).
pub const FLEX_CREATE: &str = "create";
/// The options a FlexVolume PV may carry that loopvol understands.
pub const FLEX_VOLUME_OPTIONS: &[&str] = &[
    FLEX_VOLUME_ID,
    SIZE,
    FLEX_CREATE,
    MOUNT_OPTIONS,
    THICK,
    DIRECT_IO,
    READ_IOPS,
    WRITE_IOPS,
    READ_BYTES_PER_SECOND,
    WRITE_BYTES_PER_SECOND,
];
/// FlexVolume: the UID of the pod the volume is mounted for (kubelet's key).
pub const FLEX_POD_UID: &str = "kubernetes.io/pod.uid";
/// CSI NodePublish volume context with `podInfoOnMount`: the pod's UID.
pub const K8S_POD_UID: &str = "csi.storage.k8s.io/pod.uid";

/// What the parameters say about the volume. None: not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeParams {
    pub fs_type: Option<FsType>,
    pub thick: Option<bool>,
    pub direct_io: Option<bool>,
    pub size: Option<u64>,
    pub mount_options: Vec<String>,
    /// The I/O limit keys that were given.
    pub io_limits: IoLimitParams,
    /// What a StorageClass volume's record keeps (the sidecars' keys dropped).
    pub kept: BTreeMap<String, String>,
}

impl VolumeParams {
    /// Parses `params` as `dialect` names them.
    ///
    /// Errors: `Error::InvalidParameter` naming the key (never the value of a
    /// key the caller does not know to be harmless): an unknown key where the
    /// dialect refuses them, a bad boolean, fs type or quantity.
    pub fn parse<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>, dialect: Dialect) -> Result<VolumeParams> {
        let mut out = VolumeParams::default();
        for (key, value) in params {
            match (dialect, key) {
                (Dialect::StorageClass, FS_TYPE | K8S_FS_TYPE)
                | (Dialect::EphemeralVolume, FS_TYPE)
                | (Dialect::FlexVolume, FLEX_FS_TYPE) => {
                    if !value.is_empty() {
                        out.fs_type = Some(fs_type(key, value)?);
                    }
                }
                (_, THICK) => out.thick = parse_bool(key, value)?,
                (_, DIRECT_IO) => out.direct_io = parse_bool(key, value)?,
                (_, READ_IOPS) => out.io_limits.read_iops = Some(limit(key, value)?),
                (_, WRITE_IOPS) => out.io_limits.write_iops = Some(limit(key, value)?),
                (_, READ_BYTES_PER_SECOND) => out.io_limits.read_bytes_per_second = Some(limit(key, value)?),
                (_, WRITE_BYTES_PER_SECOND) => out.io_limits.write_bytes_per_second = Some(limit(key, value)?),
                (Dialect::EphemeralVolume | Dialect::FlexVolume, SIZE) => out.size = size(key, value)?,
                (Dialect::FlexVolume, MOUNT_OPTIONS) => {
                    out.mount_options =
                        value.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string).collect();
                }
                (Dialect::StorageClass | Dialect::EphemeralVolume, k) if k.starts_with(K8S_PREFIX) => continue,
                (Dialect::FlexVolume, _) => continue,
                (Dialect::StorageClass, _) => return Err(invalid(key, "unknown parameter")),
                (Dialect::EphemeralVolume, _) => return Err(invalid(key, "unknown volume attribute")),
                (Dialect::Mutable, _) => {
                    return Err(invalid(
                        key,
                        &format!("not a mutable parameter (mutable: {})", MUTABLE_KEYS.join(", ")),
                    ))
                }
            }
            if dialect == Dialect::StorageClass {
                out.kept.insert(key.to_string(), value.to_string());
            }
        }
        Ok(out)
    }

    /// Parses a map as `dialect` names it (see [`VolumeParams::parse`]).
    pub fn parse_map<K: AsRef<str>, V: AsRef<str>>(
        params: impl IntoIterator<Item = (K, V)>,
        dialect: Dialect,
    ) -> Result<VolumeParams> {
        let pairs: Vec<(K, V)> = params.into_iter().collect();
        VolumeParams::parse(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())), dialect)
    }
}

/// The I/O limits a set of parameters names; None: not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimitParams {
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bytes_per_second: Option<u64>,
    pub write_bytes_per_second: Option<u64>,
}

impl IoLimitParams {
    /// `base` with the given limits in place of its own.
    pub fn over(&self, base: IoLimits) -> IoLimits {
        IoLimits {
            read_iops: self.read_iops.unwrap_or(base.read_iops),
            write_iops: self.write_iops.unwrap_or(base.write_iops),
            read_bytes_per_second: self.read_bytes_per_second.unwrap_or(base.read_bytes_per_second),
            write_bytes_per_second: self.write_bytes_per_second.unwrap_or(base.write_bytes_per_second),
        }
    }
}

/// The ID of a FlexVolume volume: `volumeID`, else the PV (or inline
/// volume) name, validated. The one ID rule for `mount` and for migration.
///
/// Errors: `Error::InvalidParameter` when neither is given; `Error::InvalidId`.
pub fn flex_volume_id(volume_id: Option<&str>, pv_or_volume_name: Option<&str>) -> Result<String> {
    let id = volume_id
        .filter(|v| !v.is_empty())
        .or(pv_or_volume_name.filter(|v| !v.is_empty()))
        .ok_or_else(|| invalid(FLEX_VOLUME_ID, &format!("missing, and so is {FLEX_PV_OR_VOLUME_NAME}")))?;
    crate::id::validate(id)?;
    Ok(id.to_string())
}

/// The one boolean rule: `true` or `false` in any case; empty is "not
/// given". Errors: `Error::InvalidParameter` for anything else.
pub fn parse_bool(key: &str, value: &str) -> Result<Option<bool>> {
    if value.is_empty() {
        Ok(None)
    } else if value.eq_ignore_ascii_case("true") {
        Ok(Some(true))
    } else if value.eq_ignore_ascii_case("false") {
        Ok(Some(false))
    } else {
        Err(invalid(key, &format!("{:?} is not \"true\" or \"false\"", crate::id::truncate(value))))
    }
}

fn fs_type(key: &str, value: &str) -> Result<FsType> {
    value.parse().map_err(|e: Error| invalid(key, &e.to_string()))
}

/// A size: a positive Kubernetes quantity; empty is "not given".
fn size(key: &str, value: &str) -> Result<Option<u64>> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    match quantity::parse(value.trim()) {
        Ok(0) => Err(invalid(key, "must be greater than zero")),
        Ok(n) => Ok(Some(n)),
        // The parser's message may quote the input: bound it too.
        Err(e) => Err(invalid(
            key,
            &format!("{:?} is not a quantity like 1Gi: {}", crate::id::truncate(value.trim()), crate::id::truncate(&e)),
        )),
    }
}

/// An I/O limit: a non-negative Kubernetes quantity (`500`, `2k`, `10Mi`);
/// 0 and empty are unlimited.
fn limit(key: &str, value: &str) -> Result<u64> {
    if value.trim().is_empty() {
        return Ok(0);
    }
    quantity::parse(value.trim()).map_err(|e| {
        invalid(
            key,
            &format!(
                "{:?} is not a quantity like 500 or 10Mi: {}",
                crate::id::truncate(value.trim()),
                crate::id::truncate(&e)
            ),
        )
    })
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::InvalidParameter { key: crate::id::truncate(key), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)], dialect: Dialect) -> Result<VolumeParams> {
        VolumeParams::parse(pairs.iter().copied(), dialect)
    }

    #[test]
    fn direct_io_in_every_dialect() {
        for dialect in [Dialect::StorageClass, Dialect::EphemeralVolume, Dialect::FlexVolume] {
            assert_eq!(parse(&[("directIO", "false")], dialect).unwrap().direct_io, Some(false), "{dialect:?}");
            assert_eq!(parse(&[("directIO", "True")], dialect).unwrap().direct_io, Some(true), "{dialect:?}");
            assert_eq!(parse(&[], dialect).unwrap().direct_io, None);
            let e = parse(&[("directIO", "on")], dialect).unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { key, .. } if key == "directIO"), "{dialect:?}: {e}");
        }
    }

    #[test]
    fn one_boolean_rule_everywhere() {
        for dialect in [Dialect::StorageClass, Dialect::EphemeralVolume, Dialect::FlexVolume] {
            for (value, want) in [("true", Some(true)), ("TRUE", Some(true)), ("False", Some(false)), ("", None)] {
                assert_eq!(parse(&[("thick", value)], dialect).unwrap().thick, want, "{dialect:?} {value:?}");
            }
            for bad in ["yes", "1", "tru", " true"] {
                let e = parse(&[("thick", bad)], dialect).unwrap_err();
                assert!(
                    matches!(&e, Error::InvalidParameter { key, .. } if key == "thick"),
                    "{dialect:?} {bad:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn storage_class_keys() {
        let p = parse(
            &[("csi.storage.k8s.io/fstype", "xfs"), ("thick", "true"), ("csi.storage.k8s.io/pv/name", "pv-1")],
            Dialect::StorageClass,
        )
        .unwrap();
        assert_eq!((p.fs_type, p.thick), (Some(FsType::Xfs), Some(true)));
        assert_eq!(p.kept.keys().collect::<Vec<_>>(), ["csi.storage.k8s.io/fstype", "thick"]);
        for bad in [("color", "blue"), ("fsType", "ntfs"), ("size", "1Gi")] {
            let e = parse(&[bad], Dialect::StorageClass).unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { key, .. } if key == bad.0), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ephemeral_attributes() {
        let p = parse(
            &[("size", "2Gi"), ("fsType", "btrfs"), ("csi.storage.k8s.io/ephemeral", "true")],
            Dialect::EphemeralVolume,
        )
        .unwrap();
        assert_eq!((p.size, p.fs_type), (Some(2 << 30), Some(FsType::Btrfs)));
        assert!(p.kept.is_empty());
        for bad in [("size", "lots"), ("size", "0"), ("colour", "red"), ("kubernetes.io/fsType", "xfs")] {
            assert!(parse(&[bad], Dialect::EphemeralVolume).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flexvolume_options() {
        let p = parse(
            &[
                ("kubernetes.io/fsType", ""),
                ("size", "2Gi"),
                ("thick", "TRUE"),
                ("mountOptions", "noatime, nodiratime,,"),
                ("kubernetes.io/pod.name", "web-0"),
                ("unknownKey", "ignored"),
            ],
            Dialect::FlexVolume,
        )
        .unwrap();
        assert_eq!(p.fs_type, None);
        assert_eq!((p.size, p.thick), (Some(2 << 30), Some(true)));
        assert_eq!(p.mount_options, ["noatime", "nodiratime"]);
        assert_eq!(parse(&[("kubernetes.io/fsType", "xfs")], Dialect::FlexVolume).unwrap().fs_type, Some(FsType::Xfs));
        for bad in [("size", "-1Gi"), ("size", "0"), ("kubernetes.io/fsType", "ntfs")] {
            let e = parse(&[bad], Dialect::FlexVolume).unwrap_err().to_string();
            assert!(e.contains(bad.0), "{bad:?}: {e}");
        }
    }

    #[test]
    fn refusals_quote_a_bounded_part_of_the_value() {
        let long = format!("1{}", "x".repeat(100_000));
        for dialect in [Dialect::EphemeralVolume, Dialect::FlexVolume] {
            let e = parse(&[("size", &long)], dialect).unwrap_err().to_string();
            assert!(e.len() < 400, "{dialect:?}: {} bytes", e.len());
        }
        let e = parse(&[(&long, "v")], Dialect::StorageClass).unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
    }

    #[test]
    fn mutable_parameters_are_only_the_mutable_keys() {
        let p = parse(
            &[("directIO", "false"), ("thick", "true"), ("readIOPS", "2k"), ("writeBytesPerSecond", "10Mi")],
            Dialect::Mutable,
        )
        .unwrap();
        assert_eq!((p.direct_io, p.thick), (Some(false), Some(true)));
        assert_eq!(p.io_limits.read_iops, Some(2000));
        assert_eq!(p.io_limits.write_bytes_per_second, Some(10 << 20));
        assert_eq!(p.io_limits.write_iops, None);
        assert!(p.kept.is_empty());
        // Absent limits are unlimited over nothing, and keep a base's otherwise.
        let base = IoLimits { write_iops: 7, read_iops: 1, ..IoLimits::default() };
        assert_eq!(
            p.io_limits.over(base),
            IoLimits { read_iops: 2000, write_iops: 7, read_bytes_per_second: 0, write_bytes_per_second: 10 << 20 }
        );
        assert_eq!(parse(&[("readIOPS", "0")], Dialect::Mutable).unwrap().io_limits.read_iops, Some(0));
        for bad in [("fsType", "xfs"), ("size", "1Gi"), ("csi.storage.k8s.io/fstype", "xfs"), ("colour", "red")] {
            let e = parse(&[bad], Dialect::Mutable).unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { key, .. } if key == bad.0), "{bad:?}: {e}");
            assert!(e.to_string().contains("not a mutable parameter"), "{e}");
        }
        for bad in [("readIOPS", "-1"), ("writeIOPS", "fast"), ("readBytesPerSecond", "1.5.0"), ("directIO", "on")] {
            let e = parse(&[bad], Dialect::Mutable).unwrap_err();
            assert!(matches!(&e, Error::InvalidParameter { key, .. } if key == bad.0), "{bad:?}: {e}");
        }
    }

    #[test]
    fn io_limits_in_storage_classes_and_flexvolume_options() {
        for dialect in [Dialect::StorageClass, Dialect::FlexVolume, Dialect::EphemeralVolume] {
            let p = parse(&[("writeIOPS", "300")], dialect).unwrap();
            assert_eq!(p.io_limits.write_iops, Some(300), "{dialect:?}");
        }
    }

    #[test]
    fn flexvolume_ids() {
        assert_eq!(flex_volume_id(Some("vol-a"), Some("pv-1")).unwrap(), "vol-a");
        assert_eq!(flex_volume_id(Some(""), Some("pv-1")).unwrap(), "pv-1");
        assert!(matches!(flex_volume_id(None, None), Err(Error::InvalidParameter { .. })));
        assert!(matches!(flex_volume_id(Some("../etc"), None), Err(Error::InvalidId { .. })));
    }
}
