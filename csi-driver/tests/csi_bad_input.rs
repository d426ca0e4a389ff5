//! A table of hostile and malformed gRPC requests against the real
//! `loopvol-csi`: each gets the code the CSI spec gives it, and none changes
//! anything (the pool's files and records, the mounts, the loop devices).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_proto::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use tonic::Code;

/// The pool as files: path -> (size, mode, content of small files). Lock
/// files are left out: an attempt on a well-formed but unknown ID may leave
/// an empty lock file, which is bookkeeping, not state.
fn pool_state(pool: &Path) -> BTreeMap<PathBuf, (u64, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![pool.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                if path.file_name().is_some_and(|n| n != "locks") {
                    stack.push(path.clone());
                }
                out.insert(path, (0, meta.mode(), Vec::new()));
            } else {
                let content = if meta.len() < 65536 { fs::read(&path).unwrap() } else { Vec::new() };
                out.insert(path, (meta.len(), meta.mode(), content));
            }
        }
    }
    out
}

fn mount_flags_cap(flags: &[&str]) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: String::new(),
            mount_flags: flags.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
    }
}

fn range(required: i64, limit: i64) -> Option<csi::CapacityRange> {
    Some(csi::CapacityRange { required_bytes: required, limit_bytes: limit })
}

struct Table {
    tried: usize,
    before: BTreeMap<PathBuf, (u64, u32, Vec<u8>)>,
    mounts: Vec<PathBuf>,
    loops: Vec<PathBuf>,
}

