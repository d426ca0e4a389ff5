//! Controller service: argument checks (csi-sanity's INVALID_ARGUMENT cases),
//! error codes of the spec tables, idempotency, pagination, snapshots and
//! group snapshots. None of these needs a mount.

mod common;

use std::collections::HashMap;

use common::*;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_service_capability::rpc::Type as Cap;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use tonic::Code;

fn create_req(name: &str, size: i64, cap: csi::VolumeCapability) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: size, limit_bytes: 0 }),
        volume_capabilities: vec![cap],
        ..Default::default()
    }
}

#[tokio::test]
async fn controller_capabilities_are_the_advertised_set() {
    let mut s = Server::start_with(&["--advertise-get-snapshot=true"]).await;
    let caps = s.controller.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap();
    let mut got: Vec<Cap> = caps
        .into_inner()
        .capabilities
        .into_iter()
        .map(|c| match c.r#type.expect("type") {
            csi::controller_service_capability::Type::Rpc(rpc) => rpc.r#type(),
        })
        .collect();
    got.sort_by_key(|c| *c as i32);
    let want = [
        Cap::CreateDeleteVolume,
        Cap::ListVolumes,
        Cap::GetCapacity,
        Cap::CreateDeleteSnapshot,
        Cap::ListSnapshots,
        Cap::CloneVolume,
        Cap::ExpandVolume,
        Cap::VolumeCondition,
        Cap::GetVolume,
        Cap::SingleNodeMultiWriter,
        Cap::ModifyVolume,
        Cap::GetSnapshot,
    ];
    assert_eq!(got, want);
    assert!(!got.contains(&Cap::PublishUnpublishVolume));

    // The default, for csi-sanity v5.4.0, which fails on capabilities newer
    // than it knows.
    let mut quiet = Server::start().await;
    let caps = quiet.controller.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}).await.unwrap();
    let n = caps.into_inner().capabilities.len();
    assert_eq!(n, want.len() - 1);
    let get = csi::GetSnapshotRequest { snapshot_id: "missing".into(), ..Default::default() };
    assert_eq!(code(quiet.controller.get_snapshot(get).await), Code::NotFound, "the RPC still works");
}

#[tokio::test]
async fn create_volume_argument_checks() {
    let mut s = Server::start().await;
    let c = &mut s.controller;
    assert_eq!(code(c.create_volume(csi::CreateVolumeRequest::default()).await), Code::InvalidArgument, "no name");
    let no_caps = csi::CreateVolumeRequest { name: "v".into(), ..Default::default() };
    assert_eq!(code(c.create_volume(no_caps).await), Code::InvalidArgument, "no capabilities");
    let mut no_type = mount_rw();
    no_type.access_type = None;
    assert_eq!(code(c.create_volume(create_req("v", GIB, no_type)).await), Code::InvalidArgument, "no access type");
    let mut no_mode = mount_rw();
    no_mode.access_mode = None;
    assert_eq!(code(c.create_volume(create_req("v", GIB, no_mode)).await), Code::InvalidArgument, "no access mode");
    for mode in [Mode::MultiNodeReaderOnly, Mode::MultiNodeSingleWriter, Mode::MultiNodeMultiWriter, Mode::Unknown] {
        let req = create_req("v", GIB, mount_cap(mode, ""));
        assert_eq!(code(c.create_volume(req).await), Code::InvalidArgument, "{mode:?}");
    }
    let req = create_req("v", GIB, mount_cap(Mode::SingleNodeWriter, "ntfs"));
    assert_eq!(code(c.create_volume(req).await), Code::InvalidArgument, "unknown fs type");
    for (key, value) in [("color", "blue"), ("thick", "maybe"), ("fsType", "zfs")] {
        let mut req = create_req("v", GIB, mount_rw());
        req.parameters = HashMap::from([(key.to_string(), value.to_string())]);
        assert_eq!(code(c.create_volume(req).await), Code::InvalidArgument, "parameter {key}={value}");
    }
    let mut negative = create_req("v", -1, mount_rw());
    assert_eq!(code(c.create_volume(negative.clone()).await), Code::InvalidArgument, "negative size");
    negative.capacity_range = Some(csi::CapacityRange { required_bytes: 2 * GIB, limit_bytes: GIB });
    assert_eq!(code(c.create_volume(negative).await), Code::OutOfRange, "required above limit");
    let mixed = csi::CreateVolumeRequest {
        volume_capabilities: vec![mount_rw(), block_rw()],
        ..create_req("v", GIB, mount_rw())
    };
    assert_eq!(code(c.create_volume(mixed).await), Code::InvalidArgument, "block and mount together");
    assert!(s.list_volume_ids().await.is_empty(), "no failed create left a volume");
}

