//! Privileged end-to-end lifecycles with real loop devices, mkfs and mounts,
//! driven exactly as kubelet and csi-sanity drive them.

mod common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::*;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_proto::v1::volume_usage::Unit;
use tonic::Code;

macro_rules! privileged {
    ($name:expr) => {
        if !loopvol_test_support::privileged($name) {
            return;
        }
    };
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create file on the volume");
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn write_block(dev: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).expect("open block target");
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_block(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(dev).expect("open block target");
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn usage(resp: &csi::NodeGetVolumeStatsResponse, unit: Unit) -> &csi::VolumeUsage {
    resp.usage.iter().find(|u| u.unit() == unit).unwrap_or_else(|| panic!("no {unit:?} usage in {resp:?}"))
}

#[tokio::test]
async fn mount_lifecycle_is_idempotent_and_keeps_data() {
    privileged!("mount_lifecycle_is_idempotent_and_keeps_data");
    let mut s = Server::start().await;
    let id = s.create("pvc-mount", SANITY_SIZE, mount_rw()).await.volume_id;
    let staging = s.staging("mount");
    let target = s.target("mount");
    for _ in 0..10 {
        s.stage(&id, &staging, mount_rw()).await.expect("NodeStageVolume");
    }
    for _ in 0..10 {
        s.publish(&id, &staging, &target, mount_rw(), false).await.expect("NodePublishVolume");
    }
    assert!(target.is_dir(), "the driver creates the target directory");
    write_file(&target.join("hello.txt"), b"persist me");
    let st = s.stats(&id, &target).await.unwrap();
    let bytes = usage(&st, Unit::Bytes);
    assert!(bytes.total > 9 * GIB && bytes.total <= SANITY_SIZE, "{bytes:?}");
    assert!(bytes.used > 0 && bytes.available > 0);
    assert!(usage(&st, Unit::Inodes).total > 0);
    assert!(!st.volume_condition.unwrap().abnormal);
    assert_eq!(code(s.stats(&id, &s.path("elsewhere")).await), Code::NotFound);
    // Deleting an in-use volume is refused and leaves it untouched.
    assert_eq!(code(s.delete(&id).await), Code::FailedPrecondition);
    assert_eq!(code(s.unstage(&id, &staging).await), Code::FailedPrecondition, "a target is still published");

    s.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists(), "NodeUnpublishVolume removes the target path");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    assert!(s.mounts().is_empty(), "{:?}", s.mounts());
    assert!(loops_under(&s.root).is_empty(), "the loop device is released");

    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    assert_eq!(read_all(&target.join("hello.txt")), b"persist me");
    // A read-only second publish of the same volume.
    let ro_target = s.target("mount-ro");
    s.publish(&id, &staging, &ro_target, mount_rw(), true).await.unwrap();
    assert_eq!(read_all(&ro_target.join("hello.txt")), b"persist me");
    let err = std::fs::File::create(ro_target.join("nope")).expect_err("a read-only publish refuses writes");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    // Same target, other readonly flag: ALREADY_EXISTS.
    assert_eq!(code(s.publish(&id, &staging, &ro_target, mount_rw(), false).await), Code::AlreadyExists);
    for t in [&target, &ro_target] {
        s.unpublish(&id, t).await.unwrap();
    }
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
    assert!(s.list_volume_ids().await.is_empty());
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty());
}

