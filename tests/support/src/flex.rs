//! The FlexVolume driver run exactly as kubelet runs it (spec §1.2): an argv
//! array, no shell, stdin from /dev/null, stdout and stderr merged into one
//! pipe, read to EOF, and the whole buffer must be exactly one JSON object.
//! Shared by the FlexVolume tests and the cross-driver tests.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

/// One call's result.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    /// The merged stdout+stderr bytes.
    pub raw: String,
    pub json: Value,
}

impl Out {
    pub fn status(&self) -> &str {
        self.json["status"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }

    /// The reply, trimmed, for golden comparisons.
    pub fn line(&self) -> &str {
        self.raw.trim()
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.status(), "Success", "expected Success: {}", self.raw);
        assert_eq!(self.code, 0);
        self
    }

    #[track_caller]
    pub fn failed(&self) -> &Self {
        assert_eq!(self.status(), "Failure", "expected Failure: {}", self.raw);
        assert!(!self.message().is_empty(), "a Failure carries a message: {}", self.raw);
        self
    }

    #[track_caller]
    pub fn golden(&self, want: &str) -> &Self {
        assert_eq!(self.line(), want);
        self
    }
}

/// Runs `exe args...` as kubelet does, with a minimal environment plus `env`.
pub fn run_exe(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut child = {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("dup pipe"))
            .stderr(writer);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn driver")
        // `cmd` (holding our copies of the write end) is dropped here, so EOF
        // comes when the driver and anything it left behind close theirs.
    };
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).expect("read merged output");
    let status = child.wait().expect("wait");
    let raw = String::from_utf8(buf.clone()).expect("output is utf-8");
    let values: Vec<_> = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>().collect();
    assert_eq!(values.len(), 1, "exactly one JSON value expected in {raw:?}");
    let json = match values.into_iter().next() {
        Some(Ok(v)) => v,
        other => panic!("not JSON ({other:?}): {raw:?}"),
    };
    assert!(json.is_object(), "a JSON object expected: {raw:?}");
    let code = status.code().expect("exited normally");
    let st = json["status"].as_str().expect("status is a string");
    assert!(["Success", "Failure", "Not supported"].contains(&st), "{raw}");
    if st == "Success" {
        assert_eq!(code, 0, "Success implies exit 0");
    }
    for key in ["message", "device"] {
        assert!(json.get(key).is_none_or(Value::is_string), "{key} must be a string: {raw}");
    }
    assert!(json.get("attached").is_none_or(Value::is_boolean), "{raw}");
    Out { code, raw, json }
}

/// Kubelet-shaped `mount` options (spec §2) for the PV `pv`: kubelet's own
/// keys, the given secrets (`kubernetes.io/secret/<name>`, base64 as
/// kubelet sends them), then `extra`.
pub fn kubelet_options(pv: &str, secrets: &[(&str, &str)], extra: &[(&str, &str)]) -> String {
    let mut m: BTreeMap<String, String> = [
        ("kubernetes.io/fsType", ""),
        ("kubernetes.io/readwrite", "rw"),
        ("kubernetes.io/pvOrVolumeName", pv),
        ("kubernetes.io/pod.name", "web-0"),
        ("kubernetes.io/pod.namespace", "default"),
        ("kubernetes.io/pod.uid", "0b7c2f0e-4a1d-4c59-9a5e-1f2e3d4c5b6a"),
        ("kubernetes.io/serviceAccount.name", "default"),
        ("kubernetes.io/mounterArgs.FsGroup", "2000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in secrets {
        m.insert(format!("kubernetes.io/secret/{name}"), base64::engine::general_purpose::STANDARD.encode(value));
    }
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    serde_json::to_string(&m).expect("options encode")
}

/// A temp world: pool, state dir, kubelet root, config file.
pub struct FlexWorld {
    pub dir: tempfile::TempDir,
    /// The world's directory, canonical.
    pub root: PathBuf,
    pub pool: PathBuf,
    pub state: PathBuf,
    pub kubelet: PathBuf,
    pub config: PathBuf,
    /// The FlexVolume binary under test.
    pub exe: PathBuf,
}

impl FlexWorld {
    /// A world for the driver binary `exe`, with `attach` in its config.
    pub fn new(exe: impl AsRef<Path>, attach: bool) -> FlexWorld {
        let dir = tempfile::Builder::new().prefix("loopvol-flex-").tempdir().expect("tempdir");
        // Canonical: mountinfo and sysfs report canonical paths.
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let pool = root.join("pool");
        let state = root.join("state");
        let kubelet = root.join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let config = dir.path().join("config.json");
        let world = FlexWorld { dir, root, pool, state, kubelet, config, exe: exe.as_ref().to_path_buf() };
        world.write_config(attach);
        world
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Out {
        let mut env = vec![("LOOPVOL_FLEX_CONFIG", self.config.to_str().unwrap())];
        env.extend_from_slice(extra);
        run_exe(&self.exe, args, &env)
    }

    /// Writes a config file with these keys (pool and stateDir added).
    pub fn write_config(&self, attach: bool) {
        let text = serde_json::json!({
            "pool": self.pool, "stateDir": self.state, "attach": attach, "defaultFsType": "ext4", "defaultSize": "64Mi"
        });
        std::fs::write(&self.config, text.to_string()).unwrap();
    }

    /// Kubelet's pod volume dir, created as kubelet does before `mount`.
    pub fn pod_dir(&self, pod: &str, vol: &str) -> PathBuf {
        let p = self.kubelet.join("pods").join(pod).join("volumes/loopvol~loopvol").join(vol);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Kubelet's global (device mount) dir for attach:true.
    pub fn global_dir(&self, vol: &str) -> PathBuf {
        let p = self.kubelet.join("plugins/kubernetes.io/flexvolume/loopvol/loopvol/mounts").join(vol);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn staging(&self, id: &str) -> PathBuf {
        self.state.join("staging").join(id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("loopvol-flex.log")).unwrap_or_default()
    }

    /// Unmounts and detaches everything of this world, also when a test failed.
    pub fn guard(&self) -> Guard {
        Guard { root: std::fs::canonicalize(self.dir.path()).unwrap() }
    }
}

impl Drop for FlexWorld {
    /// Nothing of the world stays mounted or attached, also when a test failed.
    fn drop(&mut self) {
        crate::cleanup_under(&self.root);
    }
}

pub struct Guard {
    root: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::cleanup_under(&self.root);
    }
}