#[tokio::test]
async fn create_volume_is_idempotent_and_conflicts_on_other_sizes() {
    let mut s = Server::start().await;
    let mut req = create_req("pvc-idem", SANITY_SIZE, mount_rw());
    req.parameters = HashMap::from([
        ("csi.storage.k8s.io/pv/name".to_string(), "pv-1".to_string()),
        ("csi.storage.k8s.io/fstype".to_string(), "ext4".to_string()),
    ]);
    let first = s.controller.create_volume(req.clone()).await.unwrap().into_inner().volume.unwrap();
    assert!(first.capacity_bytes >= SANITY_SIZE);
    assert_eq!(first.accessible_topology.len(), 1);
    assert_eq!(first.accessible_topology[0].segments.get(TOPOLOGY_KEY).map(String::as_str), Some(NODE));
    for _ in 0..3 {
        let again = s.controller.create_volume(req.clone()).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(again, first);
    }
    // The image is sparse: a 10 GiB volume costs (almost) nothing.
    let image = std::fs::read_dir(s.pool.join("volumes"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "img"));
    let image = image.expect("an image file").path();
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&image).unwrap().blocks() * 512 < 64 << 20);
    let bigger = create_req("pvc-idem", 2 * SANITY_SIZE, mount_rw());
    assert_eq!(code(s.controller.create_volume(bigger).await), Code::AlreadyExists);
    let block = create_req("pvc-idem", SANITY_SIZE, block_rw());
    assert_eq!(code(s.controller.create_volume(block).await), Code::AlreadyExists);
    assert_eq!(s.list_volume_ids().await, vec![first.volume_id.clone()]);
    s.delete(&first.volume_id).await.unwrap();
    s.delete(&first.volume_id).await.unwrap();
    assert!(s.list_volume_ids().await.is_empty());
}

#[tokio::test]
async fn create_volume_codes_for_space_topology_and_sources() {
    let mut s = Server::start().await;
    // Far beyond any pool, but a size a file could have.
    let huge = create_req("huge", 1 << 52, mount_rw());
    assert_eq!(code(s.controller.create_volume(huge).await), Code::ResourceExhausted);
    let mut elsewhere = create_req("elsewhere", GIB, mount_rw());
    let other = csi::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), "other-node".to_string())]) };
    elsewhere.accessibility_requirements =
        Some(csi::TopologyRequirement { requisite: vec![other.clone()], preferred: vec![other] });
    assert_eq!(code(s.controller.create_volume(elsewhere.clone()).await), Code::ResourceExhausted);
    let here = csi::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), NODE.to_string())]) };
    elsewhere.accessibility_requirements.as_mut().unwrap().preferred = vec![here];
    assert!(s.controller.create_volume(elsewhere).await.is_ok(), "one topology names this node");
    assert_eq!(code(s.create_from("from-snap", mount_rw(), snapshot_source("no-such-snapshot")).await), Code::NotFound);
    assert_eq!(code(s.create_from("from-vol", mount_rw(), volume_source("no-such-volume")).await), Code::NotFound);
}

#[tokio::test]
async fn delete_and_unimplemented_rpcs() {
    let mut s = Server::start().await;
    assert_eq!(code(s.delete("").await), Code::InvalidArgument);
    s.delete("never-existed").await.unwrap();
    let publish =
        csi::ControllerPublishVolumeRequest { volume_id: "v".into(), node_id: NODE.into(), ..Default::default() };
    assert_eq!(code(s.controller.controller_publish_volume(publish).await), Code::Unimplemented);
    let unpublish = csi::ControllerUnpublishVolumeRequest { volume_id: "v".into(), ..Default::default() };
    assert_eq!(code(s.controller.controller_unpublish_volume(unpublish).await), Code::Unimplemented);
}