#[tokio::test]
async fn block_lifecycle_keeps_data() {
    privileged!("block_lifecycle_keeps_data");
    let mut s = Server::start().await;
    let id = s.create("pvc-block", SANITY_SIZE, block_rw()).await.volume_id;
    let staging = s.staging("block");
    let target = s.target("block");
    for _ in 0..10 {
        s.stage(&id, &staging, block_rw()).await.expect("NodeStageVolume");
    }
    for _ in 0..10 {
        s.publish(&id, &staging, &target, block_rw(), false).await.expect("NodePublishVolume");
    }
    assert!(std::fs::metadata(&target).unwrap().file_type().is_block_device(), "the target is the device");
    write_block(&target, 5 * GIB as u64, b"raw block data");
    let st = s.stats(&id, &target).await.unwrap();
    assert_eq!(usage(&st, Unit::Bytes).total, SANITY_SIZE);
    // A mount capability on a block volume is refused.
    assert!(s.publish(&id, &staging, &s.target("wrong"), mount_rw(), false).await.is_err());
    s.unpublish(&id, &target).await.unwrap();
    assert!(!target.exists(), "NodeUnpublishVolume removes the target file");
    s.unstage(&id, &staging).await.unwrap();
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty(), "{:?}", s.mounts());
    s.stage(&id, &staging, block_rw()).await.unwrap();
    s.publish(&id, &staging, &target, block_rw(), false).await.unwrap();
    assert_eq!(read_block(&target, 5 * GIB as u64, 14), b"raw block data");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
    assert!(loops_under(&s.root).is_empty());
}

#[tokio::test]
async fn single_writer_refuses_a_second_target_and_multi_writer_allows_it() {
    privileged!("single_writer_refuses_a_second_target_and_multi_writer_allows_it");
    let mut s = Server::start().await;
    let single = mount_cap(Mode::SingleNodeSingleWriter, "");
    let id = s.create("pvc-single", GIB, single.clone()).await.volume_id;
    let staging = s.staging("single");
    let (t1, t2) = (s.target("single-1"), s.target("single-2"));
    s.stage(&id, &staging, single.clone()).await.unwrap();
    s.publish(&id, &staging, &t1, single.clone(), false).await.unwrap();
    s.publish(&id, &staging, &t1, single.clone(), false).await.unwrap();
    assert_eq!(code(s.publish(&id, &staging, &t2, single.clone(), false).await), Code::FailedPrecondition);
    // While the single writer holds it, nobody else gets in; once it is
    // gone, multi-writer publishes share the volume.
    let multi = mount_cap(Mode::SingleNodeMultiWriter, "");
    assert_eq!(code(s.publish(&id, &staging, &t2, multi.clone(), false).await), Code::FailedPrecondition);
    s.unpublish(&id, &t1).await.unwrap();
    s.publish(&id, &staging, &t1, multi.clone(), false).await.unwrap();
    s.publish(&id, &staging, &t2, multi, false).await.expect("SINGLE_NODE_MULTI_WRITER allows more targets");
    for t in [&t1, &t2] {
        s.unpublish(&id, t).await.unwrap();
    }
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}

#[tokio::test]
async fn restore_and_clone_copy_contents_and_are_independent() {
    privileged!("restore_and_clone_copy_contents_and_are_independent");
    let mut s = Server::start().await;
    let src = s.create("pvc-src", GIB, mount_rw()).await.volume_id;
    let staging = s.staging("src");
    s.stage(&src, &staging, mount_rw()).await.unwrap();
    write_file(&staging.join("data"), b"version 1");
    // Snapshot and clone while the source is mounted (frozen while copied).
    let snap = s.snapshot("snap-src", &src).await.unwrap();
    let clone = s.create_from("pvc-clone", mount_rw(), volume_source(&src)).await.unwrap().volume_id;
    write_file(&staging.join("data"), b"version 2");
    let restored =
        s.create_from("pvc-restored", mount_rw(), snapshot_source(&snap.snapshot_id)).await.unwrap().volume_id;
    let (st_clone, st_restored) = (s.staging("clone"), s.staging("restored"));
    s.stage(&clone, &st_clone, mount_rw()).await.unwrap();
    s.stage(&restored, &st_restored, mount_rw()).await.unwrap();
    assert_eq!(read_all(&st_clone.join("data")), b"version 1");
    assert_eq!(read_all(&st_restored.join("data")), b"version 1");
    write_file(&st_clone.join("data"), b"clone's own");
    assert_eq!(read_all(&staging.join("data")), b"version 2", "the source is independent of its clone");
    assert_eq!(read_all(&st_restored.join("data")), b"version 1");
    for (id, st) in [(&src, &staging), (&clone, &st_clone), (&restored, &st_restored)] {
        s.unstage(id, st).await.unwrap();
        s.delete(id).await.unwrap();
    }
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty());
}

