//! SnapshotMetadata (changed-block tracking) over gRPC: known ranges are
//! written into a published block volume through its loop device, the
//! volume is snapshotted, written again and snapshotted again, on a pool
//! that lives on an ext4 or an xfs filesystem made for the test on a loop
//! device (so the delta runs the compare path and the reflink path). The
//! answers must cover every written range and nothing more, page by
//! `max_results`, and resume at `starting_offset`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hyper_util::rt::TokioIo;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::plugin_capability::{service, Type};
use loopvol_proto::v1::snapshot_metadata_client::SnapshotMetadataClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

const BLOCK: i64 = 4096;

/// A filesystem made on an image in the test directory and mounted over the
/// server's pool directory. Dropped before the [`Server`] (declare it
/// after): it unmounts the volumes' mounts, detaches their loop devices
/// while their backing paths still resolve, then unmounts the pool, so the
/// server's own cleanup finds only the pool image's loop device.
struct PoolFs {
    root: PathBuf,
    pool: PathBuf,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl PoolFs {
    /// Stops the server, mounts a fresh `fs` (ext4 or xfs) over its pool
    /// directory and starts it again on that pool.
    async fn mount(s: &mut Server, fs: &str) -> PoolFs {
        let status = s.stop().await;
        assert!(status.success(), "{}", s.log());
        let image = s.path(&format!("pool-{fs}.img"));
        std::fs::File::create(&image).and_then(|f| f.set_len(1 << 30)).expect("pool image");
        let image = image.to_str().expect("utf-8 path");
        match fs {
            "xfs" => run("mkfs.xfs", &["-q", "-m", "reflink=1", image]),
            "ext4" => run("mkfs.ext4", &["-q", "-F", image]),
            other => panic!("no pool filesystem {other}"),
        }
        let pool_fs = PoolFs { root: s.root.clone(), pool: s.pool.clone() };
        run("mount", &["-o", "loop", image, s.pool.to_str().expect("utf-8 path")]);
        // statfs(2) f_type: the pool really is on the filesystem asked for.
        let magic = nix::sys::statfs::statfs(&s.pool).expect("statfs pool").filesystem_type();
        let want = if fs == "xfs" { nix::sys::statfs::XFS_SUPER_MAGIC } else { nix::sys::statfs::EXT4_SUPER_MAGIC };
        assert_eq!(magic, want, "pool filesystem");
        s.restart_after_stop().await;
        pool_fs
    }
}

impl Drop for PoolFs {
    fn drop(&mut self) {
        let mut mounts: Vec<PathBuf> = mounts_under(&self.root).into_iter().filter(|m| *m != self.pool).collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for dev in loops_under(&self.pool) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).output();
        }
        // A released loop device lingers while udev still holds it.
        let gone = loopvol_test_support::eventually(|| loops_under(&self.pool).is_empty());
        if nix::mount::umount(&self.pool).is_err() {
            let _ = nix::mount::umount2(&self.pool, nix::mount::MntFlags::MNT_DETACH);
        }
        if !gone && !std::thread::panicking() {
            panic!("loop devices of the volumes were not released: {:?}", loops_under(&self.pool));
        }
    }
}

async fn client(s: &Server) -> SnapshotMetadataClient<Channel> {
    let path = s.socket.clone();
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect");
    SnapshotMetadataClient::new(channel)
}

/// (offset, size) pairs, as the messages carry them.
type Ranges = Vec<(i64, i64)>;

/// Every message of a GetMetadataDelta stream, checked for what each must
/// say, and the ranges they carry.
async fn delta(
    c: &mut SnapshotMetadataClient<Channel>,
    base: &str,
    target: &str,
    start: i64,
    max: i32,
) -> Result<(usize, Ranges), tonic::Status> {
    let req = csi::GetMetadataDeltaRequest {
        base_snapshot_id: base.into(),
        target_snapshot_id: target.into(),
        starting_offset: start,
        max_results: max,
        ..Default::default()
    };
    let mut stream = c.get_metadata_delta(req).await?.into_inner();
    let (mut messages, mut ranges) = (0, Vec::new());
    while let Some(msg) = stream.message().await? {
        messages += 1;
        assert_eq!(msg.block_metadata_type(), csi::BlockMetadataType::VariableLength);
        assert_eq!(msg.volume_capacity_bytes, CAPACITY);
        assert!(max == 0 || msg.block_metadata.len() <= usize::try_from(max).unwrap(), "{msg:?}");
        ranges.extend(msg.block_metadata.iter().map(|b| (b.byte_offset, b.size_bytes)));
    }
    assert!(messages > 0, "a stream carries at least the capacity");
    check_order(&ranges, start);
    Ok((messages, ranges))
}

