//! The node side with many published volumes: N block volumes staged and
//! published, then
//! - one pass of the cgroup v1 I/O-limit resync (`Pool::resync_io_limits`,
//!   which the CSI node plugin runs every 5 s on v1 hosts), with each volume
//!   published to its own pod with two container cgroups, all pods under one
//!   kubelet-like `kubepods/burstable` (cgroupfs layout) in the real blkio
//!   hierarchy; reference in the same run: the same pass over volumes with
//!   no pod (what it costs a node without podInfoOnMount);
//! - publish + unpublish of one more volume, and its NodeGetVolumeStats
//!   (`Pool::stats`); reference in the same run: the same at N = 0.
//!
//! Run as root: `cargo bench -p loopvol-backend --bench node_at_scale`
//! (`LOOPVOL_BENCH_VOLUMES=50,200` to choose the sizes). The resync rows
//! need a cgroup v1 blkio hierarchy and are left out without one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopvol_backend::{AccessType, IoLimits, Pool, PoolOptions, PublishRequest};

const ROUNDS: usize = 50;
use loopvol_test_support::{block_stage_request, privileged, volume_request, Sandbox};

const PASSES: usize = 15;
const PERIOD: Duration = Duration::from_secs(5);

/// kubelet's cgroupfs layout below a top directory of our own, removed on drop.
struct Pods {
    top: PathBuf,
    made: Vec<PathBuf>,
}

impl Pods {
    fn new(blkio: &Path) -> Pods {
        let top = blkio.join(format!("loopvol-bench-{}", std::process::id()));
        let mut pods = Pods { top: top.clone(), made: Vec::new() };
        pods.mkdir(top.clone());
        pods.mkdir(top.join("kubepods"));
        pods.mkdir(top.join("kubepods/burstable"));
        pods
    }

    fn mkdir(&mut self, dir: PathBuf) {
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.made.push(dir);
    }

    /// A pod with two containers; returns its UID.
    fn add(&mut self, n: usize) -> String {
        let uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
        let pod = self.top.join(format!("kubepods/burstable/pod{uid}"));
        self.mkdir(pod.clone());
        self.mkdir(pod.join("c1"));
        self.mkdir(pod.join("c2"));
        uid
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn main() {
    if !privileged("node_at_scale bench") {
        return;
    }
    let blkio = Path::new("/sys/fs/cgroup/blkio");
    let v1 = blkio.join("blkio.throttle.read_iops_device").exists();
    if !v1 {
        eprintln!(
            "SKIPPED: node_at_scale bench: resync rows: no cgroup v1 blkio hierarchy (the resync runs only on v1)"
        );
    }
    let sizes: Vec<usize> = std::env::var("LOOPVOL_BENCH_VOLUMES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200, 500]);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    println!("one more volume, with N others published (ms)   publish+unpublish median   stats median");
    for n in std::iter::once(0).chain(sizes.iter().copied()) {
        let (mut pair, mut stats) = World::new(n, None).one_more_volume();
        println!("N={n:<4} {:>45.2} {:>14.3}", ms(median(&mut pair)), ms(median(&mut stats)));
    }
    if !v1 {
        return;
    }
    println!("resync pass over N published block volumes (ms)      median     p90   per volume   share of 5 s");
    for &n in &sizes {
        for with_pods in [false, true] {
            let mut pods = Pods::new(blkio);
            let world = World::new(n, with_pods.then_some(&mut pods));
            let mut samples = Vec::with_capacity(PASSES);
            for _ in 0..PASSES {
                let t = Instant::now();
                let visited = world.pool.resync_io_limits().expect("resync");
                samples.push(t.elapsed());
                assert_eq!(visited, if with_pods { n } else { 0 }, "volumes visited by the resync");
            }
            drop(world);
            let p50 = median(&mut samples);
            let p90 = samples[(samples.len() - 1) * 90 / 100];
            let what = if with_pods { "each with a pod (2 containers)" } else { "no pod (reference)" };
            println!(
                "N={n:<4} {what:<38} {:>8.2} {:>7.2} {:>10.3} {:>11.2}%",
                ms(p50),
                ms(p90),
                ms(p50) / n as f64,
                100.0 * p50.as_secs_f64() / PERIOD.as_secs_f64()
            );
        }
    }
}

/// Sorts and returns the median.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn block_volume(pool: &Pool, name: &str, limits: IoLimits) -> String {
    let mut req = volume_request(name, 16 << 20, None);
    req.access_type = AccessType::Block;
    req.io_limits = limits;
    pool.create_volume(&req).expect("create").id
}

fn publish_req(staging: &Path, target: &Path, pod_uid: Option<String>) -> PublishRequest {
    PublishRequest {
        pod_uid,
        staging_path: staging.into(),
        target_path: target.into(),
        access_type: AccessType::Block,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
        exclusive: false,
    }
}

/// A pool with N published block volumes (each to its own pod when given
/// `pods`); torn down on drop.
struct World {
    sandbox: Sandbox,
    pool: Pool,
    published: Vec<(String, PathBuf, PathBuf)>,
}

impl World {
    fn new(n: usize, mut pods: Option<&mut Pods>) -> World {
        let sandbox = Sandbox::new();
        let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).expect("open pool");
        let limits = IoLimits { read_iops: 1000, write_iops: 500, ..IoLimits::default() };
        let mut published = Vec::new();
        for i in 0..n {
            let id = block_volume(&pool, &format!("scale-{i}"), limits);
            let staging = sandbox.path().join(format!("staging/{i}"));
            let target = sandbox.path().join(format!("pods/{i}/dev"));
            fs::create_dir_all(target.parent().unwrap()).expect("mkdir target parent");
            pool.stage(&id, &block_stage_request(&staging)).expect("stage");
            let pod_uid = pods.as_mut().map(|pods| pods.add(i));
            pool.publish(&id, &publish_req(&staging, &target, pod_uid)).expect("publish");
            published.push((id, staging, target));
        }
        World { sandbox, pool, published }
    }

    /// [`ROUNDS`] publish + unpublish of one more staged volume, and as many
    /// stats of it while published.
    fn one_more_volume(&self) -> (Vec<Duration>, Vec<Duration>) {
        let id = block_volume(&self.pool, "one-more", IoLimits::default());
        let staging = self.sandbox.path().join("staging/one-more");
        let target = self.sandbox.path().join("pods/one-more/dev");
        fs::create_dir_all(target.parent().unwrap()).expect("mkdir target parent");
        self.pool.stage(&id, &block_stage_request(&staging)).expect("stage");
        let (mut pair, mut stats) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            self.pool.publish(&id, &publish_req(&staging, &target, None)).expect("publish");
            let s = Instant::now();
            self.pool.stats(&id, &target).expect("stats");
            stats.push(s.elapsed());
            self.pool.unpublish(&id, &target).expect("unpublish");
            pair.push(t.elapsed() - stats.last().copied().unwrap_or_default());
        }
        self.pool.unstage(&id, &staging, false).expect("unstage");
        self.pool.delete_volume(&id).expect("delete");
        (pair, stats)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (id, staging, target) in self.published.drain(..) {
            self.pool.unpublish(&id, &target).expect("unpublish");
            self.pool.unstage(&id, &staging, false).expect("unstage");
            self.pool.delete_volume(&id).expect("delete");
        }
    }
}
