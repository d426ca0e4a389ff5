//! Fault tests of the backend on real loop devices, filesystems and mounts:
//! a full pool, a corrupted image, a node "reboot" under a running pool, and
//! races of many threads and processes on one volume and on many. Every test
//! runs in a `Sandbox` that unmounts and detaches whatever it left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, Error, FsType, Lifecycle, Pool, PoolOptions, PublishRequest, Source,
    StageRequest,
};
use loopvol_test_support::{
    cleanup_under, eventually, loop_devices, loops_under, mount_count, mounts_under, privileged, Rng, Sandbox,
};

const MIB: u64 = 1 << 20;

// ---- helpers ----

fn options() -> PoolOptions {
    // Racing threads queue on the volume lock; give them time rather than Busy.
    PoolOptions { lock_wait: Duration::from_secs(300), ..PoolOptions::default() }
}

fn create_req(name: &str, size: u64, access_type: AccessType, thick: bool) -> CreateVolume {
    CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: size, limit: 0 },
        fs_type: Some(FsType::Ext4),
        access_type,
        thick,
        source: None,
        parameters: BTreeMap::new(),
        lifecycle: Lifecycle::Persistent,
        direct_io: true,
    }
}

fn stage_req(staging: &Path, access_type: AccessType) -> StageRequest {
    StageRequest { staging_path: staging.into(), access_type, fs_type: None, read_only: false, mount_options: vec![] }
}

fn publish_req(staging: &Path, target: &Path, access_type: AccessType) -> PublishRequest {
    PublishRequest {
        pod_uid: None,
        staging_path: staging.into(),
        target_path: target.into(),
        access_type,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
        exclusive: false,
    }
}

fn mounts_at(path: &Path) -> usize {
    mount_count(path)
}

fn loops_backed_by(image: &Path) -> usize {
    loop_devices().iter().filter(|(_, backing)| backing == image).count()
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(u64::from(seed)) >> 24).to_le_bytes()[0])
        .collect()
}

