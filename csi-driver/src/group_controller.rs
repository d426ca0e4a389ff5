//! GroupController service: crash-consistent snapshots of several volumes
//! (the backend freezes every mounted member at the same moment).

use std::sync::Arc;

use loopvol_backend::{GroupSnapshot, Pool};
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::group_controller_server::GroupController;
use loopvol_proto::v1::group_controller_service_capability::rpc::Type as CapType;
use loopvol_proto::v1::group_controller_service_capability::{Rpc, Type as OneOf};
use tonic::{Request, Response, Status};

use crate::controller::csi_snapshot;
use crate::driver::{required, timestamp, Driver};

pub struct GroupControllerService(pub Arc<Driver>);

/// The group with its member snapshots, as CSI returns it.
fn csi_group(pool: &Pool, group: &GroupSnapshot) -> loopvol_backend::Result<csi::VolumeGroupSnapshot> {
    let snapshots =
        group.snapshot_ids.iter().map(|id| pool.snapshot(id).map(|s| csi_snapshot(&s))).collect::<Result<_, _>>()?;
    Ok(csi::VolumeGroupSnapshot {
        group_snapshot_id: group.id.clone(),
        snapshots,
        creation_time: Some(timestamp(group.created_at)),
        ready_to_use: group.ready,
    })
}

/// When the CO names the members, they must be the group's (spec: the
/// snapshot_ids of Delete/GetVolumeGroupSnapshot).
fn check_members(group: &GroupSnapshot, ids: &[String]) -> Result<(), Status> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut want = ids.to_vec();
    let mut have = group.snapshot_ids.clone();
    want.sort();
    have.sort();
    if want != have {
        return Err(Status::invalid_argument(format!("snapshot_ids do not match the members of group {}", group.id)));
    }
    Ok(())
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        let cap = csi::GroupControllerServiceCapability {
            r#type: Some(OneOf::Rpc(Rpc { r#type: CapType::CreateDeleteGetVolumeGroupSnapshot as i32 })),
        };
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse { capabilities: vec![cap] }))
    }

    async fn create_volume_group_snapshot(
        &self,
        req: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        let name = required(&req.name, "name")?.to_string();
        if req.source_volume_ids.is_empty() || req.source_volume_ids.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("source_volume_ids are required"));
        }
        let ids = req.source_volume_ids;
        let group = self
            .0
            .run(move |pool| {
                let group = pool.create_group_snapshot(&name, &ids)?;
                csi_group(pool, &group)
            })
            .await?;
        Ok(Response::new(csi::CreateVolumeGroupSnapshotResponse { group_snapshot: Some(group) }))
    }

    async fn delete_volume_group_snapshot(
        &self,
        req: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.group_snapshot_id, "group_snapshot_id")?.to_string();
        let lookup = id.clone();
        let group = self
            .0
            .run(move |pool| match pool.group_snapshot(&lookup) {
                Ok(group) => Ok(Some(group)),
                // Already gone: deleting is success.
                Err(loopvol_backend::Error::SnapshotNotFound(_)) => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        if let Some(group) = group {
            check_members(&group, &req.snapshot_ids)?;
            self.0.run(move |pool| pool.delete_group_snapshot(&id)).await?;
        }
        Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}))
    }

    async fn get_volume_group_snapshot(
        &self,
        req: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.group_snapshot_id, "group_snapshot_id")?.to_string();
        let (group, csi_group) = self
            .0
            .run(move |pool| {
                let group = pool.group_snapshot(&id)?;
                let csi = csi_group(pool, &group)?;
                Ok((group, csi))
            })
            .await?;
        check_members(&group, &req.snapshot_ids)?;
        Ok(Response::new(csi::GetVolumeGroupSnapshotResponse { group_snapshot: Some(csi_group) }))
    }
}
