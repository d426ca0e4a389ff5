//! The FlexVolume binary killed with SIGKILL in the middle of `mount`, at
//! many points (creating, formatting, checking, mounting, binding, writing
//! records), then driven again as kubelet would: a re-run of `mount` or an
//! `unmount` converges. After every trial the data written before reads
//! back, there is exactly one mount, and no loop device or mount is leaked.
//!
//! `LOOPVOL_CRASH_TRIALS` changes the number of trials (default 60).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopvol_test_support::eventually;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts the driver as kubelet does, without waiting for it; with
/// `failpoint`, it aborts there (backend/src/failpoint.rs).
fn spawn(w: &FlexWorld, args: &[&str], failpoint: Option<&str>) -> Child {
    let mut command = Command::new(EXE);
    command.env_clear();
    if let Some(point) = failpoint {
        command.env(loopvol_backend::failpoint::ENV, point);
    }
    command
        .args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LOOPVOL_FLEX_CONFIG", &w.config)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn driver")
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..256 * 1024u32).map(|i| (i.wrapping_mul(31) >> 3).to_le_bytes()[0] ^ seed).collect()
}

/// Nothing of the world is mounted any more and no loop device is left.
#[track_caller]
fn assert_released(w: &FlexWorld, what: &str) {
    let root = fs::canonicalize(w.dir.path()).unwrap();
    assert!(
        eventually(|| loopvol_test_support::mounts_under(&root).is_empty()),
        "{what}: a mount is left: {:?}",
        loopvol_test_support::mounts_under(&root)
    );
    assert!(eventually(|| loops_under(&w.pool).is_empty()), "{what}: loop devices left: {:?}", loops_under(&w.pool));
}

/// No half-built image is left once a call on the volume has succeeded. (A
/// killed record write can leave a small pid-tagged `.<id>.json.<pid>.tmp`;
/// records never read it and `loopvol doctor` removes it.)
#[track_caller]
fn assert_no_temp_files(w: &FlexWorld, what: &str) {
    for dir in ["volumes", "snapshots"] {
        let Ok(entries) = fs::read_dir(w.pool.join(dir)) else { continue };
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.ends_with(".img.tmp"), "{what}: {dir}/{name} left behind");
        }
    }
}

/// One volume's state across trials: the data it must hold.
struct Vol {
    pv: String,
    json: String,
    data: Option<Vec<u8>>,
}

/// Mounts into a fresh pod dir, checks one mount and the data, writes new
/// data, unmounts and checks that everything is released. Returns how long
/// the mount took (to aim the kills, never asserted).
fn full_cycle(w: &FlexWorld, v: &mut Vol, pod: &Path, seed: u8, what: &str) -> Duration {
    let started = Instant::now();
    let out = w.run(&["mount", p(pod), &v.json]);
    let took = started.elapsed();
    assert_eq!(out.status(), "Success", "{what}: mount: {}", out.raw);
    check_mounted(w, v, pod, what);
    let data = pattern(seed);
    fs::write(pod.join("data"), &data).unwrap();
    nix::unistd::sync();
    v.data = Some(data);
    let out = w.run(&["unmount", p(pod)]);
    assert_eq!(out.status(), "Success", "{what}: unmount: {}", out.raw);
    assert_released(w, what);
    took
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(5_000, 5_000_000)
}

#[track_caller]
fn check_mounted(w: &FlexWorld, v: &Vol, pod: &Path, what: &str) {
    assert_eq!(mount_count(pod), 1, "{what}: exactly one mount at the pod dir");
    assert_eq!(mount_count(&w.staging(&v.pv)), 1, "{what}: exactly one staging mount");
    assert_eq!(loops_under(&w.pool).len(), 1, "{what}: exactly one loop device");
    if let Some(data) = &v.data {
        assert!(fs::read(pod.join("data")).unwrap() == *data, "{what}: the data written before reads back");
    }
    assert_no_temp_files(w, what);
}

