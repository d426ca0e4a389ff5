//! One volume's way through a CSI driver, as kubelet and the provisioner
//! drive it: CreateVolume → NodeStageVolume → NodePublishVolume →
//! NodeUnpublishVolume → NodeUnstageVolume → DeleteVolume. Every step that was
//! attempted is undone (also after an error or an interrupt), so a run leaves
//! nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopvol_proto::v1 as csi;
use tonic::{Code, Status};

use super::client::{timed, Access, Csi, VolumeSpec};
use super::progress::Progress;
use super::stats::Recorder;
use super::stopped;

/// What every worker shares.
pub struct Ctx {
    pub csi: Csi,
    pub rec: Arc<Recorder>,
    pub spec: VolumeSpec,
    /// Staging and target directories go below here.
    pub work: PathBuf,
    /// Distinguishes this run's volume names from any other's.
    pub run_id: String,
}

/// One volume and how far it got.
pub struct Volume {
    pub name: String,
    pub id: Option<String>,
    /// CreateVolume's `volume_context`, passed to NodeStage and NodePublish
    /// as kubelet does.
    pub volume_context: HashMap<String, String>,
    staging: PathBuf,
    pod_dir: PathBuf,
    target: PathBuf,
    /// NodeStage / NodePublish were attempted (a failed call may still have
    /// left something, so the undo calls Unstage / Unpublish anyway).
    stage_tried: bool,
    publish_tried: bool,
}

/// Errors worth a retry while undoing (a per-volume lock held a moment
/// longer, a restarting driver).
fn transient(code: Code) -> bool {
    matches!(code, Code::Aborted | Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown)
}

const UNDO_ATTEMPTS: u32 = 6;

impl Volume {
    pub fn new(ctx: &Ctx, index: usize) -> Volume {
        Volume::named(ctx, format!("csi-bench-{}-{index:05}", ctx.run_id))
    }

    /// A volume called `name` (the CreateVolume name), its staging and
    /// target directories below `ctx.work`.
    pub fn named(ctx: &Ctx, name: String) -> Volume {
        let pod_dir = ctx.work.join("pods").join(&name);
        let target = pod_dir.join(match ctx.spec.access {
            Access::Mount => "mount",
            Access::Block => "dev",
        });
        Volume {
            staging: ctx.work.join("staging").join(&name),
            name,
            id: None,
            volume_context: HashMap::new(),
            pod_dir,
            target,
            stage_tried: false,
            publish_tried: false,
        }
    }

    pub async fn create(&mut self, ctx: &Ctx) -> Result<(), Status> {
        let mut c = ctx.csi.controller.clone();
        let resp = timed(&ctx.rec, "CreateVolume", c.create_volume(ctx.spec.create_request(&self.name))).await?;
        let volume = resp.volume.unwrap_or_default();
        if volume.volume_id.is_empty() {
            return Err(Status::internal("CreateVolume answered without a volume_id"));
        }
        self.id = Some(volume.volume_id);
        self.volume_context = volume.volume_context;
        Ok(())
    }

    /// A volume an earlier process created, staged and published (so that
    /// [`Volume::undo`] takes all of it down).
    pub fn adopt_published(&mut self, id: String, volume_context: HashMap<String, String>) {
        self.id = Some(id);
        self.volume_context = volume_context;
        self.stage_tried = true;
        self.publish_tried = true;
    }

    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The NodePublish target (a directory for mount volumes).
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn id(&self) -> String {
        self.id.clone().unwrap_or_default()
    }

    pub async fn stage(&mut self, ctx: &Ctx) -> Result<(), Status> {
        // kubelet creates the staging directory.
        std::fs::create_dir_all(&self.staging).map_err(|e| Status::internal(format!("bench: mkdir staging: {e}")))?;
        self.stage_tried = true;
        let mut n = ctx.csi.node.clone();
        let req = csi::NodeStageVolumeRequest {
            volume_id: self.id(),
            staging_target_path: self.staging.to_string_lossy().into_owned(),
            volume_capability: Some(ctx.spec.capability()),
            volume_context: self.volume_context.clone(),
            ..Default::default()
        };
        timed(&ctx.rec, "NodeStageVolume", n.node_stage_volume(req)).await.map(drop)
    }

    pub async fn publish(&mut self, ctx: &Ctx) -> Result<(), Status> {
        // kubelet creates the parent of the target; the driver the target.
        std::fs::create_dir_all(&self.pod_dir).map_err(|e| Status::internal(format!("bench: mkdir pod dir: {e}")))?;
        self.publish_tried = true;
        let mut n = ctx.csi.node.clone();
        let req = csi::NodePublishVolumeRequest {
            volume_id: self.id(),
            staging_target_path: self.staging.to_string_lossy().into_owned(),
            target_path: self.target.to_string_lossy().into_owned(),
            volume_capability: Some(ctx.spec.capability()),
            readonly: false,
            volume_context: self.volume_context.clone(),
            ..Default::default()
        };
        timed(&ctx.rec, "NodePublishVolume", n.node_publish_volume(req)).await.map(drop)
    }