#[tokio::test]
async fn validate_volume_capabilities() {
    let mut s = Server::start().await;
    let vol = s.create("validate", GIB, mount_rw()).await;
    let v = |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let c = &mut s.controller;
    assert_eq!(code(c.validate_volume_capabilities(v("", vec![mount_rw()])).await), Code::InvalidArgument);
    assert_eq!(code(c.validate_volume_capabilities(v(&vol.volume_id, vec![])).await), Code::InvalidArgument);
    assert_eq!(code(c.validate_volume_capabilities(v("missing", vec![mount_rw()])).await), Code::NotFound);
    let ok = c.validate_volume_capabilities(v(&vol.volume_id, vec![mount_rw()])).await.unwrap().into_inner();
    assert_eq!(ok.confirmed.expect("confirmed").volume_capabilities, vec![mount_rw()]);
    let multi = v(&vol.volume_id, vec![mount_cap(Mode::MultiNodeMultiWriter, "")]);
    let multi = c.validate_volume_capabilities(multi).await.unwrap().into_inner();
    assert!(multi.confirmed.is_none() && !multi.message.is_empty());
    let block = c.validate_volume_capabilities(v(&vol.volume_id, vec![block_rw()])).await.unwrap().into_inner();
    assert!(block.confirmed.is_none(), "a mount volume is not a block volume");
    let single_writer = v(&vol.volume_id, vec![mount_cap(Mode::SingleNodeSingleWriter, "ext4")]);
    assert!(c.validate_volume_capabilities(single_writer).await.unwrap().into_inner().confirmed.is_some());
}

#[tokio::test]
async fn list_volumes_pages_and_aborts_on_bad_tokens() {
    let mut s = Server::start().await;
    let mut created = Vec::new();
    // Small volumes: five of csi-sanity's 10 GiB would reserve 50 GiB of the
    // machine's free space, which is not what this test is about.
    for i in 0..5 {
        created.push(s.create(&format!("list-{i}"), 64 * MIB, mount_rw()).await.volume_id);
    }
    created.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let req = csi::ListVolumesRequest { max_entries: 2, starting_token: token.clone() };
        let page = s.controller.list_volumes(req).await.unwrap().into_inner();
        assert!(page.entries.len() <= 2);
        for e in &page.entries {
            let cond = e.status.as_ref().and_then(|st| st.volume_condition.as_ref()).expect("volume condition");
            assert!(!cond.abnormal, "{}", cond.message);
            assert!(e.status.as_ref().unwrap().published_node_ids.is_empty());
            seen.push(e.volume.as_ref().unwrap().volume_id.clone());
        }
        pages += 1;
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!((pages, seen), (3, created));
    let bad = csi::ListVolumesRequest { max_entries: 0, starting_token: "invalid-token".into() };
    assert_eq!(code(s.controller.list_volumes(bad).await), Code::Aborted);
    let negative = csi::ListVolumesRequest { max_entries: -1, starting_token: String::new() };
    assert_eq!(code(s.controller.list_volumes(negative).await), Code::InvalidArgument);
}

#[tokio::test]
async fn get_capacity_per_topology() {
    let mut s = Server::start().await;
    let all = s.controller.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(all.available_capacity > 0);
    let max = all.maximum_volume_size.expect("maximum_volume_size");
    assert!(max > 0 && max <= all.available_capacity);
    let topo = |node: &str| csi::Topology { segments: HashMap::from([(TOPOLOGY_KEY.to_string(), node.to_string())]) };
    let here = csi::GetCapacityRequest {
        accessible_topology: Some(topo(NODE)),
        volume_capabilities: vec![mount_rw()],
        ..Default::default()
    };
    assert!(s.controller.get_capacity(here).await.unwrap().into_inner().available_capacity > 0);
    let there = csi::GetCapacityRequest { accessible_topology: Some(topo("other")), ..Default::default() };
    let there = s.controller.get_capacity(there).await.unwrap().into_inner();
    assert_eq!((there.available_capacity, there.maximum_volume_size), (0, Some(0)));
    // Reserving a volume's capacity lowers what is available.
    s.create("reserve", SANITY_SIZE, mount_rw()).await;
    let after = s.controller.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(after.available_capacity <= all.available_capacity - SANITY_SIZE + 64 * MIB);
}

