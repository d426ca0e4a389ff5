//! ControllerModifyVolume (VolumeAttributesClass) against the real binary:
//! every argument check, and a modify of a staged and published volume on
//! real loop devices and real pod cgroups: the loop device's `dio` flag in
//! sysfs flips, the limits land in the right cgroup file of each publishing
//! pod (cgroupfs and systemd layouts), thick allocates the image, the limits
//! come back after a restart, and a crash at either side of the record loses
//! nothing.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{code, mount_cap, Server, MIB};
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_service_capability::rpc::Type as CapType;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_test_support::cgroup::{rdev, TestPodCgroup};
use loopvol_test_support::{eventually, loops_under, privileged};
use tonic::Code;

const POD_UID: &str = "csi.storage.k8s.io/pod.uid";

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn modify(s: &mut Server, id: &str, pairs: &[(&str, &str)]) -> Result<(), tonic::Status> {
    let req = csi::ControllerModifyVolumeRequest {
        volume_id: id.into(),
        mutable_parameters: params(pairs),
        ..Default::default()
    };
    s.controller.controller_modify_volume(req).await.map(|_| ())
}

async fn create(s: &mut Server, name: &str, mutable: &[(&str, &str)]) -> Result<csi::Volume, tonic::Status> {
    let req = csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 }),
        volume_capabilities: vec![shared_cap()],
        mutable_parameters: params(mutable),
        ..Default::default()
    };
    Ok(s.controller.create_volume(req).await?.into_inner().volume.expect("volume"))
}

/// Several pods on this node may publish it (one target per pod).
fn shared_cap() -> csi::VolumeCapability {
    mount_cap(Mode::SingleNodeMultiWriter, "ext4")
}

async fn publish_for(s: &mut Server, id: &str, staging: &Path, target: &Path, pod_uid: &str) {
    let req = csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(shared_cap()),
        volume_context: params(&[(POD_UID, pod_uid), ("csi.storage.k8s.io/pod.name", "p")]),
        ..Default::default()
    };
    s.node.node_publish_volume(req).await.expect("NodePublish");
}

/// The loop device backed by the volume's image.
fn device_of(s: &Server, id: &str) -> PathBuf {
    let image = s.pool.join("volumes").join(format!("{id}.img"));
    let devices = loops_under(&image);
    assert_eq!(devices.len(), 1, "one loop device for {}: {devices:?}", image.display());
    devices[0].clone()
}

fn dio(device: &Path) -> bool {
    let name = device.file_name().unwrap().to_string_lossy().into_owned();
    fs::read_to_string(format!("/sys/block/{name}/loop/dio")).expect("dio flag").trim() == "1"
}

fn allocated(s: &Server, id: &str) -> u64 {
    fs::metadata(s.pool.join("volumes").join(format!("{id}.img"))).unwrap().blocks() * 512
}

async fn condition(s: &mut Server, id: &str) -> csi::VolumeCondition {
    let resp = s
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id.into() })
        .await
        .expect("ControllerGetVolume")
        .into_inner();
    resp.status.and_then(|st| st.volume_condition).expect("a condition")
}

#[tokio::test]
async fn modify_volume_checks_its_arguments() {
    let mut s = Server::start().await;
    let caps = s.controller.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap();
    let advertised = caps.into_inner().capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(csi::controller_service_capability::Type::Rpc(r)) if r.r#type == CapType::ModifyVolume as i32)
    });
    assert!(advertised, "MODIFY_VOLUME is advertised");

    let vol = create(&mut s, "args", &[("readIOPS", "100")]).await.expect("CreateVolume with mutable parameters");
    let id = vol.volume_id;
    assert_eq!(code(modify(&mut s, "", &[("readIOPS", "1")]).await), Code::InvalidArgument);
    assert_eq!(code(modify(&mut s, "no-such-volume", &[("readIOPS", "1")]).await), Code::NotFound);
    assert_eq!(code(modify(&mut s, "../../etc", &[("readIOPS", "1")]).await), Code::InvalidArgument);
    for (key, value) in
        [("fsType", "xfs"), ("size", "1Gi"), ("colour", "blue"), ("readIOPS", "fast"), ("directIO", "on")]
    {
        let e = modify(&mut s, &id, &[(key, value)]).await.expect_err(key);
        assert_eq!(e.code(), Code::InvalidArgument, "{key}: {e:?}");
        assert!(e.message().contains(key), "{key}: the message names the key: {}", e.message());
    }
    let e = create(&mut s, "bad-mutable", &[("fsType", "xfs")]).await.expect_err("not mutable");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("fsType"), "{}", e.message());
    // A good modify of an unpublished volume, twice (idempotent).
    for _ in 0..2 {
        modify(&mut s, &id, &[("writeIOPS", "5k"), ("thick", "false")]).await.expect("modify");
    }
    // ValidateVolumeCapabilities checks and confirms mutable parameters too.
    let req = csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![shared_cap()],
        mutable_parameters: params(&[("readIOPS", "7")]),
        ..Default::default()
    };
    let confirmed = s.controller.validate_volume_capabilities(req.clone()).await.unwrap().into_inner().confirmed;
    assert_eq!(confirmed.expect("confirmed").mutable_parameters, params(&[("readIOPS", "7")]));
    let bad = csi::ValidateVolumeCapabilitiesRequest { mutable_parameters: params(&[("fsType", "xfs")]), ..req };
    assert_eq!(code(s.controller.validate_volume_capabilities(bad).await), Code::InvalidArgument);
}

