//! Pools outlive versions: pools written by earlier commits (fixtures in
//! tests/fixtures, see its README) are read, migrated and used by this one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use loopvol_backend::{
    AccessType, Lifecycle, Pool, PoolOptions, PrivateMount, PublishRequest, StageRequest, VOLUME_RECORD_VERSION,
};
use loopvol_test_support::{loops_settle, mounts_under, privileged, Sandbox};

const FIXTURES: [&str; 3] = ["pool-fd63442-parent", "pool-72f40ff", "pool-cab2182"];

/// Copies a fixture's records into `<sandbox>/pool` and makes the images
/// they describe: sparse files of the recorded size, ext4 where the record
/// says a filesystem was made.
fn install(fixture: &str, sandbox: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let pool = sandbox.join("pool");
    for dir in ["volumes", "snapshots", "groups"] {
        fs::create_dir_all(pool.join(dir)).unwrap();
        for entry in fs::read_dir(from.join(dir)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            fs::copy(entry.path(), pool.join(dir).join(&name)).unwrap();
            let Some(id) = name.strip_suffix(".json") else { continue };
            if dir == "groups" {
                continue;
            }
            let record: serde_json::Value = serde_json::from_slice(&fs::read(entry.path()).unwrap()).unwrap();
            let size = record.get("capacity_bytes").or(record.get("size_bytes")).and_then(|v| v.as_u64()).unwrap();
            let image = pool.join(dir).join(format!("{id}.img"));
            fs::File::create(&image).unwrap().set_len(size).unwrap();
            if record.get("formatted").and_then(|v| v.as_bool()) == Some(true) {
                let out = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).output().unwrap();
                assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    pool
}

#[test]
fn records_of_every_earlier_format_are_read_and_migrated() {
    for fixture in FIXTURES {
        let sandbox = Sandbox::new();
        let root = install(fixture, &sandbox.path());
        let pool = Pool::open(&root, PoolOptions::default()).unwrap();
        let vols = pool.volumes().unwrap();
        let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["csi-eph1", "flex-data", "pvc-block"], "{fixture}");
        for vol in &vols {
            assert_eq!(vol.version, VOLUME_RECORD_VERSION, "{fixture}: {} is migrated on read", vol.id);
            let want = if vol.id == "csi-eph1" { Lifecycle::Ephemeral } else { Lifecycle::Persistent };
            assert_eq!(vol.lifecycle, want, "{fixture}: {}", vol.id);
            assert!(!vol.parameters.contains_key("csi.storage.k8s.io/ephemeral"), "{fixture}: the marker is gone");
            assert!(vol.io_limits.is_unlimited(), "{fixture}: {} had no I/O limits", vol.id);
        }
        let flex = pool.volume("flex-data").unwrap();
        assert_eq!((flex.capacity_bytes, flex.access_type, flex.formatted), (64 << 20, AccessType::Mount, true));
        assert_eq!(flex.parameters.get("kubernetes.io/pvOrVolumeName").map(String::as_str), Some("flex-data"));

        // The node state as recorded (in the record itself, or in the state
        // file): staged and published where the old pool had them.
        let state = pool.node_state("flex-data").unwrap();
        let staged = state.staged.expect("the recorded staging");
        assert!(staged.staging_path.ends_with("work/staging/flex-data"), "{fixture}: {staged:?}");
        assert_eq!(staged.mount_options, ["noatime"]);
        assert_eq!(state.published.len(), 1, "{fixture}");

        let snaps = pool.snapshots().unwrap();
        assert_eq!(snaps.len(), 2, "{fixture}: the snapshot and the group's member");
        assert!(snaps.iter().all(|s| s.source_volume_id == "pvc-block" && s.access_type == AccessType::Block));
        let group = pool.group_snapshot("group-1").unwrap();
        assert_eq!(group.source_volume_ids, ["pvc-block"]);
        assert_eq!(group.snapshot_ids.len(), 1);

        // The kernel has none of it (as after a reboot): reconciling forgets it.
        pool.reconcile_all().unwrap();
        assert!(pool.node_state("flex-data").unwrap().is_empty(), "{fixture}");
        assert!(pool.node_state("csi-eph1").unwrap().is_empty(), "{fixture}");
        // A change writes the record in the current version, whole.
        pool.attach_to_node("pvc-block", "node-a").unwrap();
        let text = fs::read_to_string(root.join("volumes/pvc-block.json")).unwrap();
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(rec["version"], VOLUME_RECORD_VERSION, "{fixture}");
        assert_eq!(rec["attached_node"], "node-a");
        assert_eq!(rec["capacity_bytes"], 16 << 20);
        assert!(rec.get("staged").is_none(), "{fixture}: node state stays out of the record");
    }
}

#[test]
fn old_volumes_stage_publish_and_end_as_their_lifecycle_says() {
    if !privileged("old_volumes_stage_publish_and_end_as_their_lifecycle_says") {
        return;
    }
    for fixture in FIXTURES {
        let sandbox = Sandbox::new();
        let root = install(fixture, &sandbox.path());
        let pool = Pool::open(&root, PoolOptions::default()).unwrap();
        let work = sandbox.path().join("work");

        // The persistent volume: its filesystem is kept (the record says it
        // was formatted), staged, published, written, released.
        let (staging, target) = (work.join("staging/flex-data"), work.join("pods/p1/vol"));
        let stage = StageRequest {
            staging_path: staging.clone(),
            access_type: AccessType::Mount,
            fs_type: None,
            read_only: false,
            mount_options: vec!["noatime".into()],
        };
        pool.stage("flex-data", &stage).unwrap();
        let publish = PublishRequest {
            pod_uid: None,
            staging_path: staging.clone(),
            target_path: target.clone(),
            access_type: AccessType::Mount,
            fs_type: None,
            read_only: false,
            mount_options: vec![],
            exclusive: false,
        };
        pool.publish("flex-data", &publish).unwrap();
        fs::write(target.join("data"), b"kept").unwrap();
        pool.unpublish("flex-data", &target).unwrap();
        pool.unstage("flex-data", &staging, true).unwrap();
        assert!(pool.volume("flex-data").is_ok(), "{fixture}: a persistent volume stays");

        // The version 1 ephemeral volume is deleted with its last target.
        let eph_target = work.join("pods/p2/eph");
        let mount = PrivateMount {
            volume: loopvol_backend::CreateVolume {
                io_limits: Default::default(),
                name: "csi-eph1".into(),
                id: Some("csi-eph1".into()),
                capacity: loopvol_backend::CapacityRange::default(),
                fs_type: None,
                access_type: AccessType::Mount,
                thick: false,
                source: None,
                parameters: Default::default(),
                lifecycle: Lifecycle::Ephemeral,
                direct_io: true,
            },
            create: false,
            pod_uid: None,
            staging_root: None,
            target_path: eph_target.clone(),
            fs_type: None,
            read_only: false,
            stage_mount_options: vec![],
            publish_mount_options: vec![],
            exclusive: true,
        };
        pool.mount_private(&mount).unwrap();
        pool.unpublish("csi-eph1", &eph_target).unwrap();
        assert!(matches!(pool.volume("csi-eph1"), Err(loopvol_backend::Error::VolumeNotFound(_))), "{fixture}");
        assert!(!root.join("volumes/csi-eph1.img").exists());

        assert!(mounts_under(&sandbox.path()).is_empty(), "{fixture}: nothing stays mounted");
        assert_eq!(loops_settle(&sandbox.path(), 0), 0, "{fixture}: no loop device stays");
    }
}
