//! Space reclaim: trimming a staged filesystem gives the space of deleted
//! files back to the pool, leaves thick volumes whole, and keeps what
//! snapshots taken before it hold.

use std::fs;
use std::io::Write;
use std::path::Path;

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, Error, FsType, Lifecycle, Pool, PoolOptions, Source, StageRequest,
};
use loopvol_test_support::{loops_settle, mounts_under, privileged, Sandbox};

const MIB: u64 = 1 << 20;

fn create(pool: &Pool, name: &str, thick: bool, source: Option<Source>) -> String {
    pool.create_volume(&CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: 256 * MIB, limit: 0 },
        fs_type: Some(FsType::Ext4),
        access_type: AccessType::Mount,
        thick,
        source,
        parameters: Default::default(),
        lifecycle: Lifecycle::Persistent,
        direct_io: true,
    })
    .unwrap()
    .id
}

fn stage(pool: &Pool, id: &str, staging: &Path, mount_options: &[&str]) -> Result<(), Error> {
    let req = StageRequest {
        staging_path: staging.into(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: mount_options.iter().map(|o| o.to_string()).collect(),
    };
    pool.stage(id, &req).map(|_| ())
}

/// Writes `bytes` of incompressible data to `path` and syncs it.
fn write_synced(path: &Path, bytes: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0]).collect();
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    data
}

#[test]
fn trim_returns_the_space_of_deleted_files_and_leaves_thick_volumes_whole() {
    if !privileged("trim_returns_the_space_of_deleted_files_and_leaves_thick_volumes_whole") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();

    let thin = create(&pool, "thin", false, None);
    let staging = sandbox.path().join("thin");
    stage(&pool, &thin, &staging, &[]).unwrap();
    write_synced(&staging.join("big"), 64 * MIB);
    let before = pool.allocated_bytes(&thin).unwrap();
    fs::remove_file(staging.join("big")).unwrap();
    nix::unistd::sync();
    let outcome = pool.trim(&thin).unwrap();
    assert_eq!(outcome.skipped, None);
    assert!(before >= 64 * MIB, "the file was in the image: {before}");
    assert!(
        outcome.returned_bytes() >= 60 * MIB,
        "64 MiB deleted, {} bytes returned ({} -> {})",
        outcome.returned_bytes(),
        outcome.allocated_before,
        outcome.allocated_after
    );
    assert_eq!(pool.allocated_bytes(&thin).unwrap(), outcome.allocated_after);
    // Repeating is harmless and returns (almost) nothing more.
    assert!(pool.trim(&thin).unwrap().returned_bytes() < 4 * MIB);

    // A thick volume keeps its preallocation: no trim, no discard option.
    let thick = create(&pool, "thick", true, None);
    let thick_staging = sandbox.path().join("thick");
    assert!(matches!(stage(&pool, &thick, &thick_staging, &["discard"]), Err(Error::MountOptionNotAllowed { .. })));
    stage(&pool, &thick, &thick_staging, &[]).unwrap();
    let full = pool.allocated_bytes(&thick).unwrap();
    assert!(full >= 256 * MIB, "thick volumes are preallocated: {full}");
    // Nothing is left for the kernel's lazy init to zero (its zeroing would
    // punch holes into the image): every group's inode table is zeroed.
    let device = pool.node_state(&thick).unwrap().staged.unwrap().device;
    let out = std::process::Command::new("dumpe2fs").arg(&device).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let groups = text
        .lines()
        .filter(|l| l.strip_prefix("Group ").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    assert!(groups > 0, "dumpe2fs: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("ITABLE_ZEROED").count(), groups, "every inode table zeroed at mkfs");
    let outcome = pool.trim(&thick).unwrap();
    assert_eq!(outcome.skipped, Some("thick volumes keep their preallocation"));
    assert_eq!(pool.allocated_bytes(&thick).unwrap(), full);

    // Unstaged volumes are skipped, not errors.
    pool.unstage(&thin, &staging, false).unwrap();
    assert_eq!(pool.trim(&thin).unwrap().skipped, Some("not staged"));
    pool.unstage(&thick, &thick_staging, false).unwrap();
    assert!(matches!(pool.trim("no-such-volume"), Err(Error::VolumeNotFound(_))));
    assert_eq!(loops_settle(&sandbox.path(), 0), 0);
}

#[test]
fn snapshots_taken_before_a_trim_read_back_byte_for_byte() {
    if !privileged("snapshots_taken_before_a_trim_read_back_byte_for_byte") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let vol = create(&pool, "source", false, None);
    let staging = sandbox.path().join("source");
    stage(&pool, &vol, &staging, &[]).unwrap();
    let data = write_synced(&staging.join("kept"), 16 * MIB);
    let snap = pool.create_snapshot("before-trim", &vol).unwrap();
    fs::remove_file(staging.join("kept")).unwrap();
    nix::unistd::sync();
    pool.trim(&vol).unwrap();

    let restored = create(&pool, "restored", false, Some(Source::Snapshot(snap.id.clone())));
    let restored_staging = sandbox.path().join("restored");
    stage(&pool, &restored, &restored_staging, &[]).unwrap();
    assert!(fs::read(restored_staging.join("kept")).unwrap() == data, "the snapshot holds the data whole");
    pool.unstage(&restored, &restored_staging, false).unwrap();
    pool.unstage(&vol, &staging, false).unwrap();
    assert!(mounts_under(&sandbox.path()).is_empty());
}
