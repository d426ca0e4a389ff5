//! `loopvol-csi migrate-flexvolume`, black-box: YAML and JSON input, file
//! and stdin, golden output (tests/golden/; regenerate with
//! LOOPVOL_UPDATE_GOLDEN=1), and agreement with deploy/examples.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_loopvol-csi");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// Runs the command with `stdin` fed (or /dev/null).
fn migrate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(EXE)
        .arg("migrate-flexvolume")
        .args(args)
        .env_remove("LOOPVOL_DRIVER_NAME")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loopvol-csi");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[track_caller]
fn assert_golden(name: &str, out: &Output) {
    assert!(out.status.success(), "{out:?}");
    let got = String::from_utf8(out.stdout.clone()).unwrap();
    let path = golden_path(name);
    if std::env::var_os("LOOPVOL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got, want, "output differs from {}", path.display());
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_example_flexvolume_pv_migrates_to_the_example_csi_pv() {
    let input = repo("deploy/examples/flexvolume.yaml");
    let out = migrate(&[input.to_str().unwrap()], None);
    assert_golden("migrate-flexvolume.yaml", &out);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // The documented twin (deploy/examples, checked by deploy/validate.sh)
    // is exactly what the command prints, comments and the PVC aside.
    let printed = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    let example = std::fs::read_to_string(repo("deploy/examples/migrate-flexvolume-pv.yaml")).unwrap();
    let example_pv = yaml_docs(&example).into_iter().find(|d| d["kind"] == "PersistentVolume").unwrap();
    assert_eq!(printed, [example_pv]);
}

#[test]
fn stdin_yaml_and_json_agree() {
    let input = std::fs::read(repo("deploy/examples/flexvolume.yaml")).unwrap();
    let from_file = migrate(&[repo("deploy/examples/flexvolume.yaml").to_str().unwrap(), "-o", "json"], None);
    let from_stdin = migrate(&["-", "--output", "json"], Some(&input));
    let implicit_stdin = migrate(&["-o", "json"], Some(&input));
    assert!(from_file.status.success(), "{from_file:?}");
    assert_eq!(from_file.stdout, from_stdin.stdout);
    assert_eq!(from_file.stdout, implicit_stdin.stdout);
    let json: Value = serde_json::from_slice(&from_file.stdout).unwrap();
    let yaml = yaml_docs(&String::from_utf8(migrate(&["-"], Some(&input)).stdout).unwrap());
    assert_eq!(yaml, [json]);
}

#[test]
fn a_kubectl_json_pv_from_stdin() {
    let input = std::fs::read(golden_path("kubectl-pv.json")).unwrap();
    let out = migrate(&["-o", "json"], Some(&input));
    assert_golden("kubectl-pv.migrated.json", &out);
    let warnings = String::from_utf8(out.stderr).unwrap();
    assert!(warnings.is_empty(), "known options only: {warnings}");
    let pv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], "db-data-vol");
    assert_eq!(pv["spec"]["csi"]["fsType"], "xfs");
    assert_eq!(pv["spec"]["csi"]["readOnly"], true);
    assert_eq!(pv["spec"]["storageClassName"], "loopvol-xfs");
    assert_eq!(pv["spec"]["mountOptions"], serde_json::json!(["noatime", "nodiratime"]));
    assert_eq!(pv["spec"]["claimRef"], serde_json::json!({"namespace": "prod", "name": "db-data"}));
    assert_eq!(pv["metadata"], serde_json::json!({"name": "db-data-csi", "labels": {"app": "db"}}));
    // The same PV as YAML gives the same object.
    let yaml = migrate(&[golden_path("kubectl-pv.json").to_str().unwrap()], None);
    assert_eq!(yaml_docs(&String::from_utf8(yaml.stdout).unwrap()), [pv]);
}