#[tokio::test]
async fn a_central_controller_checks_and_defers_to_the_owning_node() {
    let mut s = Server::start_with(&["--defer-modify-to-node"]).await;
    modify(&mut s, "pvc-on-another-node", &[("readIOPS", "100")]).await.expect("deferred");
    assert!(s.log().contains("owning node applies"), "the deferral is logged: {}", s.log());
    let e = modify(&mut s, "pvc-on-another-node", &[("fsType", "xfs")]).await.expect_err("checked here");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(code(modify(&mut s, "../escape", &[("readIOPS", "1")]).await), Code::InvalidArgument);
}

#[tokio::test]
async fn modify_applies_live_to_a_staged_and_published_volume() {
    if !privileged("modify_applies_live_to_a_staged_and_published_volume") {
        return;
    }
    let mut cgroupfs_pod = TestPodCgroup::new(false);
    let systemd_pod = TestPodCgroup::new(true);
    let mut s = Server::start().await;
    let id = create(&mut s, "live", &[("readIOPS", "100")]).await.unwrap().volume_id;
    let staging = s.staging("live");
    s.stage(&id, &staging, shared_cap()).await.expect("NodeStage");
    let (t1, t2) = (s.target("pod-1"), s.target("pod-2"));
    publish_for(&mut s, &id, &staging, &t1, &cgroupfs_pod.uid).await;
    publish_for(&mut s, &id, &staging, &t2, &systemd_pod.uid).await;
    let device = device_of(&s, &id);
    let dev = rdev(&device);

    // CreateVolume's mutable parameters are in force from the first publish.
    for pod in [&cgroupfs_pod, &systemd_pod] {
        assert_eq!(pod.rule(dev, "read_iops_device"), 100, "{}", pod.dir.display());
        assert_eq!(pod.rule(dev, "write_iops_device"), 0);
    }
    let dio_before = dio(&device);
    assert!(dio_before, "the pool ({}) takes direct I/O", s.pool.display());

    modify(&mut s, &id, &[("readIOPS", "2k"), ("writeBytesPerSecond", "1Mi"), ("directIO", "false")]).await.unwrap();
    for pod in [&cgroupfs_pod, &systemd_pod] {
        assert_eq!(pod.rule(dev, "read_iops_device"), 2000, "{}", pod.dir.display());
        assert_eq!(pod.rule(dev, "write_bps_device"), 1 << 20);
        assert_eq!(pod.rule(dev, "write_iops_device"), 0);
    }
    assert!(!dio(&device), "directIO=false switched the device to buffered I/O");
    // The volume still works after the switch.
    fs::write(t1.join("after-switch"), b"data").unwrap();
    assert_eq!(fs::read(t2.join("after-switch")).unwrap(), b"data");

    modify(&mut s, &id, &[("directIO", "true"), ("writeIOPS", "300")]).await.unwrap();
    assert!(dio(&device), "directIO=true switched it back");
    assert_eq!(cgroupfs_pod.rule(dev, "read_iops_device"), 0, "an absent limit is lifted");
    assert_eq!(cgroupfs_pod.rule(dev, "write_bps_device"), 0);
    assert_eq!(cgroupfs_pod.rule(dev, "write_iops_device"), 300);

    // thick preallocates the whole image, and keeps the data.
    assert!(allocated(&s, &id) < (64 * MIB) as u64, "thin before");
    modify(&mut s, &id, &[("thick", "true"), ("writeIOPS", "300")]).await.unwrap();
    assert!(allocated(&s, &id) >= (64 * MIB) as u64, "thick after: {} bytes", allocated(&s, &id));
    assert_eq!(fs::read(t1.join("after-switch")).unwrap(), b"data");
    assert!(!condition(&mut s, &id).await.abnormal);

    // A container started after the publish: on cgroup v1, where limits
    // are not hierarchical, the driver writes them into its cgroup too
    // within a resync round; on v2 the pod's own rule covers it.
    let container = cgroupfs_pod.add_container("container-1");
    if !cgroupfs_pod.v2 {
        assert!(
            eventually(|| container.rule(dev, "write_iops_device") == 300),
            "the new container cgroup gets the limit: {}",
            s.log()
        );
    }

    // A restart puts limits back that the kernel lost (a recreated cgroup).
    let lost = format!("{}:{} 0", dev.0, dev.1);
    if cgroupfs_pod.v2 {
        fs::write(cgroupfs_pod.dir.join("io.max"), format!("{}:{} wiops=max", dev.0, dev.1)).unwrap();
    } else {
        fs::write(cgroupfs_pod.dir.join("blkio.throttle.write_iops_device"), lost).unwrap();
    }
    assert_eq!(cgroupfs_pod.rule(dev, "write_iops_device"), 0);
    s.restart().await;
    assert_eq!(cgroupfs_pod.rule(dev, "write_iops_device"), 300, "re-applied at start-up");

    // A pod whose cgroup cannot be found still gets its volume; the
    // condition says why its limits are not in force.
    let t3 = s.target("pod-3");
    publish_for(&mut s, &id, &staging, &t3, "00000000-0000-4000-8000-000000000000").await;
    let c = condition(&mut s, &id).await;
    assert!(c.abnormal && c.message.contains("no cgroup for pod"), "{c:?}");
    s.unpublish(&id, &t3).await.unwrap();
    assert!(!condition(&mut s, &id).await.abnormal);

    for t in [&t1, &t2] {
        s.unpublish(&id, t).await.unwrap();
    }
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
    assert!(s.mounts().is_empty(), "{:?}", s.mounts());
}

