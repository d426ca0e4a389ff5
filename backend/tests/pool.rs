//! The pool and node operations end to end, on real loop devices, real
//! filesystems and real mounts. Every test runs in a `Sandbox` that unmounts
//! and detaches whatever the test left behind, also when it fails.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, Error, FsType, Lifecycle, Pool, PoolOptions, PublishRequest, Source,
    StageRequest,
};
use loopvol_test_support::{loops_settle, privileged, Sandbox};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Env {
    sandbox: Sandbox,
    pool: Pool,
}

impl Env {
    fn new() -> Env {
        let sandbox = Sandbox::new();
        let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
        Env { sandbox, pool }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.sandbox.path().join(name)
    }

    fn create(&self, name: &str, size: u64, fs: FsType) -> String {
        self.pool.create_volume(&create_req(name, size, Some(fs), AccessType::Mount)).unwrap().id
    }

    fn stage(&self, id: &str, ro: bool) -> PathBuf {
        let staging = self.dir(&format!("staging-{id}"));
        fs::create_dir_all(&staging).unwrap();
        self.pool.stage(id, &stage_req(&staging, AccessType::Mount, ro)).unwrap();
        staging
    }

    fn publish(&self, id: &str, staging: &Path, target: &str, ro: bool) -> PathBuf {
        let target = self.dir(target);
        self.pool.publish(id, &publish_req(staging, &target, AccessType::Mount, ro)).unwrap();
        target
    }
}

fn create_req(name: &str, size: u64, fs_type: Option<FsType>, access_type: AccessType) -> CreateVolume {
    CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: size, limit: 0 },
        fs_type,
        access_type,
        thick: false,
        source: None,
        parameters: BTreeMap::new(),
        lifecycle: Lifecycle::Persistent,
        direct_io: true,
    }
}

fn stage_req(staging: &Path, access_type: AccessType, read_only: bool) -> StageRequest {
    StageRequest { staging_path: staging.into(), access_type, fs_type: None, read_only, mount_options: vec![] }
}

fn publish_req(staging: &Path, target: &Path, access_type: AccessType, read_only: bool) -> PublishRequest {
    PublishRequest {
        pod_uid: None,
        staging_path: staging.into(),
        target_path: target.into(),
        access_type,
        fs_type: None,
        read_only,
        mount_options: vec![],
        exclusive: false,
    }
}

fn mounts_at(path: &Path) -> usize {
    loopvol_test_support::mount_count(path)
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// The full node cycle, twice over, with every call repeated, for one fs.
fn lifecycle(fs_type: FsType) {
    let env = Env::new();
    let id = env.create("data", GIB, fs_type);
    let staging = env.stage(&id, false);
    env.stage(&id, false); // idempotent
    assert_eq!(mounts_at(&staging), 1, "one staging mount");
    let target = env.publish(&id, &staging, "pod/mount", false);
    env.publish(&id, &staging, "pod/mount", false);
    assert_eq!(mounts_at(&target), 1, "one publish mount");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write_file(&target.join("file"), &data);

    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unpublish(&id, &target).unwrap();
    assert!(!target.exists(), "unpublish removes the target");
    env.pool.unstage(&id, &staging, false).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(mounts_at(&staging), 0);
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0, "the loop device is released");

    let staging = env.stage(&id, false);
    let target = env.publish(&id, &staging, "pod2/mount", false);
    assert_eq!(fs::read(target.join("file")).unwrap(), data, "data survives unstage and stage");
    let stats = env.pool.stats(&id, &target).unwrap();
    let usage = stats.usage.unwrap();
    assert!(usage.bytes_used >= 1_000_000 && usage.bytes_total > usage.bytes_used);
    assert!(usage.inodes_total > 0 || fs_type == FsType::Btrfs);
    assert!(!stats.condition.abnormal, "{}", stats.condition.message);
    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unstage(&id, &staging, true).unwrap();
    assert!(!staging.exists(), "remove_dir removes the staging dir");
    env.pool.delete_volume(&id).unwrap();
    env.pool.delete_volume(&id).unwrap();
    assert!(matches!(env.pool.volume(&id), Err(Error::VolumeNotFound(_))));
    assert!(!env.pool.volume_image_path(&id).exists());
}

#[test]
fn lifecycle_ext4() {
    if privileged("lifecycle_ext4") {
        lifecycle(FsType::Ext4);
    }
}

