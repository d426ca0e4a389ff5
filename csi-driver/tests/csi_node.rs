//! Node service argument checks and error codes (csi-sanity's Node Service
//! cases that need no mount).

mod common;

use common::*;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::node_service_capability::rpc::Type as Cap;
use tonic::Code;

#[tokio::test]
async fn node_capabilities_are_the_advertised_set() {
    let mut s = Server::start().await;
    let caps = s.node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let got: Vec<Cap> = caps
        .capabilities
        .into_iter()
        .map(|c| match c.r#type.expect("type") {
            csi::node_service_capability::Type::Rpc(rpc) => rpc.r#type(),
        })
        .collect();
    assert_eq!(
        got,
        [
            Cap::StageUnstageVolume,
            Cap::GetVolumeStats,
            Cap::ExpandVolume,
            Cap::VolumeCondition,
            Cap::SingleNodeMultiWriter
        ]
    );
}

#[tokio::test]
async fn stage_and_unstage_argument_checks() {
    let mut s = Server::start().await;
    let vol = s.create("stage-args", GIB, mount_rw()).await.volume_id;
    let staging = s.staging("args");
    let path = staging.to_string_lossy().into_owned();
    let stage = |id: &str, path: &str, cap: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: path.into(),
        volume_capability: cap,
        ..Default::default()
    };
    let n = &mut s.node;
    assert_eq!(code(n.node_stage_volume(stage("", &path, Some(mount_rw()))).await), Code::InvalidArgument);
    assert_eq!(code(n.node_stage_volume(stage(&vol, "", Some(mount_rw()))).await), Code::InvalidArgument);
    assert_eq!(code(n.node_stage_volume(stage(&vol, &path, None)).await), Code::InvalidArgument);
    let multi = mount_cap(csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter, "");
    assert_eq!(code(n.node_stage_volume(stage(&vol, &path, Some(multi))).await), Code::InvalidArgument);
    assert_eq!(code(n.node_stage_volume(stage("missing", &path, Some(mount_rw()))).await), Code::NotFound);
    let unstage =
        |id: &str, path: &str| csi::NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: path.into() };
    assert_eq!(code(n.node_unstage_volume(unstage("", &path)).await), Code::InvalidArgument);
    assert_eq!(code(n.node_unstage_volume(unstage(&vol, "")).await), Code::InvalidArgument);
    // Not staged: unstage is success.
    n.node_unstage_volume(unstage(&vol, &path)).await.unwrap();
    assert!(s.mounts().is_empty());
}

#[tokio::test]
async fn publish_and_unpublish_argument_checks() {
    let mut s = Server::start().await;
    let vol = s.create("publish-args", GIB, mount_rw()).await.volume_id;
    let staging = s.staging("args").to_string_lossy().into_owned();
    let target = s.target("args").to_string_lossy().into_owned();
    let publish =
        |id: &str, staging: &str, target: &str, cap: Option<csi::VolumeCapability>| csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let n = &mut s.node;
    assert_eq!(
        code(n.node_publish_volume(publish("", &staging, &target, Some(mount_rw()))).await),
        Code::InvalidArgument
    );
    assert_eq!(code(n.node_publish_volume(publish(&vol, &staging, "", Some(mount_rw()))).await), Code::InvalidArgument);
    assert_eq!(code(n.node_publish_volume(publish(&vol, "", &target, None)).await), Code::InvalidArgument);
    assert_eq!(code(n.node_publish_volume(publish(&vol, "", &target, Some(mount_rw()))).await), Code::InvalidArgument);
    let mut no_mode = mount_rw();
    no_mode.access_mode = None;
    assert_eq!(
        code(n.node_publish_volume(publish(&vol, &staging, &target, Some(no_mode))).await),
        Code::InvalidArgument
    );
    let unpublish =
        |id: &str, target: &str| csi::NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: target.into() };
    assert_eq!(code(n.node_unpublish_volume(unpublish("", &target)).await), Code::InvalidArgument);
    assert_eq!(code(n.node_unpublish_volume(unpublish(&vol, "")).await), Code::InvalidArgument);
    // Never published: unpublish is success and creates nothing.
    n.node_unpublish_volume(unpublish(&vol, &target)).await.unwrap();
    assert!(!std::path::Path::new(&target).exists());
}

#[tokio::test]
async fn stats_and_expand_argument_checks_and_not_found() {
    let mut s = Server::start().await;
    let vol = s.create("stats-args", GIB, mount_rw()).await.volume_id;
    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        staging_target_path: String::new(),
    };
    let n = &mut s.node;
    assert_eq!(code(n.node_get_volume_stats(stats("", "some/path")).await), Code::InvalidArgument);
    assert_eq!(code(n.node_get_volume_stats(stats(&vol, "")).await), Code::InvalidArgument);
    assert_eq!(code(n.node_get_volume_stats(stats("fake-vol-id", "some/path")).await), Code::NotFound);
    assert_eq!(code(n.node_get_volume_stats(stats(&vol, "some/path")).await), Code::NotFound);
    assert_eq!(code(n.node_get_volume_stats(stats(&vol, "/nonexistent/path")).await), Code::NotFound);
    let expand = |id: &str, path: &str| csi::NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        volume_capability: Some(mount_rw()),
        ..Default::default()
    };
    assert_eq!(code(n.node_expand_volume(expand("", "/some/path")).await), Code::InvalidArgument);
    assert_eq!(code(n.node_expand_volume(expand(&vol, "")).await), Code::InvalidArgument);
    assert_eq!(code(n.node_expand_volume(expand("fake-vol-id", "some/path")).await), Code::NotFound);
}
