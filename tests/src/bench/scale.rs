//! Scale runs: many volumes in one pool (create, list, capacity, restart,
//! delete) and a storm of concurrent publishes on distinct staged volumes.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopvol_proto::v1 as csi;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::client::{timed, Csi};
use super::lifecycle::{Ctx, Volume};
use super::progress::Progress;
use super::stats::{ms, Summary};
use super::stopped;

/// Runs `step` on every volume, `concurrency` at a time (stops early on an
/// interrupt unless `always`). Returns how many succeeded and the wall time.
async fn for_each<F, Fut>(
    vols: &[Arc<Mutex<Volume>>],
    concurrency: usize,
    what: &str,
    always: bool,
    step: F,
) -> (usize, Duration)
where
    F: Fn(Arc<Mutex<Volume>>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let progress = Progress::start(what, vols.len() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let vols: Arc<Vec<Arc<Mutex<Volume>>>> = Arc::new(vols.to_vec());
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (vols, next, ok, progress, step) =
            (Arc::clone(&vols), Arc::clone(&next), Arc::clone(&ok), Arc::clone(&progress), step.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if stopped() && !always {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(vol) = vols.get(i) else { break };
                let good = step(Arc::clone(vol)).await;
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                progress.tick(good);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    progress.finish();
    (ok.load(Ordering::Relaxed), start.elapsed())
}

/// Undoes everything on every volume (always runs, also when interrupted).
async fn undo_all(ctx: &Arc<Ctx>, vols: &[Arc<Mutex<Volume>>], concurrency: usize) -> (Vec<String>, Duration) {
    let leftovers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, l) = (Arc::clone(ctx), Arc::clone(&leftovers));
    let (_, wall) = for_each(vols, concurrency, "cleanup", true, move |v| {
        let (c, l) = (Arc::clone(&c), Arc::clone(&l));
        async move {
            let left = v.lock().await.undo(&c).await;
            let good = left.is_empty();
            l.lock().expect("leftovers").extend(left);
            good
        }
    })
    .await;
    let left = leftovers.lock().expect("leftovers").clone();
    (left, wall)
}

/// Pages through ListVolumes; returns the IDs seen and the number of pages.
async fn list_all(ctx: &Ctx, max_entries: i32) -> Result<(Vec<String>, usize), tonic::Status> {
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut c = ctx.csi.controller.clone();
        let req = csi::ListVolumesRequest { max_entries, starting_token: token.clone() };
        let resp = timed(&ctx.rec, "ListVolumes", c.list_volumes(req)).await?;
        pages += 1;
        ids.extend(resp.entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)));
        if resp.next_token.is_empty() {
            return Ok((ids, pages));
        }
        token = resp.next_token;
        if pages > 1_000_000 {
            return Err(tonic::Status::internal("bench: ListVolumes never ended"));
        }
    }
}

pub struct ScaleOptions {
    pub volumes: usize,
    pub concurrency: usize,
    pub page_size: i32,
    pub restart_cmd: Option<String>,
    pub ready_timeout: Duration,
    pub socket: std::path::PathBuf,
    /// Re-read after a restart (the driver's PID changes).
    pub driver_pid: Box<dyn Fn() -> Option<u32> + Send + Sync>,
}

/// The scale run. `ctx` is rebuilt after a restart (new connection), so it
/// is passed by value and the final one is returned with the report.
pub async fn scale(mut ctx: Arc<Ctx>, opts: &ScaleOptions) -> (Value, Vec<String>) {
    let vols: Vec<Arc<Mutex<Volume>>> = (0..opts.volumes).map(|i| Arc::new(Mutex::new(Volume::new(&ctx, i)))).collect();
    let mut report = serde_json::Map::new();

    let c = Arc::clone(&ctx);
    let (created, wall) = for_each(&vols, opts.concurrency, "create", false, move |v| {
        let c = Arc::clone(&c);
        async move { v.lock().await.create(&c).await.is_ok() }
    })
    .await;
    // Growth of CreateVolume latency with the pool's size: first vs last 10%.
    let creates = ctx.rec.samples("CreateVolume");
    let tenth = (creates.len() / 10).max(1);
    report.insert(
        "create".into(),
        json!({
            "volumes": created,
            "wall_s": wall.as_secs_f64(),
            "per_s": created as f64 / wall.as_secs_f64().max(1e-9),
            "first_10pct_p50_ms": Summary::of(&creates[..tenth.min(creates.len())]).p50,
            "last_10pct_p50_ms": Summary::of(&creates[creates.len().saturating_sub(tenth)..]).p50,
        }),
    );
    let mine: HashSet<String> = {
        let mut s = HashSet::new();
        for v in &vols {
            if let Some(id) = v.lock().await.id.clone() {
                s.insert(id);
            }
        }
        s
    };

    if !stopped() {
        report.insert("list".into(), list_report(&ctx, opts.page_size, &mine).await);
        let mut cap = Vec::new();
        for _ in 0..20 {
            let mut c = ctx.csi.controller.clone();
            let req = csi::GetCapacityRequest {
                volume_capabilities: vec![ctx.spec.capability()],
                parameters: ctx.spec.parameters.clone(),
                ..Default::default()
            };
            if let Ok(r) = timed(&ctx.rec, "GetCapacity", c.get_capacity(req)).await {
                cap.push(r.available_capacity);
            }
        }
        report.insert("capacity".into(), json!({"calls": cap.len(), "available_bytes": cap.last()}));
    }

    if let (Some(cmd), false) = (&opts.restart_cmd, stopped()) {
        // Close our connection first: a draining server may wait for it.
        let (rec, spec, work, run_id) = (Arc::clone(&ctx.rec), ctx.spec.clone(), ctx.work.clone(), ctx.run_id.clone());
        let old = ctx;
        drop(old);
        let outcome = restart(cmd, &opts.socket, opts.ready_timeout).await;
        let csi = match outcome {
            Ok((csi, mut value)) => {
                value["rss_after_restart"] =
                    (opts.driver_pid)().and_then(super::client::rss).map(|r| r.to_json()).into();
                report.insert("restart".into(), value);
                csi
            }
            Err(e) => {
                eprintln!("restart failed: {e:#}");
                report.insert("restart".into(), json!({"error": format!("{e:#}")}));
                // Deleting needs a driver; wait for one anyway.
                match Csi::wait_ready(&opts.socket, opts.ready_timeout).await {
                    Ok((csi, _)) => csi,
                    Err(e) => {
                        let left = vec![format!("no driver to delete the {} volumes with: {e:#}", mine.len())];
                        return (Value::Object(report), left);
                    }
                }
            }
        };
        ctx = Arc::new(Ctx { csi, rec, spec, work, run_id });
        if report["restart"].get("error").is_none() {
            report.insert("list_after_restart".into(), list_report(&ctx, opts.page_size, &mine).await);
        }
    }

    let (leftovers, wall) = undo_all(&ctx, &vols, opts.concurrency).await;
    report.insert(
        "delete".into(),
        json!({"wall_s": wall.as_secs_f64(), "per_s": created as f64 / wall.as_secs_f64().max(1e-9)}),
    );
    (Value::Object(report), leftovers)
}

