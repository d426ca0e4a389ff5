//! `loopvol-csi list` and `inspect`, black-box, on pools built through the
//! backend's `Pool` API.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use loopvol_backend::params::{Dialect, VolumeParams};
use loopvol_backend::{AccessType, CapacityRange, CreateVolume, Pool, PoolOptions, StageRequest};
use loopvol_test_support::{privileged, Sandbox};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_loopvol-csi");

fn cli(pool: &Path, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .arg("--pool")
        .arg(pool)
        .env_remove("LOOPVOL_POOL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run loopvol-csi")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

fn create(pool: &Pool, name: &str, size: u64) -> String {
    let req = CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: size, limit: 0 },
        fs_type: None,
        access_type: AccessType::Mount,
        thick: false,
        source: None,
        parameters: BTreeMap::from([("fsType".to_string(), "ext4".to_string())]),
        lifecycle: loopvol_backend::Lifecycle::Persistent,
        direct_io: true,
    };
    pool.create_volume(&req).unwrap().id
}

#[test]
fn list_shows_volumes_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(&dir.path().join("pool"), PoolOptions::default()).unwrap();
    let a = create(&pool, "vol-a", 32 << 20);
    let b = create(&pool, "vol-b", 64 << 20);
    let snap = pool.create_snapshot("snap-a", &a).unwrap();

    let listing = json(&cli(pool.root(), &["list", "--output", "json"]));
    assert_eq!(listing["pool"], pool.root().to_str().unwrap());
    let ids: Vec<&str> = listing["volumes"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let vol_b = listing["volumes"].as_array().unwrap().iter().find(|v| v["id"] == b.as_str()).unwrap();
    assert_eq!(vol_b["name"], "vol-b");
    assert_eq!(vol_b["capacity_bytes"], 64 << 20);
    assert_eq!(vol_b["fs_type"], "ext4");
    assert_eq!(vol_b["access_type"], "mount");
    assert_eq!(vol_b["loop_device"], Value::Null);
    assert_eq!(vol_b["staging_path"], Value::Null);
    let snaps = listing["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], snap.id.as_str());
    assert_eq!(snaps[0]["source_volume_id"], a.as_str());
    assert_eq!(snaps[0]["size_bytes"], 32 << 20);
    assert_eq!(snaps[0]["ready"], true);

    let table = cli(pool.root(), &["list"]);
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("VOLUMES (2)\nID "), "{text}");
    assert!(text.contains("SNAPSHOTS (1)\nID "), "{text}");
    for want in [a.as_str(), b.as_str(), snap.id.as_str(), "64Mi", "32Mi", "vol-a"] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(
        table.stderr.is_empty(),
        "no progress or logs off a terminal: {:?}",
        String::from_utf8_lossy(&table.stderr)
    );
}

