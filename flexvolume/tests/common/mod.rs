//! Runs the built driver exactly as kubelet does (spec §1.2): an argv array,
//! no shell, stdin from /dev/null, stdout and stderr merged into one pipe,
//! read to EOF, and the whole buffer must be exactly one JSON object.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
pub use loopvol_test_support::flex::{kubelet_options, run_exe, FlexWorld, Out};

pub const EXE: &str = env!("CARGO_BIN_EXE_loopvol");
pub const SECRET: &str = "s3cr3t-Pa55w0rd-do-not-leak";
pub const INIT_FALSE: &str = r#"{"status":"Success","capabilities":{"attach":false,"selinuxRelabel":true,"fsGroup":true,"supportsMetrics":true,"requiresFSResize":true}}"#;
pub const INIT_TRUE: &str = r#"{"status":"Success","capabilities":{"attach":true,"selinuxRelabel":true,"fsGroup":true,"supportsMetrics":true,"requiresFSResize":true}}"#;
pub const SUCCESS: &str = r#"{"status":"Success"}"#;
pub const NOT_SUPPORTED: &str = r#"{"status":"Not supported"}"#;

pub fn secret_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(SECRET)
}

/// Kubelet-shaped `mount` options (spec §2) for the PV `pv`, with two
/// secrets, plus `extra`.
pub fn mount_json(pv: &str, extra: &[(&str, &str)]) -> String {
    kubelet_options(pv, &[("password", SECRET), ("user", "admin")], extra)
}

/// Options of the calls that carry only the base keys (attach, mountdevice, ...).
pub fn base_json(pv: &str, extra: &[(&str, &str)]) -> String {
    let mut m: BTreeMap<String, String> =
        [("kubernetes.io/fsType", ""), ("kubernetes.io/readwrite", "rw"), ("kubernetes.io/pvOrVolumeName", pv)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    serde_json::to_string(&m).unwrap()
}

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use loopvol_test_support::{loops_under, mount_count};

pub fn is_read_only_mount(path: &Path) -> bool {
    loopvol_test_support::mounted_read_only(path) == Some(true)
}

/// A recursive listing with sizes, modes and mtimes, to prove nothing changed.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u32, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).unwrap();
        out.push((d.clone(), meta.len(), meta.mode(), meta.mtime(), meta.mtime_nsec()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// `loopvol install` into `plugin_dir`; returns the installed executable.
pub fn install(plugin_dir: &Path, config: Option<&Path>) -> (Out, PathBuf) {
    let mut args = vec!["install", "--plugin-dir", plugin_dir.to_str().unwrap()];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().unwrap()]);
    }
    let out = run_exe(Path::new(EXE), &args, &[]);
    (out, plugin_dir.join("loopvol~loopvol/loopvol"))
}
