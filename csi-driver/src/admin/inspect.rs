//! `loopvol-csi inspect ID`: one volume or snapshot, its record and what the
//! kernel says about it right now.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use loopvol_backend::{Error, IoLimits, Pool, Snapshot, Volume};
use serde::Serialize;

use super::list::{source_ref, SnapshotRow, SourceRef};
use super::{allocated, human, print_json, rfc3339, Output};

#[derive(Debug, Serialize)]
struct Image {
    path: PathBuf,
    exists: bool,
    /// Apparent size of the file.
    size_bytes: Option<u64>,
    /// What the file really occupies on the pool's filesystem.
    allocated_bytes: Option<u64>,
}

fn image(path: PathBuf) -> Image {
    let meta = std::fs::metadata(&path).ok();
    Image { exists: meta.is_some(), size_bytes: meta.map(|m| m.len()), allocated_bytes: allocated(&path), path }
}

#[derive(Debug, Serialize)]
struct Staging {
    path: PathBuf,
    access_type: &'static str,
    fs_type: &'static str,
    read_only: bool,
    mount_options: Vec<String>,
    /// The kernel has it mounted (block: the loop device is attached).
    live: bool,
    /// The loop device does direct I/O (false: buffered, e.g. the pool's
    /// filesystem refused O_DIRECT).
    direct_io: bool,
}