    pub async fn unpublish(&mut self, ctx: &Ctx) -> Result<(), Status> {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: self.id(),
            target_path: self.target.to_string_lossy().into_owned(),
        };
        retry(|| {
            let mut n = ctx.csi.node.clone();
            let req = req.clone();
            async move { timed(&ctx.rec, "NodeUnpublishVolume", n.node_unpublish_volume(req)).await }
        })
        .await?;
        self.publish_tried = false;
        // kubelet removes the pod's directories (never recursively: data
        // left in an unmounted target must be noticed).
        let _ = std::fs::remove_dir(&self.target).or_else(|_| std::fs::remove_file(&self.target));
        let _ = std::fs::remove_dir(&self.pod_dir);
        Ok(())
    }

    pub async fn unstage(&mut self, ctx: &Ctx) -> Result<(), Status> {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: self.id(),
            staging_target_path: self.staging.to_string_lossy().into_owned(),
        };
        retry(|| {
            let mut n = ctx.csi.node.clone();
            let req = req.clone();
            async move { timed(&ctx.rec, "NodeUnstageVolume", n.node_unstage_volume(req)).await }
        })
        .await?;
        self.stage_tried = false;
        let _ = std::fs::remove_dir(&self.staging);
        Ok(())
    }

    pub async fn delete(&mut self, ctx: &Ctx) -> Result<(), Status> {
        let req = csi::DeleteVolumeRequest { volume_id: self.id(), secrets: Default::default() };
        retry(|| {
            let mut c = ctx.csi.controller.clone();
            let req = req.clone();
            async move { timed(&ctx.rec, "DeleteVolume", c.delete_volume(req)).await }
        })
        .await?;
        self.id = None;
        Ok(())
    }

    /// Undoes whatever was attempted, in reverse. Returns what could not be
    /// undone (for the report).
    pub async fn undo(&mut self, ctx: &Ctx) -> Vec<String> {
        let mut left = Vec::new();
        if self.id.is_none() {
            return left;
        }
        if self.publish_tried {
            if let Err(e) = self.unpublish(ctx).await {
                left.push(format!("{}: published at {}: {}", self.name, self.target.display(), e.message()));
                return left;
            }
        }
        if self.stage_tried {
            if let Err(e) = self.unstage(ctx).await {
                left.push(format!("{}: staged at {}: {}", self.name, self.staging.display(), e.message()));
                return left;
            }
        }
        if let Err(e) = self.delete(ctx).await {
            left.push(format!("{}: volume {} not deleted: {}", self.name, self.id(), e.message()));
        }
        left
    }
}

async fn retry<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if transient(e.code()) && attempt + 1 < UNDO_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            other => return other,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub completed: u64,
    pub failed: u64,
    pub interrupted: u64,
    pub wall: Duration,
    pub leftovers: Vec<String>,
}

impl Outcome {
    /// Adds the outcome of a later chunk of the same benchmark.
    pub fn add(&mut self, other: Outcome) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.interrupted += other.interrupted;
        self.wall += other.wall;
        self.leftovers.extend(other.leftovers);
    }
}

/// How one lifecycle ended.
enum End {
    Completed,
    Failed,
    Interrupted,
}

/// One complete lifecycle; the `lifecycle` and `NodePublish+Unpublish` spans
/// are recorded for complete ones only.
async fn lifecycle(ctx: &Ctx, index: usize, leftovers: &mut Vec<String>) -> End {
    let mut vol = Volume::new(ctx, index);
    let start = Instant::now();
    let forward = async {
        vol.create(ctx).await?;
        if stopped() {
            return Ok(None);
        }
        vol.stage(ctx).await?;
        if stopped() {
            return Ok(None);
        }
        let p = Instant::now();
        vol.publish(ctx).await?;
        let published = p.elapsed();
        let u = Instant::now();
        vol.unpublish(ctx).await?;
        let pair = published + u.elapsed();
        vol.unstage(ctx).await?;
        vol.delete(ctx).await?;
        Ok::<_, Status>(Some(pair))
    }
    .await;
    match forward {
        Ok(Some(pair)) => {
            ctx.rec.sample("lifecycle", start.elapsed());
            ctx.rec.sample("publish+unpublish", pair);
            End::Completed
        }
        Ok(None) => {
            leftovers.extend(vol.undo(ctx).await);
            End::Interrupted
        }
        Err(_) => {
            leftovers.extend(vol.undo(ctx).await);
            End::Failed
        }
    }
}

/// `count` lifecycles, `concurrency` at a time; stops launching new ones on
/// an interrupt and finishes (undoes) the ones in flight.
pub async fn run(ctx: Arc<Ctx>, count: usize, concurrency: usize) -> Outcome {
    let progress = Progress::start("lifecycles", count as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (ctx, next, progress) = (Arc::clone(&ctx), Arc::clone(&next), Arc::clone(&progress));
        workers.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            loop {
                if stopped() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match lifecycle(&ctx, i, &mut out.leftovers).await {
                    End::Completed => {
                        out.completed += 1;
                        progress.tick(true);
                    }
                    End::Failed => {
                        out.failed += 1;
                        progress.tick(false);
                    }
                    End::Interrupted => out.interrupted += 1,
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for w in workers {
        if let Ok(out) = w.await {
            total.completed += out.completed;
            total.failed += out.failed;
            total.interrupted += out.interrupted;
            total.leftovers.extend(out.leftovers);
        }
    }
    total.wall = start.elapsed();
    progress.finish();
    total
}
