//! `loopvol-csi migrate-flexvolume`: the CSI PersistentVolume that takes
//! over a FlexVolume PV's volume in place. Both drivers share the pool and
//! the volume ID, so nothing is copied: the new PV names the same ID as its
//! `volumeHandle`, on the same node.
//!
//! Input: a PV as YAML or JSON (`kubectl get pv NAME -o yaml|json`), a
//! multi-document YAML file, or a `List` (`kubectl get pv -o yaml`); every
//! loopvol FlexVolume PV in it is migrated, everything else is skipped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use loopvol_backend::params::{self, Dialect, VolumeParams};

use super::ManifestOutput;

/// The FlexVolume driver name the installer sets up (`loopvol~loopvol`).
pub const FLEX_DRIVER: &str = "loopvol/loopvol";
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
#[derive(Debug, Clone)]
pub struct Options {
    pub driver: String,
    pub node: Option<String>,
    pub storage_class: Option<String>,
    /// The filesystem a PV with a blank `fsType` holds, when the PV does not
    /// say: the pool's record of the volume, else the FlexVolume config's
    /// `defaultFsType` (see [`FsTypeSources`]).
    pub fs_types: FsTypeSources,
}

/// Where the filesystem of a blank-`fsType` PV is looked up: the FlexVolume
/// driver made it with its config's `defaultFsType`, and the pool's record
/// remembers what it made.
#[derive(Debug, Clone)]
pub struct FsTypeSources {
    /// The pool, when the command runs where it exists.
    pub pool: Option<std::path::PathBuf>,
    /// The FlexVolume driver's `defaultFsType` (its config file, or the
    /// driver's default when it has none).
    pub flex_default: Option<loopvol_backend::FsType>,
}

impl Default for FsTypeSources {
    /// No pool; the FlexVolume driver's default without a config file (the
    /// pool's default filesystem).
    fn default() -> Self {
        FsTypeSources { pool: None, flex_default: Some(loopvol_backend::PoolOptions::default().default_fs) }
    }
}

/// The `defaultFsType` of a FlexVolume config file (`.loopvol.json`); the
/// driver's default when the file does not set it.
pub fn flex_default_fs_type(path: &Path) -> anyhow::Result<loopvol_backend::FsType> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    match config.get("defaultFsType").and_then(Value::as_str) {
        Some(fs) => fs.parse().with_context(|| format!("defaultFsType in {}", path.display())),
        None => Ok(loopvol_backend::PoolOptions::default().default_fs),
    }
}

