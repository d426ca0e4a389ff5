//! `csi-bench volume create|remove`: one mount volume made the way kubelet
//! and the provisioner make it (CreateVolume → NodeStageVolume →
//! NodePublishVolume), left published for a data-path benchmark to run in,
//! and taken down again (NodeUnpublish → NodeUnstage → DeleteVolume) by a
//! later call. What `remove` needs (the volume ID, the volume context) is
//! kept in `<work-dir>/volumes/<name>.json`; the staging and target
//! directories are `<work-dir>/staging/<name>` and
//! `<work-dir>/pods/<name>/mount`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use loopvol_proto::v1 as csi;
use serde_json::{json, Value};
use tonic::Code;

use super::lifecycle::{Ctx, Volume};
use super::stopped;

/// Why `create` failed.
#[derive(Debug)]
pub enum CreateError {
    /// CreateVolume answered INVALID_ARGUMENT (e.g. a parameter this driver
    /// does not know): the message is the driver's.
    Refused(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Refused(m) => write!(f, "CreateVolume: INVALID_ARGUMENT: {m}"),
            CreateError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

fn state_path(work: &Path, name: &str) -> PathBuf {
    work.join("volumes").join(format!("{name}.json"))
}

/// Checks a volume name given on the command line: it becomes a file and
/// directory name below the work dir.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !ok {
        bail!("volume name {name:?}: want 1-128 of [A-Za-z0-9._-], not starting with '.'");
    }
    Ok(())
}

/// Creates, stages and publishes the volume `name` (the spec of `ctx`), and
/// records it for [`remove`]. Returns the target path. On any failure (or an
/// interrupt) whatever was done is undone.
/// With `pod_uid`, NodePublish says the volume is for that pod (as kubelet
/// does with podInfoOnMount): the driver puts the volume's I/O limits into
/// that pod's cgroup.
pub async fn create(ctx: &Ctx, name: &str, pod_uid: Option<&str>) -> Result<PathBuf, CreateError> {
    check_name(name).map_err(CreateError::Other)?;
    let state = state_path(&ctx.work, name);
    if state.exists() {
        return Err(CreateError::Other(anyhow::anyhow!(
            "{} exists: volume {name} was made before (remove it first)",
            state.display()
        )));
    }
    let mut vol = Volume::named(ctx, name.to_string());
    if let Err(e) = vol.create(ctx).await {
        return Err(if e.code() == Code::InvalidArgument {
            CreateError::Refused(e.message().to_string())
        } else {
            CreateError::Other(anyhow::anyhow!("CreateVolume: {:?}: {}", e.code(), e.message()))
        });
    }
    if let Some(uid) = pod_uid {
        vol.volume_context.insert(POD_UID.to_string(), uid.to_string());
    }
    let forward = async {
        vol.stage(ctx).await.map_err(|e| anyhow::anyhow!("NodeStageVolume: {:?}: {}", e.code(), e.message()))?;
        if stopped() {
            bail!("interrupted");
        }
        vol.publish(ctx).await.map_err(|e| anyhow::anyhow!("NodePublishVolume: {:?}: {}", e.code(), e.message()))?;
        if stopped() {
            bail!("interrupted");
        }
        let record = json!({
            "name": name,
            "volume_id": vol.id,
            "volume_context": vol.volume_context,
            "staging": vol.staging(),
            "target": vol.target(),
            "volume": ctx.spec.to_json(),
        });
        write_state(&state, &record)?;
        Ok(())
    }
    .await;
    match forward {
        Ok(()) => Ok(vol.target().to_path_buf()),
        Err(e) => {
            let left = vol.undo(ctx).await;
            let e = if left.is_empty() { e } else { e.context(format!("and not undone: {left:?}")) };
            Err(CreateError::Other(e))
        }
    }
}

fn write_state(path: &Path, record: &Value) -> anyhow::Result<()> {
    let dir = path.parent().context("state path without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(path, serde_json::to_string_pretty(record)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// The record `create` kept of the volume `name`, and where it is.
fn read_record(ctx: &Ctx, name: &str) -> anyhow::Result<(Value, PathBuf)> {
    check_name(name)?;
    let state = state_path(&ctx.work, name);
    let text =
        std::fs::read_to_string(&state).with_context(|| format!("volume {name}: reading {}", state.display()))?;
    let record = serde_json::from_str(&text).with_context(|| format!("parsing {}", state.display()))?;
    Ok((record, state))
}

fn volume_id<'a>(record: &'a Value, state: &Path) -> anyhow::Result<&'a str> {
    record["volume_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{}: record without a volume_id", state.display()))
}

/// kubelet's key for the pod's UID in NodePublish's volume context.
const POD_UID: &str = "csi.storage.k8s.io/pod.uid";

/// ControllerModifyVolume of the volume `name` made by [`create`].
pub async fn modify(ctx: &Ctx, name: &str, mutable_parameters: HashMap<String, String>) -> anyhow::Result<()> {
    let (record, state) = read_record(ctx, name)?;
    let id = volume_id(&record, &state)?;
    let req =
        csi::ControllerModifyVolumeRequest { volume_id: id.to_string(), mutable_parameters, ..Default::default() };
    ctx.csi
        .controller
        .clone()
        .controller_modify_volume(req)
        .await
        .map_err(|e| anyhow::anyhow!("ControllerModifyVolume: {:?}: {}", e.code(), e.message()))?;
    Ok(())
}

/// Unpublishes, unstages and deletes the volume `name` made by [`create`]
/// (retrying transient errors), then forgets it. A volume this work dir has
/// no record of is an error.
pub async fn remove(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let (record, state) = read_record(ctx, name)?;
    let id = volume_id(&record, &state)?;
    let volume_context = record["volume_context"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let mut vol = Volume::named(ctx, name.to_string());
    vol.adopt_published(id.to_string(), volume_context);
    let left = vol.undo(ctx).await;
    if !left.is_empty() {
        bail!("volume {name} not taken down: {left:?}");
    }
    std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    let _ = std::fs::remove_dir(ctx.work.join("volumes"));
    let _ = std::fs::remove_dir(ctx.work.join("staging"));
    let _ = std::fs::remove_dir(ctx.work.join("pods"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_plain_file_names() {
        for good in ["dp-thin-direct", "a", "v_1.2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
