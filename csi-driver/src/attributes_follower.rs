//! Applies each PV's VolumeAttributesClass to the volumes of this node's pool
//! (`--follow-volume-attributes-classes`).
//!
//! external-resizer runs once per cluster, against a driver with an empty
//! pool (`--defer-modify-to-node`): its ControllerModifyVolume only checks the
//! parameters, then the resizer sets `spec.volumeAttributesClassName` on the
//! PV. This watch is how the node that holds the volume learns of it. The
//! initial list re-applies every class (modify_volume is idempotent), which is
//! how a node that was down catches up. API trouble is logged and retried; it
//! never stops the CSI server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config, ResourceExt};
use loopvol_backend::params::{Dialect, VolumeParams};
use tokio::sync::mpsc;
use tonic::Code;

use crate::driver::Driver;

/// First and longest wait between retries of one PV (or of building the client).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest wait between attempts to (re)start the watch (client-go's is 30 s).
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// What a PV asks of this driver, if anything: its volume and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub pv: String,
    pub handle: String,
    pub class: String,
}

/// Pure filter: a live CSI PV of this driver with a class set. Whether the
/// volume is in this node's pool is asked of the pool afterwards.
pub(crate) fn target(pv: &PersistentVolume, driver_name: &str) -> Option<Target> {
    if pv.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pv.spec.as_ref()?;
    let csi = spec.csi.as_ref().filter(|csi| csi.driver == driver_name)?;
    let class = spec.volume_attributes_class_name.as_deref().filter(|c| !c.is_empty())?;
    if csi.volume_handle.is_empty() {
        return None;
    }
    Some(Target { pv: pv.name_any(), handle: csi.volume_handle.clone(), class: class.to_string() })
}

/// A class's parameters for `modify_volume`; the error says why they are refused.
pub(crate) fn class_params(class: &VolumeAttributesClass, driver_name: &str) -> Result<VolumeParams, String> {
    if class.driver_name != driver_name {
        return Err(format!("the class is for driver {:?}, not {driver_name:?}", class.driver_name));
    }
    let empty = BTreeMap::new();
    VolumeParams::parse_map(class.parameters.as_ref().unwrap_or(&empty), Dialect::Mutable).map_err(|e| e.to_string())
}

/// How one attempt at a PV ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Applied, or nothing to do (not in this pool): no retry.
    Done,
    /// Refused for good (bad parameters, wrong driver): retried only when the PV changes.
    Refused,
    /// Worth another try (API error, a busy volume).
    Retry,
}

/// Backend errors a retry can fix (a busy volume, the kernel); bad input and
/// a pool too full to make the volume thick wait for the PV to change.
fn retryable(code: Code) -> bool {
    !matches!(code, Code::InvalidArgument | Code::OutOfRange | Code::NotFound | Code::ResourceExhausted)
}

fn backoff(attempt: u32, max: Duration) -> Duration {
    RETRY_MIN.saturating_mul(1 << attempt.min(6)).min(max)
}

struct Follower {
    driver: Arc<Driver>,
    pvs: Api<PersistentVolume>,
    classes: Api<VolumeAttributesClass>,
    /// Class parameters by name: a VolumeAttributesClass's parameters are immutable.
    class_cache: HashMap<String, Arc<VolumeAttributesClass>>,
    /// The latest target of each PV, with the event count it came with
    /// (a retry of an older one is dropped).
    latest: HashMap<String, (Target, u64)>,
    /// What was applied (or refused) last, so that status-only PV updates do not re-apply.
    settled: HashMap<String, Target>,
    attempts: HashMap<String, u32>,
    events: u64,
    retry_tx: mpsc::UnboundedSender<(String, u64)>,
}

/// Runs until the process ends.
pub async fn run(driver: Arc<Driver>, kubeconfig: Option<PathBuf>) {
    let client = connect(kubeconfig).await;
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel();
    let mut follower = Follower {
        pvs: Api::all(client.clone()),
        classes: Api::all(client),
        driver,
        class_cache: HashMap::new(),
        latest: HashMap::new(),
        settled: HashMap::new(),
        attempts: HashMap::new(),
        events: 0,
        retry_tx,
    };
    // The watcher relists after a broken watch or an expired resource
    // version. Its own default_backoff is reset by the Init event that every
    // relist starts with, so it would retry a down API server about once a
    // second: the backoff here is reset only by events of a working watch.
    let stream = watcher::watcher(follower.pvs.clone(), watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let mut failures = 0u32;
    tracing::info!(driver = %follower.driver.name, "following the VolumeAttributesClasses of this node's PVs");
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    if !matches!(event, Event::Init) {
                        failures = 0;
                    }
                    follower.on_event(event).await;
                }
                Some(Err(e)) => {
                    let wait = backoff(failures, WATCH_RETRY_MAX);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "watching PersistentVolumes failed");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    tracing::error!("the PersistentVolume watch ended; no longer following classes");
                    return;
                }
            },
            Some((pv, seq)) = retry_rx.recv() => follower.retry(&pv, seq).await,
        }
    }
}