impl Table {
    /// One bad request: its code is one of `codes`, and nothing changed.
    #[track_caller]
    fn check<T: std::fmt::Debug>(&mut self, s: &Server, what: &str, result: Result<T, tonic::Status>, codes: &[Code]) {
        self.tried += 1;
        match result {
            Ok(v) => panic!("{what}: expected {codes:?}, got success {v:?}"),
            Err(status) => {
                assert!(codes.contains(&status.code()), "{what}: expected {codes:?}, got {status:?}");
                assert!(!status.message().is_empty(), "{what}: a failure carries a message");
                assert!(status.message().len() < 4096, "{what}: the message does not echo a huge input");
            }
        }
        assert!(pool_state(&s.pool) == self.before, "{what}: the pool changed");
        assert_eq!(s.mounts(), self.mounts, "{what}: the mounts changed");
        assert_eq!(loops_under(&s.root), self.loops, "{what}: the loop devices changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_spec_code_and_change_nothing() {
    if !loopvol_test_support::privileged("bad_requests_get_the_spec_code_and_change_nothing") {
        return;
    }
    let mut s = Server::start().await;
    // One live volume (staged, published, with data) that nothing may disturb.
    let vol = s.create("live", 64 * MIB, mount_rw()).await;
    let id = vol.volume_id.clone();
    let staging = s.staging("live");
    let target = s.target("live");
    s.stage(&id, &staging, mount_rw()).await.unwrap();
    s.publish(&id, &staging, &target, mount_rw(), false).await.unwrap();
    fs::write(target.join("data"), b"precious").unwrap();
    s.snapshot("live-snap", &id).await.unwrap();

    let mut t = Table { tried: 0, before: pool_state(&s.pool), mounts: s.mounts(), loops: loops_under(&s.root) };
    let huge = "x".repeat(1 << 20);
    let hostile_ids: Vec<(&str, String)> = vec![
        ("empty id", String::new()),
        ("1 MB id", huge.clone()),
        ("dotdot id", "../../etc/passwd".into()),
        ("dotdot inside id", "a/../../b".into()),
        ("absolute id", "/etc/passwd".into()),
        ("hidden id", ".live".into()),
        ("slash id", format!("{id}/x")),
        ("NUL id", format!("{id}\0")),
        ("option-looking id", "-rf".into()),
    ];
    let invalid = [Code::InvalidArgument];
    let invalid_or_missing = [Code::InvalidArgument, Code::NotFound];

    // ---- CreateVolume ----
    let create = |name: &str, caps: Vec<csi::VolumeCapability>, capacity_range: Option<csi::CapacityRange>| {
        csi::CreateVolumeRequest { name: name.into(), volume_capabilities: caps, capacity_range, ..Default::default() }
    };
    let r = s.controller.create_volume(create("", vec![mount_rw()], None)).await;
    t.check(&s, "create: empty name", r, &invalid);
    let r = s.controller.create_volume(create(&huge, vec![mount_rw()], None)).await;
    t.check(&s, "create: 1 MB name", r, &invalid);
    let r = s.controller.create_volume(create("n\u{0}ul", vec![mount_rw()], None)).await;
    t.check(&s, "create: control character in name", r, &invalid);
    let r = s.controller.create_volume(create("nocap", vec![], None)).await;
    t.check(&s, "create: no capabilities", r, &invalid);
    let r = s.controller.create_volume(create("neg", vec![mount_rw()], range(-1, 0))).await;
    t.check(&s, "create: negative required_bytes", r, &invalid);
    let r = s.controller.create_volume(create("neglim", vec![mount_rw()], range(0, i64::MIN))).await;
    t.check(&s, "create: negative limit_bytes", r, &invalid);
    let r = s.controller.create_volume(create("huge", vec![mount_rw()], range(i64::MAX, 0))).await;
    t.check(&s, "create: i64::MAX bytes", r, &[Code::OutOfRange]);
    let r = s.controller.create_volume(create("pib", vec![mount_rw()], range(1 << 50, 0))).await;
    t.check(&s, "create: 1 PiB", r, &[Code::ResourceExhausted]);
    let r = s.controller.create_volume(create("inverted", vec![mount_rw()], range(2 * GIB, GIB))).await;
    t.check(&s, "create: limit below required", r, &[Code::OutOfRange]);
    let r = s
        .controller
        .create_volume(create("tiny-xfs", vec![mount_cap(Mode::SingleNodeWriter, "xfs")], range(MIB, MIB)))
        .await;
    t.check(&s, "create: limit below what xfs needs", r, &[Code::OutOfRange]);
    let r = s.controller.create_volume(create("ntfs", vec![mount_cap(Mode::SingleNodeWriter, "ntfs")], None)).await;
    t.check(&s, "create: unknown fs type", r, &invalid);
    let r = s.controller.create_volume(create("mixed", vec![mount_rw(), block_rw()], None)).await;
    t.check(&s, "create: block and mount capabilities", r, &invalid);
    let r = s
        .controller
        .create_volume(create(
            "two-fs",
            vec![mount_cap(Mode::SingleNodeWriter, "ext4"), mount_cap(Mode::SingleNodeWriter, "xfs")],
            None,
        ))
        .await;
    t.check(&s, "create: two filesystems", r, &invalid);
    let r = s.controller.create_volume(create("multi", vec![mount_cap(Mode::MultiNodeMultiWriter, "")], None)).await;
    t.check(&s, "create: multi-node access mode", r, &invalid);
    let no_mode = csi::VolumeCapability { access_mode: None, ..mount_rw() };
    let r = s.controller.create_volume(create("nomode", vec![no_mode], None)).await;
    t.check(&s, "create: capability without access mode", r, &invalid);
    let no_type = csi::VolumeCapability { access_type: None, ..mount_rw() };
    let r = s.controller.create_volume(create("notype", vec![no_type], None)).await;
    t.check(&s, "create: capability without access type", r, &invalid);
    // Same name, different parameters: ALREADY_EXISTS.
    let r = s.controller.create_volume(create("live", vec![mount_rw()], range(128 * MIB, 0))).await;
    t.check(&s, "create: existing name, other size", r, &[Code::AlreadyExists]);
    let r = s.controller.create_volume(create("live", vec![block_rw()], None)).await;
    t.check(&s, "create: existing name, other access type", r, &[Code::AlreadyExists]);
    for (what, bad) in &hostile_ids {
        let r = s.create_from("from-snap", mount_rw(), snapshot_source(bad)).await;
        t.check(&s, &format!("create from snapshot: {what}"), r, &invalid_or_missing);
        let r = s.create_from("from-vol", mount_rw(), volume_source(bad)).await;
        t.check(&s, &format!("create from volume: {what}"), r, &invalid_or_missing);
    }
    let r = s.create_from("from-missing", mount_rw(), snapshot_source("no-such-snapshot")).await;
    t.check(&s, "create from a missing snapshot", r, &[Code::NotFound]);

    // ---- DeleteVolume / ControllerExpand / snapshots ----
    let r = s.delete("").await;
    t.check(&s, "delete: empty id", r, &invalid);
    let r = s.delete(&id).await;
    t.check(&s, "delete: staged and published volume", r, &[Code::FailedPrecondition]);
    let expand = |vid: &str, required: i64| csi::ControllerExpandVolumeRequest {
        volume_id: vid.into(),
        capacity_range: range(required, 0),
        ..Default::default()
    };
    let r = s.controller.controller_expand_volume(expand(&id, -5)).await;
    t.check(&s, "controller expand: negative", r, &invalid);
    let r = s.controller.controller_expand_volume(expand(&id, i64::MAX)).await;
    t.check(&s, "controller expand: i64::MAX", r, &[Code::OutOfRange]);
    let r = s.controller.controller_expand_volume(expand(&id, 1 << 50)).await;
    t.check(&s, "controller expand: 1 PiB", r, &[Code::ResourceExhausted]);
    let r = s.controller.controller_expand_volume(expand("no-such-volume", GIB)).await;
    t.check(&s, "controller expand: missing volume", r, &[Code::NotFound]);
    for (what, bad) in &hostile_ids {
        let r = s.controller.controller_expand_volume(expand(bad, GIB)).await;
        t.check(&s, &format!("controller expand: {what}"), r, &invalid_or_missing);
        let r = s.snapshot("snap-bad", bad).await;
        t.check(&s, &format!("create snapshot: {what}"), r, &invalid_or_missing);
    }
    let r = s.snapshot("", &id).await;
    t.check(&s, "create snapshot: empty name", r, &invalid);
    let r = s.snapshot(&huge, &id).await;
    t.check(&s, "create snapshot: 1 MB name", r, &invalid);
    let r = s.snapshot("live-snap", "other-volume").await;
    t.check(&s, "create snapshot: existing name, other source", r, &[Code::AlreadyExists]);
    let r = s
        .controller
        .delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: String::new(), ..Default::default() })
        .await;
    t.check(&s, "delete snapshot: empty id", r, &invalid);
    let r = s
        .controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.clone(),
            volume_capabilities: vec![],
            ..Default::default()
        })
        .await;
    t.check(&s, "validate: no capabilities", r, &invalid);

    // ---- NodeStage / NodeUnstage ----
    let other_staging = s.staging("other");
    for (what, bad) in &hostile_ids {
        let r = s.stage(bad, &other_staging, mount_rw()).await;
        t.check(&s, &format!("stage: {what}"), r, &invalid_or_missing);
    }
    let r = s.stage("no-such-volume", &other_staging, mount_rw()).await;
    t.check(&s, "stage: missing volume", r, &[Code::NotFound]);
    let stage_req = |vid: &str, path: &str, cap: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
        volume_id: vid.into(),
        staging_target_path: path.into(),
        volume_capability: cap,
        ..Default::default()
    };
    let r = s.node.node_stage_volume(stage_req(&id, "", Some(mount_rw()))).await;
    t.check(&s, "stage: empty staging path", r, &invalid);
    let r = s.node.node_stage_volume(stage_req(&id, staging.to_str().unwrap(), None)).await;
    t.check(&s, "stage: no capability", r, &invalid);
    for bad_path in ["relative/staging", "/a/../../etc", &format!("{}/../other", staging.display())] {
        let r = s.node.node_stage_volume(stage_req(&id, bad_path, Some(mount_rw()))).await;
        t.check(&s, &format!("stage: path {bad_path:?}"), r, &invalid);
    }
    let long_path = format!("/{}", "p/".repeat(3000));
    let r = s.node.node_stage_volume(stage_req(&id, &long_path, Some(mount_rw()))).await;
    t.check(&s, "stage: path longer than PATH_MAX", r, &invalid);
    let huge_path = format!("/{}", "d".repeat(1 << 20));
    let r = s.node.node_stage_volume(stage_req(&id, &huge_path, Some(mount_rw()))).await;
    t.check(&s, "stage: 1 MB path", r, &invalid);
    let r = s.stage(&id, &staging, mount_cap(Mode::SingleNodeWriter, &huge)).await;
    t.check(&s, "stage: 1 MB fs type", r, &invalid);
    let r = s.stage(&id, &staging, mount_flags_cap(&[&huge])).await;
    t.check(&s, "stage: 1 MB mount flag", r, &invalid);
    let r = s.stage(&id, &staging, mount_cap(Mode::SingleNodeWriter, "ntfs")).await;
    t.check(&s, "stage: unknown fs type", r, &invalid);
    let r = s.stage(&id, &staging, mount_cap(Mode::SingleNodeWriter, "xfs")).await;
    t.check(&s, "stage: another fs type than the volume's", r, &invalid);
    let r = s.stage(&id, &other_staging, mount_rw()).await;
    t.check(&s, "stage: already staged elsewhere", r, &[Code::FailedPrecondition]);
    let r = s.stage(&id, &staging, block_rw()).await;
    t.check(&s, "stage: block capability for a mount volume", r, &[Code::FailedPrecondition, Code::InvalidArgument]);
    let r = s.stage(&id, &staging, mount_cap(Mode::MultiNodeMultiWriter, "")).await;
    t.check(&s, "stage: multi-node access mode", r, &invalid);
    for flags in [
        &["suid"][..],
        &["dev"],
        &["rw"],
        &["ro"],
        &["bind"],
        &["remount"],
        &["noatime,suid"],
        &["errors=panic"],
        &["noexec", "exec"],
        &["data=journal"], // differs from how it is staged: incompatible
        &["x-kubernetes.io/$(touch /tmp/pwned)"],
    ] {
        let r = s.stage(&id, &staging, mount_flags_cap(flags)).await;
        let codes: &[Code] = if flags == ["data=journal"] { &[Code::AlreadyExists] } else { &invalid };
        t.check(&s, &format!("stage: mount flags {flags:?}"), r, codes);
    }
    let r = s.unstage("", &staging).await;
    t.check(&s, "unstage: empty id", r, &invalid);
    let r = s
        .node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: String::new(),
        })
        .await;
    t.check(&s, "unstage: empty path", r, &invalid);
    let r = s.unstage(&id, &staging).await;
    t.check(&s, "unstage: still published", r, &[Code::FailedPrecondition]);
    let r = s.unstage(&id, Path::new("/a/../b")).await;
    t.check(&s, "unstage: path with ..", r, &invalid);

    // ---- NodePublish / NodeUnpublish ----
    let new_target = s.target("new");
    for (what, bad) in &hostile_ids {
        let r = s.publish(bad, &staging, &new_target, mount_rw(), false).await;
        t.check(&s, &format!("publish: {what}"), r, &invalid_or_missing);
    }
    // (Not "/": the socket's callers are trusted with any absolute target, see SECURITY.md.)
    for bad_target in ["relative/target", "/var/lib/kubelet/pods/../../../etc"] {
        let r = s.publish(&id, &staging, Path::new(bad_target), mount_rw(), false).await;
        t.check(&s, &format!("publish: target {bad_target:?}"), r, &[Code::InvalidArgument, Code::FailedPrecondition]);
    }
    let dotdot_target = PathBuf::from(format!("{}/../escape", new_target.display()));
    let r = s.publish(&id, &staging, &dotdot_target, mount_rw(), false).await;
    t.check(&s, "publish: target with ..", r, &invalid);
    let r = s.publish(&id, &staging, &staging, mount_rw(), false).await;
    t.check(&s, "publish: target is the staging path", r, &invalid);
    let r = s.publish(&id, &other_staging, &new_target, mount_rw(), false).await;
    t.check(&s, "publish: wrong staging path", r, &[Code::FailedPrecondition]);
    let r = s.publish(&id, &staging, &target, mount_rw(), true).await;
    t.check(&s, "publish: same target, now read-only", r, &[Code::AlreadyExists]);
    let r = s.publish(&id, &staging, &new_target, block_rw(), false).await;
    t.check(&s, "publish: block capability for a mount volume", r, &[Code::FailedPrecondition, Code::InvalidArgument]);
    for flags in [&["suid"][..], &["dev"], &["rw"], &["bind"], &["noexec,suid"], &["commit=5", "commit=9"]] {
        let r = s.publish(&id, &staging, &new_target, mount_flags_cap(flags), false).await;
        t.check(&s, &format!("publish: mount flags {flags:?}"), r, &invalid);
    }
    let r = s.unpublish("", &target).await;
    t.check(&s, "unpublish: empty id", r, &invalid);
    let r = s
        .node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest { volume_id: id.clone(), target_path: String::new() })
        .await;
    t.check(&s, "unpublish: empty target", r, &invalid);
    let r = s.unpublish(&id, Path::new("/x/../y")).await;
    t.check(&s, "unpublish: target with ..", r, &invalid);

    // ---- NodeGetVolumeStats / NodeExpand ----
    let r = s.stats(&id, Path::new("")).await;
    t.check(&s, "stats: empty path", r, &invalid);
    let r = s.stats(&id, &s.path("not-mounted-here")).await;
    t.check(&s, "stats: a path the volume is not at", r, &[Code::NotFound]);
    let r = s.stats("no-such-volume", &target).await;
    t.check(&s, "stats: missing volume", r, &[Code::NotFound]);
    let node_expand = |vid: &str, path: &Path, required: i64| csi::NodeExpandVolumeRequest {
        volume_id: vid.into(),
        volume_path: path.to_string_lossy().into_owned(),
        capacity_range: range(required, 0),
        ..Default::default()
    };
    let r = s.node.node_expand_volume(node_expand(&id, &target, -1)).await;
    t.check(&s, "node expand: negative", r, &invalid);
    let r = s.node.node_expand_volume(node_expand(&id, Path::new(""), GIB)).await;
    t.check(&s, "node expand: empty path", r, &invalid);
    let r = s.node.node_expand_volume(node_expand("no-such-volume", &target, GIB)).await;
    t.check(&s, "node expand: missing volume", r, &[Code::NotFound]);
    let r = s.node.node_expand_volume(node_expand(&id, &target, i64::MAX)).await;
    t.check(&s, "node expand: i64::MAX", r, &[Code::OutOfRange]);

    // The live volume is untouched.
    assert_eq!(fs::read(target.join("data")).unwrap(), b"precious");
    assert!(t.tried >= 100, "{} bad requests tried", t.tried);
    eprintln!("{} bad requests, each with the spec's code and no change", t.tried);
    s.unpublish(&id, &target).await.unwrap();
    s.unstage(&id, &staging).await.unwrap();
}
