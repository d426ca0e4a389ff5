//! What every call but `init` shares: the config, the open pool, the
//! per-volume lock of this driver, and the per-target records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopvol_backend::lock::{self, Guard};
use loopvol_backend::{id, record, AccessType, CapacityRange, CreateVolume, Error, Pool, PoolOptions, Volume};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::log;
use crate::options::{Options, PV_OR_VOLUME_NAME};
use crate::reply::{FlexError, FlexResult};

/// How long a call waits for another call on the same volume. Kubelet has no
/// timeout of its own for most calls (spec §3.1), so give up eventually and
/// let it retry rather than block the volume forever.
const LOCK_WAIT: Duration = Duration::from_secs(60);

pub struct Ctx {
    pub config: Config,
    pub pool: Pool,
}

/// Which volume a pod dir (or global dir) got: a teardown hint for when the
/// kernel no longer tells (see `unmount`). Keyed by a hash of the path.
#[derive(Debug, Serialize, Deserialize)]
struct TargetRecord {
    target: PathBuf,
    id: String,
}

impl Ctx {
    pub fn open(config: Config) -> FlexResult<Ctx> {
        let options =
            PoolOptions { lock_wait: LOCK_WAIT, default_size: config.default_size, default_fs: config.default_fs_type };
        let pool = Pool::open(&config.pool, options)?;
        Ok(Ctx { config, pool })
    }

    /// Serialises this driver's multi-step sequences on one volume (stage then
    /// publish, unpublish then unstage) across processes; the backend locks
    /// each single step itself.
    pub fn lock(&self, id: &str) -> FlexResult<Guard> {
        let dir = self.config.locks_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io { op: "create lock dir", path: dir.clone(), source: e })?;
        Ok(lock::acquire(&dir, &format!("vol-{id}"), LOCK_WAIT)?)
    }

    /// The volume, created on first use unless `create` is "false".
    pub fn ensure_volume(&self, id: &str, opts: &Options) -> FlexResult<Volume> {
        match self.pool.volume(id) {
            Ok(volume) => Ok(volume),
            Err(Error::VolumeNotFound(_)) if opts.create => {
                let mut parameters = BTreeMap::new();
                if let Some(pv) = &opts.pv_or_volume_name {
                    // `detach` gets only the PV name (spec P6); remember it.
                    parameters.insert(PV_OR_VOLUME_NAME.to_string(), pv.clone());
                }
                let req = CreateVolume {
                    // The name is the ID: inline volume names ("data") repeat across pods.
                    name: id.to_string(),
                    id: Some(id.to_string()),
                    capacity: CapacityRange { required: opts.size.unwrap_or(self.config.default_size), limit: 0 },
                    fs_type: Some(opts.fs_type_or(&self.config)),
                    access_type: AccessType::Mount,
                    thick: opts.thick,
                    source: None,
                    parameters,
                };
                let volume = self.pool.create_volume(&req)?;
                log::info(format_args!("created volume {id} ({} bytes, {})", volume.capacity_bytes, volume.fs_type));
                Ok(volume)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn target_record_path(&self, target: &Path) -> PathBuf {
        let key = id::from_name("t-", &target.to_string_lossy());
        self.config.targets_dir().join(format!("{key}.json"))
    }

    pub fn remember_target(&self, target: &Path, id: &str) {
        let dir = self.config.targets_dir();
        let rec = TargetRecord { target: target.to_path_buf(), id: id.to_string() };
        let result = std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io { op: "create records dir", path: dir, source: e })
            .and_then(|()| record::write(&self.target_record_path(target), &rec));
        if let Err(e) = result {
            // Only a hint: teardown works from the mount table without it.
            log::warn(format_args!("cannot record target {}: {e}", target.display()));
        }
    }

    pub fn recorded_target(&self, target: &Path) -> Option<String> {
        match record::read::<TargetRecord>(&self.target_record_path(target)) {
            Ok(Some(rec)) if rec.target == target && id::validate(&rec.id).is_ok() => Some(rec.id),
            Ok(_) => None,
            Err(e) => {
                log::warn(format_args!("ignoring target record of {}: {e}", target.display()));
                None
            }
        }
    }

    pub fn forget_target(&self, target: &Path) {
        if let Err(e) = record::remove(&self.target_record_path(target)) {
            log::warn(format_args!("cannot remove target record of {}: {e}", target.display()));
        }
    }

    /// The volume a name given by kubelet stands for: an ID, or the PV name
    /// remembered at creation. None when no volume matches.
    pub fn find_volume(&self, name: &str) -> FlexResult<Option<Volume>> {
        if id::validate(name).is_ok() {
            match self.pool.volume(name) {
                Ok(v) => return Ok(Some(v)),
                Err(Error::VolumeNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let found = self
            .pool
            .volumes()?
            .into_iter()
            .find(|v| v.name == name || v.parameters.get(PV_OR_VOLUME_NAME).is_some_and(|pv| pv == name));
        Ok(found)
    }
}

/// Paths from kubelet are absolute; anything else is a caller bug.
pub fn absolute_path(what: &str, arg: &str) -> FlexResult<PathBuf> {
    let path = PathBuf::from(arg);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(FlexError::usage(format!("{what} must be an absolute path, not {}", describe(arg))))
    }
}

/// How an argument appears in a message or the log: quoted whole, however
/// long (paths are not secrets, and kubelet's pod paths, about 89 bytes, are
/// what tells which pod a call was for), except what may be an options object
/// (a swapped argv must not echo secrets into pod events) and what is longer
/// than any path can be.
pub fn describe(arg: &str) -> String {
    if arg.contains('{') {
        format!("an options object of {} bytes", arg.len())
    } else if arg.len() > PATH_MAX {
        format!("an argument of {} bytes", arg.len())
    } else {
        format!("{arg:?}")
    }
}

/// Linux's PATH_MAX, including the terminating NUL.
const PATH_MAX: usize = 4096;

#[cfg(test)]
mod describe_tests {
    use super::describe;

    #[test]
    fn paths_are_quoted_whole_and_options_never() {
        let pod = "/var/lib/kubelet/pods/0b7c2f0e-4a1d-4c59-9a5e-1f2e3d4c5b6a/volumes/loopvol~loopvol/pvc-data";
        assert!(pod.len() > 80);
        assert_eq!(describe(pod), format!("{pod:?}"));
        assert_eq!(describe(r#"{"kubernetes.io/secret/x":"aGk="}"#), "an options object of 33 bytes");
        assert_eq!(describe(&"x".repeat(5000)), "an argument of 5000 bytes");
    }
}
