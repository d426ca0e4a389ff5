//! Direct I/O on the volumes' loop devices: on by default, buffered where the
//! pool's filesystem refuses O_DIRECT at the volume's block size, and never
//! at the price of changing a filesystem's sector size.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, FsType, Lifecycle, Pool, PoolOptions, StageRequest, Volume,
};
use loopvol_test_support::{loops_settle, mounts_under, privileged, Sandbox};

const MIB: u64 = 1 << 20;

fn create(pool: &Pool, name: &str, fs: FsType, size: u64, direct_io: bool) -> Volume {
    pool.create_volume(&CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: size, limit: 0 },
        fs_type: Some(fs),
        access_type: AccessType::Mount,
        thick: false,
        source: None,
        parameters: Default::default(),
        lifecycle: Lifecycle::Persistent,
        direct_io,
    })
    .unwrap()
}

fn stage(pool: &Pool, id: &str, staging: &Path) -> loopvol_backend::StageRecord {
    let req = StageRequest {
        staging_path: staging.into(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    };
    pool.stage(id, &req).unwrap()
}

/// `/sys/block/loopN/<file>` of a device path.
fn sys(device: &Path, file: &str) -> String {
    let name = device.file_name().unwrap().to_string_lossy().into_owned();
    fs::read_to_string(format!("/sys/block/{name}/{file}")).unwrap().trim().to_string()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn volumes_attach_with_direct_io_unless_asked_not_to() {
    if !privileged("volumes_attach_with_direct_io_unless_asked_not_to") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let direct = create(&pool, "direct", FsType::Ext4, 64 * MIB, true);
    let staged = stage(&pool, &direct.id, &sandbox.path().join("direct"));
    assert_eq!(sys(&staged.device, "loop/dio"), "1", "a default volume does direct I/O");
    assert!(staged.direct_io && pool.node_state(&direct.id).unwrap().staged.unwrap().direct_io);
    assert_eq!(sys(&staged.device, "queue/logical_block_size"), direct.device_block_size().to_string());

    let buffered = create(&pool, "buffered", FsType::Ext4, 64 * MIB, false);
    let staged = stage(&pool, &buffered.id, &sandbox.path().join("buffered"));
    assert_eq!(sys(&staged.device, "loop/dio"), "0", "directIO=false is buffered");
    assert!(!staged.direct_io);

    // Data written and fsync'd in direct mode is in the image after unstage.
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i * 7 % 251).to_le_bytes()[0]).collect();
    let file = sandbox.path().join("direct/data");
    let mut f = fs::File::create(&file).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let image = pool.volume_image_path(&direct.id);
    let allocated = fs::metadata(&image).unwrap().blocks() * 512;
    assert!(allocated >= 4 * MIB, "the data reached the image: {allocated} bytes allocated");
    pool.unstage(&direct.id, &sandbox.path().join("direct"), false).unwrap();
    pool.unstage(&buffered.id, &sandbox.path().join("buffered"), false).unwrap();
    stage(&pool, &direct.id, &sandbox.path().join("again"));
    assert_eq!(fs::read(sandbox.path().join("again/data")).unwrap(), data);
    pool.unstage(&direct.id, &sandbox.path().join("again"), false).unwrap();
    assert_eq!(loops_settle(&sandbox.path(), 0), 0);
}

/// ramfs refuses O_DIRECT (the kernel here takes it on tmpfs since Linux
/// 6.6): the device is buffered, the volume works, and the state says so.
/// (ramfs reports no size, so it holds only the pool's images here; the
/// pool's capacity comes from its root.)
#[test]
fn a_pool_that_refuses_direct_io_gets_buffered_devices() {
    if !privileged("a_pool_that_refuses_direct_io_gets_buffered_devices") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let volumes = pool.root().join("volumes");
    nix::mount::mount(Some("ramfs"), &volumes, Some("ramfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let vol = create(&pool, "on-ramfs", FsType::Ext4, 32 * MIB, true);
    let staging = sandbox.path().join("staging");
    let staged = stage(&pool, &vol.id, &staging);
    assert_eq!(sys(&staged.device, "loop/dio"), "0");
    assert!(!staged.direct_io, "reported as buffered");
    fs::write(staging.join("f"), b"works").unwrap();
    assert_eq!(fs::read(staging.join("f")).unwrap(), b"works");
    pool.unstage(&vol.id, &staging, false).unwrap();
    pool.delete_volume(&vol.id).unwrap();
    assert!(mounts_under(&staging).is_empty());
}

/// On a pool whose disk has 4 KiB sectors, O_DIRECT needs 4 KiB alignment.
/// A new volume gets 4 KiB blocks and direct I/O. An xfs volume formatted
/// with 512-byte sectors before this change (its record has no block size)
/// keeps a 512-byte device, buffered, and still mounts: the kernel would
/// otherwise raise the device to 4 KiB under the filesystem.
#[test]
fn an_old_512_byte_sector_xfs_volume_still_stages_on_a_4k_pool() {
    if !privileged("an_old_512_byte_sector_xfs_volume_still_stages_on_a_4k_pool") {
        return;
    }
    let sandbox = Sandbox::new();
    let disk = sandbox.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(1536 * MIB).unwrap();
    let dev = run("losetup", &["-b", "4096", "-f", "--show", disk.to_str().unwrap()]);
    run("mkfs.ext4", &["-q", &dev]);
    let mnt = sandbox.path().join("pool4k");
    fs::create_dir(&mnt).unwrap();
    run("mount", &[&dev, mnt.to_str().unwrap()]);
    let pool = Pool::open(&mnt.join("pool"), PoolOptions::default()).unwrap();

    let new = create(&pool, "new", FsType::Xfs, 320 * MIB, true);
    assert_eq!(new.block_size, Some(4096), "a new volume takes the pool's O_DIRECT alignment");
    let staged = stage(&pool, &new.id, &sandbox.path().join("new"));
    assert_eq!(sys(&staged.device, "loop/dio"), "1");
    assert_eq!(sys(&staged.device, "queue/logical_block_size"), "4096");
    pool.unstage(&new.id, &sandbox.path().join("new"), false).unwrap();

    // An old volume: formatted on a 512-byte buffered device, no block size recorded.
    let old = create(&pool, "old", FsType::Xfs, 320 * MIB, true);
    let image = pool.volume_image_path(&old.id);
    let loop512 = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
    run("mkfs.xfs", &["-q", "-f", &loop512]);
    run("losetup", &["-d", &loop512]);
    let record = mnt.join(format!("pool/volumes/{}.json", old.id));
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("block_size");
    json["formatted"] = true.into();
    fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();

    let staged = stage(&pool, &old.id, &sandbox.path().join("old"));
    assert_eq!(sys(&staged.device, "queue/logical_block_size"), "512", "the sector size is kept");
    assert_eq!(sys(&staged.device, "loop/dio"), "0", "so the device is buffered");
    assert!(!staged.direct_io);
    fs::write(sandbox.path().join("old/f"), b"mounted").unwrap();
    pool.unstage(&old.id, &sandbox.path().join("old"), false).unwrap();

    run("umount", &[mnt.to_str().unwrap()]);
    run("losetup", &["-d", &dev]);
    let left: Vec<PathBuf> = mounts_under(&sandbox.path());
    assert!(left.is_empty(), "{left:?}");
}
