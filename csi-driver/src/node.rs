//! Node service: stage (attach, format, mount at the staging path), publish
//! (bind into the pod), stats, expand, and CSI ephemeral inline volumes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopvol_backend::params::{self, Dialect, VolumeParams};
use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, Error, IoLimits, Lifecycle, Pool, PrivateMount, PublishRequest,
    StageRequest,
};
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::node_server::Node;
use loopvol_proto::v1::node_service_capability::rpc::Type as CapType;
use loopvol_proto::v1::node_service_capability::{Rpc, Type as OneOf};
use loopvol_proto::v1::volume_usage::Unit;
use tonic::{Request, Response, Status};

use crate::capability;
use crate::driver::{bytes, required, to_i64, Driver};

/// volume_context key kubelet sets for CSI ephemeral inline volumes.
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

pub struct NodeService(pub Arc<Driver>);

const CAPABILITIES: [CapType; 5] = [
    CapType::StageUnstageVolume,
    CapType::GetVolumeStats,
    CapType::ExpandVolume,
    CapType::VolumeCondition,
    CapType::SingleNodeMultiWriter,
];

fn is_ephemeral(context: &HashMap<String, String>) -> bool {
    context.get(EPHEMERAL).is_some_and(|v| v == "true")
}

/// The private mount of an ephemeral volume: its volume attributes (checked
/// by the backend's one parser) and the publish request.
fn ephemeral_mount(
    id: &str,
    context: &HashMap<String, String>,
    publish: PublishRequest,
) -> Result<PrivateMount, Status> {
    if publish.access_type != AccessType::Mount {
        return Err(Status::invalid_argument("ephemeral volumes are mount volumes"));
    }
    let attrs = VolumeParams::parse_map(context, Dialect::EphemeralVolume).map_err(crate::status::to_status)?;
    Ok(PrivateMount {
        volume: CreateVolume {
            io_limits: attrs.io_limits.over(IoLimits::default()),
            name: id.to_string(),
            id: Some(id.to_string()),
            capacity: CapacityRange { required: attrs.size.unwrap_or(0), limit: 0 },
            // The attribute names the filesystem to make; the capability's
            // fs type, when set, must then match it.
            fs_type: attrs.fs_type.or(publish.fs_type),
            access_type: AccessType::Mount,
            thick: attrs.thick.unwrap_or(false),
            source: None,
            parameters: BTreeMap::new(),
            lifecycle: Lifecycle::Ephemeral,
            direct_io: attrs.direct_io.unwrap_or(true),
        },
        create: true,
        // The pool's own staging directory: kubelet gives ephemeral volumes none.
        staging_root: None,
        target_path: publish.target_path,
        fs_type: publish.fs_type,
        read_only: publish.read_only,
        stage_mount_options: publish.mount_options.clone(),
        publish_mount_options: publish.mount_options,
        exclusive: publish.exclusive,
        pod_uid: publish.pod_uid,
    })
}

fn usage(unit: Unit, total: u64, used: u64, available: u64) -> csi::VolumeUsage {
    csi::VolumeUsage { available: to_i64(available), total: to_i64(total), used: to_i64(used), unit: unit as i32 }
}