/// The client, from --kubeconfig or inferred (in-cluster, then KUBECONFIG);
/// waits and tries again until it has one.
async fn connect(kubeconfig: Option<PathBuf>) -> Client {
    let mut attempt = 0;
    loop {
        let config = match &kubeconfig {
            Some(path) => match kube::config::Kubeconfig::read_from(path) {
                Ok(kc) => Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display())),
                Err(e) => Err(format!("kubeconfig {}: {e}", path.display())),
            },
            None => Config::infer().await.map_err(|e| e.to_string()),
        };
        match config.and_then(|c| Client::try_from(c).map_err(|e| e.to_string())) {
            Ok(client) => return client,
            Err(e) => {
                let wait = backoff(attempt, RETRY_MAX);
                tracing::warn!(error = %e, retry_in = ?wait, "no Kubernetes client for following VolumeAttributesClasses");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

impl Follower {
    async fn on_event(&mut self, event: Event<PersistentVolume>) {
        match event {
            // A (re)list: every PV comes again and is applied again; PVs
            // deleted meanwhile never come (their pending retries are dropped).
            Event::Init => {
                self.latest.clear();
                self.settled.clear();
                self.attempts.clear();
            }
            Event::InitDone => {}
            Event::Apply(pv) | Event::InitApply(pv) => {
                let name = pv.name_any();
                match target(&pv, &self.driver.name) {
                    Some(t) => {
                        self.events += 1;
                        self.latest.insert(name.clone(), (t, self.events));
                        self.attempts.remove(&name);
                        self.follow(&name).await;
                    }
                    None => self.forget(&name),
                }
            }
            Event::Delete(pv) => self.forget(&pv.name_any()),
        }
    }

    fn forget(&mut self, pv: &str) {
        self.latest.remove(pv);
        self.settled.remove(pv);
        self.attempts.remove(pv);
    }

    async fn retry(&mut self, pv: &str, seq: u64) {
        if self.latest.get(pv).is_some_and(|(_, s)| *s == seq) {
            self.follow(pv).await;
        }
    }

    async fn follow(&mut self, pv: &str) {
        let Some((t, seq)) = self.latest.get(pv).cloned() else { return };
        if self.settled.get(pv) == Some(&t) {
            return;
        }
        match self.apply(&t).await {
            Outcome::Done | Outcome::Refused => {
                self.attempts.remove(pv);
                self.settled.insert(pv.to_string(), t);
            }
            Outcome::Retry => {
                let attempt = self.attempts.entry(pv.to_string()).or_insert(0);
                let wait = backoff(*attempt, RETRY_MAX);
                *attempt = attempt.saturating_add(1);
                let (tx, pv) = (self.retry_tx.clone(), pv.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send((pv, seq));
                });
            }
        }
    }

    async fn apply(&mut self, t: &Target) -> Outcome {
        // Most PVs are other nodes' volumes: ask the pool before the API.
        let handle = t.handle.clone();
        let ours = self
            .driver
            .run(move |pool| match pool.volume(&handle) {
                Ok(_) => Ok(true),
                Err(loopvol_backend::Error::VolumeNotFound(_) | loopvol_backend::Error::InvalidId { .. }) => Ok(false),
                Err(e) => Err(e),
            })
            .await;
        match ours {
            Ok(true) => {}
            Ok(false) => return Outcome::Done,
            Err(e) => {
                tracing::warn!(pv = %t.pv, volume = %t.handle, error = %e.message(), "reading the volume failed");
                return Outcome::Retry;
            }
        }
        let class = match self.class(&t.class).await {
            Ok(class) => class,
            Err((e, outcome)) => {
                tracing::warn!(pv = %t.pv, volume = %t.handle, class = %t.class, error = %e,
                    "cannot get the PV's VolumeAttributesClass");
                return outcome;
            }
        };
        let params = match class_params(&class, &self.driver.name) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pv = %t.pv, volume = %t.handle, class = %t.class, error = %e,
                    "the PV's VolumeAttributesClass is refused");
                return Outcome::Refused;
            }
        };
        let id = t.handle.clone();
        match self.driver.run(move |pool| pool.modify_volume(&id, &params).map(Some).or_else(not_ours)).await {
            Ok(Some(v)) => {
                tracing::info!(pv = %t.pv, volume = %t.handle, class = %t.class, direct_io = v.direct_io,
                    thick = v.thick, io_limits = ?v.io_limits, "applied the PV's VolumeAttributesClass");
                Outcome::Done
            }
            // Deleted meanwhile.
            Ok(None) => Outcome::Done,
            Err(e) => {
                tracing::warn!(pv = %t.pv, volume = %t.handle, class = %t.class, error = %e.message(),
                    "applying the PV's VolumeAttributesClass failed");
                if retryable(e.code()) {
                    Outcome::Retry
                } else {
                    Outcome::Refused
                }
            }
        }
    }

    /// The class, from the cache or the API. A missing class is retried too:
    /// it may be created after the PV names it.
    async fn class(&mut self, name: &str) -> Result<Arc<VolumeAttributesClass>, (String, Outcome)> {
        if let Some(class) = self.class_cache.get(name) {
            return Ok(class.clone());
        }
        match self.classes.get_opt(name).await {
            Ok(Some(class)) => {
                let class = Arc::new(class);
                self.class_cache.insert(name.to_string(), class.clone());
                Ok(class)
            }
            Ok(None) => Err(("not found".to_string(), Outcome::Retry)),
            Err(e) => Err((e.to_string(), Outcome::Retry)),
        }
    }
}