/// Every file in the pool's volumes/ and snapshots/: no temp file, and every
/// image has its record and every record its image.
#[track_caller]
fn assert_no_partial_files(pool: &Pool) {
    for dir in ["volumes", "snapshots"] {
        let names: BTreeSet<String> = fs::read_dir(pool.root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for name in &names {
            assert!(!name.ends_with(".tmp") && !name.starts_with('.'), "partial file {dir}/{name} left: {names:?}");
            let (stem, other) = match name.rsplit_once('.') {
                Some((stem, "img")) => (stem, format!("{stem}.json")),
                Some((stem, "json")) => (stem, format!("{stem}.img")),
                Some((stem, "state")) => (stem, format!("{stem}.json")),
                _ => panic!("unexpected file {dir}/{name}"),
            };
            assert!(names.contains(&other), "{dir}/{name} without {other} (stem {stem})");
        }
    }
}

/// A small ext4 filesystem (an image in the sandbox, loop-mounted inside
/// it), for a pool that can really run out of space. `reserve` is mke2fs'
/// root-reserved percentage.
fn small_fs(sandbox: &Sandbox, size: u64, reserve: u32) -> PathBuf {
    let img = sandbox.path().join("poolfs.img");
    fs::File::create(&img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", &reserve.to_string()])
        .arg(&img)
        .output()
        .expect("run mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = sandbox.path().join("poolfs");
    fs::create_dir(&mnt).unwrap();
    // mount(8) -o loop attaches with autoclear: the unmount frees the device.
    let out = Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt).output().expect("run mount");
    assert!(out.status.success(), "mount -o loop: {}", String::from_utf8_lossy(&out.stderr));
    mnt
}

/// A staged, published ext4 volume with known data in it.
struct Live {
    id: String,
    staging: PathBuf,
    target: PathBuf,
    data: Vec<u8>,
}

fn live_volume(pool: &Pool, dir: &Path, name: &str, size: u64) -> Live {
    let id = pool.create_volume(&create_req(name, size, AccessType::Mount, false)).unwrap().id;
    let staging = dir.join(format!("staging-{name}"));
    let target = dir.join(format!("pod-{name}/mount"));
    fs::create_dir_all(&staging).unwrap();
    pool.stage(&id, &stage_req(&staging, AccessType::Mount)).unwrap();
    pool.publish(&id, &publish_req(&staging, &target, AccessType::Mount)).unwrap();
    let data = pattern(1 << 20, 7);
    write_file(&target.join("data"), &data);
    Live { id, staging, target, data }
}

/// The volume still works: its data reads back, a new write reads back, and
/// a full unpublish/unstage/stage/publish cycle keeps it.
#[track_caller]
fn assert_still_works(pool: &Pool, v: &Live) {
    assert_eq!(fs::read(v.target.join("data")).unwrap(), v.data, "data of {} reads back", v.id);
    let more = pattern(64 * 1024, 99);
    write_file(&v.target.join("more"), &more);
    pool.unpublish(&v.id, &v.target).unwrap();
    pool.unstage(&v.id, &v.staging, false).unwrap();
    pool.stage(&v.id, &stage_req(&v.staging, AccessType::Mount)).unwrap();
    pool.publish(&v.id, &publish_req(&v.staging, &v.target, AccessType::Mount)).unwrap();
    assert_eq!(fs::read(v.target.join("data")).unwrap(), v.data);
    assert_eq!(fs::read(v.target.join("more")).unwrap(), more);
    let stats = pool.stats(&v.id, &v.target).unwrap();
    assert!(!stats.condition.abnormal, "{:?}", stats.condition);
}

#[track_caller]
fn assert_exhausted<T: std::fmt::Debug>(what: &str, result: Result<T, Error>) {
    match result {
        Err(Error::Exhausted { .. }) => {}
        other => panic!("{what}: expected Exhausted, got {other:?}"),
    }
}

// ---- full pool ----

#[test]
fn full_pool_refuses_with_exhausted_and_keeps_existing_volumes_working() {
    if !privileged("full_pool_refuses_with_exhausted_and_keeps_existing_volumes_working") {
        return;
    }
    let sandbox = Sandbox::new();
    // No root reserve: the accounting alone must keep room for the catalog.
    let fs_root = small_fs(&sandbox, 256 * MIB, 0);
    let pool = Pool::open(&fs_root.join("pool"), options()).unwrap();
    let a = live_volume(&pool, &sandbox.path(), "a", 64 * MIB);

    // Spend all that is left on a thick volume.
    let cap = pool.capacity().unwrap();
    assert!(cap.max_volume_bytes > 100 * MIB, "{cap:?}");
    assert_exhausted(
        "a volume larger than the pool",
        pool.create_volume(&create_req("too-big", cap.max_volume_bytes + MIB, AccessType::Mount, false)),
    );
    let filler = pool
        .create_volume(&create_req("filler", cap.max_volume_bytes - MIB, AccessType::Block, true))
        .expect("a thick volume of all but 1 MiB");
    assert!(pool.capacity().unwrap().available_bytes < 2 * MIB);

    assert_exhausted("create", pool.create_volume(&create_req("b", 16 * MIB, AccessType::Mount, false)));
    assert_exhausted("thick create", pool.create_volume(&create_req("c", 16 * MIB, AccessType::Block, true)));
    assert_exhausted("snapshot", pool.create_snapshot("snap-a", &a.id));
    assert_exhausted("expand", pool.expand_volume(&a.id, 128 * MIB));
    assert_exhausted("node expand", pool.node_expand(&a.id, 128 * MIB));
    let clone =
        CreateVolume { source: Some(Source::Volume(a.id.clone())), ..create_req("clone", 0, AccessType::Mount, false) };
    assert_exhausted("clone", pool.create_volume(&clone));
    assert_no_partial_files(&pool);
    assert_eq!(pool.volume(&a.id).unwrap().capacity_bytes, 64 * MIB, "a failed expand changes nothing");
    assert_eq!(pool.volumes().unwrap().len(), 2);
    assert!(pool.snapshots().unwrap().is_empty());

    // The thin volume can still fill its whole reservation (no ENOSPC
    // inside the pod) and keeps working through a full node cycle.
    let big = pattern(40 << 20, 3);
    write_file(&a.target.join("big"), &big);
    assert_still_works(&pool, &a);
    assert_eq!(fs::read(a.target.join("big")).unwrap(), big);

    // Freeing the filler makes room again.
    pool.delete_volume(&filler.id).unwrap();
    pool.create_snapshot("snap-a", &a.id).unwrap();
    pool.expand_volume(&a.id, 96 * MIB).unwrap();
    assert_no_partial_files(&pool);

    pool.unpublish(&a.id, &a.target).unwrap();
    pool.unstage(&a.id, &a.staging, false).unwrap();
    assert!(eventually(|| loops_backed_by(&pool.volume_image_path(&a.id)) == 0));
}

/// Two pools share one filesystem, so neither's accounting sees the other's
/// reservations and the kernel's ENOSPC is what stops a thick create or
/// expand: it must still surface as Exhausted and leave nothing behind.
#[test]
fn enospc_from_the_kernel_is_exhausted_and_leaves_no_file() {
    if !privileged("enospc_from_the_kernel_is_exhausted_and_leaves_no_file") {
        return;
    }
    let sandbox = Sandbox::new();
    let fs_root = small_fs(&sandbox, 256 * MIB, 0);
    let first = Pool::open(&fs_root.join("first"), options()).unwrap();
    let second = Pool::open(&fs_root.join("second"), options()).unwrap();
    let small = second.create_volume(&create_req("small", 8 * MIB, AccessType::Block, true)).unwrap();
    let avail = first.capacity().unwrap().max_volume_bytes;
    // The first pool takes most of the space physically.
    first.create_volume(&create_req("hog", avail - 24 * MIB, AccessType::Block, true)).unwrap();
    // The second pool's accounting still sees ~24 MiB, the disk has less
    // than 100 MiB: fallocate fails.
    assert_exhausted("thick create", second.create_volume(&create_req("t", 100 * MIB, AccessType::Block, true)));
    assert_exhausted("thick expand", second.expand_volume(&small.id, 200 * MIB));
    assert_no_partial_files(&second);
    assert_eq!(second.volume(&small.id).unwrap().capacity_bytes, 8 * MIB);
    assert_eq!(second.volumes().unwrap().len(), 1);
}

// ---- corrupted image ----

#[test]
fn corrupted_superblock_is_a_clear_error_not_a_reformat_or_a_hang() {
    if !privileged("corrupted_superblock_is_a_clear_error_not_a_reformat_or_a_hang") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), options()).unwrap();
    let v = live_volume(&pool, &sandbox.path(), "corrupt", 64 * MIB);
    pool.unpublish(&v.id, &v.target).unwrap();
    pool.unstage(&v.id, &v.staging, false).unwrap();
    let image = pool.volume_image_path(&v.id);

    // Overwrite the primary ext4 superblock (bytes 1024..2048).
    {
        let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.write_all(&[0xa5; 1024]).unwrap();
        f.sync_all().unwrap();
    }
    let before = fs::read(&image).unwrap();

    // Stage in a thread: a hang would show as a test that never ends, so
    // bound the wait (a liveness check, not a timing assertion).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(pool.stage(&v.id, &stage_req(&v.staging, AccessType::Mount))).unwrap());
        let result = rx.recv_timeout(Duration::from_secs(300)).expect("stage of a corrupted image must not hang");
        match result {
            Err(
                e @ (Error::RefuseFormat { .. } | Error::FsckFailed { .. } | Error::Sys { .. } | Error::Tool { .. }),
            ) => {
                let text = e.to_string();
                assert!(!text.is_empty());
                eprintln!("stage of a corrupted image: {text}");
            }
            other => panic!("stage of a corrupted image must fail clearly, got {other:?}"),
        }
    });
    assert_eq!(mounts_at(&v.staging), 0, "nothing is mounted");
    assert!(eventually(|| loops_backed_by(&image) == 0), "no loop device is left behind");
    assert!(pool.node_state(&v.id).unwrap().staged.is_none());
    assert!(fs::read(&image).unwrap() == before, "the corrupted image is left as it was (never reformatted)");
    assert!(pool.condition(&v.id).is_ok());
}

