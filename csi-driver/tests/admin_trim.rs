//! `loopvol-csi trim` and the scheduled trims of the server (`--trim-interval`),
//! black-box: bytes returned to the pool, a trim killed at every step loses
//! nothing and leaves nothing frozen or locked, and a volume staged by
//! another process on the pool (as the FlexVolume driver does) is trimmed by
//! the server's schedule.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Server;
use loopvol_backend::{Pool, PoolOptions};
use loopvol_test_support::{create_volume, eventually, privileged, stage_volume, Sandbox};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_loopvol-csi");
const MIB: u64 = 1 << 20;

fn trim(pool: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.arg("trim").args(args).env("LOOPVOL_POOL", pool).env_remove("RUST_LOG");
    if let Some(point) = failpoint {
        cmd.env(loopvol_backend::failpoint::ENV, point);
    }
    cmd.output().expect("run loopvol-csi trim")
}

/// Writes `bytes` of data that does not compress, synced.
fn write_synced(path: &Path, bytes: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2_654_435_761) >> 11).to_le_bytes()[0]).collect();
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    data
}

/// A staged 32 MiB volume holding `keep` (4 MiB) and a deleted 16 MiB file.
fn staged_with_garbage(pool: &Pool, name: &str, staging: &Path) -> (String, Vec<u8>) {
    let id = create_volume(pool, name);
    stage_volume(pool, &id, staging);
    let keep = write_synced(&staging.join("keep"), 4 * MIB);
    write_synced(&staging.join("garbage"), 16 * MIB);
    fs::remove_file(staging.join("garbage")).unwrap();
    nix::unistd::sync();
    (id, keep)
}

#[test]
fn trim_prints_the_bytes_each_volume_returned() {
    if !privileged("trim_prints_the_bytes_each_volume_returned") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let staging = sandbox.path().join("a");
    let (id, keep) = staged_with_garbage(&pool, "a", &staging);
    let idle = create_volume(&pool, "idle");

    let out = trim(pool.root(), &["-o", "json"], None);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["volumes"].as_array().unwrap();
    let row = |v: &str| rows.iter().find(|r| r["id"] == v).unwrap_or_else(|| panic!("{v} in {report}"));
    assert!(row(&id)["returned_bytes"].as_u64().unwrap() >= 12 * MIB, "{report}");
    assert_eq!(row(&idle)["skipped"], "not staged");
    assert_eq!(report["returned_bytes"], row(&id)["returned_bytes"]);
    assert_eq!(fs::read(staging.join("keep")).unwrap(), keep);

    // The table names one volume; an unknown one fails the run.
    let out = trim(pool.root(), &[&id], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes returned to the pool"), "{out:?}");
    let out = trim(pool.root(), &["no-such-volume"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    pool.unstage(&id, &staging, false).unwrap();
}

#[test]
fn a_trim_killed_at_any_step_loses_nothing() {
    if !privileged("a_trim_killed_at_any_step_loses_nothing") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let staging = sandbox.path().join("v");
    let (id, keep) = staged_with_garbage(&pool, "v", &staging);
    for point in ["trim.before-fitrim", "trim.after-fitrim"] {
        let out = trim(pool.root(), &[&id], Some(point));
        assert_eq!(
            out.status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "{point}: killed there: {out:?}"
        );
        // The data is whole, the filesystem takes writes (nothing frozen),
        // and the volume's lock died with the process.
        assert_eq!(fs::read(staging.join("keep")).unwrap(), keep, "{point}");
        write_synced(&staging.join(format!("after-{point}")), MIB);
        let again = trim(pool.root(), &[&id, "-o", "json"], None);
        assert!(again.status.success(), "{point}: a trim after the crash: {again:?}");
    }
    pool.unstage(&id, &staging, false).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_trims_volumes_another_process_staged_on_its_schedule() {
    if !privileged("the_server_trims_volumes_another_process_staged_on_its_schedule") {
        return;
    }
    let server = Server::start_with(&["--trim-interval", "1s"]).await;
    // Staged in this process, through the pool's own locks, as a FlexVolume
    // call would: the server knows nothing of it but the pool.
    let pool = Pool::open(&server.pool, PoolOptions::default()).unwrap();
    let staging: PathBuf = server.root.join("flex-staging");
    let (id, keep) = staged_with_garbage(&pool, "flex-style", &staging);
    let after_write = pool.allocated_bytes(&id).unwrap();
    let pool_ref = &pool;
    let id_ref = &id;
    assert!(
        eventually(|| pool_ref.allocated_bytes(id_ref).unwrap() + 12 * MIB <= after_write),
        "the schedule returned the deleted file's space: {} -> {}",
        after_write,
        pool.allocated_bytes(&id).unwrap()
    );
    assert_eq!(fs::read(staging.join("keep")).unwrap(), keep);
    pool.unstage(&id, &staging, true).unwrap();
    drop(server);
}
