//! What every call but `init` shares: the config and the open pool. The
//! pool takes its own locks (one per operation, whole lifecycles included),
//! so the calls that race as separate processes need none of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use loopvol_backend::{id, AccessType, CapacityRange, CreateVolume, Error, Lifecycle, Pool, PoolOptions, Volume};

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

impl Ctx {
    pub fn open(config: Config) -> FlexResult<Ctx> {
        let options = PoolOptions {
            lock_wait: LOCK_WAIT,
            default_size: config.default_size,
            default_fs: config.default_fs_type,
            cgroup_root: config.cgroup_root.clone(),
            ..PoolOptions::default()
        };
        let pool = Pool::open(&config.pool, options)?;
        Ok(Ctx { config, pool })
    }

    /// How a volume these options name is created on first use.
    pub fn create_request(&self, id: &str, opts: &Options) -> CreateVolume {
        let mut parameters = BTreeMap::new();
        if let Some(pv) = &opts.pv_or_volume_name {
            // `detach` gets only the PV name (spec P6); remember it.
            parameters.insert(PV_OR_VOLUME_NAME.to_string(), pv.clone());
        }
        CreateVolume {
            io_limits: opts.io_limits,
            // The name is the ID: inline volume names ("data") repeat across pods.
            name: id.to_string(),
            id: Some(id.to_string()),
            capacity: CapacityRange { required: opts.size.unwrap_or(self.config.default_size), limit: 0 },
            fs_type: Some(opts.fs_type_or(&self.config)),
            access_type: AccessType::Mount,
            thick: opts.thick,
            source: None,
            parameters,
            lifecycle: Lifecycle::Persistent,
            direct_io: opts.direct_io,
        }
    }

    /// The volume, created on first use unless `create` is "false".
    pub fn ensure_volume(&self, id: &str, opts: &Options) -> FlexResult<Volume> {
        match self.pool.volume(id) {
            Ok(volume) => Ok(volume),
            Err(Error::VolumeNotFound(_)) if opts.create => {
                let volume = self.pool.create_volume(&self.create_request(id, opts))?;
                log::info(format_args!("created volume {id} ({} bytes, {})", volume.capacity_bytes, volume.fs_type));
                Ok(volume)
            }
            Err(e) => Err(e.into()),
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
