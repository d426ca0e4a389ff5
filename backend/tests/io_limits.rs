//! The I/O-limit resync (`Pool::resync_io_limits`): container cgroups made
//! after the publish get the volume's limits on cgroup v1, through the
//! device recorded at staging, and through a scan of the loop devices when
//! that record no longer names the volume's device.

use std::fs;
use std::path::Path;

use loopvol_backend::{AccessType, IoLimits, Pool, PoolOptions, PublishRequest};
use loopvol_test_support::cgroup::{rdev, TestPodCgroup};
use loopvol_test_support::{block_stage_request, loops_under, mounts_under, privileged, volume_request, Sandbox};

/// Rewrites the staged device in the volume's node state (`<id>.state`).
fn record_device(pool_root: &Path, id: &str, device: &str) {
    let path = pool_root.join(format!("volumes/{id}.state"));
    let mut state: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    state["staged"]["device"] = serde_json::Value::from(device);
    fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
}

#[test]
fn resync_reaches_new_containers_even_when_the_recorded_device_is_stale() {
    if !privileged("resync_reaches_new_containers_even_when_the_recorded_device_is_stale") {
        return;
    }
    let sandbox = Sandbox::new();
    let root = sandbox.path().join("pool");
    let pool = Pool::open(&root, PoolOptions::default()).unwrap();
    let mut pod = TestPodCgroup::new(false);
    if pod.v2 {
        // On v2 the pod's rule covers its containers: there is no resync.
        assert!(!pool.io_limits_need_resync());
        eprintln!("SKIPPED: resync_reaches_new_containers...: cgroup v2 host, the resync runs only on v1");
        return;
    }
    assert!(pool.io_limits_need_resync());

    // Two volumes, so that a wrong record can name the other one's device.
    let (mut ids, mut devices) = (Vec::new(), Vec::new());
    for name in ["limited", "other"] {
        let mut req = volume_request(name, 16 << 20, None);
        req.access_type = AccessType::Block;
        req.io_limits = IoLimits { read_iops: 700, ..IoLimits::default() };
        let id = pool.create_volume(&req).unwrap().id;
        let staged = pool.stage(&id, &block_stage_request(&sandbox.path().join(format!("staging-{name}")))).unwrap();
        ids.push(id);
        devices.push(staged.device);
    }
    let id = &ids[0];
    let target = sandbox.path().join("pod/dev");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    pool.publish(
        id,
        &PublishRequest {
            pod_uid: Some(pod.uid.clone()),
            staging_path: sandbox.path().join("staging-limited"),
            target_path: target.clone(),
            access_type: AccessType::Block,
            fs_type: None,
            read_only: false,
            mount_options: vec![],
            exclusive: false,
        },
    )
    .unwrap();
    let dev = rdev(&devices[0]);
    assert_eq!(pod.rule(dev, "read_iops_device"), 700, "publish writes the pod's limit");

    let first = pod.add_container("c1");
    assert_eq!(first.rule(dev, "read_iops_device"), 0, "a container made after the publish has no rule yet");
    assert_eq!(pool.resync_io_limits().unwrap(), 1, "one volume has a pod");
    assert_eq!(first.rule(dev, "read_iops_device"), 700, "the resync wrote it (recorded device)");

    // A record naming another volume's device, or no device at all: the
    // rule must go to this volume's device, never the other's.
    let other_dev = rdev(&devices[1]);
    let wrong_records = [devices[1].to_string_lossy().into_owned(), "/dev/loop99999".into(), "/nonsense".into()];
    for (n, wrong) in wrong_records.into_iter().enumerate() {
        record_device(&root, id, &wrong);
        let c = pod.add_container(&format!("c-stale-{n}"));
        assert_eq!(pool.resync_io_limits().unwrap(), 1);
        assert_eq!(c.rule(dev, "read_iops_device"), 700, "record {wrong}: the limit reaches the real device");
        assert_eq!(c.rule(other_dev, "read_iops_device"), 0, "record {wrong}: nothing for the other device");
    }

    pool.unpublish(id, &target).unwrap();
    for (name, id) in ["limited", "other"].iter().zip(&ids) {
        pool.unstage(id, &sandbox.path().join(format!("staging-{name}")), false).unwrap();
        pool.delete_volume(id).unwrap();
    }
    assert!(loops_under(&root).is_empty(), "loop devices left");
    assert!(mounts_under(&sandbox.path()).is_empty(), "mounts left");
}