#[derive(Debug, Serialize)]
struct Target {
    path: PathBuf,
    read_only: bool,
    live: bool,
    /// The pod it was published for (its cgroup gets the I/O limits).
    pod_uid: Option<String>,
    /// Why the I/O limits are not in force for that pod.
    io_limits_problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct Condition {
    abnormal: bool,
    message: String,
}

#[derive(Debug, Serialize)]
struct VolumeReport {
    kind: &'static str,
    id: String,
    name: String,
    capacity_bytes: u64,
    fs_type: &'static str,
    access_type: &'static str,
    thick: bool,
    /// directIO as asked for (the staging says what the device does).
    direct_io: bool,
    /// The loop device's logical block size.
    block_size: u32,
    /// Per-pod I/O limits (mutable parameters; 0 is unlimited).
    io_limits: IoLimits,
    source: Option<SourceRef>,
    created_at: u64,
    parameters: BTreeMap<String, String>,
    formatted: bool,
    fs_grow_pending: bool,
    attached_node: Option<String>,
    image: Image,
    loop_device: Option<PathBuf>,
    /// Every mount of the volume: staging, publishes, and any other.
    mounts: Vec<PathBuf>,
    staging: Option<Staging>,
    published: Vec<Target>,
    condition: Condition,
}

#[derive(Debug, Serialize)]
struct SnapshotReport {
    kind: &'static str,
    #[serde(flatten)]
    snapshot: SnapshotRow,
    image: Image,
}

pub fn run(pool: &Pool, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    match pool.volume(id) {
        Ok(vol) => {
            let report = volume_report(pool, vol)?;
            match output {
                Output::Json => print_json(&report)?,
                Output::Table => print!("{}", render_volume(&report)),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(Error::VolumeNotFound(_) | Error::InvalidId { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match pool.snapshot(id) {
        Ok(snap) => {
            let report = snapshot_report(pool, snap);
            match output {
                Output::Json => print_json(&report)?,
                Output::Table => print!("{}", render_snapshot(&report)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::SnapshotNotFound(_)) => bail!("no volume or snapshot {id:?} in {}", pool.root().display()),
        Err(e) => Err(e.into()),
    }
}

fn volume_report(pool: &Pool, vol: Volume) -> anyhow::Result<VolumeReport> {
    let block_size = vol.device_block_size();
    let image_path = pool.volume_image_path(&vol.id);
    let (device, mounts) = pool.live_mounts(&vol.id)?;
    let condition = pool.condition(&vol.id)?;
    let state = pool.node_state(&vol.id)?;
    let staging = state.staged.as_ref().map(|st| Staging {
        live: match st.access_type {
            loopvol_backend::AccessType::Mount => mounts.contains(&st.staging_path),
            loopvol_backend::AccessType::Block => device.is_some(),
        },
        path: st.staging_path.clone(),
        access_type: st.access_type.as_str(),
        fs_type: st.fs_type.as_str(),
        read_only: st.read_only,
        mount_options: st.mount_options.clone(),
        direct_io: st.direct_io,
    });
    let published = state
        .published
        .iter()
        .map(|(target, p)| Target {
            path: target.clone(),
            read_only: p.read_only,
            live: mounts.contains(target),
            pod_uid: p.pod_uid.clone(),
            io_limits_problem: p.io_limits_problem.clone(),
        })
        .collect();
    Ok(VolumeReport {
        kind: "volume",
        source: source_ref(&vol.source),
        image: image(image_path),
        loop_device: device,
        mounts,
        staging,
        published,
        condition: Condition { abnormal: condition.abnormal, message: condition.message },
        id: vol.id,
        name: vol.name,
        capacity_bytes: vol.capacity_bytes,
        fs_type: vol.fs_type.as_str(),
        access_type: vol.access_type.as_str(),
        thick: vol.thick,
        direct_io: vol.direct_io,
        block_size,
        io_limits: vol.io_limits,
        created_at: vol.created_at,
        parameters: vol.parameters,
        formatted: vol.formatted,
        fs_grow_pending: vol.fs_grow_pending,
        attached_node: vol.attached_node,
    })
}

fn snapshot_report(pool: &Pool, snap: Snapshot) -> SnapshotReport {
    let path = pool.snapshot_image_path(&snap.id);
    SnapshotReport { kind: "snapshot", image: image(path), snapshot: SnapshotRow::from(snap) }
}

fn kv(out: &mut String, key: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{key:<16}{value}\n"));
}

fn image_line(img: &Image, capacity: u64) -> String {
    match (img.size_bytes, img.allocated_bytes) {
        (Some(size), Some(alloc)) => {
            format!("{} ({}), {} allocated of {}", img.path.display(), human(size), human(alloc), human(capacity))
        }
        _ => format!("{} (missing)", img.path.display()),
    }
}

fn render_volume(r: &VolumeReport) -> String {
    let mut out = String::new();
    kv(&mut out, "Volume:", &r.id);
    kv(&mut out, "Name:", &r.name);
    kv(&mut out, "Capacity:", format!("{} ({} bytes)", human(r.capacity_bytes), r.capacity_bytes));
    kv(&mut out, "Filesystem:", format!("{} ({}{})", r.fs_type, r.access_type, if r.thick { ", thick" } else { "" }));
    if let Some(s) = &r.source {
        kv(&mut out, "Source:", format!("{} {}", s.kind, s.id));
    }
    kv(&mut out, "Created:", rfc3339(r.created_at));
    for (k, v) in &r.parameters {
        kv(&mut out, "Parameter:", format!("{k}={v}"));
    }
    if let Some(node) = &r.attached_node {
        kv(&mut out, "Attached node:", node);
    }
    kv(&mut out, "Image:", image_line(&r.image, r.capacity_bytes));
    kv(&mut out, "Loop device:", r.loop_device.as_ref().map_or("-".into(), |d| d.display().to_string()));
    let io = match &r.staging {
        Some(s) if s.live && r.direct_io && !s.direct_io => "buffered (the pool's filesystem refused direct I/O)",
        Some(s) if s.live && s.direct_io => "direct",
        Some(s) if s.live => "buffered",
        _ if r.direct_io => "direct when staged",
        _ => "buffered (directIO=false)",
    };
    kv(&mut out, "I/O:", format!("{io}, {}-byte blocks", r.block_size));
    kv(&mut out, "I/O limits:", limits_line(&r.io_limits));
    match &r.staging {
        Some(s) => kv(
            &mut out,
            "Staged at:",
            format!("{} ({}{}){}", s.path.display(), s.fs_type, if s.read_only { ", ro" } else { "" }, gone(s.live)),
        ),
        None => kv(&mut out, "Staged at:", "-"),
    }
    if r.published.is_empty() {
        kv(&mut out, "Published at:", "-");
    }
    for t in &r.published {
        let pod = t.pod_uid.as_ref().map_or(String::new(), |uid| format!(" for pod {uid}"));
        let problem = t.io_limits_problem.as_ref().map_or(String::new(), |why| format!("; limits not in force: {why}"));
        kv(
            &mut out,
            "Published at:",
            format!("{}{}{pod}{}{problem}", t.path.display(), if t.read_only { " (ro)" } else { "" }, gone(t.live)),
        );
    }
    for m in &r.mounts {
        kv(&mut out, "Mounted at:", m.display());
    }
    let health = if r.condition.abnormal { "ABNORMAL" } else { "healthy" };
    kv(&mut out, "Condition:", format!("{health}: {}", r.condition.message));
    out
}

/// `readIOPS=500, writeBytesPerSecond=50Mi`, or `none`.
fn limits_line(l: &IoLimits) -> String {
    let parts: Vec<String> = [
        ("readIOPS", l.read_iops, false),
        ("writeIOPS", l.write_iops, false),
        ("readBytesPerSecond", l.read_bytes_per_second, true),
        ("writeBytesPerSecond", l.write_bytes_per_second, true),
    ]
    .into_iter()
    .filter(|(_, v, _)| *v > 0)
    .map(|(k, v, bytes)| if bytes { format!("{k}={}/s", human(v)) } else { format!("{k}={v}") })
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn gone(live: bool) -> &'static str {
    if live {
        ""
    } else {
        " [not in the kernel]"
    }
}

fn render_snapshot(r: &SnapshotReport) -> String {
    let mut out = String::new();
    kv(&mut out, "Snapshot:", &r.snapshot.id);
    kv(&mut out, "Name:", &r.snapshot.name);
    kv(&mut out, "Source volume:", &r.snapshot.source_volume_id);
    kv(&mut out, "Size:", format!("{} ({} bytes)", human(r.snapshot.size_bytes), r.snapshot.size_bytes));
    kv(&mut out, "Filesystem:", format!("{} ({})", r.snapshot.fs_type, r.snapshot.access_type));
    if let Some(g) = &r.snapshot.group_id {
        kv(&mut out, "Group:", g);
    }
    kv(&mut out, "Ready:", if r.snapshot.ready { "yes" } else { "no" });
    kv(&mut out, "Created:", rfc3339(r.snapshot.created_at));
    kv(&mut out, "Image:", image_line(&r.image, r.snapshot.size_bytes));
    out
}