#[test]
fn lifecycle_xfs() {
    if privileged("lifecycle_xfs") {
        lifecycle(FsType::Xfs);
    }
}

#[test]
fn lifecycle_btrfs() {
    if privileged("lifecycle_btrfs") {
        lifecycle(FsType::Btrfs);
    }
}

#[test]
fn create_is_idempotent_on_name_and_rejects_conflicts() {
    let env = Env::new();
    let a = env.pool.create_volume(&create_req("pvc-a", 10 * GIB, None, AccessType::Mount)).unwrap();
    let again = env.pool.create_volume(&create_req("pvc-a", 10 * GIB, None, AccessType::Mount)).unwrap();
    assert_eq!(a, again);
    assert_eq!(a.id, "pvc-a");
    assert_eq!(a.capacity_bytes, 10 * GIB);
    assert_eq!(fs::metadata(env.pool.volume_image_path(&a.id)).unwrap().len(), 10 * GIB);
    // Sparse: nothing allocated yet.
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(env.pool.volume_image_path(&a.id)).unwrap().blocks() < 1024);
    let mut other = create_req("pvc-a", 10 * GIB, None, AccessType::Mount);
    other.capacity.limit = 5 * GIB;
    other.capacity.required = 5 * GIB;
    assert!(matches!(env.pool.create_volume(&other), Err(Error::VolumeNameConflict { .. })));
    assert!(matches!(
        env.pool.create_volume(&create_req("pvc-a", 10 * GIB, Some(FsType::Xfs), AccessType::Mount)),
        Err(Error::VolumeNameConflict { .. })
    ));
    // Names that are not IDs map to stable hashed IDs.
    let odd = env.pool.create_volume(&create_req("sanity Node 1", GIB, None, AccessType::Mount)).unwrap();
    assert!(odd.id.starts_with("lv-"));
    assert_eq!(env.pool.volumes().unwrap().len(), 2);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let env = Env::new();
    for bad in ["../x", "/etc/passwd", ".hidden", ""] {
        let mut req = create_req("n", GIB, None, AccessType::Mount);
        req.id = Some(bad.into());
        assert!(matches!(env.pool.create_volume(&req), Err(Error::InvalidId { .. })), "{bad:?}");
        assert!(matches!(env.pool.volume(bad), Err(Error::InvalidId { .. })));
    }
    assert!(matches!(
        env.pool.create_volume(&create_req("", GIB, None, AccessType::Mount)),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!("ntfs".parse::<FsType>(), Err(Error::UnsupportedFsType { .. })));
    let huge = create_req("huge", 1 << 60, None, AccessType::Mount);
    assert!(matches!(env.pool.create_volume(&huge), Err(Error::Exhausted { .. })));
    let mut range = create_req("range", 2 * GIB, None, AccessType::Mount);
    range.capacity.limit = GIB;
    assert!(matches!(env.pool.create_volume(&range), Err(Error::SizeOutOfRange { .. })));
    let names: Vec<_> = fs::read_dir(env.sandbox.path().join("pool/volumes")).unwrap().collect();
    assert!(names.is_empty(), "failed creates leave no files: {names:?}");
    assert!(matches!(
        env.pool.stage("missing", &stage_req(Path::new("/tmp/x"), AccessType::Mount, false)),
        Err(Error::VolumeNotFound(_))
    ));
    let id = env.create("v", 64 * MIB, FsType::Ext4);
    assert!(matches!(
        env.pool.stage(&id, &stage_req(Path::new("relative"), AccessType::Mount, false)),
        Err(Error::InvalidPath { .. })
    ));
    assert!(matches!(
        env.pool.stage(&id, &stage_req(Path::new("/tmp/../etc"), AccessType::Mount, false)),
        Err(Error::InvalidPath { .. })
    ));
}

#[test]
fn capacity_reserves_whole_volumes() {
    let env = Env::new();
    let before = env.pool.capacity().unwrap();
    assert!(before.total_bytes >= before.available_bytes && before.available_bytes > 0);
    env.create("cap", 4 * GIB, FsType::Ext4);
    let after = env.pool.capacity().unwrap();
    // Free space barely moves (sparse), but the volume's size is reserved.
    assert!(after.available_bytes + 4 * GIB <= before.available_bytes + 64 * MIB);
    assert!(after.max_volume_bytes <= after.available_bytes);
    let too_big = create_req("too-big", after.available_bytes + GIB, None, AccessType::Mount);
    assert!(matches!(env.pool.create_volume(&too_big), Err(Error::Exhausted { .. })));
}

