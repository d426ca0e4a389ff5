//! Security checks across the workspace (see SECURITY.md): secrets never
//! logged, no shell anywhere, private file modes, the CSI socket closed to
//! other users, hostile options and paths refused, mount targets that are or
//! pass through symlinks never followed out of place.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this
//! test (target/<profile>/loopvol and loopvol-csi).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use loopvol_backend::{
    AccessType, CapacityRange, CreateVolume, Error, FsType, Lifecycle, Pool, PoolOptions, PublishRequest, StageRequest,
};
use loopvol_test_support::flex::{kubelet_options, FlexWorld};
use loopvol_test_support::{privileged, Sandbox};

const SECRET: &str = "Sup3r-s3cret-v4lue-never-to-be-logged";
const SECRET_USER: &str = "admin-user-secret-name";

// ---- helpers ----

fn bin(name: &str) -> PathBuf {
    loopvol_tests::workspace_binary(name)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Options as kubelet sends them, with two secrets.
fn options(pv: &str, extra: &[(&str, &str)]) -> String {
    kubelet_options(pv, &[("password", SECRET), ("username", SECRET_USER)], extra)
}

/// A FlexVolume world for the workspace's `loopvol`.
fn flex(attach: bool) -> FlexWorld {
    FlexWorld::new(bin("loopvol"), attach)
}

/// Every regular file below `dir` with its content (lossy), for grepping.
fn all_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.len() < (16 << 20) {
                // Images are sparse and large; records, logs and locks are small.
                if let Ok(bytes) = fs::read(&path) {
                    out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
                }
            }
        }
    }
    out
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for s in [SECRET.to_string(), b64(SECRET), SECRET_USER.to_string(), b64(SECRET_USER)] {
        assert!(!text.contains(&s), "{what} contains a secret ({s}):\n{text}");
    }
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    loopvol_test_support::mounts_under(root)
}

// ---- secrets ----

/// Every call that reads options, succeeding and failing, with secrets in
/// the options: the output and every file under the world (state dir with
/// the log and records, pool, kubelet dirs) are free of them.
#[test]
fn secrets_never_reach_any_output_or_file() {
    let w = flex(false);
    let pod = w.pod_dir(&"p".repeat(3), "pv-sec");
    let p = pod.to_str().unwrap();
    let mut outputs = Vec::new();
    // Calls that fail after the secrets were read.
    for extra in [
        vec![("size", "-1Gi")],
        vec![("mountOptions", "suid")],
        vec![("kubernetes.io/fsType", "ntfs")],
        vec![("volumeID", "../../etc")],
        vec![("create", "maybe")],
        vec![("kubernetes.io/secret/broken", "%%% not base64 %%%")],
    ] {
        outputs.push(w.run(&["mount", p, &options("pv-sec", &extra)]).raw);
    }
    // Swapped and truncated argv, unknown calls.
    let json = options("pv-sec", &[]);
    outputs.push(w.run(&["mount", &json, p]).raw);
    outputs.push(w.run(&["mount", &json]).raw);
    outputs.push(w.run(&["expandfs", &json, "/dev/loop0", p, "not-a-number", "0"]).raw);
    outputs.push(w.run(&["isattached", "node-1", &json]).raw);
    outputs.push(w.run(&["attach", &json, ""]).raw);
    outputs.push(w.run(&["getvolumename", &json]).raw);
    outputs.push(w.run(&["no-such-call", &json]).raw);
    for o in &outputs {
        assert_no_secret("a reply", o);
    }
    if privileged("secrets_never_reach_any_output_or_file") {
        // The whole life of a volume, both flows.
        assert!(w.run(&["mount", p, &json]).raw.contains("Success"));
        outputs.push(w.run(&["mount", p, &json]).raw);
        outputs.push(w.run(&["expandfs", &json, "/dev/loop0", p, "134217728", "67108864"]).raw);
        outputs.push(w.run(&["unmount", p]).raw);
        let a = flex(true);
        let global = a.root.join("kubelet/plugins/kubernetes.io/flexvolume/loopvol/loopvol/mounts/pv-att");
        fs::create_dir_all(&global).unwrap();
        let apod = a.pod_dir("q", "pv-att");
        let ajson = options("pv-att", &[]);
        let g = global.to_str().unwrap();
        let pd = apod.to_str().unwrap();
        let calls: [&[&str]; 8] = [
            &["attach", &ajson, "node-1"],
            &["isattached", &ajson, "node-1"],
            &["waitforattach", "loopvol:pv-att", &ajson],
            &["mountdevice", g, "loopvol:pv-att", &ajson],
            &["mount", pd, &ajson],
            &["unmount", pd],
            &["unmountdevice", g],
            &["detach", "pv-att", "node-1"],
        ];
        for args in calls {
            let out = a.run(args).raw;
            assert!(out.contains("Success") || args[0] == "isattached", "{args:?}: {out}");
            assert_no_secret("a reply", &out);
        }
        for (path, text) in all_files(&a.root) {
            assert_no_secret(&path.display().to_string(), &text);
        }
        assert!(mounts_under(&a.root).is_empty());
    }
    for o in &outputs {
        assert_no_secret("a reply", o);
    }
    let files = all_files(&w.root);
    assert!(
        files.iter().any(|(p, t)| p.ends_with("loopvol-flex.log") && t.contains("mount")),
        "the calls were logged: {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, text) in files {
        assert_no_secret(&path.display().to_string(), &text);
    }
}