async fn allocated(
    c: &mut SnapshotMetadataClient<Channel>,
    snapshot: &str,
    start: i64,
    max: i32,
) -> Result<Ranges, tonic::Status> {
    let req = csi::GetMetadataAllocatedRequest {
        snapshot_id: snapshot.into(),
        starting_offset: start,
        max_results: max,
        ..Default::default()
    };
    let mut stream = c.get_metadata_allocated(req).await?.into_inner();
    let mut ranges = Vec::new();
    while let Some(msg) = stream.message().await? {
        assert_eq!(msg.block_metadata_type(), csi::BlockMetadataType::VariableLength);
        assert_eq!(msg.volume_capacity_bytes, CAPACITY);
        assert!(max == 0 || msg.block_metadata.len() <= usize::try_from(max).unwrap(), "{msg:?}");
        ranges.extend(msg.block_metadata.iter().map(|b| (b.byte_offset, b.size_bytes)));
    }
    check_order(&ranges, start);
    Ok(ranges)
}

/// The spec's rules: sizes > 0, strictly ascending, no overlap, and nothing
/// that ends at or before the starting offset.
#[track_caller]
fn check_order(ranges: &[(i64, i64)], start: i64) {
    for (i, &(off, len)) in ranges.iter().enumerate() {
        assert!(len > 0 && off >= 0, "{ranges:?}");
        assert!(off + len > start, "range {i} ends before starting_offset {start}: {ranges:?}");
        if i > 0 {
            let (po, pl) = ranges[i - 1];
            assert!(po + pl <= off, "ranges {} and {i} overlap or are unsorted: {ranges:?}", i - 1);
        }
    }
}

/// The 4 KiB blocks that `writes` touch, merged: what an exact delta says.
fn blocks(writes: &[(i64, usize)]) -> Ranges {
    let mut blocks: Vec<i64> = writes
        .iter()
        .flat_map(|&(off, len)| (off / BLOCK)..=((off + i64::try_from(len).unwrap() - 1) / BLOCK))
        .collect();
    blocks.sort();
    blocks.dedup();
    let mut out: Ranges = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((o, l)) if *o + *l == b * BLOCK => *l += BLOCK,
            _ => out.push((b * BLOCK, BLOCK)),
        }
    }
    out
}

#[track_caller]
fn covers(ranges: &[(i64, i64)], writes: &[(i64, usize)]) {
    for &(off, len) in writes {
        let end = off + i64::try_from(len).unwrap();
        assert!(ranges.iter().any(|&(o, l)| o <= off && o + l >= end), "write {off}+{len} not covered by {ranges:?}");
    }
}

fn total(ranges: &[(i64, i64)]) -> i64 {
    ranges.iter().map(|r| r.1).sum()
}

const CAPACITY: i64 = 128 * MIB;

/// A numeric field of the first "snapshot delta" line of the server's log
/// (text format, ANSI colours removed).
fn logged(log: &str, key: &str) -> i64 {
    let mut plain = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find('\x1b') {
        plain.push_str(&rest[..i]);
        rest = rest[i..].split_once('m').map_or("", |(_, after)| after);
    }
    plain.push_str(rest);
    let line = plain.lines().find(|l| l.contains("snapshot delta")).expect("the delta is logged");
    let prefix = format!("{key}=");
    let field = line.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())).expect("field logged");
    field.parse().expect("a number")
}

/// Writes `fill` over each range of the block device at `path`, durably.
fn write(path: &Path, writes: &[(i64, usize)], fill: u8) {
    let dev = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open the published device");
    for &(off, len) in writes {
        dev.write_all_at(&vec![fill; len], u64::try_from(off).unwrap()).expect("write");
    }
    dev.sync_all().expect("fsync the device");
}