#[test]
fn read_only_staging_never_formats() {
    if !privileged("read_only_staging_never_formats") {
        return;
    }
    let env = Env::new();
    let id = env.create("blank", 64 * MIB, FsType::Ext4);
    let staging = env.dir("ro");
    let err = env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, true)).unwrap_err();
    assert!(matches!(err, Error::RefuseFormat { .. }), "{err}");
    assert_eq!(mounts_at(&staging), 0);
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0, "no loop device leaks from a refused stage");

    // Formatted once read-write, it can then be staged read-only.
    let staging = env.stage(&id, false);
    write_file(&staging.join("f"), b"x");
    env.pool.unstage(&id, &staging, false).unwrap();
    env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, true)).unwrap();
    let target = env.publish(&id, &staging, "ro-target", true);
    assert_eq!(fs::read(target.join("f")).unwrap(), b"x");
    assert!(fs::write(target.join("g"), b"y").is_err(), "read-only mount refuses writes");
    // Publishing the same target read-write is a conflict.
    let err = env.pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount, false)).unwrap_err();
    assert!(matches!(err, Error::IncompatibleAtPath { .. }), "{err}");
    // Staging again read-write at the same path conflicts; elsewhere too.
    assert!(matches!(
        env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)),
        Err(Error::IncompatibleAtPath { .. })
    ));
    assert!(matches!(
        env.pool.stage(&id, &stage_req(&env.dir("elsewhere"), AccessType::Mount, true)),
        Err(Error::StagedElsewhere { .. })
    ));
    // In use: neither unstage nor delete.
    assert!(matches!(env.pool.unstage(&id, &staging, false), Err(Error::VolumeInUse { .. })));
    assert!(matches!(env.pool.delete_volume(&id), Err(Error::VolumeInUse { .. })));
    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
    env.pool.delete_volume(&id).unwrap();
}

#[test]
fn never_formats_over_existing_data() {
    if !privileged("never_formats_over_existing_data") {
        return;
    }
    let env = Env::new();
    let id = env.create("xfs-in-ext4", 320 * MIB, FsType::Ext4);
    // Someone put an xfs filesystem on the image behind our back.
    let out = std::process::Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .arg(env.pool.volume_image_path(&id))
        .output()
        .unwrap();
    assert!(out.status.success());
    let staging = env.dir("s");
    let err = env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap_err();
    assert!(matches!(err, Error::RefuseFormat { .. }), "{err}");
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn wrong_target_kinds_are_refused_without_leaks() {
    if !privileged("wrong_target_kinds_are_refused_without_leaks") {
        return;
    }
    let env = Env::new();
    let id = env.create("kinds", 64 * MIB, FsType::Ext4);
    let staging = env.stage(&id, false);
    let file_target = env.dir("a-file");
    fs::write(&file_target, b"").unwrap();
    let err = env.pool.publish(&id, &publish_req(&staging, &file_target, AccessType::Mount, false)).unwrap_err();
    assert!(matches!(err, Error::TargetKind { .. }), "{err}");
    let link = env.dir("a-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let err = env.pool.publish(&id, &publish_req(&staging, &link, AccessType::Mount, false)).unwrap_err();
    assert!(matches!(err, Error::TargetKind { .. }), "{err}");
    assert_eq!(mounts_at(&file_target) + mounts_at(&link) + mounts_at(Path::new("/etc")), 0);
    // A capability naming another filesystem than the volume's.
    let mut xfs = publish_req(&staging, &env.dir("xfs-target"), AccessType::Mount, false);
    xfs.fs_type = Some(FsType::Xfs);
    assert!(matches!(env.pool.publish(&id, &xfs), Err(Error::InvalidArgument(_))));
    assert!(!env.dir("xfs-target").exists());
    // Publishing from a path that is not the staging path.
    let err =
        env.pool.publish(&id, &publish_req(&env.dir("nope"), &env.dir("t"), AccessType::Mount, false)).unwrap_err();
    assert!(matches!(err, Error::NotStaged { .. }), "{err}");
    assert!(matches!(env.pool.stats(&id, &env.dir("t")), Err(Error::NotAtPath { .. })));
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn block_volumes_publish_the_device() {
    if !privileged("block_volumes_publish_the_device") {
        return;
    }
    let env = Env::new();
    let id = env.pool.create_volume(&create_req("raw", 64 * MIB, None, AccessType::Block)).unwrap().id;
    let staging = env.dir("block-staging");
    fs::create_dir_all(&staging).unwrap();
    env.pool.stage(&id, &stage_req(&staging, AccessType::Block, false)).unwrap();
    env.pool.stage(&id, &stage_req(&staging, AccessType::Block, false)).unwrap();
    let target = env.dir("pod/dev/raw");
    let req = publish_req(&staging, &target, AccessType::Block, false);
    env.pool.publish(&id, &req).unwrap();
    env.pool.publish(&id, &req).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(&target).unwrap().file_type().is_block_device(), "the device is bound on the target");
    let mut dev = fs::OpenOptions::new().write(true).open(&target).unwrap();
    use std::io::{Seek, SeekFrom};
    dev.seek(SeekFrom::Start(MIB)).unwrap();
    dev.write_all(b"raw block bytes").unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    let stats = env.pool.stats(&id, &target).unwrap();
    assert_eq!(stats.total_bytes, 64 * MIB);
    assert_eq!(env.pool.volume_at(&target).unwrap().as_deref(), Some(id.as_str()));
    env.pool.unpublish(&id, &target).unwrap();
    assert!(!target.exists());
    env.pool.unstage(&id, &staging, false).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0, "block unstage detaches the device");
    let image = fs::read(env.pool.volume_image_path(&id)).unwrap();
    assert_eq!(&image[1 << 20..(1 << 20) + 15], b"raw block bytes");
    // A block volume cannot be staged as a filesystem.
    assert!(matches!(
        env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)),
        Err(Error::WrongAccessType { .. })
    ));
}

