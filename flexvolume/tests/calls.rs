//! Calls that need no mounts: init, unknown calls, argv and config errors,
//! panics, secrets, install. Each runs the real binary as kubelet does.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

#[test]
fn init_prints_all_capabilities_and_nothing_else() {
    let w = FlexWorld::new(EXE, false);
    let out = w.run(&["init"]);
    out.ok().golden(INIT_FALSE);
    // One line of JSON plus its newline: no other byte on stdout or stderr.
    assert_eq!(out.raw, format!("{INIT_FALSE}\n"));
    w.write_config(true);
    w.run(&["init"]).ok().golden(INIT_TRUE);
    // init touches neither the pool nor the state dir.
    assert!(!w.pool.exists() && !w.state.exists());
}

#[test]
fn init_succeeds_whatever_the_config() {
    let w = FlexWorld::new(EXE, false);
    for text in ["{", "", "[1,2]", r#"{"pool":"relative"}"#, "\u{0}\u{1}garbage"] {
        std::fs::write(&w.config, text).unwrap();
        w.run(&["init"]).ok().golden(INIT_FALSE);
    }
    // A broken file that still says attach:true keeps the capability stable.
    std::fs::write(&w.config, r#"{"attach":true,"misspelt":1}"#).unwrap();
    w.run(&["init"]).ok().golden(INIT_TRUE);
    // Unreadable (a directory) and missing.
    std::fs::remove_file(&w.config).unwrap();
    w.run(&["init"]).ok().golden(INIT_FALSE);
    std::fs::create_dir(&w.config).unwrap();
    w.run(&["init"]).ok().golden(INIT_FALSE);
}

#[test]
fn init_with_an_empty_environment() {
    // No PATH, no config variable, cwd /: as a distroless controller-manager runs it.
    let out = run_exe(Path::new(EXE), &["init"], &[("PATH", "")]);
    out.ok().golden(INIT_FALSE);
}

/// Runs the binary as a person does: stdout and stderr apart.
fn run_for_a_person(args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXE)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the driver")
}

#[test]
fn help_prints_usage_text_on_stdout() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = run_for_a_person(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("loopvol: "), "{args:?}: {text}");
        for call in ["loopvol init", "loopvol mount <pod dir>", "loopvol install --plugin-dir"] {
            assert!(text.contains(call), "{args:?} lists {call}: {text}");
        }
        assert!(!text.contains("\"status\""), "usage, not a reply: {text}");
        assert!(out.stderr.is_empty());
    }
    for args in [&["install", "--help"][..], &["install", "-h"], &["install", "--plugin-dir", "/nonexistent", "--help"]]
    {
        let out = run_for_a_person(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("loopvol install: "), "{args:?}: {text}");
        assert!(text.contains("--plugin-dir DIR") && text.contains("--config FILE"), "{text}");
        assert!(!Path::new("/nonexistent").exists(), "help installs nothing");
    }
    // kubelet's calls are unchanged: a call named like nothing known is
    // still "Not supported", and a real call still answers JSON.
    let w = FlexWorld::new(EXE, false);
    w.run(&["--helpme", "{}"]).golden(NOT_SUPPORTED);
    w.run(&["init"]).ok().golden(INIT_FALSE);
}

#[test]
fn unknown_and_unimplemented_calls_are_not_supported() {
    let w = FlexWorld::new(EXE, false);
    for call in ["getvolumename", "waitfordetach", "getdevicemountpath", "provision", "foo", "INIT", "", "--version"] {
        let out = w.run(&[call, "{}"]);
        out.golden(NOT_SUPPORTED);
        assert_eq!(out.code, 0, "{call}");
    }
    w.run(&["expandvolume", "{}", "/g", "2048", "1024"]).ok().golden(SUCCESS);
}

#[test]
fn missing_arguments_are_failures_not_usage_text() {
    let w = FlexWorld::new(EXE, false);
    let out = w.run(&[]);
    out.failed();
    assert_eq!(out.code, 0);
    for (call, given) in [
        ("attach", 1),
        ("isattached", 1),
        ("waitforattach", 1),
        ("detach", 1),
        ("mountdevice", 2),
        ("unmountdevice", 0),
        ("mount", 1),
        ("unmount", 0),
        ("expandfs", 4),
    ] {
        let mut args = vec![call];
        args.extend(std::iter::repeat_n("/x", given));
        let out = w.run(&args);
        out.failed();
        assert_eq!(out.code, 0);
        assert!(out.message().contains(call), "{}", out.raw);
    }
    w.run(&["mount", "relative/dir", "{}"]).failed();
}