#[tokio::test]
async fn a_crash_during_modify_loses_nothing() {
    if !privileged("a_crash_during_modify_loses_nothing") {
        return;
    }
    let pod = TestPodCgroup::new(false);
    let mut s = Server::start().await;
    let id = create(&mut s, "crash", &[]).await.unwrap().volume_id;
    let staging = s.staging("crash");
    s.stage(&id, &staging, shared_cap()).await.unwrap();
    let target = s.target("pod");
    publish_for(&mut s, &id, &staging, &target, &pod.uid).await;
    fs::write(target.join("kept"), b"before the crash").unwrap();
    let dev = rdev(&device_of(&s, &id));

    // Dies before the record: nothing changed, and the retry applies it.
    let _ = s.stop().await;
    s.restart_with_failpoint(Some("modify.before-record")).await;
    assert!(modify(&mut s, &id, &[("readIOPS", "250"), ("directIO", "false")]).await.is_err(), "aborted");
    s.restart_with_failpoint(None).await;
    assert_eq!(pod.rule(dev, "read_iops_device"), 0, "the record was not written");
    modify(&mut s, &id, &[("readIOPS", "250"), ("directIO", "false")]).await.expect("retry");
    assert_eq!(pod.rule(dev, "read_iops_device"), 250);

    // Dies after the record, before the kernel heard: start-up catches up.
    let _ = s.stop().await;
    s.restart_with_failpoint(Some("modify.after-record")).await;
    assert!(modify(&mut s, &id, &[("readIOPS", "400"), ("directIO", "true")]).await.is_err(), "aborted");
    assert_eq!(pod.rule(dev, "read_iops_device"), 250, "the crash came before the cgroup write");
    s.restart_with_failpoint(None).await;
    assert_eq!(pod.rule(dev, "read_iops_device"), 400, "applied from the record at start-up");
    assert!(dio(&device_of(&s, &id)), "direct I/O from the record at start-up");
    assert_eq!(fs::read(target.join("kept")).unwrap(), b"before the crash");

    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}