#[test]
fn truncated_image_of_a_staged_volume_is_an_abnormal_condition() {
    if !privileged("truncated_image_of_a_staged_volume_is_an_abnormal_condition") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), options()).unwrap();
    let v = live_volume(&pool, &sandbox.path(), "short", 64 * MIB);
    assert!(!pool.stats(&v.id, &v.target).unwrap().condition.abnormal);
    let image = pool.volume_image_path(&v.id);
    fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(32 * MIB).unwrap();
    let stats = pool.stats(&v.id, &v.target).unwrap();
    assert!(stats.condition.abnormal, "a short image is abnormal: {:?}", stats.condition);
    assert!(pool.condition(&v.id).unwrap().abnormal);
    // Teardown still works.
    pool.unpublish(&v.id, &v.target).unwrap();
    pool.unstage(&v.id, &v.staging, false).unwrap();
    assert!(eventually(|| loops_backed_by(&image) == 0));
}

// ---- node reboot ----

#[test]
fn reboot_under_a_running_pool_converges() {
    if !privileged("reboot_under_a_running_pool_converges") {
        return;
    }
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let pool = Pool::open(&dir.join("pool"), options()).unwrap();
    let a = live_volume(&pool, &dir, "a", 64 * MIB);
    let b = live_volume(&pool, &dir, "b", 64 * MIB);
    pool.unpublish(&b.id, &b.target).unwrap(); // b: staged only
    let blk = pool.create_volume(&create_req("blk", 16 * MIB, AccessType::Block, false)).unwrap().id;
    let blk_staging = dir.join("staging-blk");
    let blk_target = dir.join("pod-blk/dev");
    fs::create_dir_all(&blk_staging).unwrap();
    pool.stage(&blk, &stage_req(&blk_staging, AccessType::Block)).unwrap();
    pool.publish(&blk, &publish_req(&blk_staging, &blk_target, AccessType::Block)).unwrap();
    assert_eq!(loops_under(&dir).len(), 3);

    // The "reboot": every mount and loop device vanishes; records stay.
    cleanup_under(&dir);
    assert!(eventually(|| loops_under(&dir).is_empty()));
    assert!(mounts_under(&dir).is_empty());

    // Reads converge on the kernel's view.
    assert!(matches!(pool.stats(&a.id, &a.target), Err(Error::NotAtPath { .. })));
    assert!(pool.condition(&a.id).unwrap().abnormal, "a recorded staging that vanished is abnormal");
    assert!(pool.users(&a.id).unwrap().is_empty());
    // Start-up reconcile forgets what the kernel no longer backs.
    pool.reconcile_all().unwrap();
    for id in [&a.id, &b.id, &blk] {
        let vol = pool.node_state(id).unwrap();
        assert!(vol.staged.is_none() && vol.published.is_empty(), "{id}: {vol:?}");
    }
    // Kubelet drives every volume back to where it was.
    for v in [&a, &b] {
        pool.stage(&v.id, &stage_req(&v.staging, AccessType::Mount)).unwrap();
        pool.publish(&v.id, &publish_req(&v.staging, &v.target, AccessType::Mount)).unwrap();
        assert_eq!(fs::read(v.target.join("data")).unwrap(), v.data);
        assert_eq!(mounts_at(&v.staging), 1);
        assert_eq!(mounts_at(&v.target), 1);
    }
    pool.stage(&blk, &stage_req(&blk_staging, AccessType::Block)).unwrap();
    pool.publish(&blk, &publish_req(&blk_staging, &blk_target, AccessType::Block)).unwrap();
    assert_eq!(mounts_at(&blk_target), 1);
    // Every other operation works too.
    pool.expand_volume(&a.id, 96 * MIB).unwrap();
    pool.create_snapshot("after-reboot", &a.id).unwrap();
    assert!(!pool.stats(&a.id, &a.target).unwrap().condition.abnormal);

    // A second reboot, this time torn down by kubelet without re-staging:
    // every teardown call is success and releases nothing twice.
    cleanup_under(&dir);
    for v in [&a, &b] {
        pool.unpublish(&v.id, &v.target).unwrap();
        pool.unstage(&v.id, &v.staging, false).unwrap();
    }
    pool.unpublish(&blk, &blk_target).unwrap();
    pool.unstage(&blk, &blk_staging, false).unwrap();
    for id in [&a.id, &b.id, &blk] {
        let vol = pool.node_state(id).unwrap();
        assert!(vol.staged.is_none() && vol.published.is_empty(), "{id}: {vol:?}");
        pool.delete_volume(id).unwrap();
    }
    assert!(eventually(|| loops_under(&dir).is_empty()));
}

