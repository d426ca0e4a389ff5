//! Both flows end to end with real loop devices and mounts, run as kubelet
//! runs the driver. Each test's guard unmounts and detaches everything under
//! its temp dir, also when the test fails.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use loopvol_backend::{FsType, Pool, PoolOptions};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn statvfs_total(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks() * st.fragment_size()
}

#[test]
fn mount_unmount_remount_keeps_data() {
    if !loopvol_test_support::privileged("mount_unmount_remount_keeps_data") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-data");
    let json = mount_json("pv-data", &[("size", "64Mi")]);
    let out = w.run(&["mount", p(&pod), &json]);
    out.ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 1);
    assert_eq!(mount_count(&w.staging("pv-data")), 1);
    fs::write(pod.join("hello"), "world").unwrap();
    // Repeated (kubelet misses same-filesystem bind mounts, spec P20): one mount still.
    w.run(&["mount", p(&pod), &json]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 1);

    // The same volume, with the same ID, that the CSI driver sees in this pool.
    let pool = Pool::open(&w.pool, PoolOptions::default()).unwrap();
    let vol = pool.volume("pv-data").unwrap();
    assert_eq!((vol.capacity_bytes, vol.fs_type), (64 << 20, FsType::Ext4));
    drop(pool);

    w.run(&["unmount", p(&pod)]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 0);
    assert!(!pod.exists(), "the pod dir is removed (kubelet tolerates that)");
    assert_eq!(mount_count(&w.staging("pv-data")), 0, "the last user unstages");
    assert!(!w.staging("pv-data").exists());
    assert!(loops_under(&w.pool).is_empty(), "the loop device is released");
    w.run(&["unmount", p(&pod)]).ok().golden(SUCCESS);

    let pod2 = w.pod_dir("pod-b", "pv-data");
    w.run(&["mount", p(&pod2), &json]).ok();
    assert_eq!(fs::read_to_string(pod2.join("hello")).unwrap(), "world");
    w.run(&["unmount", p(&pod2)]).ok();
    assert!(loops_under(&w.pool).is_empty());

    let log = w.log();
    assert!(log.contains("mount pv-data"), "{log}");
    assert!(!log.contains(SECRET) && !log.contains(&secret_b64()));
}

