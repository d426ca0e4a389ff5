//! Controller service. Volumes are node-local, so the controller runs on the
//! node that owns the pool (external-provisioner in `--node-deployment`
//! mode): no ControllerPublish, topology pins every volume to this node.

use std::collections::HashMap;
use std::sync::Arc;

use loopvol_backend::params::{Dialect, VolumeParams};
use loopvol_backend::{AccessType, CapacityRange, CreateVolume, IoLimits, Lifecycle, Snapshot, Source, Volume};
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_server::Controller;
use loopvol_proto::v1::controller_service_capability::rpc::Type as CapType;
use loopvol_proto::v1::controller_service_capability::{Rpc, Type as OneOf};
use loopvol_proto::v1::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use tonic::{Request, Response, Status};

use crate::capability;
use crate::driver::{bytes, required, timestamp, to_i64, Driver};
use crate::pagination;

pub struct ControllerService(pub Arc<Driver>);

/// The StorageClass parameters of a request, checked by the backend's one parser.
fn storage_class(params: &HashMap<String, String>) -> Result<VolumeParams, Status> {
    VolumeParams::parse_map(params, Dialect::StorageClass).map_err(crate::status::to_status)
}

fn csi_source(source: &Option<Source>) -> Option<csi::VolumeContentSource> {
    let r#type = match source.as_ref()? {
        Source::Snapshot(id) => SourceType::Snapshot(SnapshotSource { snapshot_id: id.clone() }),
        Source::Volume(id) => SourceType::Volume(VolumeSource { volume_id: id.clone() }),
    };
    Some(csi::VolumeContentSource { r#type: Some(r#type) })
}

impl ControllerService {
    fn csi_volume(&self, vol: &Volume) -> csi::Volume {
        csi::Volume {
            capacity_bytes: to_i64(vol.capacity_bytes),
            volume_id: vol.id.clone(),
            volume_context: HashMap::new(),
            content_source: csi_source(&vol.source),
            accessible_topology: vec![self.0.topology()],
        }
    }
}

pub fn csi_snapshot(snap: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: to_i64(snap.size_bytes),
        snapshot_id: snap.id.clone(),
        source_volume_id: snap.source_volume_id.clone(),
        creation_time: Some(timestamp(snap.created_at)),
        ready_to_use: snap.ready,
        group_snapshot_id: snap.group_id.clone().unwrap_or_default(),
    }
}

fn condition(c: loopvol_backend::Condition) -> csi::VolumeCondition {
    csi::VolumeCondition { abnormal: c.abnormal, message: c.message }
}