async fn list_report(ctx: &Ctx, page_size: i32, mine: &HashSet<String>) -> Value {
    let start = Instant::now();
    match list_all(ctx, page_size).await {
        Ok((ids, pages)) => {
            let seen: HashSet<&String> = ids.iter().collect();
            let missing = mine.iter().filter(|id| !seen.contains(id)).count();
            let duplicates = ids.len() - seen.len();
            json!({
                "max_entries": page_size,
                "pages": pages,
                "entries": ids.len(),
                "ours": mine.len(),
                "missing": missing,
                "duplicates": duplicates,
                "seen_all": missing == 0,
                "wall_ms": ms(start.elapsed()),
            })
        }
        Err(e) => json!({"error": format!("{}: {}", super::stats::code_name(e.code()), e.message())}),
    }
}

/// Runs the restart command and waits until Probe answers ready on a new
/// connection. The old connection is closed first: a draining server may
/// wait for open connections.
async fn restart(cmd: &str, socket: &Path, timeout: Duration) -> anyhow::Result<(Csi, Value)> {
    let start = Instant::now();
    let status = tokio::process::Command::new(cmd).stdin(std::process::Stdio::null()).status().await?;
    let cmd_time = start.elapsed();
    if !status.success() {
        anyhow::bail!("restart command {cmd:?} exited with {status}");
    }
    let (csi, _) = Csi::wait_ready(socket, timeout).await?;
    let total = start.elapsed();
    Ok((
        csi,
        json!({
            "command": cmd,
            "command_ms": ms(cmd_time),
            "ready_after_command_ms": ms(total - cmd_time),
            "total_ms": ms(total),
        }),
    ))
}

/// Publish storm: `volumes` staged volumes, then `rounds` times: all
/// NodePublish at once, then all NodeUnpublish at once.
pub async fn storm(ctx: Arc<Ctx>, volumes: usize, rounds: usize, concurrency: usize) -> (Value, Vec<String>) {
    let vols: Vec<Arc<Mutex<Volume>>> = (0..volumes).map(|i| Arc::new(Mutex::new(Volume::new(&ctx, i)))).collect();
    let c = Arc::clone(&ctx);
    let (ready, setup) = for_each(&vols, concurrency, "create+stage", false, move |v| {
        let c = Arc::clone(&c);
        async move {
            let mut v = v.lock().await;
            v.create(&c).await.is_ok() && v.stage(&c).await.is_ok()
        }
    })
    .await;
    let mut publish_waves = Vec::new();
    let mut unpublish_waves = Vec::new();
    if ready == volumes {
        for _ in 0..rounds {
            if stopped() {
                break;
            }
            publish_waves.push(wave(&ctx, &vols, true).await);
            unpublish_waves.push(wave(&ctx, &vols, false).await);
        }
    } else {
        eprintln!("publish-storm: only {ready} of {volumes} volumes could be staged; no storm");
    }
    let (leftovers, _) = undo_all(&ctx, &vols, concurrency).await;
    let report = json!({
        "volumes": volumes,
        "rounds": publish_waves.len(),
        "setup_wall_s": setup.as_secs_f64(),
        "publish_wave": Summary::of(&publish_waves).to_json(),
        "unpublish_wave": Summary::of(&unpublish_waves).to_json(),
    });
    (report, leftovers)
}

/// All volumes' NodePublish (or NodeUnpublish) started together; returns the
/// wall time until the last one answered.
async fn wave(ctx: &Arc<Ctx>, vols: &[Arc<Mutex<Volume>>], publish: bool) -> Duration {
    let barrier = Arc::new(tokio::sync::Barrier::new(vols.len()));
    let start = Instant::now();
    let tasks: Vec<_> = vols
        .iter()
        .map(|v| {
            let (ctx, v, barrier) = (Arc::clone(ctx), Arc::clone(v), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut v = v.lock().await;
                barrier.wait().await;
                let _ = if publish { v.publish(&ctx).await } else { v.unpublish(&ctx).await };
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    start.elapsed()
}
