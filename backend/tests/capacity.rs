//! Capacity and overprovisioning: by default every volume reserves its
//! whole size; with an overprovision ratio the pool promises more than it
//! has, reports low real space as an abnormal condition before the volumes'
//! filesystems see ENOSPC, and its catalog survives the pool filling up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use loopvol_backend::{CreateVolume, Error, FsType, Pool, PoolOptions};
use loopvol_test_support::{privileged, stage_volume, volume_request, Sandbox};

const MIB: u64 = 1 << 20;

/// A 160 MiB ext4 filesystem (no reserved blocks) mounted in the sandbox.
fn small_fs(sandbox: &Sandbox) -> PathBuf {
    let img = sandbox.path().join("poolfs.img");
    fs::File::create(&img).unwrap().set_len(160 * MIB).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&img).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = sandbox.path().join("poolfs");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt).output().unwrap();
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    mnt
}

fn request(name: &str, size: u64) -> CreateVolume {
    volume_request(name, size, Some(FsType::Ext4))
}

/// Writes 1 MiB chunks until the write fails or `stop` says so; returns the
/// bytes written.
fn fill(path: &Path, mut stop: impl FnMut(u64) -> bool) -> u64 {
    let chunk: Vec<u8> = (0..MIB).map(|i| (i.wrapping_mul(2_654_435_761) >> 9).to_le_bytes()[0]).collect();
    let mut f = fs::File::create(path).unwrap();
    let mut written = 0;
    while !stop(written) {
        if f.write_all(&chunk).and_then(|()| f.sync_data()).is_err() {
            break;
        }
        written += MIB;
    }
    written
}

#[test]
fn an_overcommitted_pool_warns_before_it_is_full_and_its_catalog_survives() {
    if !privileged("an_overcommitted_pool_warns_before_it_is_full_and_its_catalog_survives") {
        return;
    }
    let sandbox = Sandbox::new();
    let root = small_fs(&sandbox).join("pool");

    // Without overcommit a volume larger than the pool cannot be promised.
    let strict = Pool::open(&root, PoolOptions::default()).unwrap();
    let cap = strict.capacity().unwrap();
    assert!(cap.available_bytes < 160 * MIB);
    assert!(matches!(strict.create_volume(&request("big", 256 * MIB)), Err(Error::Exhausted { .. })));

    // With ratio 4 it can, and the capacity says what is promised.
    let options = PoolOptions { overprovision_ratio: 4.0, low_space_percent: 20.0, ..PoolOptions::default() };
    let pool = Pool::open(&root, options).unwrap();
    let before = pool.capacity().unwrap();
    assert!(before.available_bytes > 3 * before.total_bytes, "{before:?}");
    let vol = pool.create_volume(&request("big", 256 * MIB)).unwrap();
    let after = pool.capacity().unwrap();
    assert_eq!(after.provisioned_bytes, 256 * MIB);
    assert_eq!(before.available_bytes - after.available_bytes, 256 * MIB);
    assert!(after.reserved_bytes > 250 * MIB && after.allocated_bytes < 6 * MIB, "{after:?}");
    assert!(!pool.condition(&vol.id).unwrap().abnormal);

    let staging = sandbox.path().join("staging");
    stage_volume(&pool, &vol.id, &staging);
    // Fill the volume until the pool's real free space drops below 20%: the
    // condition turns abnormal while writes still succeed.
    let mut warned_at = None;
    let written = fill(&staging.join("data"), |written| {
        let condition = pool.condition(&vol.id).unwrap();
        if condition.abnormal {
            assert!(condition.message.contains("overcommitted"), "{}", condition.message);
            warned_at = Some(written);
        }
        warned_at.is_some()
    });
    let warned_at = warned_at.expect("the condition turned abnormal before the pool was full");
    assert_eq!(written, warned_at, "writes still succeeded when the warning came");
    let free = pool.capacity().unwrap().free_bytes;
    assert!(free > 0, "the warning came before the pool was full ({free} bytes free)");
    let stats = pool.stats(&vol.id, &staging).unwrap();
    assert!(stats.condition.abnormal, "NodeGetVolumeStats reports it too");

    // Run the pool out of space: writes in the volume fail, the catalog does not.
    fill(&staging.join("more"), |_| false);
    let vols = pool.volumes().unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].capacity_bytes, 256 * MIB);
    assert!(pool.doctor(false).unwrap().iter().all(|f| f.kind.as_str() != "corrupt-record"));
    // Unstage still works on a full pool.
    pool.unstage(&vol.id, &staging, false).unwrap();
    assert!(pool.node_state(&vol.id).unwrap().staged.is_none());
}