#[tokio::test]
async fn expansion_as_csi_sanity_does_it_controller_then_stage_then_node() {
    privileged!("expansion_as_csi_sanity_does_it_controller_then_stage_then_node");
    let mut s = Server::start().await;
    let id = s.create("pvc-expand", SANITY_SIZE, mount_rw()).await.volume_id;
    let want = SANITY_SIZE + GIB;
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        ..Default::default()
    };
    let out = s.controller.controller_expand_volume(req).await.unwrap().into_inner();
    assert_eq!(out.capacity_bytes, want);
    let (staging, target) = (s.staging("expand"), s.target("expand"));
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    let grow = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        ..Default::default()
    };
    let node = s.node.node_expand_volume(grow).await.expect("NodeExpandVolume after publish").into_inner();
    assert!(node.capacity_bytes >= want);
    // The filesystem was grown before it was mounted.
    let total = usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    assert!(total > SANITY_SIZE - GIB / 2, "filesystem total {total} did not grow past 10 GiB");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}

#[tokio::test]
async fn online_expansion_of_a_published_xfs_volume() {
    privileged!("online_expansion_of_a_published_xfs_volume");
    let mut s = Server::start().await;
    let xfs = mount_cap(Mode::SingleNodeWriter, "xfs");
    let id = s.create("pvc-xfs", 512 * MIB, xfs.clone()).await.volume_id;
    let (staging, target) = (s.staging("xfs"), s.target("xfs"));
    s.stage(&id, &staging, xfs.clone()).await.unwrap();
    s.publish(&id, &staging, &target, xfs.clone(), false).await.unwrap();
    let before = usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    let want = GIB;
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        volume_capability: Some(xfs.clone()),
        ..Default::default()
    };
    let out = s.controller.controller_expand_volume(req).await.unwrap().into_inner();
    assert_eq!(out.capacity_bytes, want);
    assert!(out.node_expansion_required, "staged mount volume: kubelet must call NodeExpandVolume");
    let grow = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        staging_target_path: staging.to_string_lossy().into_owned(),
        volume_capability: Some(xfs),
        ..Default::default()
    };
    for _ in 0..2 {
        let node = s.node.node_expand_volume(grow.clone()).await.expect("xfs grows online").into_inner();
        assert_eq!(node.capacity_bytes, want);
    }
    let after = usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    assert!(after > before + 256 * MIB, "xfs did not grow: {before} -> {after}");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}

#[tokio::test]
async fn block_expansion_needs_no_node_step() {
    privileged!("block_expansion_needs_no_node_step");
    let mut s = Server::start().await;
    let id = s.create("pvc-block-grow", GIB, block_rw()).await.volume_id;
    let (staging, target) = (s.staging("bg"), s.target("bg"));
    s.stage(&id, &staging, block_rw()).await.unwrap();
    s.publish(&id, &staging, &target, block_rw(), false).await.unwrap();
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        volume_capability: Some(block_rw()),
        ..Default::default()
    };
    let out = s.controller.controller_expand_volume(req).await.unwrap().into_inner();
    assert_eq!((out.capacity_bytes, out.node_expansion_required), (2 * GIB, false));
    assert_eq!(usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total, 2 * GIB, "the device grew");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}

#[tokio::test]
async fn ephemeral_inline_volume_lives_and_dies_with_its_publish() {
    privileged!("ephemeral_inline_volume_lives_and_dies_with_its_publish");
    let mut s = Server::start().await;
    let target = s.target("ephemeral");
    let id = "csi-0123456789abcdef";
    let req = csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(mount_rw()),
        volume_context: HashMap::from([
            ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
            ("csi.storage.k8s.io/pod.name".to_string(), "pod".to_string()),
            ("size".to_string(), "256Mi".to_string()),
        ]),
        ..Default::default()
    };
    for _ in 0..3 {
        s.node.node_publish_volume(req.clone()).await.expect("ephemeral NodePublishVolume");
    }
    write_file(&target.join("scratch"), b"temporary");
    assert_eq!(s.list_volume_ids().await, vec![id.to_string()]);
    let total = usage(&s.stats(id, &target).await.unwrap(), Unit::Bytes).total;
    assert!(total > 128 * MIB && total <= 256 * MIB, "size attribute honoured: {total}");
    s.unpublish(id, &target).await.unwrap();
    assert!(!target.exists());
    assert!(s.list_volume_ids().await.is_empty(), "the ephemeral volume is deleted");
    assert!(!s.pool.join("staging").join(id).exists(), "its pool staging dir is removed");
    s.unpublish(id, &target).await.unwrap();
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty());
    let mut bad = req.clone();
    bad.volume_context.insert("size".into(), "huge".into());
    assert_eq!(code(s.node.node_publish_volume(bad).await), Code::InvalidArgument);
}