// ---- races ----

const TARGETS: usize = 3;

/// Paths one volume is raced on: one staging path, a few targets.
fn race_paths(dir: &Path, id: &str) -> (PathBuf, Vec<PathBuf>) {
    let staging = dir.join("race").join(id).join("staging");
    let targets = (0..TARGETS).map(|t| dir.join("race").join(id).join(format!("pod{t}/mount"))).collect();
    (staging, targets)
}

/// What a racer saw succeed, to prove no update was lost.
#[derive(Default, Debug)]
struct Outcome {
    /// Sizes a successful expand asked for, per volume.
    expanded: BTreeMap<String, u64>,
    /// Snapshots whose create succeeded.
    snapshots: BTreeSet<String>,
    ops: usize,
}

/// One random operation on one of `ids`. Errors that the state at that
/// moment explains are fine; anything else fails the test.
fn random_op(pool: &Pool, dir: &Path, ids: &[String], rng: &mut Rng, tag: &str, out: &mut Outcome) {
    let id = &ids[rng.below(ids.len())];
    let (staging, targets) = race_paths(dir, id);
    let target = &targets[rng.below(TARGETS)];
    let op = rng.below(7);
    let result: Result<(), Error> = match op {
        0 => pool.stage(id, &stage_req(&staging, AccessType::Mount)).map(|_| ()),
        1 => match pool.publish(id, &publish_req(&staging, target, AccessType::Mount)) {
            Err(Error::NotStaged { .. }) => Ok(()),
            r => r,
        },
        2 => pool.unpublish(id, target),
        3 => match pool.unstage(id, &staging, false) {
            Err(Error::VolumeInUse { .. }) => Ok(()),
            r => r,
        },
        4 => {
            // Sizes grow monotonically with the PRNG draw; a racer may ask
            // for less than the current size, which is success and no change.
            let size = 64 * MIB + (1 + rng.below(32) as u64) * MIB;
            let r = pool.expand_volume(id, size).map(|_| ());
            if r.is_ok() {
                let e = out.expanded.entry(id.clone()).or_default();
                *e = (*e).max(size);
            }
            r
        }
        5 => {
            let name = format!("snap-{tag}-{}", out.ops);
            let r = pool.create_snapshot(&name, id).map(|_| ());
            if r.is_ok() {
                out.snapshots.insert(name);
            }
            r
        }
        _ => match pool.stats(id, &staging) {
            Ok(stats) => {
                // A stage or unstage can run while stats looks (stats takes no
                // lock), so a condition reading is not asserted here.
                let _ = stats;
                Ok(())
            }
            Err(Error::NotAtPath { .. }) => Ok(()),
            Err(e) => Err(e),
        },
    };
    out.ops += 1;
    if let Err(e) = result {
        panic!("racer {tag}: op {op} on {id} failed unexpectedly: {e:?}");
    }
}