#[test]
fn killed_mount_converges_on_rerun_or_unmount() {
    if !loopvol_test_support::privileged("killed_mount_converges_on_rerun_or_unmount") {
        return;
    }
    let trials: u32 = std::env::var("LOOPVOL_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();

    // Aim the kills: how long a first mount (create + mkfs) and a mount of
    // an existing volume (fsck + mount) take here, measured, not asserted.
    let mut vol = Vol { pv: "pv-crash".into(), json: mount_json("pv-crash", &[("size", "64Mi")]), data: None };
    let first = full_cycle(&w, &mut vol, &w.pod_dir("calibrate", "pv-crash"), 0, "calibration");
    let mut window_new = micros(first);
    let mut window = micros(full_cycle(&w, &mut vol, &w.pod_dir("calibrate-2", "pv-crash"), 0, "calibration"));

    let mut kills = 0;
    let mut finished_before_kill = 0;
    for trial in 0..trials {
        let what = format!("trial {trial}");
        // Every fourth trial kills the first mount of a brand-new volume
        // (create, mkfs); the others an existing, unstaged one (fsck, mount).
        let mut fresh;
        let v = if trial % 4 == 0 {
            let pv = format!("pv-new-{trial}");
            fresh = Vol { json: mount_json(&pv, &[("size", "32Mi")]), pv, data: None };
            &mut fresh
        } else {
            &mut vol
        };
        let pod = w.pod_dir(&format!("pod-{trial}"), &v.pv);
        // Spread the kills over the whole call, deterministically.
        let span = if trial % 4 == 0 { window_new } else { window };
        let delay = Duration::from_micros(span * u64::from(trial * 37 % trials) / u64::from(trials));
        let mut child = spawn(&w, &["mount", p(&pod), &v.json], None);
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(_) => finished_before_kill += 1,
            None => {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
        }
        child.wait().unwrap();

        if trial % 2 == 0 {
            // Kubelet retries the mount.
            let out = w.run(&["mount", p(&pod), &v.json]);
            assert_eq!(out.status(), "Success", "{what}: mount after the kill: {}", out.raw);
            check_mounted(&w, v, &pod, &what);
            let out = w.run(&["unmount", p(&pod)]);
            assert_eq!(out.status(), "Success", "{what}: unmount: {}", out.raw);
            assert_released(&w, &what);
        } else {
            // The pod went away meanwhile: kubelet tears down instead.
            let out = w.run(&["unmount", p(&pod)]);
            assert_eq!(out.status(), "Success", "{what}: unmount after the kill: {}", out.raw);
            assert_released(&w, &what);
        }
        // Either way the volume mounts again with its data, and takes new data.
        let again: PathBuf = w.pod_dir(&format!("pod-{trial}-again"), &v.pv);
        let took = micros(full_cycle(&w, v, &again, u8::try_from(trial % 251).unwrap_or(0) + 1, &what));
        if trial % 4 == 0 {
            window_new = window_new.max(took);
        } else {
            window = took;
        }
    }
    eprintln!("{trials} trials: {kills} killed mid-mount, {finished_before_kill} finished before the kill");
    assert!(kills > 0, "no trial killed a running mount");
    let log = w.log();
    assert!(!log.contains(SECRET) && !log.contains(&secret_b64()), "no secret in the log");
}

/// The driver is killed while its mkfs runs, and kubelet retries at once.
/// The orphaned mkfs still holds the device open; the retry must wait for
/// it (it inherited the volume's lock), not run a second mkfs and fail with
/// "apparently in use" (CI, stop 16). mkfs takes milliseconds here, so the
/// test freezes it (SIGSTOP) once it has the device open, kills the
/// driver, starts the retry, and thaws mkfs a moment later.
#[test]
fn a_retry_waits_for_the_mkfs_a_killed_mount_left_running() {
    if !loopvol_test_support::privileged("a_retry_waits_for_the_mkfs_a_killed_mount_left_running") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let w = FlexWorld::new(EXE, false);
    let _g = w.guard();
    let mut caught = 0;
    for round in 0..40 {
        let what = format!("round {round}");
        let pv = format!("pv-orphan-{round}");
        let mut v = Vol { json: mount_json(&pv, &[("size", "32Mi")]), pv, data: None };
        let pod = w.pod_dir(&format!("pod-{round}"), &v.pv);
        let mut driver = spawn(&w, &["mount", p(&pod), &v.json], None);
        let Some(mkfs) = frozen_child_holding_a_loop_device(&mut driver, "mkfs.ext4") else {
            // Finished before it was caught: clean up and try again.
            driver.wait().unwrap();
            let out = w.run(&["unmount", p(&pod)]);
            assert_eq!(out.status(), "Success", "{what}: unmount: {}", out.raw);
            assert_released(&w, &what);
            continue;
        };
        caught += 1;
        driver.kill().unwrap(); // SIGKILL
        driver.wait().unwrap();
        let retry = std::thread::scope(|scope| {
            let retry = scope.spawn(|| w.run(&["mount", p(&pod), &v.json]));
            // Gives a retry that does not wait the time to collide with mkfs.
            std::thread::sleep(Duration::from_millis(300));
            kill(mkfs, Signal::SIGCONT).unwrap();
            retry.join().unwrap()
        });
        assert_eq!(retry.status(), "Success", "{what}: retried mount: {}", retry.raw);
        check_mounted(&w, &v, &pod, &what);
        let out = w.run(&["unmount", p(&pod)]);
        assert_eq!(out.status(), "Success", "{what}: unmount: {}", out.raw);
        assert_released(&w, &what);
        let again = w.pod_dir(&format!("pod-{round}-again"), &v.pv);
        full_cycle(&w, &mut v, &again, 7, &what);
        if caught == 3 {
            break;
        }
    }
    assert!(caught > 0, "mkfs was never caught running");

    /// Polls for a child of `driver` named `program` with a loop device
    /// open and stops it there; None once the driver has exited.
    fn frozen_child_holding_a_loop_device(driver: &mut Child, program: &str) -> Option<Pid> {
        let parent = driver.id().to_string();
        while driver.try_wait().unwrap().is_none() {
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
                // pid (comm) state ppid ...
                let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
                let ppid = rest.split(' ').nth(1);
                if !head.ends_with(&format!("({program}")) || ppid != Some(parent.as_str()) {
                    continue;
                }
                let pid = Pid::from_raw(entry.file_name().to_str().unwrap().parse().unwrap());
                let holds_loop = fs::read_dir(entry.path().join("fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/dev/loop")));
                if holds_loop && nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).is_ok() {
                    return Some(pid);
                }
            }
        }
        None
    }
}
