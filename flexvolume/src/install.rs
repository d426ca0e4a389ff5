//! `loopvol install --plugin-dir DIR [--config FILE]`, run by the installer
//! DaemonSet. Kubelet may execute the old binary at any moment and re-probes
//! on every change in the driver dir (spec §3.2, P16), so:
//! - the new binary and config are written under dot names (ignored by the
//!   prober), fsynced, then renamed over the live names: a reader sees the old
//!   file or the new one, never half of one, and the running old binary keeps
//!   its inode (no ETXTBSY);
//! - the config is put in place before the binary, so the `init` that the
//!   binary's rename triggers already reads the new config;
//! - an unchanged file is not rewritten (no needless re-probe), which also
//!   makes re-running the installer a no-op.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config;
use crate::reply::{FlexError, FlexResult, Reply};

pub const DRIVER_DIR: &str = "loopvol~loopvol";
pub const DRIVER: &str = "loopvol";

struct Args {
    plugin_dir: PathBuf,
    config: Option<PathBuf>,
}

pub fn run(args: &[String]) -> FlexResult<Reply> {
    let args = parse_args(args)?;
    let dir = args.plugin_dir.join(DRIVER_DIR);
    fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| io("chmod", &dir, e))?;

    let mut changed = Vec::new();
    if let Some(source) = &args.config {
        let text = fs::read_to_string(source).map_err(|e| io("read", source, e))?;
        // Refuse to install a config that every call would then reject.
        config::parse(&text)
            .and_then(|c| c.check_outside(&dir))
            .map_err(|reason| FlexError::Config { path: source.display().to_string(), reason })?;
        if put(&dir, config::FILE_NAME, text.as_bytes(), 0o644)? {
            changed.push(config::FILE_NAME);
        }
    }

    let exe = std::env::current_exe().map_err(|e| io("locate", Path::new("/proc/self/exe"), e))?;
    let binary = fs::read(&exe).map_err(|e| io("read", &exe, e))?;
    if put(&dir, DRIVER, &binary, 0o755)? {
        changed.push(DRIVER);
    }

    let target = dir.join(DRIVER);
    let message = if changed.is_empty() {
        format!("{} is up to date", target.display())
    } else {
        format!("installed {} ({})", target.display(), changed.join(", "))
    };
    Ok(Reply::success().message(message))
}

/// Puts `bytes` at `dir/name` atomically unless it already holds them.
/// Returns whether the file changed.
fn put(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> FlexResult<bool> {
    let target = dir.join(name);
    if fs::read(&target).is_ok_and(|old| old == bytes) {
        // Same content; only repair the mode (an upgrade must stay executable).
        let perms = fs::Permissions::from_mode(mode);
        fs::set_permissions(&target, perms).map_err(|e| io("chmod", &target, e))?;
        return Ok(false);
    }
    let tmp = dir.join(format!(".{}", name.trim_start_matches('.')));
    let tmp = if tmp == target { dir.join(format!("{name}.tmp")) } else { tmp };
    // A fresh inode: never write into a file someone may be executing.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &tmp, e)),
    }
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| io("create", &tmp, e))?;
        file.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
        // The umask may have narrowed the mode given to open.
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", &tmp, e))?;
        file.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &target).map_err(|e| io("rename", &target, e))?;
        // The rename is durable once the directory is synced.
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

fn parse_args(args: &[String]) -> FlexResult<Args> {
    let mut plugin_dir = None;
    let mut config = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "--plugin-dir" => &mut plugin_dir,
            "--config" => &mut config,
            other => return Err(FlexError::usage(format!("install: unknown argument {other:?}"))),
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| FlexError::usage(format!("install: {flag} needs a value")))?,
        };
        if value.is_empty() {
            return Err(FlexError::usage(format!("install: {flag} needs a value")));
        }
        *slot = Some(PathBuf::from(value));
    }
    let plugin_dir = plugin_dir.ok_or_else(|| FlexError::usage("install: --plugin-dir DIR is required"))?;
    Ok(Args { plugin_dir, config })
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> FlexError {
    FlexError::Backend(loopvol_backend::Error::Io { op, path: path.to_path_buf(), source })
}