/// Operations trust the device a staging record names only after checking
/// it is bound to the volume's image: a record naming another volume's
/// device, an unbound one or garbage (a reboot renumbers devices) falls back
/// to a scan, and every answer is about the volume's own device.
#[test]
fn a_stale_recorded_device_is_never_taken_for_the_volume() {
    if !privileged("a_stale_recorded_device_is_never_taken_for_the_volume") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let mut staged = Vec::new();
    for name in ["mine", "other"] {
        let id = env.pool.create_volume(&create_req(name, 16 * MIB, None, AccessType::Block)).unwrap().id;
        let staging = env.dir(&format!("staging-{name}"));
        let st = env.pool.stage(&id, &stage_req(&staging, AccessType::Block, false)).unwrap();
        staged.push((id, staging, st.device));
    }
    let (id, staging, device) = &staged[0];
    let other_device = &staged[1].2;
    let state_file = env.dir("pool").join(format!("volumes/{id}.state"));
    let wrong = [other_device.to_string_lossy().into_owned(), "/dev/loop99999".into(), "/etc/passwd".into()];
    for (n, wrong) in wrong.iter().enumerate() {
        let mut state: serde_json::Value = serde_json::from_slice(&fs::read(&state_file).unwrap()).unwrap();
        state["staged"]["device"] = serde_json::Value::from(wrong.as_str());
        fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();

        let (live_device, _) = env.pool.live_mounts(id).unwrap();
        assert_eq!(live_device.as_ref(), Some(device), "record {wrong}: the volume's own device");
        let target = env.dir(&format!("pod-{n}/dev"));
        env.pool.publish(id, &publish_req(staging, &target, AccessType::Block, false)).unwrap();
        assert_eq!(
            fs::metadata(&target).unwrap().rdev(),
            fs::metadata(device).unwrap().rdev(),
            "record {wrong}: the target is the volume's device"
        );
        assert_eq!(env.pool.stats(id, &target).unwrap().total_bytes, 16 * MIB);
        assert_eq!(env.pool.users(id).unwrap(), vec![target.clone()], "record {wrong}");
        env.pool.unpublish(id, &target).unwrap();
        assert!(!target.exists());
    }
    for (id, staging, _) in &staged {
        env.pool.unstage(id, staging, false).unwrap();
    }
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0, "both devices detached");
}