impl FsTypeSources {
    /// The pool's record of the volume wins; then the FlexVolume default.
    fn lookup(&self, volume_id: &str) -> Option<(loopvol_backend::FsType, &'static str)> {
        let recorded = self
            .pool
            .as_deref()
            .filter(|root| loopvol_backend::Pool::exists(root))
            .and_then(|root| loopvol_backend::Pool::open(root, loopvol_backend::PoolOptions::default()).ok())
            .and_then(|pool| pool.volume(volume_id).ok())
            .map(|vol| (vol.fs_type, "the pool's record"));
        recorded.or(self.flex_default.map(|fs| (fs, "the FlexVolume config's defaultFsType")))
    }
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolume {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: PvSpec,
}

#[derive(Debug, Serialize, PartialEq)]
struct Metadata {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PvSpec {
    capacity: BTreeMap<String, String>,
    access_modes: Vec<String>,
    persistent_volume_reclaim_policy: &'static str,
    storage_class_name: String,
    volume_mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mount_options: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_ref: Option<ClaimRef>,
    csi: CsiSource,
    node_affinity: NodeAffinity,
}

#[derive(Debug, Serialize, PartialEq)]
struct ClaimRef {
    namespace: String,
    name: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct CsiSource {
    driver: String,
    volume_handle: String,
    fs_type: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

#[derive(Debug, Serialize, PartialEq)]
struct NodeAffinity {
    required: NodeSelector,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct NodeSelector {
    node_selector_terms: Vec<NodeSelectorTerm>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct NodeSelectorTerm {
    match_expressions: Vec<Requirement>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Requirement {
    key: String,
    operator: &'static str,
    values: Vec<String>,
}

pub fn run(file: &Path, opts: &Options, output: ManifestOutput) -> anyhow::Result<ExitCode> {
    let text = read_input(file)?;
    let pvs = migrate_all(&text, opts, &mut |w| eprintln!("loopvol-csi: warning: {w}"))?;
    print!("{}", render(&pvs, output)?);
    Ok(ExitCode::SUCCESS)
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the PV from stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Every object in the input: JSON, or YAML with one or more documents;
/// `List`s are flattened.
pub fn objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).context("the input is not valid JSON")?]
    } else {
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(text) {
            docs.push(Value::deserialize(doc).context("the input is not valid YAML")?);
        }
        docs
    };
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        match (doc.get("kind").and_then(Value::as_str), doc.get("items").and_then(Value::as_array)) {
            (Some(kind), Some(items)) if kind.ends_with("List") => out.extend(items.iter().cloned()),
            _ => out.push(doc),
        }
    }
    Ok(out)
}

/// Migrates every loopvol FlexVolume PV of the input; `warn` hears about
/// what is dropped or skipped.
pub fn migrate_all(text: &str, opts: &Options, warn: &mut dyn FnMut(String)) -> anyhow::Result<Vec<PersistentVolume>> {
    let mut out = Vec::new();
    for obj in objects(text)? {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "PersistentVolume" {
            continue;
        }
        let Some(flex) = obj.pointer("/spec/flexVolume") else {
            warn(format!("PersistentVolume {name} is not a FlexVolume PV; skipped"));
            continue;
        };
        let driver = flex.get("driver").and_then(Value::as_str).unwrap_or("");
        if driver != FLEX_DRIVER {
            warn(format!("PersistentVolume {name} uses FlexVolume driver {driver:?}, not {FLEX_DRIVER}; skipped"));
            continue;
        }
        out.push(migrate(&obj, opts, warn).with_context(|| format!("PersistentVolume {name}"))?);
    }
    if out.is_empty() {
        bail!("no {FLEX_DRIVER} FlexVolume PersistentVolume in the input");
    }
    Ok(out)
}

fn string_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Values of a `key In [...]` requirement in the PV's required node affinity.
fn affinity_values(pv: &Value, key: &str) -> Vec<String> {
    let terms = pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms").and_then(Value::as_array);
    let mut values = Vec::new();
    for term in terms.into_iter().flatten() {
        let exprs = term.get("matchExpressions").and_then(Value::as_array);
        for e in exprs.into_iter().flatten() {
            if e.get("key").and_then(Value::as_str) == Some(key)
                && e.get("operator").and_then(Value::as_str) == Some("In")
            {
                let vals = e.get("values").and_then(Value::as_array);
                values.extend(vals.into_iter().flatten().filter_map(Value::as_str).map(str::to_string));
            }
        }
    }
    values.dedup();
    values
}

fn migrate(pv: &Value, opts: &Options, warn: &mut dyn FnMut(String)) -> anyhow::Result<PersistentVolume> {
    let name = string_at(pv, "/metadata/name").ok_or_else(|| anyhow!("metadata.name is missing"))?;
    let flex = pv.pointer("/spec/flexVolume").cloned().unwrap_or_default();
    let options: BTreeMap<String, Value> = match flex.get("options") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map.clone().into_iter().collect(),
        Some(_) => bail!("flexVolume.options must be a map"),
    };
    let option = |key: &str| options.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    for key in options.keys().filter(|k| !params::FLEX_VOLUME_OPTIONS.contains(&k.as_str())) {
        warn(format!("{name}: FlexVolume option {key:?} has no CSI counterpart; dropped"));
    }
    // The options as the FlexVolume driver sees them (kubelet adds the fs
    // type), through the same parser it uses.
    let mut as_kubelet_passes: BTreeMap<&str, &str> =
        options.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect();
    let pv_fs_type = flex.get("fsType").and_then(Value::as_str).unwrap_or("");
    as_kubelet_passes.insert(params::FLEX_FS_TYPE, pv_fs_type);
    let parsed = VolumeParams::parse_map(&as_kubelet_passes, Dialect::FlexVolume)
        .with_context(|| "flexVolume.options or flexVolume.fsType")?;
    if flex.get("secretRef").is_some_and(|s| !s.is_null()) {
        warn(format!("{name}: flexVolume.secretRef dropped (loopvol uses no secrets)"));
    }

