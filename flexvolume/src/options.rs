//! The options JSON kubelet passes (spec §2): its own `kubernetes.io/*` keys
//! plus the PV's `flexVolume.options`, all string values. Secrets arrive as
//! base64 under `kubernetes.io/secret/<key>`; they are decoded, registered for
//! redaction and never logged or echoed.

use std::collections::BTreeMap;

use base64::Engine;
use loopvol_backend::params::{self, Dialect, VolumeParams};
use loopvol_backend::{FsType, IoLimits};

use crate::config::Config;
use crate::log;
use crate::reply::{FlexError, FlexResult};

pub const FS_TYPE: &str = params::FLEX_FS_TYPE;
pub const READWRITE: &str = "kubernetes.io/readwrite";
pub const PV_OR_VOLUME_NAME: &str = params::FLEX_PV_OR_VOLUME_NAME;
pub const POD_NAME: &str = "kubernetes.io/pod.name";
pub const POD_NAMESPACE: &str = "kubernetes.io/pod.namespace";
pub const POD_UID: &str = "kubernetes.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "kubernetes.io/serviceAccount.name";
/// Since Kubernetes 1.15.
pub const FS_GROUP: &str = "kubernetes.io/mounterArgs.FsGroup";
/// Before 1.15 (spec P9).
pub const FS_GROUP_LEGACY: &str = "kubernetes.io/fsGroup";
pub const SECRET_PREFIX: &str = "kubernetes.io/secret/";

pub const VOLUME_ID: &str = params::FLEX_VOLUME_ID;
pub const CREATE: &str = params::FLEX_CREATE;

/// Decoded secret bytes; Debug never shows them.
pub struct Secret(#[allow(dead_code)] pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Default)]
pub struct Options {
    /// None when kubelet sent `""` (fsType unset in the spec).
    pub fs_type: Option<FsType>,
    pub read_only: bool,
    pub pv_or_volume_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub service_account: Option<String>,
    /// `mounterArgs.FsGroup` wins over the legacy key. Kubelet applies it
    /// itself (capability fsGroup=true); it is parsed to refuse garbage early.
    pub fs_group: Option<u32>,
    pub secrets: BTreeMap<String, Secret>,
    pub volume_id: Option<String>,
    pub size: Option<u64>,
    pub create: bool,
    pub mount_options: Vec<String>,
    pub thick: bool,
    /// Attach with direct I/O where the pool allows (option `directIO`, default true).
    pub direct_io: bool,
    /// I/O limits for the pods that mount it (options `readIOPS` etc.).
    pub io_limits: IoLimits,
}

impl Options {
    pub fn parse(json: &str) -> FlexResult<Options> {
        // Secrets first: whatever goes wrong later, they are already redacted.
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            // serde_json's message names a position, never the text itself.
            FlexError::option("<json>", format!("options are not valid json: {e}"))
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(FlexError::option("<json>", "options must be a json object"));
        };
        let mut strings = BTreeMap::new();
        for (key, value) in map {
            match value {
                serde_json::Value::String(s) => {
                    if key.starts_with(SECRET_PREFIX) {
                        log::add_secret(&s);
                    }
                    strings.insert(key, s);
                }
                _ => return Err(FlexError::option(&key, "must be a string")),
            }
        }

        let mut opts = Options { create: true, ..Options::default() };
        for (key, value) in &strings {
            if let Some(name) = key.strip_prefix(SECRET_PREFIX) {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|_| FlexError::option(key, "secret value is not valid base64"))?;
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    log::add_secret(text);
                }
                opts.secrets.insert(name.to_string(), Secret(bytes));
            }
        }
        let get = |key: &str| strings.get(key).map(String::as_str);
        let non_empty = |key: &str| get(key).filter(|v| !v.is_empty()).map(str::to_string);

        // What concerns the volume (fs type, size, thick, mount options):
        // the backend's one parser, as for every other front end.
        let volume = VolumeParams::parse_map(&strings, Dialect::FlexVolume).map_err(option_error)?;
        opts.fs_type = volume.fs_type;
        opts.size = volume.size;
        opts.thick = volume.thick.unwrap_or(false);
        opts.direct_io = volume.direct_io.unwrap_or(true);
        opts.io_limits = volume.io_limits.over(IoLimits::default());
        opts.mount_options = volume.mount_options;
        opts.read_only = match get(READWRITE) {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(FlexError::option(READWRITE, "must be \"ro\" or \"rw\"")),
        };
        opts.pv_or_volume_name = non_empty(PV_OR_VOLUME_NAME);
        opts.pod_name = non_empty(POD_NAME);
        opts.pod_namespace = non_empty(POD_NAMESPACE);
        opts.pod_uid = non_empty(POD_UID);
        opts.service_account = non_empty(SERVICE_ACCOUNT);
        opts.fs_group = match (get(FS_GROUP), get(FS_GROUP_LEGACY)) {
            (Some(v), _) => Some(parse_gid(FS_GROUP, v)?),
            (None, Some(v)) => Some(parse_gid(FS_GROUP_LEGACY, v)?),
            (None, None) => None,
        };
        opts.volume_id = non_empty(VOLUME_ID);
        opts.create = params::parse_bool(CREATE, get(CREATE).unwrap_or("")).map_err(option_error)?.unwrap_or(true);
        Ok(opts)
    }

    /// The volume's ID: `volumeID`, else the PV (or inline volume) name.
    pub fn id(&self) -> FlexResult<String> {
        params::flex_volume_id(self.volume_id.as_deref(), self.pv_or_volume_name.as_deref()).map_err(option_error)
    }

    pub fn fs_type_or(&self, config: &Config) -> FsType {
        self.fs_type.unwrap_or(config.default_fs_type)
    }

    /// What is safe to log: who asked, never a secret.
    pub fn summary(&self) -> String {
        format!(
            "pv={:?} volumeID={:?} pod={}/{} uid={:?} sa={:?} fsType={:?} ro={} fsGroup={:?} size={:?} create={} thick={} mountOptions={:?} secrets={:?}",
            self.pv_or_volume_name,
            self.volume_id,
            self.pod_namespace.as_deref().unwrap_or("-"),
            self.pod_name.as_deref().unwrap_or("-"),
            self.pod_uid,
            self.service_account,
            self.fs_type.map(FsType::as_str),
            self.read_only,
            self.fs_group,
            self.size,
            self.create,
            self.thick,
            self.mount_options,
            self.secrets.keys().collect::<Vec<_>>(),
        )
    }
}