fn statfs_total(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

/// Grows a published volume: online where the kernel allows it, else at the
/// next stage. Either way the filesystem ends up larger.
fn expansion(fs_type: FsType) {
    let env = Env::new();
    let id = env.create("grow", 512 * MIB, fs_type);
    let staging = env.stage(&id, false);
    let target = env.publish(&id, &staging, "pod", false);
    write_file(&target.join("keep"), b"kept");
    let before = statfs_total(&target);
    let outcome = env.pool.expand_volume(&id, GIB).unwrap();
    assert_eq!(outcome.capacity_bytes, GIB);
    assert!(outcome.node_expansion_required);
    assert_eq!(env.pool.expand_volume(&id, 600 * MIB).unwrap().capacity_bytes, GIB, "no shrink, no error");
    match env.pool.node_expand(&id, GIB) {
        Ok(size) => assert_eq!(size, GIB),
        Err(Error::OnlineGrowRefused { .. }) => {
            // This kernel refuses (ext4 here): the next stage grows it.
            env.pool.unpublish(&id, &target).unwrap();
            env.pool.unstage(&id, &staging, false).unwrap();
            env.stage(&id, false);
            env.publish(&id, &staging, "pod", false);
        }
        Err(e) => panic!("node expand failed: {e}"),
    }
    let after = statfs_total(&target);
    assert!(after > before + 300 * MIB, "filesystem grew from {before} to {after}");
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"kept");
    assert!(!env.pool.volume(&id).unwrap().fs_grow_pending);
    env.pool.unpublish(&id, &target).unwrap();

    // Staged but not published: node expand grows it even where online
    // growth is refused (by briefly unmounting the staging path).
    env.pool.expand_volume(&id, 2 * GIB).unwrap();
    assert_eq!(env.pool.node_expand(&id, 2 * GIB).unwrap(), 2 * GIB);
    assert!(statfs_total(&staging) > after + 700 * MIB);
    assert_eq!(fs::read(staging.join("keep")).unwrap(), b"kept");
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn expansion_ext4() {
    if privileged("expansion_ext4") {
        expansion(FsType::Ext4);
    }
}

#[test]
fn expansion_xfs() {
    if privileged("expansion_xfs") {
        expansion(FsType::Xfs);
    }
}

#[test]
fn expansion_btrfs() {
    if privileged("expansion_btrfs") {
        expansion(FsType::Btrfs);
    }
}

/// Snapshot after a write contains it; a restore (larger) and a clone are
/// independent and mount beside their source.
fn snapshots_and_clones(fs_type: FsType) {
    let env = Env::new();
    let src = env.create("src", 512 * MIB, fs_type);
    let staging = env.stage(&src, false);
    write_file(&staging.join("before"), b"in the snapshot");
    let snap = env.pool.create_snapshot("snap-1", &src).unwrap();
    assert_eq!(env.pool.create_snapshot("snap-1", &src).unwrap(), snap, "idempotent");
    write_file(&staging.join("after"), b"not in the snapshot");

    let mut restore = create_req("restored", GIB, Some(fs_type), AccessType::Mount);
    restore.source = Some(Source::Snapshot(snap.id.clone()));
    let restored = env.pool.create_volume(&restore).unwrap();
    assert!(restored.fs_grow_pending);
    let r_staging = env.stage(&restored.id, false);
    assert_eq!(fs::read(r_staging.join("before")).unwrap(), b"in the snapshot");
    assert!(!r_staging.join("after").exists());
    assert!(statfs_total(&r_staging) > 700 * MIB, "restore grew to its larger size");

    let mut clone = create_req("clone", 0, None, AccessType::Mount);
    clone.source = Some(Source::Volume(src.clone()));
    let cloned = env.pool.create_volume(&clone).unwrap();
    assert_eq!(cloned.capacity_bytes, 512 * MIB);
    let c_staging = env.stage(&cloned.id, false);
    assert_eq!(fs::read(c_staging.join("after")).unwrap(), b"not in the snapshot");
    write_file(&c_staging.join("after"), b"changed in the clone");
    assert_eq!(fs::read(staging.join("after")).unwrap(), b"not in the snapshot", "clone is independent");

    // Same name, other source: conflict. Deleting the source keeps the snapshot.
    let other = env.create("other", 512 * MIB, fs_type);
    assert!(matches!(env.pool.create_snapshot("snap-1", &other), Err(Error::SnapshotNameConflict { .. })));
    assert!(matches!(env.pool.create_snapshot("snap-2", "no-such-volume"), Err(Error::VolumeNotFound(_))));
    for (id, path) in [(&src, &staging), (&restored.id, &r_staging), (&cloned.id, &c_staging)] {
        env.pool.unstage(id, path, false).unwrap();
    }
    env.pool.delete_volume(&src).unwrap();
    let mut again = create_req("restored-after-delete", 0, None, AccessType::Mount);
    again.source = Some(Source::Snapshot(snap.id.clone()));
    let again = env.pool.create_volume(&again).unwrap();
    let a_staging = env.stage(&again.id, false);
    assert_eq!(fs::read(a_staging.join("before")).unwrap(), b"in the snapshot");
    env.pool.unstage(&again.id, &a_staging, false).unwrap();
    env.pool.delete_snapshot(&snap.id).unwrap();
    env.pool.delete_snapshot(&snap.id).unwrap();
    assert!(matches!(env.pool.snapshot(&snap.id), Err(Error::SnapshotNotFound(_))));
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn snapshots_and_clones_ext4() {
    if privileged("snapshots_and_clones_ext4") {
        snapshots_and_clones(FsType::Ext4);
    }
}

#[test]
fn snapshots_and_clones_xfs() {
    if privileged("snapshots_and_clones_xfs") {
        snapshots_and_clones(FsType::Xfs);
    }
}

#[test]
fn snapshots_and_clones_btrfs() {
    if privileged("snapshots_and_clones_btrfs") {
        snapshots_and_clones(FsType::Btrfs);
    }
}

#[test]
fn group_snapshot_captures_every_member() {
    if !privileged("group_snapshot_captures_every_member") {
        return;
    }
    let env = Env::new();
    let a = env.create("a", 64 * MIB, FsType::Ext4);
    let b = env.create("b", 64 * MIB, FsType::Ext4);
    let (sa, sb) = (env.stage(&a, false), env.stage(&b, false));
    write_file(&sa.join("f"), b"a1");
    write_file(&sb.join("f"), b"b1");
    let members = vec![b.clone(), a.clone()];
    let group = env.pool.create_group_snapshot("grp", &members).unwrap();
    assert_eq!(env.pool.create_group_snapshot("grp", &members).unwrap(), group);
    assert!(matches!(
        env.pool.create_group_snapshot("grp", std::slice::from_ref(&a)),
        Err(Error::SnapshotNameConflict { .. })
    ));
    assert_eq!(group.snapshot_ids.len(), 2);
    write_file(&sa.join("f"), b"a2");
    for sid in &group.snapshot_ids {
        let snap = env.pool.snapshot(sid).unwrap();
        assert_eq!(snap.group_id.as_deref(), Some(group.id.as_str()));
        assert!(matches!(env.pool.delete_snapshot(sid), Err(Error::InvalidArgument(_))));
        let mut req = create_req(&format!("from-{sid}"), 0, None, AccessType::Mount);
        req.source = Some(Source::Snapshot(sid.clone()));
        let vol = env.pool.create_volume(&req).unwrap();
        let st = env.stage(&vol.id, false);
        let want: &[u8] = if snap.source_volume_id == a { b"a1" } else { b"b1" };
        assert_eq!(fs::read(st.join("f")).unwrap(), want);
        env.pool.unstage(&vol.id, &st, false).unwrap();
    }
    env.pool.delete_group_snapshot(&group.id).unwrap();
    env.pool.delete_group_snapshot(&group.id).unwrap();
    assert!(env.pool.snapshots().unwrap().is_empty());
    env.pool.unstage(&a, &sa, false).unwrap();
    env.pool.unstage(&b, &sb, false).unwrap();
}

#[test]
fn many_concurrent_stages_of_different_volumes() {
    if !privileged("many_concurrent_stages_of_different_volumes") {
        return;
    }
    let env = Env::new();
    let ids: Vec<String> = (0..32).map(|i| env.create(&format!("c{i}"), 32 * MIB, FsType::Ext4)).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let env = &env;
            s.spawn(move || env.stage(id, false));
        }
    });
    for id in &ids {
        assert_eq!(mounts_at(&env.dir(&format!("staging-{id}"))), 1, "{id} staged once");
    }
    assert_eq!(loops_settle(&env.sandbox.path(), 32), 32);
    std::thread::scope(|s| {
        for id in &ids {
            let env = &env;
            s.spawn(move || env.pool.unstage(id, &env.dir(&format!("staging-{id}")), false).unwrap());
        }
    });
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