/// After a race: at most one mount per path, one loop device per image, the
/// records agree with mountinfo, every successful update is in the catalog.
#[track_caller]
fn assert_consistent(pool: &Pool, dir: &Path, ids: &[String], outcome: &Outcome) {
    let count = |p: &Path| mount_count(p);
    for id in ids {
        let (staging, targets) = race_paths(dir, id);
        let vol = pool.node_state(id).unwrap();
        let image = pool.volume_image_path(id);
        assert!(count(&staging) <= 1, "{id}: double staging mount");
        assert_eq!(vol.staged.is_some(), count(&staging) == 1, "{id}: staging record vs kernel: {vol:?}");
        for t in &targets {
            assert!(count(t) <= 1, "{id}: double mount at {t:?}");
            assert_eq!(vol.published.contains_key(t), count(t) == 1, "{id}: publish record of {t:?} vs kernel");
            if count(t) == 1 {
                assert_eq!(count(&staging), 1, "{id}: published at {t:?} but not staged");
            }
        }
        if count(&staging) == 1 {
            assert_eq!(loops_backed_by(&image), 1, "{id}: one loop device while staged");
        } else {
            assert!(eventually(|| loops_backed_by(&image) == 0), "{id}: a loop device without a staging mount");
        }
        let want = outcome.expanded.get(id).copied().unwrap_or(64 * MIB).max(64 * MIB);
        let capacity = pool.volume(id).unwrap().capacity_bytes;
        assert_eq!(capacity, want, "{id}: the largest successful expand is recorded");
        assert_eq!(fs::metadata(&image).unwrap().len(), capacity, "{id}: image size = capacity");
    }
    let names: BTreeSet<String> = pool.snapshots().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, outcome.snapshots, "every successful snapshot is in the catalog, and only those");
    assert_no_partial_files(pool);
}

