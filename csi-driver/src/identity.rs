//! Identity service: who we are, what we offer, whether we are healthy.

use std::sync::Arc;

use loopvol_proto::v1::identity_server::Identity;
use loopvol_proto::v1::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use loopvol_proto::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    PluginCapability, ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

use crate::driver::Driver;

pub struct IdentityService {
    pub driver: Arc<Driver>,
    /// List SNAPSHOT_METADATA_SERVICE (`--advertise-snapshot-metadata`).
    pub advertise_snapshot_metadata: bool,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service = |t: service::Type| PluginCapability { r#type: Some(Type::Service(Service { r#type: t as i32 })) };
        let mut capabilities = vec![
            service(service::Type::ControllerService),
            service(service::Type::VolumeAccessibilityConstraints),
            service(service::Type::GroupControllerService),
            PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion { r#type: volume_expansion::Type::Online as i32 })),
            },
        ];
        // The SnapshotMetadata service is always served; listing it is
        // opt-in (alpha; csi-sanity v5.3.1 rejects the capability).
        if self.advertise_snapshot_metadata {
            capabilities.push(service(service::Type::SnapshotMetadataService));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        // The spec's answer for an unhealthy plugin is FAILED_PRECONDITION,
        // whatever the backend error was.
        self.driver.run(|pool| pool.probe()).await.map_err(|s| Status::failed_precondition(s.message().to_string()))?;
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