fn parse_gid(key: &str, value: &str) -> FlexResult<u32> {
    value.parse().map_err(|_| FlexError::option(key, format!("{value:?} is not a group id")))
}

/// The backend's parameter errors are option errors here (they name the key).
fn option_error(e: loopvol_backend::Error) -> FlexError {
    match e {
        loopvol_backend::Error::InvalidParameter { key, reason } => FlexError::option(key, reason),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_shaped_mount_options() {
        let json = r#"{
            "kubernetes.io/fsType": "",
            "kubernetes.io/readwrite": "ro",
            "kubernetes.io/pvOrVolumeName": "pv-1",
            "kubernetes.io/pod.name": "web-0",
            "kubernetes.io/pod.namespace": "default",
            "kubernetes.io/pod.uid": "4a1d",
            "kubernetes.io/serviceAccount.name": "",
            "kubernetes.io/mounterArgs.FsGroup": "2000",
            "kubernetes.io/fsGroup": "1000",
            "kubernetes.io/secret/password": "c2VjcmV0LXZhbHVlLTQy",
            "volumeID": "vol-a",
            "size": "2Gi",
            "create": "false",
            "mountOptions": "noatime, nodiratime,,",
            "thick": "TRUE",
            "unknownKey": "ignored"
        }"#;
        let o = Options::parse(json).unwrap();
        assert_eq!(o.fs_type, None);
        assert!(o.read_only);
        assert_eq!(o.id().unwrap(), "vol-a");
        assert_eq!(o.fs_group, Some(2000));
        assert_eq!(o.size, Some(2 << 30));
        assert!(!o.create);
        assert!(o.thick);
        assert_eq!(o.mount_options, ["noatime", "nodiratime"]);
        assert_eq!(o.secrets["password"].0, b"secret-value-42");
        assert_eq!(o.service_account, None);
        let summary = o.summary();
        assert!(!summary.contains("secret-value-42") && !summary.contains("c2VjcmV0LXZhbHVlLTQy"));
        assert_eq!(log::redact("x secret-value-42 c2VjcmV0LXZhbHVlLTQy"), "x [redacted] [redacted]");
    }

    #[test]
    fn legacy_fs_group_and_defaults() {
        let o = Options::parse(r#"{"kubernetes.io/fsGroup":"1000","kubernetes.io/pvOrVolumeName":"pv-2"}"#).unwrap();
        assert_eq!(o.fs_group, Some(1000));
        assert_eq!(o.id().unwrap(), "pv-2");
        assert!(o.create && !o.thick && !o.read_only);
    }

    #[test]
    fn refusals_name_the_key_not_the_value() {
        let cases = [
            (r#"{"kubernetes.io/secret/token":"%%%not-base64-zzzzzz"}"#, "kubernetes.io/secret/token"),
            (r#"{"size":"-1Gi"}"#, "size"),
            (r#"{"size":"0"}"#, "size"),
            (r#"{"create":"maybe"}"#, "create"),
            (r#"{"kubernetes.io/readwrite":"rx"}"#, "readwrite"),
            (r#"{"kubernetes.io/fsType":"ntfs"}"#, "fsType"),
            (r#"{"kubernetes.io/mounterArgs.FsGroup":"-5"}"#, "FsGroup"),
            (r#"{"volumeID":5}"#, "volumeID"),
            ("[]", "json"),
            ("{", "json"),
        ];
        for (json, key) in cases {
            let e = Options::parse(json).unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
            assert!(!e.contains("not-base64-zzzzzz"), "{e}");
        }
        assert!(Options::parse("{}").unwrap().id().is_err());
        assert!(Options::parse(r#"{"volumeID":"../etc"}"#).unwrap().id().is_err());
    }
}