/// Unpublishes and unstages everything, then checks nothing is left.
fn tear_down(pool: &Pool, dir: &Path, ids: &[String]) {
    for id in ids {
        let (staging, targets) = race_paths(dir, id);
        for t in &targets {
            pool.unpublish(id, t).unwrap();
        }
        pool.unstage(id, &staging, false).unwrap();
    }
    assert!(eventually(|| loops_under(dir).is_empty()), "no loop device leaked");
    assert!(mounts_under(dir).is_empty(), "no mount leaked");
}

fn race_threads(volumes: usize, threads: usize, ops_per_thread: usize) {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let pool = Pool::open(&dir.join("pool"), options()).unwrap();
    let ids: Vec<String> = (0..volumes)
        .map(|i| pool.create_volume(&create_req(&format!("race-{i}"), 64 * MIB, AccessType::Mount, false)).unwrap().id)
        .collect();
    let total = Mutex::new(Outcome::default());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (pool, dir, ids, total) = (&pool, &dir, &ids, &total);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1000_0000_01b3));
                let mut out = Outcome::default();
                for _ in 0..ops_per_thread {
                    random_op(pool, dir, ids, &mut rng, &format!("t{t}"), &mut out);
                }
                let mut total = total.lock().unwrap();
                for (id, size) in out.expanded {
                    let e = total.expanded.entry(id).or_default();
                    *e = (*e).max(size);
                }
                total.snapshots.extend(out.snapshots);
                total.ops += out.ops;
            });
        }
    });
    let total = total.into_inner().unwrap();
    assert_eq!(total.ops, threads * ops_per_thread);
    assert_consistent(&pool, &dir, &ids, &total);
    tear_down(&pool, &dir, &ids);
}

#[test]
fn sixty_four_threads_race_mixed_operations_on_one_volume() {
    if !privileged("sixty_four_threads_race_mixed_operations_on_one_volume") {
        return;
    }
    race_threads(1, 64, 2);
}

#[test]
fn sixty_four_threads_race_mixed_operations_on_many_volumes() {
    if !privileged("sixty_four_threads_race_mixed_operations_on_many_volumes") {
        return;
    }
    race_threads(8, 64, 2);
}

/// Child side of the multi-process race (a no-op in a normal test run).
#[test]
fn fault_child_process_helper() {
    let Ok(seed) = std::env::var("LOOPVOL_FAULT_CHILD") else { return };
    let dir = PathBuf::from(std::env::var("LOOPVOL_FAULT_DIR").unwrap());
    let ids: Vec<String> = std::env::var("LOOPVOL_FAULT_IDS").unwrap().split(',').map(str::to_string).collect();
    let ops: usize = std::env::var("LOOPVOL_FAULT_OPS").unwrap().parse().unwrap();
    let pool = Pool::open(&dir.join("pool"), options()).unwrap();
    let seed: u64 = seed.parse().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1000_0000_01b3));
    let mut out = Outcome::default();
    for _ in 0..ops {
        random_op(&pool, &dir, &ids, &mut rng, &format!("p{seed}"), &mut out);
    }
    // The parent learns what succeeded from these lines.
    for (id, size) in &out.expanded {
        println!("EXPANDED {id} {size}");
    }
    for name in &out.snapshots {
        println!("SNAPSHOT {name}");
    }
}