    // The FlexVolume driver's own rule: volumeID, else the PV name.
    let volume_id = params::flex_volume_id(option(params::FLEX_VOLUME_ID), Some(name)).context("volume ID")?;
    let fs = match parsed.fs_type {
        Some(fs) => fs,
        None => {
            let (fs, from) = opts.fs_types.lookup(&volume_id).ok_or_else(|| {
                anyhow!(
                    "flexVolume.fsType is blank and the volume's filesystem is unknown here: run this where the \
                     volume's pool is (--pool), or pass --flex-config with the FlexVolume driver's config"
                )
            })?;
            warn(format!("{name}: flexVolume.fsType is blank; {fs} from {from}"));
            fs
        }
    };
    if string_at(pv, "/spec/volumeMode").is_some_and(|m| m != "Filesystem") {
        bail!("spec.volumeMode must be Filesystem (FlexVolume volumes are filesystems)");
    }

    let storage = match string_at(pv, "/spec/capacity/storage").or_else(|| option(params::SIZE)) {
        Some(s) => s.to_string(),
        None => bail!("neither spec.capacity.storage nor flexVolume.options.size is set"),
    };
    loopvol_backend::quantity::parse(&storage).map_err(|e| anyhow!("capacity {storage:?} is not a quantity: {e}"))?;
    let access_modes: Vec<String> = pv
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if access_modes.is_empty() {
        bail!("spec.accessModes is empty");
    }

    // spec.mountOptions, then the FlexVolume option's comma-separated list
    // (the FlexVolume driver splits it the same way).
    let mut mount_options: Vec<String> = pv
        .pointer("/spec/mountOptions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    for o in parsed.mount_options {
        if !mount_options.contains(&o) {
            mount_options.push(o);
        }
    }

    let topology_key = format!("topology.{}/node", opts.driver);
    let node = match &opts.node {
        Some(node) if !node.is_empty() => node.clone(),
        _ => {
            let mut nodes = affinity_values(pv, HOSTNAME_KEY);
            if nodes.is_empty() {
                nodes = affinity_values(pv, &topology_key);
            }
            match nodes.as_slice() {
                [node] => node.clone(),
                [] => bail!(
                    "cannot tell which node holds volume {volume_id}: the PV has no {HOSTNAME_KEY} node affinity; \
                     pass --node NODE (the node whose pool has the image)"
                ),
                many => bail!(
                    "the PV's node affinity names {} nodes ({}), a loopvol volume lives on one: pass --node NODE",
                    many.len(),
                    many.join(", ")
                ),
            }
        }
    };

    let storage_class = match &opts.storage_class {
        Some(class) => class.clone(),
        None => match fs {
            loopvol_backend::FsType::Ext4 | loopvol_backend::FsType::Xfs => format!("loopvol-{fs}"),
            loopvol_backend::FsType::Btrfs => string_at(pv, "/spec/storageClassName").unwrap_or("").to_string(),
        },
    };
    // Pre-bind to the claim the old PV was bound to, so that claim (re-created
    // under the same name) and no other gets the data.
    let claim_ref = match (string_at(pv, "/spec/claimRef/namespace"), string_at(pv, "/spec/claimRef/name")) {
        (Some(namespace), Some(claim)) => Some(ClaimRef { namespace: namespace.into(), name: claim.into() }),
        _ => None,
    };
    let labels: BTreeMap<String, String> = pv
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let new_name = format!("{name}-csi");
    if new_name.len() > 253 {
        bail!("the new PV name {new_name:?} is longer than 253 characters");
    }