/// Helper process for the cross-process tests: does what the environment says.
#[test]
fn child_process_helper() {
    let Ok(action) = std::env::var("LOOPVOL_TEST_CHILD") else { return };
    let pool = Pool::open(Path::new(&std::env::var("LOOPVOL_TEST_POOL").unwrap()), PoolOptions::default()).unwrap();
    let id = std::env::var("LOOPVOL_TEST_ID").unwrap();
    let staging = PathBuf::from(std::env::var("LOOPVOL_TEST_STAGING").unwrap());
    match action.as_str() {
        "stage-unstage" => {
            for _ in 0..5 {
                pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap();
                pool.unstage(&id, &staging, false).unwrap();
            }
            pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap();
        }
        "steps" => {
            // Announces each finished step; the parent kills us after one.
            let target = staging.with_extension("target");
            println!("step 0");
            pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap();
            println!("step 1");
            pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount, false)).unwrap();
            println!("step 2");
            pool.expand_volume(&id, 256 * MIB).unwrap();
            println!("step 3");
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child action {other}"),
    }
}

fn child(env: &Env, action: &str, id: &str, staging: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_process_helper", "--nocapture", "--test-threads=1"])
        .env("LOOPVOL_TEST_CHILD", action)
        .env("LOOPVOL_TEST_POOL", env.pool.root())
        .env("LOOPVOL_TEST_ID", id)
        .env("LOOPVOL_TEST_STAGING", staging);
    cmd
}