// ---- no shell ----

/// A guard over the production Rust sources of the workspace (every `src/`
/// and build script): programs are run with argv, never through a shell.
#[test]
fn no_shell_anywhere_in_the_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // Built from pieces so this file does not match itself.
    let q = '"';
    let patterns: Vec<String> = vec![
        format!("Command::new({q}sh{q}"),
        format!("Command::new({q}bash{q}"),
        format!("Command::new({q}/bin/sh{q}"),
        format!("Command::new({q}/bin/bash{q}"),
        format!("Command::new({q}/usr/bin/env{q}"),
        format!("{q}/bin/sh{q}"),
        format!("{q}/bin/bash{q}"),
        format!("arg({q}-c{q})"),
        format!("{q}-c{q},"),
        format!("run({q}sh{q}"),
        format!("run_any({q}sh{q}"),
        format!("run({q}bash{q}"),
        format!("libc::{}(", "system"),
        format!("libc::{}(", "popen"),
    ];
    let mut scanned = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "corpus" | "corpus-work" | "artifacts") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") && (path.components().any(|c| c.as_os_str() == "src") || name == "build.rs")
            {
                // Production code only: unit tests below `#[cfg(test)]` may
                // use `sh -c` on purpose (tools.rs tests its runner with it).
                let text = fs::read_to_string(&path).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                scanned += 1;
                for pat in &patterns {
                    assert!(!text.contains(pat.as_str()), "{} runs a shell ({pat})", path.display());
                }
            }
        }
    }
    assert!(scanned > 30, "the workspace sources were found ({scanned} files)");
    assert!(root.join("backend/src/kernel/tools.rs").exists(), "the scan starts at the workspace root");
}

// ---- file modes ----

#[test]
fn pool_files_are_private() {
    let sandbox = Sandbox::new();
    let pool = Pool::open(&sandbox.path().join("pool"), PoolOptions::default()).unwrap();
    let req = |name: &str, thick: bool| CreateVolume {
        io_limits: Default::default(),
        name: name.into(),
        id: None,
        capacity: CapacityRange { required: 16 << 20, limit: 0 },
        fs_type: Some(FsType::Ext4),
        access_type: AccessType::Block,
        thick,
        source: None,
        parameters: BTreeMap::new(),
        lifecycle: Lifecycle::Persistent,
        direct_io: true,
    };
    let thin = pool.create_volume(&req("thin", false)).unwrap();
    let thick = pool.create_volume(&req("thick", true)).unwrap();
    pool.create_snapshot("snap", &thin.id).unwrap();
    let clone = CreateVolume { source: Some(loopvol_backend::Source::Volume(thick.id.clone())), ..req("clone", false) };
    pool.create_volume(&clone).unwrap();
    let mut checked = 0;
    let mut stack = vec![pool.root().to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = fs::metadata(&d).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", d.display());
        for e in fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            let mode = meta.mode() & 0o777;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{} is {mode:o}", e.path().display());
                checked += 1;
            }
        }
    }
    // 3 volumes and 1 snapshot (image + record each), plus lock files.
    assert!(checked >= 8, "{checked} files checked");
}

// ---- the CSI socket ----

