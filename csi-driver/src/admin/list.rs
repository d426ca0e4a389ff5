//! `loopvol-csi list`: the volumes and snapshots of the pool.

use std::path::PathBuf;
use std::process::ExitCode;

use loopvol_backend::{Pool, Snapshot, Source};
use serde::Serialize;

use super::{human, print_json, rfc3339, table, Output};

#[derive(Debug, Serialize)]
struct Listing {
    pool: PathBuf,
    volumes: Vec<VolumeRow>,
    snapshots: Vec<SnapshotRow>,
}

#[derive(Debug, Serialize)]
pub struct SourceRef {
    pub kind: &'static str,
    pub id: String,
}

pub fn source_ref(source: &Option<Source>) -> Option<SourceRef> {
    source.as_ref().map(|s| match s {
        Source::Snapshot(id) => SourceRef { kind: "snapshot", id: id.clone() },
        Source::Volume(id) => SourceRef { kind: "volume", id: id.clone() },
    })
}

#[derive(Debug, Serialize)]
struct VolumeRow {
    id: String,
    name: String,
    capacity_bytes: u64,
    /// Bytes of the pool's filesystem the image really uses.
    allocated_bytes: u64,
    fs_type: &'static str,
    access_type: &'static str,
    thick: bool,
    source: Option<SourceRef>,
    created_at: u64,
    /// The loop device whose backing file is the image, from sysfs.
    loop_device: Option<PathBuf>,
    /// As recorded (`inspect` checks it against the kernel).
    staging_path: Option<PathBuf>,
    published_targets: usize,
}

/// A snapshot as `list` shows it, and the head of `inspect`'s report.
#[derive(Debug, Serialize)]
pub(super) struct SnapshotRow {
    pub id: String,
    pub name: String,
    pub source_volume_id: String,
    pub size_bytes: u64,
    pub fs_type: &'static str,
    pub access_type: &'static str,
    pub group_id: Option<String>,
    pub ready: bool,
    pub created_at: u64,
}

impl From<Snapshot> for SnapshotRow {
    fn from(s: Snapshot) -> Self {
        SnapshotRow {
            id: s.id,
            name: s.name,
            source_volume_id: s.source_volume_id,
            size_bytes: s.size_bytes,
            fs_type: s.fs_type.as_str(),
            access_type: s.access_type.as_str(),
            group_id: s.group_id,
            ready: s.ready,
            created_at: s.created_at,
        }
    }
}

pub fn run(pool: &Pool, output: Output) -> anyhow::Result<ExitCode> {
    // One scan of the loop devices for all volumes.
    let devices = pool.attached_devices()?;
    let volumes: Vec<VolumeRow> = pool
        .volumes()?
        .into_iter()
        .map(|v| {
            let state = pool.node_state(&v.id).unwrap_or_default();
            (v, state)
        })
        .map(|(v, state)| VolumeRow {
            allocated_bytes: pool.allocated_bytes(&v.id).unwrap_or(0),
            loop_device: devices.get(&v.id).cloned(),
            staging_path: state.staged.as_ref().map(|s| s.staging_path.clone()),
            published_targets: state.published.len(),
            source: source_ref(&v.source),
            id: v.id,
            name: v.name,
            capacity_bytes: v.capacity_bytes,
            fs_type: v.fs_type.as_str(),
            access_type: v.access_type.as_str(),
            thick: v.thick,
            created_at: v.created_at,
        })
        .collect();
    let snapshots: Vec<SnapshotRow> = pool.snapshots()?.into_iter().map(SnapshotRow::from).collect();
    let listing = Listing { pool: pool.root().to_path_buf(), volumes, snapshots };
    match output {
        Output::Json => print_json(&listing)?,
        Output::Table => print!("{}", render(&listing)),
    }
    Ok(ExitCode::SUCCESS)
}

fn render(l: &Listing) -> String {
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let volumes: Vec<Vec<String>> = l
        .volumes
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.name.clone(),
                human(v.capacity_bytes),
                human(v.allocated_bytes),
                v.fs_type.into(),
                v.access_type.into(),
                dash(v.loop_device.as_ref().map(|d| d.display().to_string())),
                if v.staging_path.is_some() { "yes".into() } else { "no".into() },
                v.published_targets.to_string(),
                rfc3339(v.created_at),
            ]
        })
        .collect();
    let snapshots: Vec<Vec<String>> = l
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.source_volume_id.clone(),
                human(s.size_bytes),
                if s.ready { "yes".into() } else { "no".into() },
                dash(s.group_id.clone()),
                rfc3339(s.created_at),
            ]
        })
        .collect();
    format!(
        "VOLUMES ({})\n{}\nSNAPSHOTS ({})\n{}",
        volumes.len(),
        table(&["ID", "NAME", "SIZE", "ALLOCATED", "FS", "ACCESS", "DEVICE", "STAGED", "TARGETS", "CREATED"], &volumes),
        snapshots.len(),
        table(&["ID", "NAME", "SOURCE", "SIZE", "READY", "GROUP", "CREATED"], &snapshots),
    )
}