/// Conformance with external-provisioner up to v4.0: its capacity tracking
/// calls GetCapacity with the StorageClass parameters and one capability
/// whose access mode is UNKNOWN (`"access_mode":{}`), mount or block. That
/// says nothing about the volumes, so the answer must be the one for no
/// capability; 0 bytes made the scheduler report "did not have enough free
/// storage" and no pod with such a volume ever scheduled.
#[tokio::test]
async fn get_capacity_with_an_unknown_access_mode_answers_as_without_capabilities() {
    use loopvol_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let mut s = Server::start().await;
    let plain = s.controller.get_capacity(csi::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(plain.available_capacity > 0);
    let old_shapes = [
        // v2.x to v4.0: an empty MountVolume and an empty AccessMode.
        Some(AccessType::Mount(MountVolume::default())),
        Some(AccessType::Mount(MountVolume { fs_type: "ext4".into(), ..Default::default() })),
        Some(AccessType::Block(BlockVolume {})),
    ];
    for access_type in old_shapes {
        let req = csi::GetCapacityRequest {
            volume_capabilities: vec![csi::VolumeCapability {
                access_mode: Some(AccessMode::default()),
                access_type: access_type.clone(),
            }],
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_string(), NODE.to_string())]),
            }),
            ..Default::default()
        };
        let old = s.controller.get_capacity(req).await.unwrap().into_inner();
        assert!(old.available_capacity > 0, "{access_type:?}: {old:?}");
        assert_eq!(old.maximum_volume_size.is_some(), plain.maximum_volume_size.is_some());
        assert!(old.maximum_volume_size.unwrap_or(0) > 0, "{access_type:?}: {old:?}");
    }
    // A capability that does say something is still honoured.
    let multi = csi::GetCapacityRequest {
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter, "")],
        ..Default::default()
    };
    assert_eq!(s.controller.get_capacity(multi).await.unwrap().into_inner().available_capacity, 0);
}

#[tokio::test]
async fn controller_get_volume() {
    let mut s = Server::start().await;
    let vol = s.create("get-me", GIB, mount_rw()).await;
    let get = |id: &str| csi::ControllerGetVolumeRequest { volume_id: id.into() };
    assert_eq!(code(s.controller.controller_get_volume(get("")).await), Code::InvalidArgument);
    assert_eq!(code(s.controller.controller_get_volume(get("missing")).await), Code::NotFound);
    let got = s.controller.controller_get_volume(get(&vol.volume_id)).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap().volume_id, vol.volume_id);
    let cond = got.status.unwrap().volume_condition.unwrap();
    assert!(!cond.abnormal && !cond.message.is_empty());
}

#[tokio::test]
async fn controller_expand_returns_exactly_the_requested_size() {
    let mut s = Server::start().await;
    let vol = s.create("grow", SANITY_SIZE, mount_rw()).await;
    let expand = |id: &str, range: Option<csi::CapacityRange>| csi::ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: range,
        ..Default::default()
    };
    let range = |bytes: i64| Some(csi::CapacityRange { required_bytes: bytes, limit_bytes: 0 });
    let c = &mut s.controller;
    assert_eq!(code(c.controller_expand_volume(expand("", range(GIB))).await), Code::InvalidArgument);
    assert_eq!(code(c.controller_expand_volume(expand(&vol.volume_id, None)).await), Code::InvalidArgument);
    assert_eq!(code(c.controller_expand_volume(expand("missing", range(GIB))).await), Code::NotFound);
    let want = SANITY_SIZE + GIB;
    for _ in 0..2 {
        let out = c.controller_expand_volume(expand(&vol.volume_id, range(want))).await.unwrap().into_inner();
        assert_eq!(out.capacity_bytes, want);
        assert!(!out.node_expansion_required, "not staged: the filesystem grows at the next stage");
    }
    // Asking for less is success and shrinks nothing.
    let out = c.controller_expand_volume(expand(&vol.volume_id, range(GIB))).await.unwrap().into_inner();
    assert_eq!(out.capacity_bytes, want);
    let beyond = c.controller_expand_volume(expand(&vol.volume_id, range(1 << 52))).await;
    assert_eq!(code(beyond), Code::ResourceExhausted);
}