#[test]
fn csi_socket_is_closed_to_other_users() {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    let socket = root.join("run/csi.sock");
    let mut child = Command::new(bin("loopvol-csi"))
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--node-id", "sec-node", "--pool"])
        .arg(root.join("pool"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Readiness wait (bounded), not a timing assertion.
    let mut meta = None;
    for _ in 0..500 {
        if let Ok(m) = fs::symlink_metadata(&socket) {
            meta = Some(m);
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let meta = meta.expect("loopvol-csi created its socket");
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "the socket grants root's powers: not for other users ({mode:o})");
    assert_eq!(mode & 0o600, 0o600, "the owner can use it ({mode:o})");
    // A regular file where the socket belongs is not replaced. (A SIGTERM
    // that came before the handlers were installed leaves the socket.)
    let _ = fs::remove_file(&socket);
    fs::write(&socket, b"not a socket").unwrap();
    let out = Command::new(bin("loopvol-csi"))
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--node-id", "sec-node", "--pool"])
        .arg(root.join("pool"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fs::read(&socket).unwrap(), b"not a socket");
}

// ---- hostile options through the FlexVolume binary ----

#[test]
fn hostile_ids_and_mount_options_are_refused_and_change_nothing_outside_the_pool() {
    let w = flex(false);
    let pod = w.pod_dir("h", "pv-h");
    let p = pod.to_str().unwrap();
    for (what, extra) in [
        ("dotdot id", vec![("volumeID", "../../../etc/passwd")]),
        ("absolute id", vec![("volumeID", "/etc/passwd")]),
        ("hidden id", vec![("volumeID", ".hidden")]),
        ("option-looking id", vec![("volumeID", "-rf")]),
        ("long id", vec![("volumeID", &"x".repeat(129))]),
        ("suid", vec![("mountOptions", "suid")]),
        ("dev", vec![("mountOptions", "nodev,dev")]),
        ("rw switch", vec![("mountOptions", "rw")]),
        ("bind", vec![("mountOptions", "bind")]),
        ("errors=panic", vec![("mountOptions", "errors=panic")]),
        ("unknown fs", vec![("kubernetes.io/fsType", "nfs")]),
        ("huge size", vec![("size", "99999Ei")]),
    ] {
        let out = w.run(&["mount", p, &options("pv-h", &extra)]).raw;
        assert!(out.contains("\"Failure\""), "{what}: {out}");
    }
    assert!(mounts_under(&w.root).is_empty());
    // Nothing was created outside the pool and state dirs.
    let outside: Vec<_> = fs::read_dir(&w.root).unwrap().map(|e| e.unwrap().file_name()).collect();
    for name in &outside {
        assert!(["pool", "state", "kubelet", "config.json"].contains(&name.to_str().unwrap()), "{name:?}");
    }
    // A refused ID never became a file name.
    for (path, _) in all_files(&w.root) {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(!name.contains("passwd") && !name.starts_with("-rf") && !name.starts_with(".hidden"), "{path:?}");
    }
}

// ---- symlinked targets ----

fn stage_req(staging: &Path) -> StageRequest {
    StageRequest {
        staging_path: staging.into(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
    }
}

fn publish_req(staging: &Path, target: &Path) -> PublishRequest {
    PublishRequest {
        pod_uid: None,
        staging_path: staging.into(),
        target_path: target.into(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: false,
        mount_options: vec![],
        exclusive: false,
    }
}

#[test]
fn symlinked_targets_are_not_followed() {
    if !privileged("symlinked_targets_are_not_followed") {
        return;
    }
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let pool = Pool::open(&dir.join("pool"), PoolOptions::default()).unwrap();
    let vol = pool
        .create_volume(&CreateVolume {
            io_limits: Default::default(),
            name: "sym".into(),
            id: None,
            capacity: CapacityRange { required: 32 << 20, limit: 0 },
            fs_type: Some(FsType::Ext4),
            access_type: AccessType::Mount,
            thick: false,
            source: None,
            parameters: BTreeMap::new(),
            lifecycle: Lifecycle::Persistent,
            direct_io: true,
        })
        .unwrap();
    let staging = dir.join("staging");
    fs::create_dir_all(&staging).unwrap();
    pool.stage(&vol.id, &stage_req(&staging)).unwrap();
    let elsewhere = dir.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();

    // The target itself is a symlink to a directory elsewhere.
    let link = dir.join("pod-link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let err = pool.publish(&vol.id, &publish_req(&staging, &link)).unwrap_err();
    assert!(matches!(err, Error::TargetKind { actual: "symlink", .. }), "{err:?}");

    // A directory on the way to the target is a symlink: mount(2) would
    // follow it and the mount would land where the records cannot see it.
    let parent_link = dir.join("pods-link");
    std::os::unix::fs::symlink(&elsewhere, &parent_link).unwrap();
    for through in [parent_link.join("mount"), parent_link.join("deeper/mount")] {
        let err = pool.publish(&vol.id, &publish_req(&staging, &through)).unwrap_err();
        assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");
    }
    let err = pool.stage(&vol.id, &stage_req(&parent_link.join("staging"))).unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. } | Error::StagedElsewhere { .. }), "{err:?}");
    assert_eq!(mounts_under(&dir), vec![staging.clone()], "only the staging mount exists");
    assert!(fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing was created through the symlink");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is left alone");
    pool.unstage(&vol.id, &staging, false).unwrap();
}