/// The volume must exist (NOT_FOUND) and the path be absolute; a relative
/// path cannot be where it is mounted, which is NOT_FOUND too (csi-sanity).
fn check_volume_at(pool: &Pool, id: &str, path: &Path) -> loopvol_backend::Result<loopvol_backend::Volume> {
    let vol = pool.volume(id)?;
    if !path.is_absolute() {
        return Err(Error::NotAtPath { id: id.to_string(), path: path.to_path_buf() });
    }
    Ok(vol)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let staging = required(&req.staging_target_path, "staging_target_path")?;
        let wanted = capability::require(req.volume_capability.as_ref())?;
        let stage = StageRequest {
            staging_path: PathBuf::from(staging),
            access_type: wanted.access_type,
            fs_type: wanted.fs_type,
            read_only: wanted.read_only_mode(),
            mount_options: wanted.mount_flags,
        };
        self.0.run(move |pool| pool.stage(&id, &stage)).await?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let staging = PathBuf::from(required(&req.staging_target_path, "staging_target_path")?);
        // The staging directory belongs to kubelet: leave it.
        self.0.run(move |pool| pool.unstage(&id, &staging, false)).await?;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        let wanted = capability::require(req.volume_capability.as_ref())?;
        let publish = PublishRequest {
            // podInfoOnMount: the pod whose cgroup gets the I/O limits.
            pod_uid: req.volume_context.get(params::K8S_POD_UID).filter(|u| !u.is_empty()).cloned(),
            staging_path: PathBuf::from(&req.staging_target_path),
            target_path: target,
            access_type: wanted.access_type,
            fs_type: wanted.fs_type,
            read_only: req.readonly || wanted.read_only_mode(),
            mount_options: wanted.mount_flags.clone(),
            exclusive: wanted.exclusive(),
        };
        if is_ephemeral(&req.volume_context) {
            let mount = ephemeral_mount(&id, &req.volume_context, publish)?;
            self.0.run(move |pool| pool.mount_private(&mount)).await?;
        } else {
            required(&req.staging_target_path, "staging_target_path")?;
            self.0.run(move |pool| pool.publish(&id, &publish)).await?;
        }
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let target = PathBuf::from(required(&req.target_path, "target_path")?);
        // An ephemeral volume is released with its target (the backend knows
        // its lifecycle).
        self.0
            .run(move |pool| match pool.unpublish(&id, &target) {
                // A retry after the ephemeral volume is gone: nothing left to do.
                Err(Error::VolumeNotFound(_)) if std::fs::symlink_metadata(&target).is_err() => Ok(()),
                other => other,
            })
            .await?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        let stats = self
            .0
            .run(move |pool| {
                check_volume_at(pool, &id, &path)?;
                pool.stats(&id, &path)
            })
            .await?;
        let usage = match stats.usage {
            Some(u) => vec![
                usage(Unit::Bytes, u.bytes_total, u.bytes_used, u.bytes_available),
                usage(Unit::Inodes, u.inodes_total, u.inodes_used, u.inodes_free),
            ],
            None => vec![csi::VolumeUsage {
                total: to_i64(stats.total_bytes),
                unit: Unit::Bytes as i32,
                ..Default::default()
            }],
        };
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(csi::VolumeCondition {
                abnormal: stats.condition.abnormal,
                message: stats.condition.message,
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let path = PathBuf::from(required(&req.volume_path, "volume_path")?);
        if let Some(cap) = &req.volume_capability {
            capability::parse(cap)?;
        }
        let range = req.capacity_range.unwrap_or_default();
        let (want, limit) = (bytes(range.required_bytes, "required_bytes")?, bytes(range.limit_bytes, "limit_bytes")?);
        let capacity = self
            .0
            .run(move |pool| {
                let vol = check_volume_at(pool, &id, &path)?;
                // No size: grow the filesystem to the image (the controller grew it).
                let size = [want, limit, vol.capacity_bytes].into_iter().find(|s| *s != 0).unwrap_or(0);
                pool.node_expand(&id, size)
            })
            .await?;
        Ok(Response::new(csi::NodeExpandVolumeResponse { capacity_bytes: to_i64(capacity) }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .map(|t| csi::NodeServiceCapability { r#type: Some(OneOf::Rpc(Rpc { r#type: *t as i32 })) })
            .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.0.node_id.clone(),
            max_volumes_per_node: self.0.max_volumes_per_node,
            accessible_topology: Some(self.0.topology()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopvol_backend::FsType;

    fn publish() -> PublishRequest {
        PublishRequest {
            pod_uid: None,
            staging_path: PathBuf::new(),
            target_path: PathBuf::from("/t"),
            access_type: AccessType::Mount,
            fs_type: None,
            read_only: false,
            mount_options: vec![],
            exclusive: true,
        }
    }

    #[test]
    fn ephemeral_attributes() {
        let ctx = HashMap::from([
            (EPHEMERAL.to_string(), "true".to_string()),
            ("size".to_string(), "2Gi".to_string()),
            ("fsType".to_string(), "btrfs".to_string()),
            ("thick".to_string(), "TRUE".to_string()),
            ("csi.storage.k8s.io/pod.name".to_string(), "p".to_string()),
        ]);
        assert!(is_ephemeral(&ctx));
        let m = ephemeral_mount("csi-abc", &ctx, publish()).unwrap();
        let c = &m.volume;
        assert_eq!((c.capacity.required, c.fs_type, c.id.as_deref()), (2 << 30, Some(FsType::Btrfs), Some("csi-abc")));
        // The one boolean rule: "TRUE" is true (it silently meant false here before).
        assert!(c.thick);
        assert_eq!(c.lifecycle, Lifecycle::Ephemeral);
        assert!(c.parameters.is_empty());
        let bad = HashMap::from([("size".to_string(), "lots".to_string())]);
        assert!(ephemeral_mount("v", &bad, publish()).is_err());
        let unknown = HashMap::from([("colour".to_string(), "red".to_string())]);
        assert!(ephemeral_mount("v", &unknown, publish()).is_err());
        let yes = HashMap::from([("thick".to_string(), "yes".to_string())]);
        assert_eq!(ephemeral_mount("v", &yes, publish()).unwrap_err().code(), tonic::Code::InvalidArgument);
        let block = PublishRequest { access_type: AccessType::Block, ..publish() };
        assert!(ephemeral_mount("v", &HashMap::new(), block).is_err());
    }
}