#[tokio::test]
async fn snapshots_create_list_get_delete() {
    let mut s = Server::start().await;
    let vol = s.create("snap-src", SANITY_SIZE, mount_rw()).await;
    let other = s.create("snap-other", GIB, mount_rw()).await;
    assert_eq!(code(s.snapshot("", &vol.volume_id).await), Code::InvalidArgument);
    assert_eq!(code(s.snapshot("snap", "").await), Code::InvalidArgument);
    assert_eq!(code(s.snapshot("snap", "missing").await), Code::NotFound);
    let snap = s.snapshot("snap-1", &vol.volume_id).await.unwrap();
    assert!(snap.ready_to_use && snap.creation_time.is_some());
    assert_eq!((snap.source_volume_id.as_str(), snap.size_bytes), (vol.volume_id.as_str(), vol.capacity_bytes));
    assert_eq!(s.snapshot("snap-1", &vol.volume_id).await.unwrap(), snap, "idempotent on name");
    assert_eq!(code(s.snapshot("snap-1", &other.volume_id).await), Code::AlreadyExists);
    let max_name = "x".repeat(128);
    s.snapshot(&max_name, &vol.volume_id).await.unwrap();
    let snap2 = s.snapshot("snap-2", &other.volume_id).await.unwrap();

    let list = |id: &str, source: &str, max: i32, token: &str| csi::ListSnapshotsRequest {
        snapshot_id: id.into(),
        source_volume_id: source.into(),
        max_entries: max,
        starting_token: token.into(),
        ..Default::default()
    };
    let c = &mut s.controller;
    let all = c.list_snapshots(list("", "", 0, "")).await.unwrap().into_inner();
    assert_eq!(all.entries.len(), 3);
    let by_id = c.list_snapshots(list(&snap.snapshot_id, "", 0, "")).await.unwrap().into_inner();
    assert_eq!(by_id.entries[0].snapshot.as_ref().unwrap(), &snap);
    assert_eq!(by_id.entries.len(), 1);
    let unknown = c.list_snapshots(list("no-such-snapshot", "", 0, "")).await.unwrap().into_inner();
    assert!(unknown.entries.is_empty(), "an unknown id is an empty list");
    let by_source = c.list_snapshots(list("", &other.volume_id, 0, "")).await.unwrap().into_inner();
    assert_eq!(by_source.entries.len(), 1);
    assert_eq!(by_source.entries[0].snapshot.as_ref().unwrap(), &snap2);
    let no_source = c.list_snapshots(list("", "no-such-volume", 0, "")).await.unwrap().into_inner();
    assert!(no_source.entries.is_empty());
    let page1 = c.list_snapshots(list("", "", 2, "")).await.unwrap().into_inner();
    assert_eq!(page1.entries.len(), 2);
    assert!(!page1.next_token.is_empty());
    let page2 = c.list_snapshots(list("", "", 2, &page1.next_token)).await.unwrap().into_inner();
    assert_eq!((page2.entries.len(), page2.next_token.as_str()), (1, ""));
    assert_eq!(code(c.list_snapshots(list("", "", 0, "invalid-token")).await), Code::Aborted);

    let get = |id: &str| csi::GetSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    assert_eq!(code(c.get_snapshot(get("")).await), Code::InvalidArgument);
    assert_eq!(code(c.get_snapshot(get("missing")).await), Code::NotFound);
    assert_eq!(c.get_snapshot(get(&snap.snapshot_id)).await.unwrap().into_inner().snapshot.unwrap(), snap);

    // Snapshots are independent of their source.
    s.delete(&vol.volume_id).await.unwrap();
    let c = &mut s.controller;
    assert!(c.get_snapshot(get(&snap.snapshot_id)).await.is_ok());
    let del = |id: &str| csi::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
    assert_eq!(code(c.delete_snapshot(del("")).await), Code::InvalidArgument);
    c.delete_snapshot(del(&snap.snapshot_id)).await.unwrap();
    c.delete_snapshot(del(&snap.snapshot_id)).await.unwrap();
    c.delete_snapshot(del("reallyfakesnapshotid")).await.unwrap();
    assert_eq!(code(c.get_snapshot(get(&snap.snapshot_id)).await), Code::NotFound);
}

