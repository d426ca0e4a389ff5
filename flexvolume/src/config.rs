//! Settings. Kubelet runs the driver with its own environment (spec P21), so
//! settings live in `.loopvol.json` beside the executable (the leading dot
//! keeps kubelet's prober away from it, spec §3.2), or wherever
//! `LOOPVOL_FLEX_CONFIG` points (tests).

use std::path::{Path, PathBuf};

use loopvol_backend::FsType;
use serde::Deserialize;

use crate::reply::{FlexError, FlexResult};
use loopvol_backend::quantity;

pub const ENV: &str = "LOOPVOL_FLEX_CONFIG";
pub const FILE_NAME: &str = ".loopvol.json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub pool: PathBuf,
    pub state_dir: PathBuf,
    pub attach: bool,
    pub default_fs_type: FsType,
    pub default_size: u64,
    /// Where the cgroup filesystems are mounted (I/O limits of pods).
    pub cgroup_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool: PathBuf::from("/var/lib/loopvol/pool"),
            state_dir: PathBuf::from("/var/lib/loopvol/flex"),
            attach: false,
            default_fs_type: FsType::Ext4,
            default_size: 1 << 30,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// The file as written. Unknown keys are refused: a misspelt `stateDir`
/// silently falling back to the default would put mounts somewhere unexpected.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    pool: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    attach: Option<bool>,
    default_fs_type: Option<String>,
    default_size: Option<SizeValue>,
    cgroup_root: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Quantity(String),
}

/// Where the config is read from.
pub fn path() -> PathBuf {
    match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => exe_dir().unwrap_or_else(|| PathBuf::from("/")).join(FILE_NAME),
    }
}

/// The directory of the running executable: the plugin's own directory when
/// kubelet runs it.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Loads the config; a missing file means defaults.
pub fn load() -> FlexResult<Config> {
    load_from(&path())
}

pub fn load_from(path: &Path) -> FlexResult<Config> {
    let bad = |reason: String| FlexError::Config { path: path.display().to_string(), reason };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    let config = parse(&text).map_err(bad)?;
    if let Some(dir) = exe_dir() {
        config.check_outside(&dir).map_err(bad)?;
    }
    Ok(config)
}

/// The `attach` capability for `init`, which must succeed whatever the file
/// holds: the value from a readable file when it is a boolean, else the default.
pub fn attach_capability() -> bool {
    let Ok(text) = std::fs::read_to_string(path()) else {
        return Config::default().attach;
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => map.get("attach").and_then(serde_json::Value::as_bool),
        _ => None,
    }
    .unwrap_or(Config::default().attach)
}

pub fn parse(text: &str) -> Result<Config, String> {
    let raw: RawConfig = serde_json::from_str(text).map_err(|e| format!("invalid json: {e}"))?;
    let mut config = Config::default();
    if let Some(pool) = raw.pool {
        config.pool = absolute("pool", pool)?;
    }
    if let Some(dir) = raw.state_dir {
        config.state_dir = absolute("stateDir", dir)?;
    }
    if let Some(root) = raw.cgroup_root {
        config.cgroup_root = absolute("cgroupRoot", root)?;
    }
    if let Some(attach) = raw.attach {
        config.attach = attach;
    }
    if let Some(fs) = raw.default_fs_type {
        config.default_fs_type = fs.parse().map_err(|e| format!("defaultFsType: {e}"))?;
    }
    if let Some(size) = raw.default_size {
        config.default_size = match size {
            SizeValue::Bytes(n) => n,
            SizeValue::Quantity(q) => quantity::parse(&q).map_err(|e| format!("defaultSize {q:?}: {e}"))?,
        };
        if config.default_size == 0 {
            return Err("defaultSize must be greater than zero".into());
        }
    }
    if config.state_dir.starts_with(&config.pool) || config.pool.starts_with(&config.state_dir) {
        return Err("pool and stateDir must not contain each other".into());
    }
    Ok(config)
}

fn absolute(key: &str, path: PathBuf) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{key} must be an absolute path, not {:?}", path.display().to_string()))
    }
}

impl Config {
    /// Pool and state must stay out of the driver's plugin dir: every write
    /// there makes kubelet re-probe the driver (spec P8).
    pub fn check_outside(&self, plugin_dir: &Path) -> Result<(), String> {
        for (key, path) in [("pool", &self.pool), ("stateDir", &self.state_dir)] {
            if path.starts_with(plugin_dir) {
                return Err(format!("{key} must not be inside the plugin directory {}", plugin_dir.display()));
            }
        }
        Ok(())
    }

    /// Staging mounts of the attach:false flow.
    /// Where volumes are staged (attach: false): `<staging root>/<id>`.
    pub fn staging_root(&self) -> PathBuf {
        self.state_dir.join("staging")
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("loopvol-flex.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        assert_eq!(parse("{}").unwrap(), Config::default());
        let c =
            parse(r#"{"pool":"/p","stateDir":"/s","attach":true,"defaultFsType":"xfs","defaultSize":"2Gi","cgroupRoot":"/c"}"#)
                .unwrap();
        assert_eq!(
            c,
            Config {
                pool: "/p".into(),
                state_dir: "/s".into(),
                attach: true,
                default_fs_type: FsType::Xfs,
                default_size: 2 << 30,
                cgroup_root: "/c".into(),
            }
        );
        assert_eq!(parse(r#"{"defaultSize":4096}"#).unwrap().default_size, 4096);
    }

    #[test]
    fn broken_files() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"pool":"relative"}"#,
            r#"{"stateDir":"/var/lib/loopvol/pool/x"}"#,
            r#"{"defaultFsType":"ntfs"}"#,
            r#"{"defaultSize":"-1Gi"}"#,
            r#"{"defaultSize":0}"#,
            r#"{"attach":"yes"}"#,
            r#"{"statedir":"/s"}"#,
        ] {
            assert!(parse(text).is_err(), "{text:?} must be refused");
        }
    }

    #[test]
    fn missing_file_is_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_from(&dir.path().join("nope.json")).unwrap(), Config::default());
    }
}