#[test]
fn a_broken_config_fails_every_call_but_init() {
    let w = FlexWorld::new(EXE, false);
    std::fs::write(&w.config, r#"{"pool": "/p", "stateDir": "#).unwrap();
    let pod = w.pod_dir("p1", "v1");
    let pod = pod.to_str().unwrap();
    let json = mount_json("v1", &[]);
    for args in [
        vec!["mount", pod, &json],
        vec!["unmount", pod],
        vec!["attach", &json, "node1"],
        vec!["isattached", &json, "node1"],
        vec!["detach", "v1", "node1"],
        vec!["waitforattach", "loopvol:v1", &json],
        vec!["mountdevice", pod, "/dev/loop0", &json],
        vec!["unmountdevice", pod],
        vec!["expandfs", &json, "", pod, "2048", "1024"],
        vec!["expandvolume", &json, pod, "2048", "1024"],
    ] {
        let out = w.run(&args);
        out.failed();
        assert!(out.message().contains("config"), "{}", out.raw);
        assert!(!out.raw.contains(SECRET) && !out.raw.contains(&secret_b64()));
    }
    let out = w.run(&["isattached", &json, "node1"]);
    assert_eq!(out.json["attached"], false, "isattached always carries a boolean: {}", out.raw);
    w.run(&["init"]).ok();
    // Calls that are never implemented stay "Not supported" (never conditional).
    w.run(&["getvolumename", &json]).golden(NOT_SUPPORTED);
    // A misspelt key is refused too, not silently defaulted.
    std::fs::write(&w.config, r#"{"statedir": "/tmp/x"}"#).unwrap();
    w.run(&["unmount", pod]).failed();
}

#[test]
fn a_panic_still_ends_as_one_failure_object() {
    let w = FlexWorld::new(EXE, false);
    for call in ["init", "mount", "getvolumename"] {
        let pod = w.pod_dir("p1", "v1");
        let out = w.run_env(&[call, pod.to_str().unwrap(), "{}"], &[("LOOPVOL_FLEX_PANIC", call)]);
        out.failed();
        assert_eq!(out.code, 0);
        assert!(out.message().starts_with("internal error"), "{}", out.raw);
    }
    // A panic inside a pool call is also in the log, and nothing reached stdout.
    assert!(w.log().contains("panic: forced panic in mount"), "{}", w.log());
}

/// kubelet's pod paths are about 89 bytes; the message and the log must
/// show them whole, so that a call can be traced to its pod.
#[test]
fn long_pod_paths_appear_whole_in_messages_and_the_log() {
    let w = FlexWorld::new(EXE, false);
    let pod = "var/lib/kubelet/pods/0b7c2f0e-4a1d-4c59-9a5e-1f2e3d4c5b6a/volumes/loopvol~loopvol/pvc-data";
    assert!(pod.len() > 80);
    let out = w.run(&["mount", pod, &mount_json("v1", &[])]);
    out.failed();
    assert!(out.message().contains(pod), "{}", out.raw);
    let log = w.log();
    assert!(log.contains(pod), "the log names the pod path: {log}");
    assert!(!log.contains("an argument of"), "{log}");
}

#[test]
fn secrets_never_reach_output_or_log() {
    let w = FlexWorld::new(EXE, false);
    let pod = w.pod_dir("p1", "v1");
    // Fails on the size option, after the secrets were read.
    let json = mount_json("v1", &[("size", "-1Gi")]);
    let out = w.run(&["mount", pod.to_str().unwrap(), &json]);
    out.failed();
    assert!(out.message().contains("size"), "{}", out.raw);
    // A broken secret is named by its key only.
    let json = mount_json("v1", &[("kubernetes.io/secret/token", "not base64 at all: s3cr3t-Pa55w0rd-do-not-leak!")]);
    let out = w.run(&["mount", pod.to_str().unwrap(), &json]);
    out.failed();
    assert!(out.message().contains("kubernetes.io/secret/token"), "{}", out.raw);
    // Swapped arguments: the options land where a path belongs.
    let out = w.run(&["mount", &json, pod.to_str().unwrap()]);
    out.failed();
    let log = w.log();
    assert!(!log.is_empty(), "the calls were logged");
    for text in [out.raw.as_str(), log.as_str()] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains(&secret_b64()), "encoded secret leaked: {text}");
        assert!(!text.contains("kubernetes.io/pod.uid"), "raw options leaked: {text}");
    }
}

#[test]
fn a_huge_option_argument_is_handled() {
    let w = FlexWorld::new(EXE, false);
    let pod = w.pod_dir("p1", "v1");
    let big = "x".repeat(100 * 1024);
    let json = mount_json("v1", &[("note", &big), ("size", "lots")]);
    assert!(json.len() > 100 * 1024);
    let out = w.run(&["mount", pod.to_str().unwrap(), &json]);
    out.failed();
    assert!(out.message().len() < 1024, "the message does not echo the argument");
}