#[test]
fn processes_racing_stage_and_unstage_end_with_one_mount() {
    if !privileged("processes_racing_stage_and_unstage_end_with_one_mount") {
        return;
    }
    let env = Env::new();
    let id = env.create("raced", 64 * MIB, FsType::Ext4);
    let staging = env.dir("raced-staging");
    let children: Vec<_> = (0..2).map(|_| child(&env, "stage-unstage", &id, &staging).spawn().unwrap()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(mounts_at(&staging), 1, "exactly one staging mount");
    assert_eq!(loops_settle(&env.sandbox.path(), 1), 1, "exactly one loop device");
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn killed_process_leaves_a_catalog_that_reconciles() {
    if !privileged("killed_process_leaves_a_catalog_that_reconciles") {
        return;
    }
    use std::io::BufRead;
    for kill_after in 0..=3 {
        let env = Env::new();
        let id = env.create("crash", 128 * MIB, FsType::Ext4);
        let staging = env.dir("crash-staging");
        let target = staging.with_extension("target");
        let mut c = child(&env, "steps", &id, &staging).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(c.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("child announces its steps").unwrap();
            if line.ends_with(&format!("step {kill_after}")) {
                break;
            }
        }
        c.kill().unwrap();
        c.wait().unwrap();

        // A fresh open reconciles: the record then claims nothing the kernel
        // lacks. (The kernel may have a mount the record missed, when the
        // kill fell between mount and record write: the retry adopts it.)
        let pool = Pool::open(env.pool.root(), PoolOptions::default()).unwrap();
        pool.reconcile_all().unwrap();
        let vol = pool.node_state(&id).unwrap();
        assert!(vol.staged.is_none() || mounts_at(&staging) == 1, "after step {kill_after}");
        assert!(!vol.published.contains_key(&target) || mounts_at(&target) == 1, "after step {kill_after}");
        // Drive to the state kubelet wants, then tear down: nothing leaks.
        pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap();
        pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount, false)).unwrap();
        write_file(&target.join("f"), b"ok");
        pool.unpublish(&id, &target).unwrap();
        pool.unstage(&id, &staging, false).unwrap();
        pool.delete_volume(&id).unwrap();
        assert_eq!(loops_settle(&env.sandbox.path(), 0), 0, "after step {kill_after}");
    }
}

