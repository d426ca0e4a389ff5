//! Privileged tests of the kernel layer on real loop devices,
//! filesystems and mounts. Each test works in its own [`Lab`] (a temp dir)
//! whose drop unmounts every mount under it and detaches every loop device
//! backed by a file under it, also when the test fails. The lab's cleanup
//! does not use the code under test (umount2 with MNT_DETACH, `losetup -d`),
//! so a broken `mount::unmount` or `loopdev::detach` cannot leak.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::copy::{copy_image, CopyMethod};
use super::fstools as fs;
use super::loopdev::{self, AttachOptions, Attached};
use super::mount_options::MountOptions;
use super::{mount, mountinfo};
use crate::error::Error;
use crate::filesystem::FsType;
use nix::errno::Errno;

const MIB: u64 = 1 << 20;
const HELLO_LEN: usize = 4 << 20;

// ---------------------------------------------------------------- the lab

struct Lab {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new().prefix("loopvol-kernel-").tempdir().expect("temp dir");
        // mountinfo and sysfs report canonical paths.
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        Lab { dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A sparse image file of `size` bytes.
    fn image(&self, name: &str, size: u64) -> PathBuf {
        let path = self.path(name);
        sparse_file(&path, size);
        path
    }

    fn dir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// Image + rw loop device (no autoclear: detached by the lab at the latest).
    fn device(&self, name: &str, size: u64) -> (PathBuf, Attached) {
        let image = self.image(name, size);
        let attached = loopdev::attach(&image, AttachOptions::default()).expect("attach");
        (image, attached)
    }

    /// Image + loop device + fresh filesystem mounted at `name.mnt`.
    fn mounted(&self, name: &str, size: u64, fs_type: FsType) -> (PathBuf, Attached, PathBuf) {
        let (image, attached) = self.device(name, size);
        fs::format(&attached.device.path, fs_type, false).expect("mkfs");
        let mnt = self.dir(&format!("{name}.mnt"));
        mount::mount_fs(&attached.device.path, &mnt, fs_type, &MountOptions::default(), false).expect("mount");
        (image, attached, mnt)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Mounts under the lab, innermost (latest) first; lazy so nothing can block us.
        for _ in 0..10 {
            let entries = mountinfo::read().unwrap_or_default();
            let ours: Vec<_> = entries.iter().filter(|e| e.mount_point.starts_with(&self.root)).collect();
            if ours.is_empty() {
                break;
            }
            for entry in ours.iter().rev() {
                let _ = nix::mount::umount2(&entry.mount_point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Loop devices backed by files under the lab (also deleted ones).
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
                if Path::new(backing.trim()).starts_with(&self.root) {
                    let _ = std::process::Command::new("losetup")
                        .arg("-d")
                        .arg(format!("/dev/{name}"))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        let _ = &self.dir; // removed by TempDir's own drop after this
    }
}

fn sparse_file(path: &Path, size: u64) {
    let f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

fn grow_file(path: &Path, size: u64) {
    File::options().write(true).open(path).expect("open image").set_len(size).expect("grow image");
}

/// Waits (bounded) for an autoclear device to finish its rundown; the kernel
/// does that asynchronously after the last close. Not a timing assertion: it
/// only bounds how long we are willing to wait for something that must happen.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn mounts_at(path: &Path) -> Vec<mountinfo::MountEntry> {
    let entries = mountinfo::read().unwrap();
    mountinfo::at(&entries, path).into_iter().cloned().collect()
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

fn sys_errno(result: Result<impl std::fmt::Debug, Error>) -> Errno {
    match result {
        Err(Error::Sys { errno, .. }) => errno,
        other => panic!("expected Error::Sys, got {other:?}"),
    }
}

macro_rules! privileged {
    ($name:expr) => {
        if !loopvol_test_support::privileged($name) {
            return;
        }
    };
}

// ---------------------------------------------------------------- loop devices

#[test]
fn loop_attach_is_idempotent_and_matched_by_inode() {
    privileged!("loop_attach_is_idempotent_and_matched_by_inode");
    let lab = Lab::new();
    let image = lab.image("a.img", 64 * MIB);
    let first = loopdev::attach(&image, AttachOptions::default()).unwrap();
    assert!(first.created);
    assert_eq!(first.device.path, PathBuf::from(format!("/dev/loop{}", first.device.number)));
    assert_eq!(loopdev::size_bytes(&first.device.path).unwrap(), 64 * MIB);
    assert_eq!(loopdev::find(&image).unwrap().as_ref(), Some(&first.device));

    // list() reports st_dev/st_ino as std's metadata does, and the path.
    let meta = std::fs::metadata(&image).unwrap();
    let listed = loopdev::list().unwrap();
    let id = (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    assert!(
        listed.iter().any(|e| e.device == first.device && e.backing == id && e.backing_path == image),
        "{listed:?}"
    );
    assert_eq!(loopdev::file_id(&image), Some(id));

    // A second attach reuses the device.
    let second = loopdev::attach(&image, AttachOptions::default()).unwrap();
    assert!(!second.created);
    assert_eq!(second.device, first.device);

    // Matching is by inode, not path: a renamed image is still found, and a
    // new file at the old path is not.
    let renamed = lab.path("renamed.img");
    std::fs::rename(&image, &renamed).unwrap();
    sparse_file(&image, 64 * MIB);
    assert_eq!(loopdev::find(&renamed).unwrap(), Some(first.device.clone()));
    assert_eq!(loopdev::find(&image).unwrap(), None);

    drop((first.handle, second.handle));
    loopdev::detach(&second.device).unwrap();
    assert!(eventually(|| loopdev::find(&renamed).unwrap().is_none()));
    // Detaching a free device is success.
    loopdev::detach(&second.device).unwrap();
}

#[test]
fn loop_autoclear_device_goes_with_its_last_user() {
    privileged!("loop_autoclear_device_goes_with_its_last_user");
    let lab = Lab::new();
    let image = lab.image("a.img", 64 * MIB);
    let opts = AttachOptions { autoclear: true, read_only: false, ..Default::default() };

    // Only our handle holds it: dropping the handle detaches it.
    let attached = loopdev::attach(&image, opts).unwrap();
    let device = attached.device.clone();
    assert!(std::fs::read_to_string(format!("/sys/block/loop{}/loop/autoclear", device.number)).unwrap().trim() == "1");
    drop(attached);
    assert!(eventually(|| loopdev::find(&image).unwrap().is_none()), "autoclear device {device:?} stayed bound");

    // A mount holds it past the handle; unmounting releases it.
    let attached = loopdev::attach(&image, opts).unwrap();
    fs::format(&attached.device.path, FsType::Ext4, false).unwrap();
    let mnt = lab.dir("mnt");
    mount::mount_fs(&attached.device.path, &mnt, FsType::Ext4, &MountOptions::default(), false).unwrap();
    let device = attached.device.clone();
    drop(attached);
    assert_eq!(loopdev::find(&image).unwrap(), Some(device.clone()));
    assert!(mount::unmount(&mnt).unwrap());
    assert!(eventually(|| loopdev::find(&image).unwrap().is_none()), "autoclear device {device:?} stayed bound");
}

#[test]
fn loop_read_only_device() {
    privileged!("loop_read_only_device");
    let lab = Lab::new();
    let image = lab.image("ro.img", 64 * MIB);
    let ro =
        loopdev::attach(&image, AttachOptions { autoclear: false, read_only: true, ..Default::default() }).unwrap();
    let sys_ro = std::fs::read_to_string(format!("/sys/block/loop{}/ro", ro.device.number)).unwrap();
    assert_eq!(sys_ro.trim(), "1");
    // The open succeeds (block devices check writes, not opens); the write fails.
    let written = File::options().write(true).open(&ro.device.path).and_then(|f| f.write_all_at(b"x", 0));
    assert_eq!(errno_of(&written.unwrap_err()), Errno::EPERM);
    // Reusing it read-only is fine; read-write is refused.
    let again =
        loopdev::attach(&image, AttachOptions { autoclear: false, read_only: true, ..Default::default() }).unwrap();
    assert_eq!(again.device, ro.device);
    assert_eq!(sys_errno(loopdev::attach(&image, AttachOptions::default())), Errno::EROFS);
    loopdev::detach(&ro.device).unwrap();
}

#[test]
fn loop_refresh_capacity_after_growing_the_image() {
    privileged!("loop_refresh_capacity_after_growing_the_image");
    let lab = Lab::new();
    let (image, attached) = lab.device("grow.img", 64 * MIB);
    grow_file(&image, 96 * MIB);
    assert_eq!(loopdev::size_bytes(&attached.device.path).unwrap(), 64 * MIB);
    loopdev::refresh_capacity(&attached.device).unwrap();
    assert_eq!(loopdev::size_bytes(&attached.device.path).unwrap(), 96 * MIB);
    loopdev::detach(&attached.device).unwrap();
}

#[test]
fn loop_parallel_attaches_get_distinct_verified_devices() {
    privileged!("loop_parallel_attaches_get_distinct_verified_devices");
    let lab = Lab::new();
    let images: Vec<PathBuf> = (0..8).map(|i| lab.image(&format!("p{i}.img"), 8 * MIB)).collect();
    let attached: Vec<Attached> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|img| {
                s.spawn(move || {
                    loopdev::attach(img, AttachOptions { autoclear: true, read_only: false, ..Default::default() })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let mut numbers: Vec<u32> = attached.iter().map(|a| a.device.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), images.len(), "two images share a device");
    for (img, a) in images.iter().zip(&attached) {
        assert!(a.created);
        assert_eq!(loopdev::find(img).unwrap(), Some(a.device.clone()));
    }
}

#[test]
fn loop_attach_rejects_missing_and_non_regular_images() {
    privileged!("loop_attach_rejects_missing_and_non_regular_images");
    let lab = Lab::new();
    assert!(matches!(loopdev::attach(&lab.path("missing.img"), AttachOptions::default()), Err(Error::Io { .. })));
    let dir = lab.dir("d");
    assert!(matches!(loopdev::attach(&dir, AttachOptions::default()), Err(Error::InvalidPath { .. })));
    assert_eq!(sys_errno(loopdev::size_bytes(&lab.image("f", 4096))), Errno::ENOTTY);
}

// ---------------------------------------------------------------- filesystems

fn format_probe_mount_check(fs_type: FsType) {
    let lab = Lab::new();
    let size = fs_type.min_size().max(64 * MIB);
    let (_image, attached) = lab.device("fs.img", size);
    let dev = &attached.device.path;
    assert_eq!(fs::probe(dev).unwrap(), None, "a fresh image is blank");

    let t = Instant::now();
    fs::format(dev, fs_type, false).unwrap();
    eprintln!("mkfs.{fs_type} of {} MiB: {:?}", size / MIB, t.elapsed());
    assert_eq!(fs::probe(dev).unwrap().as_deref(), Some(fs_type.as_str()));
    fs::check(dev, fs_type).unwrap();

    let mnt = lab.dir("mnt");
    let opts = MountOptions::parse(&["noatime", "noexec"], Some(fs_type)).unwrap();
    let t = Instant::now();
    mount::mount_fs(dev, &mnt, fs_type, &opts, false).unwrap();
    eprintln!("mount {fs_type}: {:?}", t.elapsed());
    let here = mounts_at(&mnt);
    assert_eq!(here.len(), 1);
    assert_eq!(here[0].fs_type, fs_type.as_str());
    for flag in ["rw", "noatime", "noexec", "nosuid", "nodev"] {
        assert!(here[0].mount_options.iter().any(|o| o == flag), "{flag} missing: {:?}", here[0].mount_options);
    }
    if fs_type == FsType::Xfs {
        assert!(here[0].super_options.iter().any(|o| o == "nouuid"), "{:?}", here[0].super_options);
    }
    std::fs::write(mnt.join("hello"), vec![7u8; HELLO_LEN]).unwrap();
    let usage = fs::usage(&mnt).unwrap();
    assert!(usage.bytes_total > 0 && usage.bytes_total <= size, "{usage:?}");
    assert!(usage.bytes_used >= 4 * MIB, "{usage:?}");
    assert!(usage.bytes_available < usage.bytes_total, "{usage:?}");
    if fs_type != FsType::Btrfs {
        assert!(usage.inodes_total > 0 && usage.inodes_used >= 1, "{usage:?}");
        assert_eq!(usage.inodes_used + usage.inodes_free, usage.inodes_total);
    }
    let t = Instant::now();
    assert!(mount::unmount(&mnt).unwrap());
    eprintln!("unmount {fs_type}: {:?}", t.elapsed());
    assert!(!mount::unmount(&mnt).unwrap(), "second unmount found something");
    assert!(mounts_at(&mnt).is_empty());

    fs::check(dev, fs_type).unwrap();
    // Read-only mount of the same filesystem keeps the data.
    mount::mount_fs(dev, &mnt, fs_type, &MountOptions::default(), true).unwrap();
    assert!(mounts_at(&mnt)[0].read_only());
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap().len(), HELLO_LEN);
    assert_eq!(errno_of(&std::fs::write(mnt.join("new"), b"x").unwrap_err()), Errno::EROFS);
    mount::cleanup(&mnt).unwrap();
    assert!(!mnt.exists());
}

#[test]
fn fs_ext4_format_probe_mount_check() {
    privileged!("fs_ext4_format_probe_mount_check");
    format_probe_mount_check(FsType::Ext4);
}

#[test]
fn fs_xfs_format_probe_mount_check() {
    privileged!("fs_xfs_format_probe_mount_check");
    format_probe_mount_check(FsType::Xfs);
}

#[test]
fn fs_btrfs_format_probe_mount_check() {
    privileged!("fs_btrfs_format_probe_mount_check");
    format_probe_mount_check(FsType::Btrfs);
}

#[test]
fn fs_ext4_data_options_reach_the_filesystem() {
    privileged!("fs_ext4_data_options_reach_the_filesystem");
    let lab = Lab::new();
    let (_image, attached) = lab.device("e.img", 64 * MIB);
    fs::format(&attached.device.path, FsType::Ext4, true).unwrap();
    let mnt = lab.dir("mnt");
    let opts = MountOptions::parse(&["data=journal", "commit=7", "errors=remount-ro"], Some(FsType::Ext4)).unwrap();
    mount::mount_fs(&attached.device.path, &mnt, FsType::Ext4, &opts, false).unwrap();
    let here = mounts_at(&mnt);
    for opt in ["data=journal", "commit=7", "errors=remount-ro"] {
        assert!(here[0].super_options.iter().any(|o| o == opt), "{opt} missing: {:?}", here[0].super_options);
    }
    // A data option the filesystem rejects surfaces as the mount's errno.
    let bad = MountOptions { data: "no_such_option".into(), ..MountOptions::default() };
    let mnt2 = lab.dir("mnt2");
    assert_eq!(sys_errno(mount::mount_fs(&attached.device.path, &mnt2, FsType::Ext4, &bad, false)), Errno::EINVAL);
    assert!(mounts_at(&mnt2).is_empty());
}

#[test]
fn fs_probe_bypasses_the_blkid_cache() {
    privileged!("fs_probe_bypasses_the_blkid_cache");
    let lab = Lab::new();
    let (_a, attached) = lab.device("a.img", 32 * MIB);
    fs::format(&attached.device.path, FsType::Ext4, false).unwrap();
    // Fill blkid's cache for this device name.
    let _ = std::process::Command::new("blkid").arg(&attached.device.path).output();
    let number = attached.device.number;
    drop(attached.handle);
    loopdev::detach(&attached.device).unwrap();
    // Attach a blank image; it may or may not get the same number.
    let (_b, blank) = lab.device("b.img", 32 * MIB);
    eprintln!("reused device number: {}", blank.device.number == number);
    assert_eq!(fs::probe(&blank.device.path).unwrap(), None);
}

#[test]
fn fs_check_reports_a_broken_ext4() {
    privileged!("fs_check_reports_a_broken_ext4");
    let lab = Lab::new();
    let (image, attached) = lab.device("bad.img", 32 * MIB);
    fs::format(&attached.device.path, FsType::Ext4, false).unwrap();
    drop(attached.handle);
    loopdev::detach(&attached.device).unwrap();
    assert!(eventually(|| loopdev::find(&image).unwrap().is_none()));
    // Zero the primary superblock (bytes 1024..2048).
    File::options().write(true).open(&image).unwrap().write_all_at(&[0u8; 1024], 1024).unwrap();
    let again = loopdev::attach(&image, AttachOptions::default()).unwrap();
    match fs::check(&again.device.path, FsType::Ext4) {
        Err(Error::FsckFailed { device, detail }) => {
            assert_eq!(device, again.device.path);
            assert!(detail.contains("e2fsck"), "{detail}");
        }
        other => panic!("expected FsckFailed, got {other:?}"),
    }
}

#[test]
fn fs_ext4_size_and_offline_grow() {
    privileged!("fs_ext4_size_and_offline_grow");
    let lab = Lab::new();
    let (image, attached) = lab.device("e.img", 64 * MIB);
    let dev = attached.device.path.clone();
    fs::format(&dev, FsType::Ext4, false).unwrap();
    assert_eq!(fs::fs_size(&dev, FsType::Ext4).unwrap(), Some(64 * MIB));
    assert_eq!(fs::fs_size(&dev, FsType::Xfs).unwrap(), None);
    grow_file(&image, 100 * MIB);
    loopdev::refresh_capacity(&attached.device).unwrap();
    fs::grow_offline(&dev, FsType::Ext4).unwrap();
    assert_eq!(fs::fs_size(&dev, FsType::Ext4).unwrap(), Some(100 * MIB));
    // Idempotent.
    fs::grow_offline(&dev, FsType::Ext4).unwrap();
    assert_eq!(fs::fs_size(&dev, FsType::Ext4).unwrap(), Some(100 * MIB));
}

fn grow_mounted(fs_type: FsType) -> Result<(), Error> {
    let lab = Lab::new();
    let size = fs_type.min_size().max(64 * MIB);
    let (image, attached, mnt) = lab.mounted("g.img", size, fs_type);
    let before = fs::usage(&mnt).unwrap().bytes_total;
    grow_file(&image, 2 * size);
    loopdev::refresh_capacity(&attached.device).unwrap();
    assert_eq!(loopdev::size_bytes(&attached.device.path).unwrap(), 2 * size);
    let t = Instant::now();
    let grown = fs::grow_online(&attached.device.path, &mnt, fs_type);
    eprintln!("online grow of {fs_type}: {:?} -> {grown:?}", t.elapsed());
    match grown {
        Ok(()) => {
            let after = fs::usage(&mnt).unwrap().bytes_total;
            assert!(after > before + size / 2, "{fs_type}: {before} -> {after}");
            // Idempotent.
            fs::grow_online(&attached.device.path, &mnt, fs_type).unwrap();
            Ok(())
        }
        Err(e) => {
            // Where the kernel refuses, the next stage grows it offline.
            assert!(mount::unmount(&mnt).unwrap());
            fs::grow_offline(&attached.device.path, fs_type).unwrap();
            assert_eq!(fs::fs_size(&attached.device.path, fs_type).unwrap(), Some(2 * size));
            mount::mount_fs(&attached.device.path, &mnt, fs_type, &MountOptions::default(), false).unwrap();
            let after = fs::usage(&mnt).unwrap().bytes_total;
            assert!(after > before + size / 2, "{fs_type}: {before} -> {after}");
            Err(e)
        }
    }
}

#[test]
fn fs_ext4_online_grow_or_clear_refusal() {
    privileged!("fs_ext4_online_grow_or_clear_refusal");
    match grow_mounted(FsType::Ext4) {
        Ok(()) => eprintln!("this kernel grows ext4 online"),
        Err(Error::OnlineGrowRefused { fs_type, errno, mount_point }) => {
            assert_eq!(fs_type, "ext4");
            assert!(mount_point.ends_with("g.img.mnt"));
            eprintln!("this kernel refuses ext4 online grow: {errno}");
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn fs_xfs_grows_online() {
    privileged!("fs_xfs_grows_online");
    grow_mounted(FsType::Xfs).unwrap();
}

#[test]
fn fs_btrfs_grows_online() {
    privileged!("fs_btrfs_grows_online");
    grow_mounted(FsType::Btrfs).unwrap();
}

#[test]
fn fs_freeze_and_thaw() {
    privileged!("fs_freeze_and_thaw");
    let lab = Lab::new();
    for fs_type in [FsType::Ext4, FsType::Btrfs] {
        let (_image, _attached, mnt) =
            lab.mounted(&format!("{fs_type}.img"), fs_type.min_size().max(64 * MIB), fs_type);
        std::fs::write(mnt.join("before"), b"data").unwrap();
        let frozen = fs::freeze(&mnt).unwrap();
        assert_eq!(frozen.mount_point(), mnt);
        // Frozen: a second freeze is refused.
        assert_eq!(sys_errno(fs::freeze(&mnt)), Errno::EBUSY);
        frozen.thaw().unwrap();
        // Thawed: freezing works again, and the guard thaws on drop.
        drop(fs::freeze(&mnt).unwrap());
        std::fs::write(mnt.join("after"), b"data").unwrap();
        assert_eq!(std::fs::read(mnt.join("after")).unwrap(), b"data");
    }
}

// ---------------------------------------------------------------- mounts

#[test]
fn mount_bind_dir_rw_and_read_only() {
    privileged!("mount_bind_dir_rw_and_read_only");
    let lab = Lab::new();
    let (_image, _attached, staged) = lab.mounted("v.img", 32 * MIB, FsType::Ext4);
    std::fs::write(staged.join("f"), b"hello").unwrap();

    let rw = lab.dir("rw");
    mount::bind(&staged, &rw, false, &MountOptions::default()).unwrap();
    std::fs::write(rw.join("g"), b"via rw").unwrap();
    assert_eq!(std::fs::read(staged.join("g")).unwrap(), b"via rw");
    let opts = &mounts_at(&rw)[0].mount_options;
    assert!(opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"), "{opts:?}");

    let ro = lab.dir("ro");
    let noexec = MountOptions::parse(&["noexec", "noatime"], None).unwrap();
    mount::bind(&staged, &ro, true, &noexec).unwrap();
    let here = mounts_at(&ro);
    assert!(here[0].read_only(), "{:?}", here[0].mount_options);
    assert!(here[0].mount_options.iter().any(|o| o == "noexec"), "{:?}", here[0].mount_options);
    assert_eq!(std::fs::read(ro.join("f")).unwrap(), b"hello");
    assert_eq!(errno_of(&std::fs::write(ro.join("h"), b"x").unwrap_err()), Errno::EROFS);
    // The source stays writable.
    std::fs::write(staged.join("h"), b"x").unwrap();

    mount::cleanup(&ro).unwrap();
    mount::cleanup(&rw).unwrap();
    assert!(!ro.exists() && !rw.exists());
}

#[test]
fn mount_bind_block_device_onto_a_file() {
    privileged!("mount_bind_block_device_onto_a_file");
    let lab = Lab::new();
    let (_image, attached) = lab.device("blk.img", 16 * MIB);
    let dev_rdev = std::fs::metadata(&attached.device.path).unwrap().rdev();
    File::options().write(true).open(&attached.device.path).unwrap().write_all_at(b"block!", 4096).unwrap();

    let target = lab.path("pod-device");
    File::create(&target).unwrap();
    mount::bind(&attached.device.path, &target, false, &MountOptions::default()).unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    assert!(meta.file_type().is_block_device());
    assert_eq!(meta.rdev(), dev_rdev);
    // Usable through the bind: it is not nodev.
    let mut buf = [0u8; 6];
    File::open(&target).unwrap().read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"block!");
    let opts = &mounts_at(&target)[0].mount_options;
    assert!(!opts.iter().any(|o| o == "nodev"), "{opts:?}");

    // A read-only bind is marked ro; note that it does not stop writes to
    // the device node itself (the device, not the mount, decides that), so
    // read-only block volumes need a read-only loop device.
    let ro_target = lab.path("pod-device-ro");
    File::create(&ro_target).unwrap();
    mount::bind(&attached.device.path, &ro_target, true, &MountOptions::default()).unwrap();
    assert!(mounts_at(&ro_target)[0].read_only());
    let writable = File::options().write(true).custom_flags(libc::O_CLOEXEC).open(&ro_target).is_ok();
    eprintln!("write open of a block device through a read-only bind succeeds: {writable}");

    mount::cleanup(&target).unwrap();
    mount::cleanup(&ro_target).unwrap();
    assert!(!target.exists() && !ro_target.exists());
    assert!(attached.device.path.exists(), "cleanup removed the device node");
}

#[test]
fn mount_unmount_stacked_missing_and_busy() {
    privileged!("mount_unmount_stacked_missing_and_busy");
    let lab = Lab::new();
    let (_image, attached, base) = lab.mounted("s.img", 32 * MIB, FsType::Ext4);
    let target = lab.dir("stack");
    for _ in 0..3 {
        mount::bind(&base, &target, false, &MountOptions::default()).unwrap();
    }
    assert_eq!(mounts_at(&target).len(), 3);
    assert!(mount::unmount(&target).unwrap());
    assert!(mounts_at(&target).is_empty());

    // Not a mount point, missing: nothing to do.
    assert!(!mount::unmount(&target).unwrap());
    assert!(!mount::unmount(&lab.path("missing")).unwrap());
    mount::cleanup(&lab.path("missing")).unwrap();

    // Busy: an open file keeps it mounted; the error names the path.
    mount::bind(&base, &target, false, &MountOptions::default()).unwrap();
    let open = File::create(target.join("open")).unwrap();
    match mount::unmount(&target) {
        Err(Error::Sys { errno: Errno::EBUSY, path, .. }) => assert_eq!(path, target),
        other => panic!("expected EBUSY, got {other:?}"),
    }
    assert!(matches!(mount::cleanup(&target), Err(Error::Sys { errno: Errno::EBUSY, .. })));
    assert!(target.exists());
    drop(open);
    mount::cleanup(&target).unwrap();
    assert!(!target.exists());
    drop(attached);
}

#[test]
fn mount_cleanup_never_removes_data() {
    privileged!("mount_cleanup_never_removes_data");
    let lab = Lab::new();
    let dir = lab.dir("full");
    std::fs::write(dir.join("keep"), b"x").unwrap();
    assert_eq!(sys_errno(mount::cleanup(&dir)), Errno::ENOTEMPTY);
    assert!(dir.join("keep").exists());
    // A failed read-only bind leaves no read-write mount behind: bind onto a
    // file from a directory fails at the first step.
    let file = lab.path("file");
    File::create(&file).unwrap();
    assert!(mount::bind(&dir, &file, true, &MountOptions::default()).is_err());
    assert!(mounts_at(&file).is_empty());
    mount::cleanup(&file).unwrap();
    assert!(!file.exists());
}

// ---------------------------------------------------------------- clones and copies

/// Writes a 64 MiB sparse image with data at a few offsets.
fn sample_image(path: &Path) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&[0x5a; 65536], 0).unwrap();
    f.write_all_at(&[0xa5; 8192], 20 * MIB).unwrap();
    f.sync_all().unwrap();
    std::fs::read(path).unwrap()
}

fn assert_sparse_copy(src: &Path, dst: &Path, expect: &[u8]) {
    let meta = std::fs::metadata(dst).unwrap();
    assert_eq!(meta.len(), 64 * MIB, "trailing hole lost");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(std::fs::read(dst).unwrap() == expect, "contents differ");
    let _ = src;
}

#[test]
fn copy_sparse_on_a_filesystem_without_reflink() {
    privileged!("copy_sparse_on_a_filesystem_without_reflink");
    let lab = Lab::new();
    // ext4 on a loop device, so the test does not depend on the root fs.
    let (_image, _attached, mnt) = lab.mounted("e.img", 256 * MIB, FsType::Ext4);
    let src = mnt.join("src.img");
    let expect = sample_image(&src);
    let dst = mnt.join("dst.img");
    assert_eq!(copy_image(&src, &dst).unwrap(), CopyMethod::Sparse);
    assert_sparse_copy(&src, &dst, &expect);
    let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(blocks < 2 * MIB, "sparse copy allocated {blocks} bytes");
}

fn reflink_copy(fs_type: FsType) {
    let lab = Lab::new();
    let (_image, _attached, mnt) = lab.mounted("r.img", fs_type.min_size(), fs_type);
    let src = mnt.join("src.img");
    let expect = sample_image(&src);
    let dst = mnt.join("dst.img");
    let t = Instant::now();
    assert_eq!(copy_image(&src, &dst).unwrap(), CopyMethod::Reflink);
    eprintln!("reflink copy on {fs_type}: {:?}", t.elapsed());
    assert_sparse_copy(&src, &dst, &expect);
    // Writing the copy leaves the source alone (shared blocks are unshared).
    File::options().write(true).open(&dst).unwrap().write_all_at(b"changed", 0).unwrap();
    assert!(std::fs::read(&src).unwrap() == expect);

    // Across filesystems FICLONE says EXDEV and the sparse copy takes over.
    let other = lab.path("other.img");
    assert_eq!(copy_image(&src, &other).unwrap(), CopyMethod::Sparse);
    assert_sparse_copy(&src, &other, &expect);
    assert!(std::fs::metadata(&other).unwrap().blocks() * 512 < 2 * MIB);
}

#[test]
fn copy_reflink_on_btrfs() {
    privileged!("copy_reflink_on_btrfs");
    reflink_copy(FsType::Btrfs);
}

#[test]
fn copy_reflink_on_xfs() {
    privileged!("copy_reflink_on_xfs");
    reflink_copy(FsType::Xfs);
}

/// A clone of a volume (same filesystem UUID) mounted beside its source:
/// xfs needs `nouuid` (mount_fs adds it); btrfs needs a kernel that gives a
/// duplicate single-device filesystem a temporary fsid (Linux 6.7+).
fn clone_mounts_beside_source(fs_type: FsType) {
    let lab = Lab::new();
    let (image, attached, mnt) = lab.mounted("src.img", fs_type.min_size(), fs_type);
    std::fs::write(mnt.join("f"), b"original").unwrap();
    // Copy a consistent image: freeze while copying.
    let clone = lab.path("clone.img");
    {
        let _frozen = fs::freeze(&mnt).unwrap();
        copy_image(&image, &clone).unwrap();
    }
    let clone_dev = loopdev::attach(&clone, AttachOptions::default()).unwrap();
    assert_eq!(fs::probe(&clone_dev.device.path).unwrap().as_deref(), Some(fs_type.as_str()));
    let clone_mnt = lab.dir("clone.mnt");
    let mounted = mount::mount_fs(&clone_dev.device.path, &clone_mnt, fs_type, &MountOptions::default(), false);
    eprintln!("{fs_type} clone with duplicate uuid mounted beside its source: {mounted:?}");
    mounted.unwrap();
    assert_eq!(std::fs::read(clone_mnt.join("f")).unwrap(), b"original");
    std::fs::write(clone_mnt.join("f"), b"changed").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"original");
    drop(attached);
}

#[test]
fn clone_xfs_mounts_beside_source() {
    privileged!("clone_xfs_mounts_beside_source");
    clone_mounts_beside_source(FsType::Xfs);
}

#[test]
fn clone_btrfs_mounts_beside_source() {
    privileged!("clone_btrfs_mounts_beside_source");
    clone_mounts_beside_source(FsType::Btrfs);
}

#[test]
fn clone_ext4_mounts_beside_source() {
    privileged!("clone_ext4_mounts_beside_source");
    clone_mounts_beside_source(FsType::Ext4);
}