fn race_processes(volumes: usize, processes: usize, ops_per_process: usize) {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let pool = Pool::open(&dir.join("pool"), options()).unwrap();
    let ids: Vec<String> = (0..volumes)
        .map(|i| pool.create_volume(&create_req(&format!("prace-{i}"), 64 * MIB, AccessType::Mount, false)).unwrap().id)
        .collect();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "fault_child_process_helper", "--nocapture", "--test-threads=1"])
                .env("LOOPVOL_FAULT_CHILD", (p + 1).to_string())
                .env("LOOPVOL_FAULT_DIR", &dir)
                .env("LOOPVOL_FAULT_IDS", ids.join(","))
                .env("LOOPVOL_FAULT_OPS", ops_per_process.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = Outcome::default();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        for line in stdout.lines() {
            // libtest prints "test <name> ... " without a newline first.
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "EXPANDED" || *w == "SNAPSHOT").unwrap_or(words.len());
            match &words[start..] {
                ["EXPANDED", id, size] => {
                    let e = total.expanded.entry(id.to_string()).or_default();
                    *e = (*e).max(size.parse().unwrap());
                }
                ["SNAPSHOT", name] => {
                    total.snapshots.insert(name.to_string());
                }
                _ => {}
            }
        }
        total.ops += ops_per_process;
    }
    assert_consistent(&pool, &dir, &ids, &total);
    tear_down(&pool, &dir, &ids);
}

#[test]
fn processes_race_mixed_operations_on_one_volume() {
    if !privileged("processes_race_mixed_operations_on_one_volume") {
        return;
    }
    race_processes(1, 8, 8);
}

#[test]
fn processes_race_mixed_operations_on_many_volumes() {
    if !privileged("processes_race_mixed_operations_on_many_volumes") {
        return;
    }
    race_processes(4, 8, 8);
}

// ---- a crash while a snapshot holds the source frozen ----

/// Child side: takes a snapshot of a mounted volume with the failpoint set
/// between the copy and the rename, i.e. while the source is frozen.
#[test]
fn freeze_crash_child_helper() {
    let Ok(id) = std::env::var("LOOPVOL_FREEZE_CHILD") else { return };
    let pool = Pool::open(Path::new(&std::env::var("LOOPVOL_FAULT_POOL").unwrap()), options()).unwrap();
    let _ = pool.create_snapshot("frozen-crash", &id);
    panic!("the failpoint should have aborted the process");
}

#[test]
fn crash_while_frozen_for_a_snapshot_does_not_leave_the_volume_frozen() {
    if !privileged("crash_while_frozen_for_a_snapshot_does_not_leave_the_volume_frozen") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), options()).unwrap();
    let v = live_volume(&pool, &sandbox.path(), "frozen", 64 * MIB);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "freeze_crash_child_helper", "--nocapture", "--test-threads=1"])
        .env("LOOPVOL_FREEZE_CHILD", &v.id)
        .env("LOOPVOL_FAULT_POOL", pool.root())
        .env(loopvol_backend::failpoint::ENV, "snapshot.before-rename")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGABRT), "the child died at the failpoint: {status:?}");

    // What the CSI server does when it comes back.
    pool.reconcile_all().unwrap();
    assert_no_partial_files(&pool);

    // A write must go through (a frozen filesystem blocks it). Bounded wait:
    // a liveness check, not a timing assertion.
    let (tx, rx) = std::sync::mpsc::channel();
    let file = v.target.join("after-crash");
    let writer = std::thread::spawn(move || {
        write_file(&file, b"still writable");
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        // Thaw so that the writer and the sandbox clean-up can finish.
        let _ = Command::new("fsfreeze").arg("--unfreeze").arg(&v.staging).status();
        let _ = writer.join();
        panic!("the volume stayed frozen after a crash during a snapshot");
    }
    writer.join().unwrap();
    assert_eq!(fs::read(v.target.join("after-crash")).unwrap(), b"still writable");
    // The retried snapshot succeeds and the volume still works.
    pool.create_snapshot("frozen-crash", &v.id).unwrap();
    assert_no_partial_files(&pool);
    assert_still_works(&pool, &v);
    pool.unpublish(&v.id, &v.target).unwrap();
    pool.unstage(&v.id, &v.staging, false).unwrap();
}