#[tokio::test]
async fn restore_and_clone_sizes_and_codes() {
    let mut s = Server::start().await;
    let vol = s.create("restore-src", 2 * GIB, mount_rw()).await;
    let snap = s.snapshot("restore-snap", &vol.volume_id).await.unwrap();
    let restored = s.create_from("restored", mount_rw(), snapshot_source(&snap.snapshot_id)).await.unwrap();
    assert_eq!(restored.capacity_bytes, vol.capacity_bytes);
    let src = restored.content_source.and_then(|c| c.r#type).expect("content source");
    assert_eq!(src, snapshot_source(&snap.snapshot_id));
    let clone = s.create_from("cloned", mount_rw(), volume_source(&vol.volume_id)).await.unwrap();
    assert_eq!(clone.content_source.and_then(|c| c.r#type), Some(volume_source(&vol.volume_id)));
    // Smaller than the source cannot be honoured.
    let mut small = create_req("too-small", 0, mount_rw());
    small.capacity_range = Some(csi::CapacityRange { required_bytes: GIB, limit_bytes: GIB });
    small.volume_content_source = Some(csi::VolumeContentSource { r#type: Some(snapshot_source(&snap.snapshot_id)) });
    assert_eq!(code(s.controller.create_volume(small).await), Code::OutOfRange);
}

#[tokio::test]
async fn group_snapshots() {
    let mut s = Server::start().await;
    let a = s.create("group-a", GIB, mount_rw()).await.volume_id;
    let b = s.create("group-b", GIB, block_rw()).await.volume_id;
    let caps = s.group.group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {}).await.unwrap();
    assert_eq!(caps.into_inner().capabilities.len(), 1);
    let create = |name: &str, ids: Vec<String>| csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: ids,
        ..Default::default()
    };
    assert_eq!(code(s.group.create_volume_group_snapshot(create("", vec![a.clone()])).await), Code::InvalidArgument);
    assert_eq!(code(s.group.create_volume_group_snapshot(create("g", vec![])).await), Code::InvalidArgument);
    assert_eq!(code(s.group.create_volume_group_snapshot(create("g", vec!["missing".into()])).await), Code::NotFound);
    let group = s.group.create_volume_group_snapshot(create("g1", vec![a.clone(), b.clone()])).await.unwrap();
    let group = group.into_inner().group_snapshot.unwrap();
    assert!(group.ready_to_use && group.creation_time.is_some());
    let mut sources: Vec<_> = group.snapshots.iter().map(|sn| sn.source_volume_id.clone()).collect();
    sources.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(sources, want);
    assert!(group.snapshots.iter().all(|sn| sn.group_snapshot_id == group.group_snapshot_id));
    let again = s.group.create_volume_group_snapshot(create("g1", vec![a.clone(), b.clone()])).await.unwrap();
    assert_eq!(again.into_inner().group_snapshot.unwrap().group_snapshot_id, group.group_snapshot_id);

    let get = |id: &str| csi::GetVolumeGroupSnapshotRequest { group_snapshot_id: id.into(), ..Default::default() };
    assert_eq!(code(s.group.get_volume_group_snapshot(get("")).await), Code::InvalidArgument);
    assert_eq!(code(s.group.get_volume_group_snapshot(get("fake-group")).await), Code::NotFound);
    let got = s.group.get_volume_group_snapshot(get(&group.group_snapshot_id)).await.unwrap().into_inner();
    assert_eq!(got.group_snapshot.unwrap().snapshots.len(), 2);
    // Members are ordinary snapshots too.
    let member = group.snapshots[0].snapshot_id.clone();
    let listed =
        s.controller.list_snapshots(csi::ListSnapshotsRequest { snapshot_id: member.clone(), ..Default::default() });
    assert_eq!(listed.await.unwrap().into_inner().entries.len(), 1);

    let del = |id: &str| csi::DeleteVolumeGroupSnapshotRequest { group_snapshot_id: id.into(), ..Default::default() };
    assert_eq!(code(s.group.delete_volume_group_snapshot(del("")).await), Code::InvalidArgument);
    s.group.delete_volume_group_snapshot(del("fake-group")).await.unwrap();
    s.group.delete_volume_group_snapshot(del(&group.group_snapshot_id)).await.unwrap();
    s.group.delete_volume_group_snapshot(del(&group.group_snapshot_id)).await.unwrap();
    assert_eq!(code(s.group.get_volume_group_snapshot(get(&group.group_snapshot_id)).await), Code::NotFound);
    let gone = s.controller.get_snapshot(csi::GetSnapshotRequest { snapshot_id: member, ..Default::default() });
    assert_eq!(code(gone.await), Code::NotFound, "deleting the group deletes its members");
}