#[tokio::test]
async fn group_snapshot_of_mounted_volumes_restores_each_member() {
    privileged!("group_snapshot_of_mounted_volumes_restores_each_member");
    let mut s = Server::start().await;
    let mut ids = Vec::new();
    for name in ["grp-a", "grp-b"] {
        let id = s.create(name, GIB, mount_rw()).await.volume_id;
        let st = s.staging(name);
        s.stage(&id, &st, mount_rw()).await.unwrap();
        write_file(&st.join("who"), name.as_bytes());
        ids.push((id, st));
    }
    let req = csi::CreateVolumeGroupSnapshotRequest {
        name: "grp".into(),
        source_volume_ids: ids.iter().map(|(id, _)| id.clone()).collect(),
        ..Default::default()
    };
    let group = s.group.create_volume_group_snapshot(req).await.unwrap().into_inner().group_snapshot.unwrap();
    for (i, snap) in group.snapshots.iter().enumerate() {
        let name = format!("grp-restore-{i}");
        let vol = s.create_from(&name, mount_rw(), snapshot_source(&snap.snapshot_id)).await.unwrap().volume_id;
        let st = s.staging(&name);
        s.stage(&vol, &st, mount_rw()).await.unwrap();
        let source_name = if snap.source_volume_id == ids[0].0 { "grp-a" } else { "grp-b" };
        assert_eq!(read_all(&st.join("who")), source_name.as_bytes());
        s.unstage(&vol, &st).await.unwrap();
        s.delete(&vol).await.unwrap();
    }
    for (id, st) in &ids {
        s.unstage(id, st).await.unwrap();
        s.delete(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_restart_loses_nothing() {
    privileged!("a_restart_loses_nothing");
    let mut s = Server::start().await;
    let id = s.create("pvc-restart", SANITY_SIZE, mount_rw()).await.volume_id;
    let snap = s.snapshot("snap-restart", &id).await.unwrap();
    let (staging, target) = (s.staging("restart"), s.target("restart"));
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    write_file(&target.join("kept"), b"across restarts");
    s.restart().await;
    assert_eq!(s.list_volume_ids().await, vec![id.clone()]);
    let got = s
        .controller
        .get_snapshot(csi::GetSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() });
    assert_eq!(got.await.unwrap().into_inner().snapshot.unwrap(), snap);
    assert!(!s.stats(&id, &target).await.unwrap().volume_condition.unwrap().abnormal);
    // Stage and publish again are idempotent after the restart.
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    assert_eq!(read_all(&target.join("kept")), b"across restarts");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty());
}

#[tokio::test]
async fn after_a_reboot_unpublish_and_unstage_succeed_and_stage_brings_the_volume_back() {
    privileged!("after_a_reboot_unpublish_and_unstage_succeed_and_stage_brings_the_volume_back");
    let mut s = Server::start().await;
    let id = s.create("pvc-reboot", GIB, mount_rw()).await.volume_id;
    let (staging, target) = (s.staging("reboot"), s.target("reboot"));
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    write_file(&target.join("kept"), b"across reboots");
    // A reboot: the server dies, every mount and loop device disappears,
    // the directories stay behind.
    let _ = s.stop().await;
    cleanup_under(&s.root);
    assert!(s.mounts().is_empty() && target.exists());
    s.restart_after_stop().await;
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    assert_eq!(read_all(&target.join("kept")), b"across reboots");
    // And the other order: targets whose mounts are gone.
    let _ = s.stop().await;
    cleanup_under(&s.root);
    s.restart_after_stop().await;
    s.unpublish(&id, &target).await.expect("unpublish of a vanished mount");
    s.unstage(&id, &staging).await.expect("unstage of a vanished mount");
    s.delete(&id).await.unwrap();
    assert!(s.mounts().is_empty() && loops_under(&s.root).is_empty());
}

#[tokio::test]
async fn ext4_growth_refused_online_happens_at_the_next_stage() {
    privileged!("ext4_growth_refused_online_happens_at_the_next_stage");
    let mut s = Server::start().await;
    let id = s.create("pvc-ext4-grow", GIB, mount_rw()).await.volume_id;
    let (staging, target) = (s.staging("ext4g"), s.target("ext4g"));
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    let before = usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        ..Default::default()
    };
    let out = s.controller.controller_expand_volume(req).await.unwrap().into_inner();
    assert_eq!((out.capacity_bytes, out.node_expansion_required), (2 * GIB, true));
    let grow = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        ..Default::default()
    };
    // A kernel that allows ext4 online resize grows it now; one that refuses
    // (EPERM, as here) gets FAILED_PRECONDITION and the growth waits.
    match s.node.node_expand_volume(grow).await {
        Ok(r) => assert_eq!(r.into_inner().capacity_bytes, 2 * GIB),
        Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
    }
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    let after = usage(&s.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    assert!(after > before + GIB / 2, "ext4 did not grow by the next stage: {before} -> {after}");
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
    s.delete(&id).await.unwrap();
}