#[test]
fn read_only_and_read_write_pods_share_one_staging() {
    if !loopvol_test_support::privileged("read_only_and_read_write_pods_share_one_staging") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let rw = w.pod_dir("pod-rw", "pv-ro");
    let ro = w.pod_dir("pod-ro", "pv-ro");
    w.run(&["mount", p(&rw), &mount_json("pv-ro", &[])]).ok();
    fs::write(rw.join("f"), "data").unwrap();
    let ro_json = mount_json("pv-ro", &[("kubernetes.io/readwrite", "ro")]);
    w.run(&["mount", p(&ro), &ro_json]).ok();
    w.run(&["mount", p(&ro), &ro_json]).ok();
    assert!(is_read_only_mount(&ro));
    assert!(!is_read_only_mount(&rw));
    assert_eq!(fs::read_to_string(ro.join("f")).unwrap(), "data");
    let err = fs::write(ro.join("g"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()));
    assert_eq!(mount_count(&w.staging("pv-ro")), 1);

    // The read-write pod leaves: the read-only one keeps the volume.
    w.run(&["unmount", p(&rw)]).ok();
    assert_eq!(mount_count(&w.staging("pv-ro")), 1);
    assert_eq!(fs::read_to_string(ro.join("f")).unwrap(), "data");
    w.run(&["unmount", p(&ro)]).ok();
    assert_eq!(mount_count(&w.staging("pv-ro")), 0);
    assert!(loops_under(&w.pool).is_empty());
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[test]
fn twenty_parallel_mounts_of_different_volumes() {
    if !loopvol_test_support::privileged("twenty_parallel_mounts_of_different_volumes") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pods: Vec<_> =
        (0..20).map(|i| (w.pod_dir(&format!("pod-{i}"), &format!("pv-{i}")), format!("pv-{i}"))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(pod, pv)| {
                let w = &w;
                s.spawn(move || w.run(&["mount", p(pod), &mount_json(pv, &[("size", "16Mi")])]))
            })
            .collect();
        for h in handles {
            h.join().unwrap().ok();
        }
    });
    for (pod, pv) in &pods {
        assert_eq!(mount_count(pod), 1, "{pv}");
        fs::write(pod.join("id"), pv).unwrap();
    }
    std::thread::scope(|s| {
        for (pod, _) in &pods {
            let w = &w;
            s.spawn(move || w.run(&["unmount", p(pod)]).ok().line().to_string());
        }
    });
    for (pod, _) in &pods {
        assert_eq!(mount_count(pod), 0);
    }
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn racing_mounts_of_one_volume_end_in_one_mount() {
    if !loopvol_test_support::privileged("racing_mounts_of_one_volume_end_in_one_mount") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-race");
    let other = w.pod_dir("pod-b", "pv-race");
    let json = mount_json("pv-race", &[]);
    std::thread::scope(|s| {
        // Two on the same target (kubelet retry racing an orphaned call) and
        // one on another pod, all creating the volume at once.
        let a = s.spawn(|| w.run(&["mount", p(&pod), &json]));
        let b = s.spawn(|| w.run(&["mount", p(&pod), &json]));
        let c = s.spawn(|| w.run(&["mount", p(&other), &json]));
        for h in [a, b, c] {
            h.join().unwrap().ok();
        }
    });
    assert_eq!(mount_count(&pod), 1);
    assert_eq!(mount_count(&other), 1);
    assert_eq!(mount_count(&w.staging("pv-race")), 1);
    std::thread::scope(|s| {
        let a = s.spawn(|| w.run(&["unmount", p(&pod)]));
        let b = s.spawn(|| w.run(&["unmount", p(&pod)]));
        let c = s.spawn(|| w.run(&["unmount", p(&other)]));
        for h in [a, b, c] {
            h.join().unwrap().ok();
        }
    });
    assert_eq!(mount_count(&w.staging("pv-race")), 0);
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn unmount_of_unknown_paths_succeeds() {
    if !loopvol_test_support::privileged("unmount_of_unknown_paths_succeeds") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let missing = w.kubelet.join("pods/none/volumes/loopvol~loopvol/gone");
    w.run(&["unmount", p(&missing)]).ok().golden(SUCCESS);
    let empty = w.pod_dir("pod-e", "empty");
    w.run(&["unmount", p(&empty)]).ok().golden(SUCCESS);
    assert!(!empty.exists(), "an empty leftover dir is removed");
    // Files that are not ours are never deleted.
    let full = w.pod_dir("pod-f", "full");
    fs::write(full.join("keep"), "x").unwrap();
    w.run(&["unmount", p(&full)]).ok();
    assert!(full.join("keep").exists());
    w.run(&["unmountdevice", p(&missing)]).ok().golden(SUCCESS);
}

#[test]
fn unmount_works_without_the_drivers_records() {
    if !loopvol_test_support::privileged("unmount_works_without_the_drivers_records") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-lost");
    w.run(&["mount", p(&pod), &mount_json("pv-lost", &[])]).ok();
    // As after the hints are lost: only the kernel knows.
    fs::remove_dir_all(w.pool.join("targets")).unwrap();
    w.run(&["unmount", p(&pod)]).ok();
    assert_eq!(mount_count(&pod), 0);
    assert_eq!(mount_count(&w.staging("pv-lost")), 0);
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn odd_and_huge_option_values_are_taken_literally() {
    if !loopvol_test_support::privileged("odd_and_huge_option_values_are_taken_literally") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let canary = w.dir.path().join("pwned");
    let c = canary.display().to_string();
    let evil = [
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("; touch {c}; echo"),
        format!("| touch {c}"),
        "'\"\\ \u{1F600} ünïcødé\n\t".to_string(),
    ];
    let big = "y".repeat(100 * 1024);
    let mut extra: Vec<(String, String)> =
        evil.iter().enumerate().map(|(i, v)| (format!("note{i}"), v.clone())).collect();
    extra.push(("big".into(), big));
    extra.push(("kubernetes.io/pod.name".into(), evil[0].clone()));
    let extra_ref: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let json = mount_json("pv-odd", &extra_ref);
    assert!(json.len() > 100 * 1024);
    // A pod dir with a space in it: mountinfo escapes it as \040.
    let pod = w.pod_dir("pod with space", "pv-odd");
    w.run(&["mount", p(&pod), &json]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 1);
    w.run(&["unmount", p(&pod)]).ok();
    assert_eq!(mount_count(&pod), 0);
    assert!(!canary.exists(), "nothing reached a shell");
}

#[test]
fn failed_mounts_leave_nothing_behind() {
    if !loopvol_test_support::privileged("failed_mounts_leave_nothing_behind") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-f");
    // Refused mount option.
    let out = w.run(&["mount", p(&pod), &mount_json("pv-f", &[("mountOptions", "suid")])]);
    out.failed();
    assert!(out.message().contains("suid"), "{}", out.raw);
    // Publish fails after staging (the target is a file): staging is rolled back.
    let file_target = w.kubelet.join("pods/pod-b/volumes/loopvol~loopvol/pv-f");
    fs::create_dir_all(file_target.parent().unwrap()).unwrap();
    fs::write(&file_target, "").unwrap();
    w.run(&["mount", p(&file_target), &mount_json("pv-f", &[])]).failed();
    assert_eq!(mount_count(&w.staging("pv-f")), 0);
    assert!(loops_under(&w.pool).is_empty());
    // A missing volume with create "false".
    let out = w.run(&["mount", p(&pod), &mount_json("pv-none", &[("create", "false")])]);
    out.failed();
    assert!(out.message().contains("create"), "{}", out.raw);
    // Another filesystem than the volume has.
    w.run(&["mount", p(&pod), &mount_json("pv-f", &[("kubernetes.io/fsType", "xfs")])]).failed();
    assert_eq!(mount_count(&pod), 0);
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn expandfs_grows_xfs_online() {
    if !loopvol_test_support::privileged("expandfs_grows_xfs_online") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-xfs");
    let extra = [("kubernetes.io/fsType", "xfs"), ("size", "320Mi")];
    w.run(&["mount", p(&pod), &mount_json("pv-xfs", &extra)]).ok();
    let before = statvfs_total(&pod);
    let json = base_json("pv-xfs", &extra);
    let new = (400u64 << 20).to_string();
    let old = (320u64 << 20).to_string();
    w.run(&["expandfs", &json, "", p(&pod), &new, &old]).ok().golden(SUCCESS);
    let after = statvfs_total(&pod);
    assert!(after > before, "{before} -> {after}");
    // Repeated, and not larger than now: no-op successes.
    w.run(&["expandfs", &json, "", p(&pod), &new, &old]).ok().golden(SUCCESS);
    w.run(&["expandfs", &json, "", p(&pod), &old, &old]).ok().golden(SUCCESS);
    assert_eq!(fs::metadata(w.pool.join("volumes/pv-xfs.img")).unwrap().len(), 400 << 20);
    // Read-only and garbage sizes are refused.
    let ro = base_json("pv-xfs", &[("kubernetes.io/readwrite", "ro")]);
    w.run(&["expandfs", &ro, "", p(&pod), &new, &old]).failed();
    w.run(&["expandfs", &json, "", p(&pod), "lots", &old]).failed();
    w.run(&["unmount", p(&pod)]).ok();
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn expandfs_of_ext4_grows_now_or_at_the_next_mount() {
    if !loopvol_test_support::privileged("expandfs_of_ext4_grows_now_or_at_the_next_mount") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-ext");
    w.run(&["mount", p(&pod), &mount_json("pv-ext", &[("size", "64Mi")])]).ok();
    let before = statvfs_total(&pod);
    let json = base_json("pv-ext", &[]);
    let out = w.run(&["expandfs", &json, "", p(&pod), &(128u64 << 20).to_string(), &(64u64 << 20).to_string()]);
    if out.status() == "Failure" {
        // This kernel refuses ext4 online resize while a pod uses the volume.
        assert!(out.message().contains("grow"), "{}", out.raw);
    } else {
        out.ok();
    }
    w.run(&["unmount", p(&pod)]).ok();
    let pod2 = w.pod_dir("pod-b", "pv-ext");
    w.run(&["mount", p(&pod2), &mount_json("pv-ext", &[])]).ok();
    let after = statvfs_total(&pod2);
    assert!(after > before, "{before} -> {after}");
    w.run(&["unmount", p(&pod2)]).ok();
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn attach_flow_end_to_end() {
    if !loopvol_test_support::privileged("attach_flow_end_to_end") {
        return;
    }
    let w = FlexWorld::new(EXE, true);
    let _g = w.guard();
    w.run(&["init"]).ok().golden(INIT_TRUE);
    let json = base_json("pv-att", &[("size", "32Mi")]);
    let attached = r#"{"status":"Success","device":"loopvol:pv-att"}"#;
    w.run(&["attach", &json, "node-1"]).ok().golden(attached);
    w.run(&["attach", &json, "node-1"]).ok().golden(attached);
    w.run(&["isattached", &json, "node-1"]).ok().golden(r#"{"status":"Success","attached":true}"#);
    w.run(&["isattached", &json, "node-2"]).ok().golden(r#"{"status":"Success","attached":false}"#);
    w.run(&["isattached", "node-1", &json]).ok().golden(r#"{"status":"Success","attached":true}"#);
    let out = w.run(&["attach", &json, "node-2"]);
    out.failed();
    assert!(out.message().contains("node-1"), "{}", out.raw);

    let out = w.run(&["waitforattach", "loopvol:pv-att", &json]);
    out.ok();
    let device = out.json["device"].as_str().unwrap().to_string();
    assert!(device.starts_with("/dev/loop"), "{}", out.raw);
    assert_eq!(w.run(&["waitforattach", "loopvol:pv-att", &json]).json["device"], device.as_str());
    w.run(&["waitforattach", "loopvol:other", &json]).failed();

    let global = w.global_dir("pv-att");
    w.run(&["mountdevice", p(&global), &device, &json]).ok().golden(SUCCESS);
    w.run(&["mountdevice", p(&global), &device, &json]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&global), 1);

    let pod = w.pod_dir("pod-a", "pv-att");
    let mjson = mount_json("pv-att", &[]);
    w.run(&["mount", p(&pod), &mjson]).ok().golden(SUCCESS);
    w.run(&["mount", p(&pod), &mjson]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 1);
    fs::write(pod.join("f"), "attached").unwrap();
    assert_eq!(fs::read_to_string(global.join("f")).unwrap(), "attached");

    w.run(&["unmount", p(&pod)]).ok().golden(SUCCESS);
    w.run(&["unmount", p(&pod)]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&pod), 0);
    assert_eq!(mount_count(&global), 1, "the global mount belongs to unmountdevice");
    w.run(&["unmountdevice", p(&global)]).ok().golden(SUCCESS);
    w.run(&["unmountdevice", p(&global)]).ok().golden(SUCCESS);
    assert_eq!(mount_count(&global), 0);
    assert!(loops_under(&w.pool).is_empty());

    w.run(&["detach", "pv-att", "node-1"]).ok().golden(SUCCESS);
    w.run(&["detach", "pv-att", "node-1"]).ok().golden(SUCCESS);
    w.run(&["isattached", &json, "node-1"]).ok().golden(r#"{"status":"Success","attached":false}"#);
    w.run(&["attach", &json, "node-2"]).ok().golden(attached);
    w.run(&["detach", "pv-att", "node-2"]).ok();
    w.run(&["detach", "no-such-pv", "node-2"]).ok().golden(SUCCESS);

    // A volumeID that differs from the PV name: detach gets the PV name.
    let json = base_json("pv-named", &[("volumeID", "vol-x"), ("size", "16Mi")]);
    w.run(&["attach", &json, "node-1"]).ok().golden(r#"{"status":"Success","device":"loopvol:vol-x"}"#);
    w.run(&["detach", "pv-named", "node-1"]).ok();
    w.run(&["isattached", &json, "node-1"]).ok().golden(r#"{"status":"Success","attached":false}"#);
}

#[test]
fn mount_and_unmount_never_write_into_the_plugin_dir() {
    if !loopvol_test_support::privileged("mount_and_unmount_never_write_into_the_plugin_dir") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let plugins = w.dir.path().join("exec");
    let (out, exe) = install(&plugins, Some(&w.config));
    out.ok();
    let before = snapshot(&plugins);
    let pod = w.pod_dir("pod-a", "pv-plug");
    let json = mount_json("pv-plug", &[]);
    for args in [vec!["init"], vec!["mount", p(&pod), &json], vec!["mount", p(&pod), &json], vec!["unmount", p(&pod)]] {
        run_exe(&exe, &args, &[]).ok();
    }
    assert_eq!(snapshot(&plugins), before);
    assert!(loops_under(&w.pool).is_empty());
}

#[test]
fn unmount_succeeds_when_the_pool_lost_the_volume() {
    if !loopvol_test_support::privileged("unmount_succeeds_when_the_pool_lost_the_volume") {
        return;
    }
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let pod = w.pod_dir("pod-a", "pv-gone");
    w.run(&["mount", p(&pod), &mount_json("pv-gone", &[])]).ok();
    fs::remove_file(w.pool.join("volumes/pv-gone.json")).unwrap();
    // Kubelet would retry a Failure forever: the pod mount still goes.
    w.run(&["unmount", p(&pod)]).ok();
    assert_eq!(mount_count(&pod), 0);
}

#[test]
fn io_limits_from_pv_options_reach_the_pods_cgroups() {
    if !loopvol_test_support::privileged("io_limits_from_pv_options_reach_the_pods_cgroups") {
        return;
    }
    use loopvol_test_support::cgroup::{rdev, TestPodCgroup};
    let (pod_a, pod_b) = (TestPodCgroup::new(false), TestPodCgroup::new(true));
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let dir_a = w.pod_dir("pod-a", "pv-lim");
    let json = |uid: &str, iops: &str| {
        mount_json("pv-lim", &[("size", "64Mi"), ("readIOPS", iops), ("kubernetes.io/pod.uid", uid)])
    };
    w.run(&["mount", p(&dir_a), &json(&pod_a.uid, "300")]).ok().golden(SUCCESS);
    let devices = loops_under(&w.pool.join("volumes/pv-lim.img"));
    assert_eq!(devices.len(), 1, "{devices:?}");
    let dev = rdev(&devices[0]);
    assert_eq!(pod_a.rule(dev, "read_iops_device"), 300, "kubelet's pod.uid names the cgroup");

    // The PV's options changed (a second pod mounts with new ones): both
    // pods' cgroups get the new limit.
    let dir_b = w.pod_dir("pod-b", "pv-lim");
    w.run(&["mount", p(&dir_b), &json(&pod_b.uid, "150")]).ok().golden(SUCCESS);
    assert_eq!(pod_b.rule(dev, "read_iops_device"), 150, "systemd layout");
    assert_eq!(pod_a.rule(dev, "read_iops_device"), 150, "the earlier pod follows");

    // A bad limit is a Failure naming the option, and changes nothing.
    let dir_c = w.pod_dir("pod-c", "pv-lim");
    let out = w.run(&["mount", p(&dir_c), &json(&pod_b.uid, "lots")]);
    out.failed();
    assert!(out.message().contains("readIOPS"), "{}", out.message());
    assert_eq!(pod_a.rule(dev, "read_iops_device"), 150);

    for dir in [&dir_a, &dir_b, &dir_c] {
        w.run(&["unmount", p(dir)]).ok();
    }
    assert!(loops_under(&w.pool).is_empty());
}