#[test]
fn node_reboot_forgets_mounts_and_stages_again() {
    if !privileged("node_reboot_forgets_mounts_and_stages_again") {
        return;
    }
    let env = Env::new();
    let id = env.create("reboot", 64 * MIB, FsType::Ext4);
    let staging = env.stage(&id, false);
    let target = env.publish(&id, &staging, "pod", false);
    write_file(&target.join("f"), b"survives");
    // "Reboot": mounts and loop devices vanish under the pool.
    loopvol_test_support::cleanup_under(&env.sandbox.path());
    assert_eq!(mounts_at(&staging), 0);
    assert!(env.pool.condition(&id).unwrap().abnormal, "a vanished staging is abnormal");
    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
    let staging = env.stage(&id, false);
    let target = env.publish(&id, &staging, "pod", false);
    assert_eq!(fs::read(target.join("f")).unwrap(), b"survives");
    assert!(!env.pool.condition(&id).unwrap().abnormal);
    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
}

#[test]
fn lost_records_are_adopted_from_the_kernel() {
    if !privileged("lost_records_are_adopted_from_the_kernel") {
        return;
    }
    let env = Env::new();
    let id = env.create("adopt", 64 * MIB, FsType::Ext4);
    let staging = env.stage(&id, false);
    let target = env.publish(&id, &staging, "pod", true);
    // Lose the node state, as a power loss caught mid-write would.
    fs::write(env.sandbox.path().join(format!("pool/volumes/{id}.state")), b"").unwrap();
    assert!(env.pool.node_state(&id).unwrap().staged.is_none(), "unreadable node state reads as empty");
    env.pool.stage(&id, &stage_req(&staging, AccessType::Mount, false)).unwrap();
    assert!(matches!(
        env.pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount, false)),
        Err(Error::IncompatibleAtPath { .. })
    ));
    env.pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount, true)).unwrap();
    assert_eq!(mounts_at(&staging), 1);
    assert_eq!(mounts_at(&target), 1);
    assert!(env.pool.node_state(&id).unwrap().published.contains_key(&target));
    env.pool.unpublish(&id, &target).unwrap();
    env.pool.unstage(&id, &staging, false).unwrap();
    assert_eq!(loops_settle(&env.sandbox.path(), 0), 0);
}

#[test]
fn reconcile_removes_temp_files_of_dead_writers_only() {
    let env = Env::new();
    let vols = env.sandbox.path().join("pool/volumes");
    let dead = [vols.join(".a.img.tmp"), vols.join(".vol.1.json.4242.tmp")];
    for p in &dead {
        fs::write(p, b"partial").unwrap();
    }
    // A writer at work holds its volume's lock; its temp file stays.
    let busy = vols.join(".busy.img.tmp");
    fs::write(&busy, b"in progress").unwrap();
    // (the pool's lock files: an flock on <pool>/locks/vol.<id>.lock)
    let lock_file = fs::File::create(env.sandbox.path().join("pool/locks/vol.busy.lock")).unwrap();
    let _writer = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    env.pool.reconcile_all().unwrap();
    for p in &dead {
        assert!(!p.exists(), "{} removed", p.display());
    }
    assert!(busy.exists(), "a live writer's temp file is kept");
}

/// After an unmount, udev and blkid open the loop device for a moment, and
/// the kernel releases an autoclear device only when they close it. A
/// DeleteVolume right after NodeUnstage (as csi-sanity and csi-bench send
/// them) waits for that instead of answering "in use" (seen in csi-bench's
/// publish storm).
#[test]
fn delete_right_after_unstage_waits_for_the_device_to_be_released() {
    if !privileged("delete_right_after_unstage_waits_for_the_device_to_be_released") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let id = loopvol_test_support::create_volume(&pool, "linger");
    let staging = sandbox.path().join("staging");
    loopvol_test_support::stage_volume(&pool, &id, &staging);
    let device = pool.node_state(&id).unwrap().staged.unwrap().device;
    // Held open as udev holds it after the umount event.
    let holder = fs::File::open(&device).unwrap();
    pool.unstage(&id, &staging, false).unwrap();
    assert!(loopvol_test_support::loop_devices().iter().any(|(d, _)| *d == device), "the device lingers");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(holder);
    });
    pool.delete_volume(&id).unwrap();
    release.join().unwrap();
    assert!(matches!(pool.volume(&id), Err(Error::VolumeNotFound(_))));
    assert!(!pool.volume_image_path(&id).exists());
}