/// The deployment runs external-resizer once, beside a driver whose pool
/// holds no volumes: that driver defers to the owning node, whose
/// NodeExpandVolume grows image, loop device and filesystem.
#[tokio::test]
async fn central_resizer_defers_expansion_to_the_owning_node() {
    privileged!("central_resizer_defers_expansion_to_the_owning_node");
    let mut node = Server::start().await;
    let mut resizer = Server::start_with(&["--defer-expansion-to-node"]).await;
    let mut plain = Server::start().await;
    let xfs = mount_cap(Mode::SingleNodeWriter, "xfs");
    let id = node.create("pvc-central", 512 * MIB, xfs.clone()).await.volume_id;
    let (staging, target) = (node.staging("central"), node.target("central"));
    node.stage(&id, &staging, xfs.clone()).await.unwrap();
    node.publish(&id, &staging, &target, xfs.clone(), false).await.unwrap();
    let before = usage(&node.stats(&id, &target).await.unwrap(), Unit::Bytes).total;

    let want = GIB;
    let expand = |cap: csi::VolumeCapability| csi::ControllerExpandVolumeRequest {
        volume_id: id.clone(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        volume_capability: Some(cap),
        ..Default::default()
    };
    assert_eq!(code(plain.controller.controller_expand_volume(expand(xfs.clone())).await), Code::NotFound);
    let out = resizer.controller.controller_expand_volume(expand(xfs.clone())).await.unwrap().into_inner();
    assert_eq!((out.capacity_bytes, out.node_expansion_required), (want, true));
    let out = resizer.controller.controller_expand_volume(expand(block_rw())).await.unwrap().into_inner();
    assert!(out.node_expansion_required, "block volumes grow on their node too");

    let grow = csi::NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.to_string_lossy().into_owned(),
        capacity_range: Some(csi::CapacityRange { required_bytes: want, limit_bytes: 0 }),
        volume_capability: Some(xfs.clone()),
        ..Default::default()
    };
    let out = node.node.node_expand_volume(grow).await.unwrap().into_inner();
    assert_eq!(out.capacity_bytes, want);
    let after = usage(&node.stats(&id, &target).await.unwrap(), Unit::Bytes).total;
    assert!(after > before + 300 * MIB, "filesystem grew from {before} to {after}");
    node.unpublish(&id, &target).await.unwrap();
    node.unstage(&id, &staging).await.unwrap();
    node.delete(&id).await.unwrap();
}