async fn written_ranges_are_reported(fs: &str) {
    let mut s = Server::start().await;
    let _pool_fs = PoolFs::mount(&mut s, fs).await;
    let vol = s.create("cbt", CAPACITY, block_rw()).await;
    assert_eq!(vol.capacity_bytes, CAPACITY);
    let id = vol.volume_id;
    let staging = s.staging("cbt");
    let target = s.target("cbt");
    s.stage(&id, &staging, block_rw()).await.expect("stage");
    s.publish(&id, &staging, &target, block_rw(), false).await.expect("publish");

    // Aligned, unaligned, multi-block and crossing-a-block writes.
    let first: &[(i64, usize)] = &[(0, 4096), (MIB + 512, 3000), (10 * MIB, 64 << 10), (CAPACITY - 8192, 8192)];
    write(&target, first, 0xa1);
    let snap1 = s.snapshot("cbt-1", &id).await.expect("snapshot 1").snapshot_id;
    let second: &[(i64, usize)] =
        &[(3 * BLOCK, 4096), (MIB + 612, 10), (50 * MIB, 1 << 20), (100 * MIB + 4000, 200), (CAPACITY - 100, 100)];
    write(&target, second, 0xb2);
    let snap2 = s.snapshot("cbt-2", &id).await.expect("snapshot 2").snapshot_id;

    let mut c = client(&s).await;
    // Allocated: every write is covered, and far less than the volume.
    let alloc1 = allocated(&mut c, &snap1, 0, 0).await.expect("allocated 1");
    covers(&alloc1, first);
    assert!(total(&alloc1) <= total(&blocks(first)) + MIB, "{alloc1:?}");
    let alloc2 = allocated(&mut c, &snap2, 0, 0).await.expect("allocated 2");
    covers(&alloc2, first);
    covers(&alloc2, second);
    assert!(total(&alloc2) <= total(&blocks(first)) + total(&blocks(second)) + MIB, "{alloc2:?}");
    // Paged one range per message and resumed inside the second range.
    assert_eq!(allocated(&mut c, &snap2, 0, 1).await.unwrap(), alloc2);
    let (o, l) = alloc2[1];
    let resumed = allocated(&mut c, &snap2, o + 1, 2).await.unwrap();
    assert_eq!(resumed[0], (o + 1, l - 1));
    assert_eq!(resumed[1..], alloc2[2..]);

    // Delta: exactly the blocks the second round wrote (they all hold new bytes).
    let (_, full) = delta(&mut c, &snap1, &snap2, 0, 0).await.expect("delta");
    assert_eq!(full, blocks(second), "on {fs}");
    // How it was found (the server logs it): on xfs the snapshots are
    // reflinks and the unchanged data is skipped as shared; on ext4 they are
    // copies and it is compared.
    let (log, changed) = (s.log(), total(&full));
    let (shared, compared) = (logged(&log, "shared_bytes"), logged(&log, "compared_bytes"));
    assert_eq!(logged(&log, "changed_bytes"), changed);
    assert_eq!(logged(&log, "unchanged_ranges"), 0);
    if fs == "xfs" {
        // All of the first round but the two blocks the second rewrote.
        assert_eq!(shared, total(&blocks(first)) - 2 * BLOCK, "{log}");
        assert_eq!(compared, changed, "only unshared blocks are read: {log}");
    } else {
        assert_eq!(shared, 0, "{log}");
        assert!(compared >= changed + total(&blocks(first)) - 2 * BLOCK, "{log}");
    }
    // Nothing changed between a snapshot and itself; one message says so.
    assert_eq!(delta(&mut c, &snap2, &snap2, 0, 0).await.unwrap(), (1, vec![]));

    // max_results: one range per message, the same ranges in all.
    let (messages, paged) = delta(&mut c, &snap1, &snap2, 0, 1).await.unwrap();
    assert_eq!((messages, &paged), (full.len(), &full));
    // starting_offset: resuming after the second range gives the rest ...
    let after = full[1].0 + full[1].1;
    assert_eq!(delta(&mut c, &snap1, &snap2, after, 2).await.unwrap().1, full[2..]);
    // ... and inside a range cuts it there.
    let (o, l) = full[2];
    let inside = delta(&mut c, &snap1, &snap2, o + 4096 + 7, 0).await.unwrap().1;
    assert_eq!(inside[0], (o + 4096 + 7, l - 4096 - 7));
    assert_eq!(inside[1..], full[3..]);
    // At the end: an empty answer; past it, or negative: OUT_OF_RANGE.
    assert_eq!(delta(&mut c, &snap1, &snap2, CAPACITY, 0).await.unwrap(), (1, vec![]));
    assert_eq!(code(delta(&mut c, &snap1, &snap2, CAPACITY + 1, 0).await), Code::OutOfRange);
    assert_eq!(code(delta(&mut c, &snap1, &snap2, -1, 0).await), Code::OutOfRange);
    assert_eq!(code(allocated(&mut c, &snap1, CAPACITY + 1, 0).await), Code::OutOfRange);

    s.unpublish(&id, &target).await.expect("unpublish");
    s.unstage(&id, &staging).await.expect("unstage");
}

