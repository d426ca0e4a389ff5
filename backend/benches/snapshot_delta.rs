//! Changed-block tracking: the delta of two snapshots of a full 10 GiB
//! volume of which 1% was rewritten in between (scattered 4 KiB writes), on
//! a reflink pool (xfs) and on an ext4 pool, each a filesystem made for the
//! run on a direct-I/O loop device (so "cold" means read from the disk, not
//! from a second page cache under the pool). The reference, measured in the
//! same run, is what the hostpath driver does: read both images in full and
//! compare the bytes. Run as root:
//! `cargo bench -p loopvol-backend --bench snapshot_delta`
//! (`LOOPVOL_BENCH_GIB=1` for a quick run).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use loopvol_backend::test_hooks::extents::{self, DeltaStats};
use loopvol_backend::{AccessType, CapacityRange, CreateVolume, Lifecycle, Pool, PoolOptions};
use loopvol_test_support::{privileged, Rng, Sandbox};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 4096;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Drops the file's pages from the page cache (it is clean: fsynced), so
/// the next read comes from the disk.
fn evict(path: &Path) {
    let f = File::open(path).expect("open");
    f.sync_all().expect("fsync");
    nix::fcntl::posix_fadvise(f.as_fd(), 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).expect("fadvise");
}

/// The reference: both images read in full, 1 MiB at a time, and compared
/// (what csi-driver-host-path does, with bigger reads). Returns the bytes
/// of the differing 4 KiB blocks.
fn full_compare(base: &Path, target: &Path) -> u64 {
    let (b, t) = (File::open(base).expect("open"), File::open(target).expect("open"));
    let len = t.metadata().expect("stat").len();
    let (mut bb, mut tb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut changed = 0;
    let mut off = 0;
    while off < len {
        let n = usize::try_from((len - off).min(1 << 20)).expect("chunk");
        b.read_exact_at(&mut bb[..n], off).expect("read base");
        t.read_exact_at(&mut tb[..n], off).expect("read target");
        if bb[..n] != tb[..n] {
            changed += bb[..n].chunks(4096).zip(tb[..n].chunks(4096)).filter(|(x, y)| x != y).count() as u64 * BLOCK;
        }
        off += n as u64;
    }
    changed
}

struct Row {
    fs: &'static str,
    snapshot_method: &'static str,
    snapshot_time: Duration,
    delta_cold: Duration,
    delta_warm: Duration,
    reference_cold: Duration,
    stats: DeltaStats,
    written_blocks: usize,
}

fn bench(fs: &'static str, size: u64) -> Row {
    let sandbox = Sandbox::new();
    let image = sandbox.path().join(format!("pool-{fs}.img"));
    // Room for the volume and two full copies (ext4) plus metadata.
    File::create(&image).and_then(|f| f.set_len(3 * size + 4 * GIB)).expect("pool image");
    let image_s = image.to_str().expect("utf-8");
    match fs {
        "xfs" => run("mkfs.xfs", &["-q", "-m", "reflink=1", image_s]),
        _ => run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image_s]),
    };
    let dev = run("losetup", &["--find", "--show", "--direct-io=on", image_s]);
    let mnt = sandbox.path().join("pool");
    std::fs::create_dir(&mnt).expect("mkdir");
    run("mount", &[&dev, mnt.to_str().expect("utf-8")]);

    let pool = Pool::open(&mnt, PoolOptions::default()).expect("open pool");
    let vol = pool
        .create_volume(&CreateVolume {
            io_limits: Default::default(),
            name: "bench".into(),
            id: None,
            capacity: CapacityRange { required: size, limit: 0 },
            fs_type: None,
            access_type: AccessType::Block,
            thick: false,
            source: None,
            parameters: Default::default(),
            lifecycle: Lifecycle::Persistent,
            direct_io: true,
        })
        .expect("create");
    let vol_image = pool.volume_image_path(&vol.id);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    {
        // A full volume: every block written once.
        let f = File::options().write(true).open(&vol_image).expect("open volume");
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < size {
            rng.fill(&mut buf);
            f.write_all_at(&buf, off).expect("fill");
            off += buf.len() as u64;
        }
        f.sync_all().expect("fsync");
    }
    let t = Instant::now();
    let s1 = pool.create_snapshot("base", &vol.id).expect("snapshot 1");
    let snapshot_time = t.elapsed();

    // 1% of the blocks, scattered, rewritten with new data.
    let blocks = size / BLOCK;
    let mut chosen = BTreeSet::new();
    while (chosen.len() as u64) < blocks / 100 {
        chosen.insert(rng.next_u64() % blocks);
    }
    {
        let f = File::options().write(true).open(&vol_image).expect("open volume");
        let mut buf = [0u8; 4096];
        for b in &chosen {
            rng.fill(&mut buf);
            f.write_all_at(&buf, b * BLOCK).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    let s2 = pool.create_snapshot("target", &vol.id).expect("snapshot 2");
    let snaps = mnt.join("snapshots");
    let (base, target) = (snaps.join(format!("{}.img", s1.id)), snaps.join(format!("{}.img", s2.id)));

    // Cold: the images' pages evicted (the loop device is direct I/O, so
    // there is no second cache below the pool). Delta and reference take
    // turns, ROUNDS times; the medians are reported.
    let (mut cold, mut warm, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    let mut answer = None;
    let mut reference = 0;
    for _ in 0..ROUNDS {
        evict(&base);
        evict(&target);
        let t = Instant::now();
        let a = pool.snapshot_delta(&s1.id, &s2.id, 0).expect("delta");
        cold.push(t.elapsed());
        let t = Instant::now();
        let again = pool.snapshot_delta(&s1.id, &s2.id, 0).expect("delta");
        warm.push(t.elapsed());
        assert_eq!(a, again);
        answer = Some(a);

        evict(&base);
        evict(&target);
        let t = Instant::now();
        reference = full_compare(&base, &target);
        refs.push(t.elapsed());
    }
    let answer = answer.expect("one round at least");
    let (ranges, stats) = extents::delta(&base, &target, 0, size).expect("delta stats");
    assert_eq!(ranges, answer.ranges);
    let (delta_cold, delta_warm, reference_cold) = (median(cold), median(warm), median(refs));
    // The delta and the reference agree, and both found every write.
    assert_eq!(stats.changed_bytes, reference, "delta and full compare disagree");
    assert_eq!(reference, chosen.len() as u64 * BLOCK, "a write was missed");

    // How the pool copied: a reflink shares all but the rewritten blocks.
    let snapshot_method = if stats.shared_bytes > 0 { "reflink" } else { "sparse copy" };
    drop(pool);
    // The Sandbox unmounts the pool and detaches its loop device.
    drop(sandbox);
    Row {
        fs,
        snapshot_method,
        snapshot_time,
        delta_cold,
        delta_warm,
        reference_cold,
        stats,
        written_blocks: chosen.len(),
    }
}

const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn main() {
    if !privileged("snapshot_delta bench") {
        return;
    }
    let gib: u64 = std::env::var("LOOPVOL_BENCH_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let size = gib * GIB;
    let rows: Vec<Row> = ["xfs", "ext4"].into_iter().map(|fs| bench(fs, size)).collect();
    println!(
        "\nsnapshot delta, {gib} GiB volume (full), 1% rewritten as scattered 4 KiB blocks; medians of {ROUNDS} rounds\n"
    );
    println!("| pool | snapshots | copy time | delta cold | delta warm | reference cold (read both, compare) | ranges | changed | read by delta | shared (skipped) | unchanged ranges reported |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fs,
            r.snapshot_method,
            secs(r.snapshot_time),
            secs(r.delta_cold),
            secs(r.delta_warm),
            secs(r.reference_cold),
            r.stats.ranges,
            mib(r.stats.changed_bytes),
            mib(r.stats.compared_bytes),
            mib(r.stats.shared_bytes),
            r.stats.unchanged_ranges,
        );
        eprintln!("{}: {} blocks written, {:?}", r.fs, r.written_blocks, r.stats);
    }
}
