//! Cost of the cgroup v1 I/O-limit resync (`Pool::resync_io_limits`, which
//! the CSI node plugin runs every 5 s on v1 hosts) with many published
//! volumes: N block volumes, each published to its own pod with two
//! container cgroups, all pods under one kubelet-like `kubepods/burstable`
//! (cgroupfs layout) in the real blkio hierarchy. Reported: wall time of one
//! pass, per volume, and the share of the 5 s period it takes. The
//! reference, measured in the same run, is the same pass over volumes with
//! no pod (what the resync costs a node that publishes without
//! podInfoOnMount). Run as root on a cgroup v1 host:
//! `cargo bench -p loopvol-backend --bench io_limits_resync`
//! (`LOOPVOL_BENCH_VOLUMES=50,200` to choose the sizes).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, IoLimits, Lifecycle, Pool, PoolOptions, PublishRequest, StageRequest,
};
use loopvol_test_support::{privileged, Sandbox};

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
    if !privileged("io_limits_resync bench") {
        return;
    }
    let blkio = Path::new("/sys/fs/cgroup/blkio");
    if !blkio.join("blkio.throttle.read_iops_device").exists() {
        eprintln!("SKIPPED: io_limits_resync bench: no cgroup v1 blkio hierarchy (the resync runs only on v1 hosts)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("LOOPVOL_BENCH_VOLUMES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 200, 500]);
    println!("resync pass over N published block volumes (ms)      median     p90   per volume   share of 5 s");
    for &n in &sizes {
        for with_pods in [false, true] {
            let mut samples = measure(n, with_pods);
            samples.sort();
            let median = samples[samples.len() / 2];
            let p90 = samples[(samples.len() - 1) * 90 / 100];
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let what = if with_pods { "each with a pod (2 containers)" } else { "no pod (reference)" };
            println!(
                "N={n:<4} {what:<38} {:>8.2} {:>7.2} {:>10.3} {:>11.2}%",
                ms(median),
                ms(p90),
                ms(median) / n as f64,
                100.0 * median.as_secs_f64() / PERIOD.as_secs_f64()
            );
        }
    }
}

/// Publishes `n` block volumes (to a pod each when `with_pods`), runs the
/// resync [`PASSES`] times, tears everything down; the pass times.
fn measure(n: usize, with_pods: bool) -> Vec<Duration> {
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).expect("open pool");
    let mut pods = Pods::new(Path::new("/sys/fs/cgroup/blkio"));
    let limits = IoLimits { read_iops: 1000, write_iops: 500, ..IoLimits::default() };
    let mut published = Vec::new();
    for i in 0..n {
        let vol = pool
            .create_volume(&CreateVolume {
                io_limits: limits,
                name: format!("resync-{i}"),
                id: None,
                capacity: CapacityRange { required: 16 << 20, limit: 0 },
                fs_type: None,
                access_type: AccessType::Block,
                thick: false,
                source: None,
                parameters: BTreeMap::new(),
                lifecycle: Lifecycle::Persistent,
                direct_io: true,
            })
            .expect("create");
        let staging = sandbox.path().join(format!("staging/{i}"));
        let target = sandbox.path().join(format!("pods/{i}/dev"));
        fs::create_dir_all(target.parent().unwrap()).expect("mkdir target parent");
        pool.stage(
            &vol.id,
            &StageRequest {
                staging_path: staging.clone(),
                access_type: AccessType::Block,
                fs_type: None,
                read_only: false,
                mount_options: vec![],
            },
        )
        .expect("stage");
        pool.publish(
            &vol.id,
            &PublishRequest {
                pod_uid: with_pods.then(|| pods.add(i)),
                staging_path: staging.clone(),
                target_path: target.clone(),
                access_type: AccessType::Block,
                fs_type: None,
                read_only: false,
                mount_options: vec![],
                exclusive: false,
            },
        )
        .expect("publish");
        published.push((vol.id, staging, target));
    }
    let mut samples = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        let t = Instant::now();
        let visited = pool.resync_io_limits().expect("resync");
        samples.push(t.elapsed());
        assert_eq!(visited, if with_pods { n } else { 0 }, "volumes visited by the resync");
    }
    for (id, staging, target) in published {
        pool.unpublish(&id, &target).expect("unpublish");
        pool.unstage(&id, &staging, false).expect("unstage");
        pool.delete_volume(&id).expect("delete");
    }
    drop(pods);
    samples
}
