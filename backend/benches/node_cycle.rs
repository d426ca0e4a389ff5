//! Wall time of the node cycle on a 10 GiB ext4 volume: the first stage
//! (attach + mkfs + mount), then stage → publish → unpublish → unstage of the
//! formatted volume. Run as root: `cargo bench -p loopvol-backend --bench node_cycle`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, FsType, Lifecycle, Pool, PoolOptions, PublishRequest, StageRequest,
};
use loopvol_test_support::{privileged, Sandbox};

const ROUNDS: usize = 50;

fn main() {
    if !privileged("node_cycle bench") {
        return;
    }
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).expect("open pool");
    let staging = sandbox.path().join("staging");
    let target = sandbox.path().join("target");
    let stage = StageRequest {
        staging_path: staging.clone(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    };
    let publish = PublishRequest {
        pod_uid: None,
        staging_path: staging.clone(),
        target_path: target.clone(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
        exclusive: false,
    };

    let mut first = Vec::new();
    let mut cycle = Vec::new();
    let mut pair = Vec::new();
    for round in 0..ROUNDS {
        let t = Instant::now();
        let vol = pool
            .create_volume(&CreateVolume {
                io_limits: Default::default(),
                name: format!("bench-{round}"),
                id: None,
                capacity: CapacityRange { required: 10 << 30, limit: 0 },
                fs_type: Some(FsType::Ext4),
                access_type: AccessType::Mount,
                thick: false,
                source: None,
                parameters: BTreeMap::new(),
                lifecycle: Lifecycle::Persistent,
                direct_io: true,
            })
            .expect("create");
        pool.stage(&vol.id, &stage).expect("first stage");
        first.push(t.elapsed());
        pool.unstage(&vol.id, &staging, false).expect("unstage");

        let t = Instant::now();
        pool.stage(&vol.id, &stage).expect("stage");
        let p = Instant::now();
        pool.publish(&vol.id, &publish).expect("publish");
        pool.unpublish(&vol.id, &target).expect("unpublish");
        pair.push(p.elapsed());
        pool.unstage(&vol.id, &staging, false).expect("unstage");
        cycle.push(t.elapsed());
        pool.delete_volume(&vol.id).expect("delete");
    }
    println!("10 GiB ext4 volume, {ROUNDS} rounds (ms)            median     p90     max");
    report("create + first stage (mkfs)", &mut first);
    report("stage→publish→unpublish→unstage", &mut cycle);
    report("publish + unpublish", &mut pair);
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // Nearest-rank percentiles, in integer arithmetic.
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100];
    println!("{what:<42} {:>7.2} {:>7.2} {:>7.2}", ms(at(50)), ms(at(90)), ms(at(100)));
}