#[test]
fn inspect_shows_records_and_unknown_ids_fail() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(&dir.path().join("pool"), PoolOptions::default()).unwrap();
    let a = create(&pool, "vol-a", 32 << 20);
    let snap = pool.create_snapshot("snap-a", &a).unwrap();

    let vol = json(&cli(pool.root(), &["inspect", &a, "-o", "json"]));
    assert_eq!(vol["kind"], "volume");
    assert_eq!(vol["id"], a.as_str());
    assert_eq!(vol["capacity_bytes"], 32 << 20);
    assert_eq!(vol["parameters"]["fsType"], "ext4");
    assert_eq!(vol["image"]["exists"], true);
    assert_eq!(vol["image"]["size_bytes"], 32 << 20);
    // Sparse: far less allocated than the capacity.
    assert!(vol["image"]["allocated_bytes"].as_u64().unwrap() < 32 << 20, "{vol}");
    assert_eq!(vol["loop_device"], Value::Null);
    assert_eq!(vol["mounts"], serde_json::json!([]));
    assert_eq!(vol["staging"], Value::Null);
    assert_eq!(vol["condition"]["abnormal"], false);

    let s = json(&cli(pool.root(), &["inspect", &snap.id, "-o", "json"]));
    assert_eq!(s["kind"], "snapshot");
    assert_eq!(s["source_volume_id"], a.as_str());
    assert_eq!(s["image"]["exists"], true);

    let text = cli(pool.root(), &["inspect", &a]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with(&format!("Volume:         {a}\n")), "{text}");
    assert!(text.contains("Condition:      healthy"), "{text}");
    assert!(text.contains("I/O limits:     none\n"), "{text}");

    // After a modify: the limits as the record has them.
    let mutable = [("readIOPS", "500"), ("writeBytesPerSecond", "50Mi")];
    pool.modify_volume(&a, &VolumeParams::parse(mutable, Dialect::Mutable).unwrap()).unwrap();
    let vol = json(&cli(pool.root(), &["inspect", &a, "-o", "json"]));
    assert_eq!(vol["io_limits"]["read_iops"], 500, "{vol}");
    assert_eq!(vol["io_limits"]["write_bytes_per_second"], 50 << 20, "{vol}");
    let text = String::from_utf8(cli(pool.root(), &["inspect", &a]).stdout).unwrap();
    assert!(text.contains("I/O limits:     readIOPS=500, writeBytesPerSecond=50Mi/s\n"), "{text}");

    for bad in ["no-such-volume", "../etc"] {
        let out = cli(pool.root(), &["inspect", bad]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no volume or snapshot"), "{out:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn admin_commands_refuse_a_missing_pool() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-a-pool");
    for args in [&["list"][..], &["inspect", "x"], &["doctor"]] {
        let out = cli(&missing, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no loopvol pool at"), "{out:?}");
        assert!(!missing.exists(), "an admin command must not create a pool");
    }
}

#[test]
fn inspect_shows_the_live_state_of_a_staged_volume() {
    if !privileged("inspect_shows_the_live_state_of_a_staged_volume") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let id = create(&pool, "staged", 32 << 20);
    let idle = create(&pool, "idle", 32 << 20);
    let staging = sandbox.path().join("staging");
    let req = StageRequest {
        staging_path: staging.clone(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    };
    let record = pool.stage(&id, &req).unwrap();

    let vol = json(&cli(pool.root(), &["inspect", &id, "-o", "json"]));
    assert_eq!(vol["loop_device"], record.device.to_str().unwrap(), "{vol}");
    assert_eq!(vol["mounts"], serde_json::json!([staging.to_str().unwrap()]));
    assert_eq!(vol["staging"]["path"], staging.to_str().unwrap());
    assert_eq!(vol["staging"]["live"], true);
    assert_eq!(vol["formatted"], true);
    assert_eq!(vol["condition"]["abnormal"], false, "{vol}");
    let allocated = vol["image"]["allocated_bytes"].as_u64().unwrap();
    assert!(allocated > 0 && allocated <= 32 << 20, "{vol}");

    let listing = json(&cli(pool.root(), &["list", "-o", "json"]));
    let row = |vid: &str| listing["volumes"].as_array().unwrap().iter().find(|v| v["id"] == vid).unwrap().clone();
    assert_eq!(row(&id)["loop_device"], record.device.to_str().unwrap());
    assert_eq!(row(&id)["staging_path"], staging.to_str().unwrap());
    assert_eq!(row(&idle)["loop_device"], Value::Null);

    // Unmounted behind the record's back: inspect tells, without fixing.
    nix::mount::umount(&staging).unwrap();
    let vol = json(&cli(pool.root(), &["inspect", &id, "-o", "json"]));
    assert_eq!(vol["staging"]["live"], false, "{vol}");
    assert_eq!(vol["condition"]["abnormal"], true, "{vol}");
    assert!(pool.node_state(&id).unwrap().staged.is_some(), "inspect changes nothing");
}