#[test]
fn a_list_with_node_and_driver_overrides() {
    let input = std::fs::read(golden_path("pv-list.yaml")).unwrap();
    let out = migrate(&["--node", "worker-2", "--driver-name", "lv.example.com"], Some(&input));
    assert_golden("pv-list.migrated.yaml", &out);
    let warnings = String::from_utf8(out.stderr).unwrap();
    assert!(warnings.contains("PersistentVolume pvc-1234 is not a FlexVolume PV; skipped"), "{warnings}");
    assert!(warnings.contains("option \"fsGroup\" has no CSI counterpart"), "{warnings}");
}

#[test]
fn without_a_node_it_asks_for_one_and_prints_nothing() {
    let input = std::fs::read(golden_path("pv-list.yaml")).unwrap();
    let out = migrate(&[], Some(&input));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("PersistentVolume legacy") && err.contains("pass --node NODE"), "{err}");
}

#[test]
fn input_that_is_not_a_loopvol_flexvolume_pv_fails() {
    for (input, want) in [
        ("kind: ConfigMap\nmetadata: {name: x}\n", "no loopvol/loopvol FlexVolume PersistentVolume"),
        ("{\"kind\": ", "not valid JSON"),
        ("a: [b\n", "not valid YAML"),
    ] {
        let out = migrate(&["--node", "n"], Some(input.as_bytes()));
        assert_eq!(out.status.code(), Some(2), "{input}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(want), "{input}: {out:?}");
    }
    let out = migrate(&["/nonexistent/pv.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/pv.yaml"), "{out:?}");
}

/// A PV with a blank fsType holds what the FlexVolume driver made: the pool's
/// record says which (it used to come out as ext4 whatever the node's
/// FlexVolume config said, and the CSI stage was then refused).
#[test]
fn a_blank_fs_type_comes_from_the_pool_record_or_the_flexvolume_config() {
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let pool = loopvol_backend::Pool::open(&pool_dir, loopvol_backend::PoolOptions::default()).unwrap();
    pool.create_volume(&loopvol_backend::CreateVolume {
        io_limits: Default::default(),
        name: "xfs-data".into(),
        id: Some("xfs-data".into()),
        capacity: loopvol_backend::CapacityRange { required: 300 << 20, limit: 0 },
        fs_type: Some(loopvol_backend::FsType::Xfs),
        access_type: loopvol_backend::AccessType::Mount,
        thick: false,
        source: None,
        parameters: Default::default(),
        lifecycle: loopvol_backend::Lifecycle::Persistent,
        direct_io: true,
    })
    .unwrap();
    let pv = "kind: PersistentVolume\nmetadata: {name: xfs-data}\nspec:\n  capacity: {storage: 300Mi}\n  \
              accessModes: [ReadWriteOnce]\n  flexVolume: {driver: loopvol/loopvol}\n";
    let pool_arg = pool_dir.to_str().unwrap();
    let out = migrate(&["--pool", pool_arg, "--node", "n1"], Some(pv.as_bytes()));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("xfs from the pool's record"), "{out:?}");
    let doc = &yaml_docs(&String::from_utf8(out.stdout).unwrap())[0];
    assert_eq!(doc["spec"]["csi"]["fsType"], "xfs");
    assert_eq!(doc["spec"]["storageClassName"], "loopvol-xfs");

    // Not in this pool: the FlexVolume config's defaultFsType.
    let config = dir.path().join(".loopvol.json");
    std::fs::write(&config, r#"{"defaultFsType": "xfs"}"#).unwrap();
    let other = pv.replace("name: xfs-data", "name: elsewhere");
    let out = migrate(&["--node", "n1", "--flex-config", config.to_str().unwrap()], Some(other.as_bytes()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(yaml_docs(&String::from_utf8(out.stdout).unwrap())[0]["spec"]["csi"]["fsType"], "xfs");
    // The pool's record wins over the config.
    let ext4_config = dir.path().join("ext4.json");
    std::fs::write(&ext4_config, r#"{"defaultFsType": "ext4"}"#).unwrap();
    let out = migrate(
        &["--pool", pool_arg, "--node", "n1", "--flex-config", ext4_config.to_str().unwrap()],
        Some(pv.as_bytes()),
    );
    assert_eq!(yaml_docs(&String::from_utf8(out.stdout).unwrap())[0]["spec"]["csi"]["fsType"], "xfs");
}