const CAPABILITIES: [CapType; 12] = [
    CapType::CreateDeleteVolume,
    CapType::ListVolumes,
    CapType::GetCapacity,
    CapType::CreateDeleteSnapshot,
    CapType::ListSnapshots,
    CapType::GetSnapshot,
    CapType::CloneVolume,
    CapType::ExpandVolume,
    CapType::GetVolume,
    CapType::VolumeCondition,
    CapType::SingleNodeMultiWriter,
    CapType::ModifyVolume,
];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        required(&req.name, "name")?;
        let wanted = capability::require_all(&req.volume_capabilities)?;
        let params = storage_class(&req.parameters)?;
        let mutable = mutable(&req.mutable_parameters)?;
        let range = req.capacity_range.unwrap_or_default();
        let capacity = CapacityRange {
            required: bytes(range.required_bytes, "required_bytes")?,
            limit: bytes(range.limit_bytes, "limit_bytes")?,
        };
        if let Some(topo) = &req.accessibility_requirements {
            let mut wanted_nodes = topo.requisite.iter().chain(&topo.preferred).peekable();
            if wanted_nodes.peek().is_some() && !wanted_nodes.any(|t| self.0.is_this_node(t)) {
                return Err(Status::resource_exhausted(format!(
                    "volumes of this driver live on node {:?}, which the accessibility requirements exclude",
                    self.0.node_id
                )));
            }
        }
        let source = match req.volume_content_source.and_then(|s| s.r#type) {
            None => None,
            Some(SourceType::Snapshot(s)) => {
                Some(Source::Snapshot(required(&s.snapshot_id, "snapshot_id")?.to_string()))
            }
            Some(SourceType::Volume(v)) => Some(Source::Volume(required(&v.volume_id, "volume_id")?.to_string())),
        };
        let create = CreateVolume {
            io_limits: mutable.io_limits.over(params.io_limits.over(IoLimits::default())),
            name: req.name,
            id: None,
            capacity,
            // The capability's fs type wins over the StorageClass parameter.
            fs_type: match wanted.access_type {
                AccessType::Mount => wanted.fs_type.or(params.fs_type),
                AccessType::Block => None,
            },
            access_type: wanted.access_type,
            // The VolumeAttributesClass's mutable parameters win over the
            // StorageClass's, key by key.
            thick: mutable.thick.or(params.thick).unwrap_or(false),
            source,
            parameters: params.kept,
            lifecycle: Lifecycle::Persistent,
            direct_io: mutable.direct_io.or(params.direct_io).unwrap_or(true),
        };
        let vol = self.0.run(move |pool| pool.create_volume(&create)).await?;
        Ok(Response::new(csi::CreateVolumeResponse { volume: Some(self.csi_volume(&vol)) }))
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let id = required(&req.get_ref().volume_id, "volume_id")?.to_string();
        self.0.run(move |pool| pool.delete_volume(&id)).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("volumes are node-local: there is nothing to attach (no PUBLISH_UNPUBLISH_VOLUME)"))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("volumes are node-local: there is nothing to detach (no PUBLISH_UNPUBLISH_VOLUME)"))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        let mut problem = None;
        let mut checked = Vec::with_capacity(req.volume_capabilities.len());
        for cap in &req.volume_capabilities {
            let wanted = capability::parse(cap)?;
            if let Some(reason) = capability::unsupported_reason(wanted.mode) {
                problem.get_or_insert_with(|| reason.to_string());
            }
            checked.push(wanted);
        }
        params_ok(&req.parameters)?;
        mutable(&req.mutable_parameters)?;
        let vol = self.0.run(move |pool| pool.volume(&id)).await?;
        for wanted in &checked {
            if wanted.access_type != vol.access_type {
                problem.get_or_insert_with(|| format!("volume {} is a {} volume", vol.id, vol.access_type.as_str()));
            }
            if let Some(fs) = wanted.fs_type.filter(|fs| vol.access_type == AccessType::Mount && *fs != vol.fs_type) {
                problem.get_or_insert_with(|| format!("volume {} holds {}, not {fs}", vol.id, vol.fs_type));
            }
        }
        let response = match problem {
            Some(message) => csi::ValidateVolumeCapabilitiesResponse { confirmed: None, message },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let (max, token) = (req.max_entries, req.starting_token);
        let page = self
            .0
            .run(move |pool| {
                // Page over the IDs, then read only this page's records.
                let (ids, next) = match pagination::page(pool.volume_ids()?, |id| id.as_str(), max, &token) {
                    Ok(page) => page,
                    Err(status) => return Ok(Err(status)),
                };
                let mut vols = Vec::with_capacity(ids.len());
                for id in ids {
                    // A volume deleted while we list is simply left out.
                    match pool.volume(&id) {
                        Ok(vol) => vols.push(vol),
                        Err(loopvol_backend::Error::VolumeNotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                let conditions = pool.conditions(&vols)?;
                Ok(Ok((vols.into_iter().zip(conditions).collect::<Vec<_>>(), next)))
            })
            .await??;
        let (entries, next_token) = page;
        let entries = entries
            .into_iter()
            .map(|(vol, c)| csi::list_volumes_response::Entry {
                volume: Some(self.csi_volume(&vol)),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: Vec::new(),
                    volume_condition: Some(condition(c)),
                }),
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        let elsewhere = req.accessible_topology.as_ref().is_some_and(|t| !self.0.is_this_node(t));
        let unsupported = req
            .volume_capabilities
            .iter()
            .filter(|c| capability::constrains_capacity(c))
            .any(|c| capability::parse(c).map_or(true, |w| capability::unsupported_reason(w.mode).is_some()));
        if elsewhere || unsupported {
            // This node's pool serves no such volumes.
            return Ok(Response::new(csi::GetCapacityResponse {
                available_capacity: 0,
                maximum_volume_size: Some(0),
                minimum_volume_size: None,
            }));
        }
        params_ok(&req.parameters)?;
        let cap = self.0.run(|pool| pool.capacity()).await?;
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: to_i64(cap.available_bytes),
            maximum_volume_size: Some(to_i64(cap.max_volume_bytes)),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = CAPABILITIES
            .iter()
            .filter(|t| self.0.advertise_get_snapshot || **t != CapType::GetSnapshot)
            .map(|t| csi::ControllerServiceCapability { r#type: Some(OneOf::Rpc(Rpc { r#type: *t as i32 })) })
            .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        let source = required(&req.source_volume_id, "source_volume_id")?.to_string();
        let name = required(&req.name, "name")?.to_string();
        let snap = self.0.run(move |pool| pool.create_snapshot(&name, &source)).await?;
        Ok(Response::new(csi::CreateSnapshotResponse { snapshot: Some(csi_snapshot(&snap)) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let id = required(&req.get_ref().snapshot_id, "snapshot_id")?.to_string();
        self.0.run(move |pool| pool.delete_snapshot(&id)).await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        let (snapshot_id, source) = (req.snapshot_id, req.source_volume_id);
        let snaps = self
            .0
            .run(move |pool| {
                if snapshot_id.is_empty() {
                    return pool.snapshots();
                }
                // An unknown snapshot ID is an empty list, not an error.
                match pool.snapshot(&snapshot_id) {
                    Ok(s) => Ok(vec![s]),
                    Err(loopvol_backend::Error::SnapshotNotFound(_)) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let snaps: Vec<Snapshot> =
            snaps.into_iter().filter(|s| source.is_empty() || s.source_volume_id == source).collect();
        let (snaps, next_token) = pagination::page(snaps, |s| s.id.as_str(), req.max_entries, &req.starting_token)?;
        let entries =
            snaps.iter().map(|s| csi::list_snapshots_response::Entry { snapshot: Some(csi_snapshot(s)) }).collect();
        Ok(Response::new(csi::ListSnapshotsResponse { entries, next_token }))
    }

    async fn get_snapshot(
        &self,
        req: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let id = required(&req.get_ref().snapshot_id, "snapshot_id")?.to_string();
        let snap = self.0.run(move |pool| pool.snapshot(&id)).await?;
        Ok(Response::new(csi::GetSnapshotResponse { snapshot: Some(csi_snapshot(&snap)) }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let range = req.capacity_range.ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let (want, limit) = (bytes(range.required_bytes, "required_bytes")?, bytes(range.limit_bytes, "limit_bytes")?);
        if want == 0 && limit == 0 {
            return Err(Status::invalid_argument("capacity_range needs required_bytes or limit_bytes"));
        }
        if limit != 0 && want > limit {
            return Err(Status::out_of_range(format!("required_bytes {want} exceeds limit_bytes {limit}")));
        }
        let block = match req.volume_capability.as_ref() {
            Some(cap) => capability::parse(cap)?.access_type == AccessType::Block,
            None => false,
        };
        let size = if want == 0 { limit } else { want };
        let defer = self.0.defer_expansion_to_node;
        let outcome = self
            .0
            .run(move |pool| match pool.expand_volume(&id, size) {
                // A central resizer's driver does not hold the node's pool:
                // the owning node's NodeExpandVolume grows image and filesystem.
                Err(loopvol_backend::Error::VolumeNotFound(_)) if defer => Ok(None),
                other => other.map(Some),
            })
            .await?;
        let response = match outcome {
            Some(outcome) => csi::ControllerExpandVolumeResponse {
                capacity_bytes: to_i64(outcome.capacity_bytes),
                node_expansion_required: outcome.node_expansion_required && !block,
            },
            None => csi::ControllerExpandVolumeResponse { capacity_bytes: to_i64(size), node_expansion_required: true },
        };
        Ok(Response::new(response))
    }

    async fn controller_get_volume(
        &self,
        req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let id = required(&req.get_ref().volume_id, "volume_id")?.to_string();
        let (vol, c) = self.0.run(move |pool| Ok((pool.volume(&id)?, pool.condition(&id)?))).await?;
        Ok(Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(self.csi_volume(&vol)),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition(c)),
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        req: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?.to_string();
        let params = mutable(&req.mutable_parameters)?;
        let defer = self.0.defer_modify_to_node;
        self.0
            .run(move |pool| match pool.modify_volume(&id, &params) {
                // A central resizer's driver does not hold the node's pool:
                // the owning node applies the PV's new class itself
                // (`attributes_follower`). The parameters are checked here.
                Err(loopvol_backend::Error::VolumeNotFound(_))
                    if defer && loopvol_backend::id::validate(&id).is_ok() =>
                {
                    tracing::info!(volume = %id, "not in this pool: the owning node applies the new parameters");
                    Ok(())
                }
                other => other.map(|_| ()),
            })
            .await?;
        Ok(Response::new(csi::ControllerModifyVolumeResponse {}))
    }
}

/// Mutable parameters (ModifyVolume, CreateVolume's `mutable_parameters`),
/// checked by the backend's one parser: INVALID_ARGUMENT names a key that is
/// not mutable.
fn mutable(params: &HashMap<String, String>) -> Result<VolumeParams, Status> {
    VolumeParams::parse_map(params, Dialect::Mutable).map_err(crate::status::to_status)
}

/// Parameters of requests that only check them (ValidateVolumeCapabilities,
/// GetCapacity) follow the CreateVolume rules.
fn params_ok(params: &HashMap<String, String>) -> Result<(), Status> {
    storage_class(params).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_accept_ours_and_the_sidecars_and_nothing_else() {
        let params = HashMap::from([
            ("csi.storage.k8s.io/fstype".to_string(), "xfs".to_string()),
            ("thick".to_string(), "true".to_string()),
            ("csi.storage.k8s.io/pv/name".to_string(), "pv-1".to_string()),
        ]);
        let p = storage_class(&params).unwrap();
        assert_eq!((p.fs_type, p.thick), (Some(loopvol_backend::FsType::Xfs), Some(true)));
        assert!(!p.kept.contains_key("csi.storage.k8s.io/pv/name"));
        for bad in [("color", "blue"), ("thick", "yes"), ("fsType", "ntfs")] {
            let params = HashMap::from([(bad.0.to_string(), bad.1.to_string())]);
            assert_eq!(storage_class(&params).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