#[tokio::test]
async fn written_ranges_are_reported_on_an_ext4_pool() {
    if !loopvol_test_support::privileged("written_ranges_are_reported_on_an_ext4_pool") {
        return;
    }
    written_ranges_are_reported("ext4").await;
}

#[tokio::test]
async fn written_ranges_are_reported_on_an_xfs_pool() {
    if !loopvol_test_support::privileged("written_ranges_are_reported_on_an_xfs_pool") {
        return;
    }
    written_ranges_are_reported("xfs").await;
}

/// Argument and lookup errors need no loop device.
#[tokio::test]
async fn errors_follow_the_spec_table() {
    let mut s = Server::start().await;
    let a = s.create("a", MIB, block_rw()).await.volume_id;
    let b = s.create("b", MIB, block_rw()).await.volume_id;
    let sa = s.snapshot("sa", &a).await.unwrap().snapshot_id;
    let sa2 = s.snapshot("sa2", &a).await.unwrap().snapshot_id;
    let sb = s.snapshot("sb", &b).await.unwrap().snapshot_id;
    let mut c = client(&s).await;
    let alloc = |id: &str, start, max| csi::GetMetadataAllocatedRequest {
        snapshot_id: id.into(),
        starting_offset: start,
        max_results: max,
        ..Default::default()
    };
    assert_eq!(code(c.get_metadata_allocated(alloc("", 0, 0)).await), Code::InvalidArgument);
    assert_eq!(code(c.get_metadata_allocated(alloc("nope", 0, 0)).await), Code::NotFound);
    assert_eq!(code(c.get_metadata_allocated(alloc(&sa, 0, -1)).await), Code::InvalidArgument);
    assert_eq!(code(c.get_metadata_allocated(alloc(&sa, -5, 0)).await), Code::OutOfRange);
    assert!(c.get_metadata_allocated(alloc(&sa, MIB, 0)).await.is_ok());

    assert_eq!(code(delta(&mut c, "", &sa, 0, 0).await), Code::InvalidArgument);
    assert_eq!(code(delta(&mut c, &sa, "", 0, 0).await), Code::InvalidArgument);
    assert_eq!(code(delta(&mut c, &sa, "nope", 0, 0).await), Code::NotFound);
    assert_eq!(code(delta(&mut c, "nope", &sa, 0, 0).await), Code::NotFound);
    assert_eq!(code(delta(&mut c, &sa, &sb, 0, 0).await), Code::InvalidArgument);
    assert_eq!(code(delta(&mut c, &sa, &sa2, 0, -1).await), Code::InvalidArgument);
    // Two snapshots of one untouched volume: nothing changed.
    let req = csi::GetMetadataDeltaRequest {
        base_snapshot_id: sa.clone(),
        target_snapshot_id: sa2.clone(),
        ..Default::default()
    };
    let mut stream = c.get_metadata_delta(req).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().expect("one message");
    assert_eq!((msg.volume_capacity_bytes, msg.block_metadata.len()), (MIB, 0));
    assert!(stream.message().await.unwrap().is_none());
}

fn services(caps: csi::GetPluginCapabilitiesResponse) -> Vec<service::Type> {
    caps.capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Service(svc)) => Some(svc.r#type()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_capability_is_listed_only_with_the_flag() {
    let mut plain = Server::start().await;
    let caps = plain.identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap();
    assert!(!services(caps.into_inner()).contains(&service::Type::SnapshotMetadataService));
    // The service answers all the same.
    let mut c = client(&plain).await;
    assert_eq!(code(delta(&mut c, "a", "b", 0, 0).await), Code::NotFound);

    let mut flagged = Server::start_with(&["--advertise-snapshot-metadata", "true"]).await;
    let caps = flagged.identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap();
    assert!(services(caps.into_inner()).contains(&service::Type::SnapshotMetadataService));
}