    Ok(PersistentVolume {
        api_version: "v1",
        kind: "PersistentVolume",
        metadata: Metadata { name: new_name, labels },
        spec: PvSpec {
            capacity: BTreeMap::from([("storage".to_string(), storage)]),
            access_modes,
            // Retain: a migration must never be able to delete the data it
            // moves (a mistaken claim deletion, a bad binding). Delete would
            // not work for this PV anyway: it is not annotated
            // pv.kubernetes.io/provisioned-by, so no provisioner deletes it.
            persistent_volume_reclaim_policy: "Retain",
            storage_class_name: storage_class,
            volume_mode: "Filesystem",
            mount_options,
            claim_ref,
            csi: CsiSource {
                driver: opts.driver.clone(),
                volume_handle: volume_id,
                fs_type: fs.as_str().to_string(),
                read_only: flex.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
            },
            // No volumeAttributes: loopvol's CreateVolume returns an empty
            // volume context and its node service reads none for a
            // persistent volume.
            node_affinity: NodeAffinity {
                required: NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: vec![Requirement { key: topology_key, operator: "In", values: vec![node] }],
                    }],
                },
            },
        },
    })
}

pub fn render(pvs: &[PersistentVolume], output: ManifestOutput) -> anyhow::Result<String> {
    match output {
        ManifestOutput::Json => {
            let text = match pvs {
                [pv] => serde_json::to_string_pretty(pv)?,
                many => serde_json::to_string_pretty(&serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": many,
                }))?,
            };
            Ok(text + "\n")
        }
        ManifestOutput::Yaml => {
            let mut out = String::new();
            for pv in pvs {
                out.push_str(&format!(
                    "# CSI twin of a FlexVolume PV (volume {}): apply it after deleting the FlexVolume PV and its claim\n",
                    pv.spec.csi.volume_handle
                ));
                out.push_str(&serde_norway::to_string(pv).context("encoding YAML")?);
                if !std::ptr::eq(pv, pvs.last().unwrap_or(pv)) {
                    out.push_str("---\n");
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(node: Option<&str>) -> Options {
        Options {
            driver: "loopvol.csi.io".into(),
            node: node.map(str::to_string),
            storage_class: None,
            fs_types: FsTypeSources::default(),
        }
    }

    fn one(text: &str, node: Option<&str>) -> anyhow::Result<PersistentVolume> {
        let mut pvs = migrate_all(text, &opts(node), &mut |_| {})?;
        Ok(pvs.remove(0))
    }

    const MINIMAL: &str = "kind: PersistentVolume\nmetadata: {name: pv-a}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteOnce]\n  flexVolume: {driver: loopvol/loopvol}\n";

    #[test]
    fn defaults_volume_id_to_the_pv_name_and_fs_to_ext4() {
        let pv = one(MINIMAL, Some("n1")).unwrap();
        assert_eq!(pv.spec.csi.volume_handle, "pv-a");
        assert_eq!(pv.spec.csi.fs_type, "ext4");
        assert_eq!(pv.spec.storage_class_name, "loopvol-ext4");
        assert_eq!(pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0].values, ["n1"]);
    }

    #[test]
    fn without_a_node_it_asks_for_one() {
        let e = one(MINIMAL, None).unwrap_err();
        assert!(format!("{e:#}").contains("--node"), "{e:#}");
    }

    #[test]
    fn refuses_what_it_cannot_migrate() {
        assert!(one("kind: ConfigMap\nmetadata: {name: x}\n", Some("n")).is_err());
        let other = MINIMAL.replace("loopvol/loopvol", "acme/nfs");
        assert!(one(&other, Some("n")).is_err());
        let bad_fs = MINIMAL.replace("{driver: loopvol/loopvol}", "{driver: loopvol/loopvol, fsType: ntfs}");
        assert!(one(&bad_fs, Some("n")).is_err());
        let bad_id =
            MINIMAL.replace("{driver: loopvol/loopvol}", "{driver: loopvol/loopvol, options: {volumeID: ../x}}");
        assert!(one(&bad_id, Some("n")).is_err());
    }

    #[test]
    fn merges_mount_options_and_keeps_the_claim() {
        let text = MINIMAL.replace(
            "{driver: loopvol/loopvol}",
            "{driver: loopvol/loopvol, options: {mountOptions: 'noatime, nodiratime,,'}}\n  mountOptions: [noatime]\n  claimRef: {namespace: ns, name: data, uid: x}",
        );
        let pv = one(&text, Some("n")).unwrap();
        assert_eq!(pv.spec.mount_options, ["noatime", "nodiratime"]);
        assert_eq!(pv.spec.claim_ref, Some(ClaimRef { namespace: "ns".into(), name: "data".into() }));
    }
}