#[test]
fn install_layout_is_atomic_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("exec");
    let config = dir.path().join("flex.json");
    let text =
        serde_json::json!({"pool": dir.path().join("pool"), "stateDir": dir.path().join("state"), "attach": true});
    std::fs::write(&config, text.to_string()).unwrap();

    let (out, exe) = install(&plugins, Some(&config));
    out.ok();
    assert!(out.message().contains("installed"), "{}", out.raw);
    let driver_dir = plugins.join("loopvol~loopvol");
    let mut names: Vec<String> =
        std::fs::read_dir(&driver_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    // Only the driver and its dot-config: no temp files left behind.
    assert_eq!(names, [".loopvol.json", "loopvol"]);
    assert_eq!(std::fs::read(&exe).unwrap(), std::fs::read(EXE).unwrap());
    assert_eq!(std::fs::metadata(&exe).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_to_string(driver_dir.join(".loopvol.json")).unwrap(), text.to_string());
    // The installed driver finds its config beside itself.
    run_exe(&exe, &["init"], &[]).ok().golden(INIT_TRUE);

    // Again: nothing is rewritten (no needless kubelet re-probe).
    let inode = std::fs::metadata(&exe).unwrap().ino();
    let cfg_inode = std::fs::metadata(driver_dir.join(".loopvol.json")).unwrap().ino();
    let (out, _) = install(&plugins, Some(&config));
    out.ok();
    assert!(out.message().contains("up to date"), "{}", out.raw);
    assert_eq!(std::fs::metadata(&exe).unwrap().ino(), inode);
    assert_eq!(std::fs::metadata(driver_dir.join(".loopvol.json")).unwrap().ino(), cfg_inode);
    // Without --config the existing config stays.
    install(&plugins, None).0.ok();
    assert!(driver_dir.join(".loopvol.json").exists());
}

#[test]
fn install_replaces_a_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("exec");
    let driver_dir = plugins.join("loopvol~loopvol");
    std::fs::create_dir_all(&driver_dir).unwrap();
    // An "old driver" that is busy: writing into it would fail with ETXTBSY.
    let old = driver_dir.join("loopvol");
    // Copied by a child process: a write fd opened here could be inherited by
    // another test thread's fork (held until its exec), and exec'ing the file
    // meanwhile fails with ETXTBSY, as it once did in CI.
    let copied = std::process::Command::new("cp").arg("/bin/sleep").arg(&old).status().unwrap();
    assert!(copied.success());
    let mut running = std::process::Command::new(&old).arg("60").spawn().unwrap();
    let (out, exe) = install(&plugins, None);
    let still_running = running.try_wait().unwrap().is_none();
    let _ = running.kill();
    let _ = running.wait();
    out.ok();
    assert!(still_running, "the old binary kept running");
    assert_eq!(std::fs::read(&exe).unwrap(), std::fs::read(EXE).unwrap());
    run_exe(&exe, &["init"], &[]).ok();
}

#[test]
fn install_refuses_bad_arguments_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("exec");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"pool": 5}"#).unwrap();
    let (out, exe) = install(&plugins, Some(&bad));
    out.failed();
    assert_eq!(out.code, 1, "a failed install must fail the installer pod");
    assert!(!exe.exists());
    for args in [vec!["install"], vec!["install", "--plugin-dir"], vec!["install", "--bogus", "x"]] {
        let out = run_exe(Path::new(EXE), &args, &[]);
        out.failed();
        assert_eq!(out.code, 1);
    }
    // State inside the driver dir would make kubelet re-probe on every log line.
    let inside = dir.path().join("inside.json");
    let state = plugins.join("loopvol~loopvol/state");
    std::fs::write(&inside, serde_json::json!({"stateDir": state}).to_string()).unwrap();
    install(&plugins, Some(&inside)).0.failed();
    // The --flag=value form works too.
    let arg = format!("--plugin-dir={}", plugins.display());
    run_exe(Path::new(EXE), &["install", &arg], &[]).ok();
    assert!(exe.exists());
}

#[test]
fn calls_never_write_into_the_plugin_dir() {
    let w = FlexWorld::new(EXE, false);
    let plugins = w.dir.path().join("exec");
    let (out, exe) = install(&plugins, Some(&w.config));
    out.ok();
    let before = snapshot(&plugins);
    let pod = w.pod_dir("p1", "v1");
    let pod = pod.to_str().unwrap();
    let json = mount_json("v1", &[("size", "bad")]);
    for args in [
        vec!["init"],
        vec!["getvolumename", &json],
        vec!["foo"],
        vec!["mount", pod, &json],
        vec!["unmount", pod],
        vec!["unmountdevice", pod],
        vec!["detach", "v1", "node1"],
        vec!["expandvolume", &json, pod, "2", "1"],
    ] {
        // No LOOPVOL_FLEX_CONFIG: the installed config is found beside the binary.
        run_exe(&exe, &args, &[]);
    }
    assert_eq!(snapshot(&plugins), before);
    // The calls did log, into the state dir.
    assert!(w.log().contains("call=mount"), "{}", w.log());
}