fn not_ours(e: loopvol_backend::Error) -> loopvol_backend::Result<Option<loopvol_backend::Volume>> {
    match e {
        loopvol_backend::Error::VolumeNotFound(_) => Ok(None),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{CSIPersistentVolumeSource, PersistentVolumeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pv(driver: &str, handle: &str, class: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta { name: Some("pv-1".into()), ..Default::default() },
            spec: Some(PersistentVolumeSpec {
                csi: Some(CSIPersistentVolumeSource {
                    driver: driver.into(),
                    volume_handle: handle.into(),
                    ..Default::default()
                }),
                volume_attributes_class_name: class.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn vac(driver: &str, params: &[(&str, &str)]) -> VolumeAttributesClass {
        VolumeAttributesClass {
            driver_name: driver.into(),
            parameters: Some(params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn follows_only_this_drivers_csi_pvs_with_a_class() {
        let d = "loopvol.csi.io";
        assert_eq!(
            target(&pv(d, "vol-1", Some("fast")), d),
            Some(Target { pv: "pv-1".into(), handle: "vol-1".into(), class: "fast".into() })
        );
        assert_eq!(target(&pv("other.csi.io", "vol-1", Some("fast")), d), None);
        assert_eq!(target(&pv(d, "vol-1", None), d), None);
        assert_eq!(target(&pv(d, "vol-1", Some("")), d), None);
        assert_eq!(target(&pv(d, "", Some("fast")), d), None);
        let mut flex = pv(d, "vol-1", Some("fast"));
        flex.spec.as_mut().unwrap().csi = None;
        assert_eq!(target(&flex, d), None);
        let mut deleting = pv(d, "vol-1", Some("fast"));
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(target(&deleting, d), None);
        assert_eq!(target(&PersistentVolume::default(), d), None);
    }

    #[test]
    fn class_parameters_are_the_mutable_ones_of_this_driver() {
        let d = "loopvol.csi.io";
        let p = class_params(&vac(d, &[("readIOPS", "200"), ("directIO", "false")]), d).unwrap();
        assert_eq!(p.io_limits.read_iops, Some(200));
        assert_eq!(p.direct_io, Some(false));
        assert!(class_params(&vac(d, &[("fsType", "xfs")]), d).unwrap_err().contains("fsType"));
        assert!(class_params(&vac(d, &[("readIOPS", "lots")]), d).is_err());
        assert!(class_params(&vac("other.csi.io", &[]), d).unwrap_err().contains("other.csi.io"));
        let none = VolumeAttributesClass { driver_name: d.into(), ..Default::default() };
        assert_eq!(class_params(&none, d).unwrap().io_limits, Default::default());
    }

    #[test]
    fn retries_back_off_up_to_a_minute_and_skip_bad_input() {
        assert_eq!(backoff(0, RETRY_MAX), RETRY_MIN);
        assert_eq!(backoff(1, RETRY_MAX), Duration::from_secs(2));
        assert_eq!(backoff(40, RETRY_MAX), RETRY_MAX);
        assert_eq!(backoff(40, WATCH_RETRY_MAX), WATCH_RETRY_MAX);
        assert!(retryable(Code::Aborted) && retryable(Code::Internal));
        assert!(!retryable(Code::InvalidArgument));
    }
}
