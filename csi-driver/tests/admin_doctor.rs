//! `loopvol-csi doctor [--repair]`, black-box, against deliberately broken
//! pools (broken as backend/tests/doctor.rs breaks them).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use loopvol_backend::{Pool, PoolOptions};
use loopvol_test_support::{broken_pool, create_volume, privileged, stage_volume, BrokenPool, Sandbox};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_loopvol-csi");

fn doctor(pool: &Path, args: &[&str]) -> Output {
    Command::new(EXE)
        .arg("doctor")
        .args(args)
        .env("LOOPVOL_POOL", pool)
        .env_remove("RUST_LOG")
        .output()
        .expect("run loopvol-csi doctor")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// (kind, repaired) of every finding, sorted.
fn kinds(report: &Value) -> Vec<(String, bool)> {
    let mut k: Vec<(String, bool)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f["repaired"].as_bool().unwrap()))
        .collect();
    k.sort();
    k
}

fn mounted(path: &Path) -> bool {
    loopvol_test_support::mount_count(path) > 0
}

/// The kernel frees an autoclear loop device shortly after its last user
/// (the mount) is gone: wait for that (a readiness wait, not a timing check).
fn wait_detached(image: &Path) {
    for _ in 0..500 {
        if !attached(image) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} still attached", image.display());
}

#[test]
fn doctor_on_a_healthy_pool_exits_0() {
    if !privileged("doctor_on_a_healthy_pool_exits_0") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let id = create_volume(&pool, "healthy");
    stage_volume(&pool, &id, &sandbox.path().join("healthy"));
    create_volume(&pool, "idle");

    let out = doctor(pool.root(), &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}: no problems found\n", pool.root().display()));
    assert!(out.stderr.is_empty(), "no progress off a terminal: {:?}", String::from_utf8_lossy(&out.stderr));

    let out = doctor(pool.root(), &["--repair", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = report(&out);
    assert_eq!(r["findings"], serde_json::json!([]));
    assert_eq!(r["remaining"], 0);
    assert!(mounted(&sandbox.path().join("healthy")));
}

#[test]
fn doctor_finds_everything_and_repair_fixes_what_is_safe() {
    if !privileged("doctor_finds_everything_and_repair_fixes_what_is_safe") {
        return;
    }
    let sandbox = Sandbox::new();
    let BrokenPool { pool, healthy_staging, orphan, no_image, unused, stale, lost, lost_staging, .. } =
        broken_pool(&sandbox);
    let vols = pool.root().join("volumes");

    // A check alone changes nothing and exits 1.
    let out = doctor(pool.root(), &["-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = report(&out);
    assert_eq!(r["repair"], false);
    let found = kinds(&r);
    for want in [
        "image-without-record",
        "record-without-image",
        "temp-file",
        "unused-loop-device",
        "stale-node-state",
        "mount-without-record",
    ] {
        assert!(found.contains(&(want.to_string(), false)), "{want} missing from {found:?}");
    }
    assert_eq!(r["remaining"], found.len());
    assert!(vols.join(".half.img.tmp").exists());
    assert!(pool.volume_image_path(&orphan).exists());

    // The table says the same for people.
    let out = doctor(pool.root(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("KIND "), "{text}");
    assert!(text.contains("REMEDY (--repair)"), "{text}");
    assert!(text.contains(&format!("{} problems, 0 repaired, {} remaining", found.len(), found.len())), "{text}");

    // Repair: fixes what is safe, still exits 1 for what needs a human.
    let out = doctor(pool.root(), &["--repair", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = report(&out);
    assert_eq!(r["repair"], true);
    let repaired = kinds(&r);
    for fixed in ["temp-file", "unused-loop-device", "stale-node-state"] {
        assert!(repaired.contains(&(fixed.to_string(), true)), "{fixed} not repaired: {repaired:?}");
    }
    assert!(repaired.contains(&("record-without-image".to_string(), false)));
    assert!(repaired.contains(&("mount-without-record".to_string(), false)));
    assert!(!vols.join(".half.img.tmp").exists());
    assert!(!pool.volume_image_path(&orphan).exists(), "orphan moved to lost+found");
    assert_eq!(fs::read_dir(pool.root().join("lost+found")).unwrap().count(), 1, "moved, not deleted");
    assert!(!attached(&pool.volume_image_path(&unused)));
    assert!(pool.node_state(&stale).unwrap().staged.is_none());
    assert!(mounted(&healthy_staging) && mounted(&lost_staging), "mounts are never taken away");

    // What remains is what must be left to a human; the table says so.
    let out = doctor(pool.root(), &["--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("NOT repaired (left alone"), "{text}");

    // The human fixes it: the pool is healthy again.
    nix::mount::umount(&lost_staging).unwrap();
    wait_detached(&vols.join(format!("{lost}.img")));
    for name in [format!("{lost}.img"), format!("{no_image}.json")] {
        let _ = fs::remove_file(vols.join(name));
    }
    let out = doctor(pool.root(), &["-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(report(&out)["remaining"], 0);
}

#[test]
fn repair_of_only_safe_problems_exits_0() {
    if !privileged("repair_of_only_safe_problems_exits_0") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let unused = create_volume(&pool, "unused-loop");
    loopvol_test_support::attach_loop_device(&pool.volume_image_path(&unused));
    fs::write(pool.root().join("snapshots/.snap-x.img.tmp"), b"partial").unwrap();

    assert_eq!(doctor(pool.root(), &[]).status.code(), Some(1));
    let out = doctor(pool.root(), &["--repair", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "everything was repaired: {out:?}");
    let r = report(&out);
    assert_eq!(kinds(&r), [("temp-file".to_string(), true), ("unused-loop-device".to_string(), true)]);
    assert_eq!(r["remaining"], 0);
    assert_eq!(doctor(pool.root(), &[]).status.code(), Some(0));
}

/// Whether a loop device is backed by `image`.
fn attached(image: &Path) -> bool {
    loopvol_test_support::loop_devices().iter().any(|(_, backing)| backing == image)
}
