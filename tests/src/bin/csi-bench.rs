//! csi-bench: a load generator for any CSI driver on a unix socket, plus the
//! FlexVolume call benchmark and the report generator of docs/BENCHMARKS.md.
//!
//! ```text
//! csi-bench --endpoint unix:///run/csi.sock --driver-pid 1234 --json out.json \
//!     lifecycle --count 200 --concurrency 1 --access mount --size 10Gi --fs-type ext4
//! csi-bench ... scale --volumes 1000 --concurrency 16 --restart-cmd ./restart.sh
//! csi-bench ... publish-storm --volumes 64
//! csi-bench --json flex.json flex --exe target/release/loopvol
//! csi-bench ... --work-dir /tmp/w volume create --name v1 --size 4Gi --param thick=true   # prints the target path
//! csi-bench ... --work-dir /tmp/w volume remove --name v1
//! csi-bench report --dir docs/bench --doc docs/BENCHMARKS.md
//! csi-bench --endpoint unix:///run/csi.sock capabilities
//! ```
//!
//! The first SIGINT stops launching and undoes what is in flight
//! (NodeUnpublish, NodeUnstage, DeleteVolume of everything this run made).

#![forbid(unsafe_code)]

use loopvol_tests::bench;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bench::client::{self, Access, Csi, VolumeSpec};
use bench::lifecycle::{self, Ctx};
use bench::stats::Recorder;
use clap::{Args, Parser, Subcommand};
use loopvol_proto::v1 as csi;
use serde_json::{json, Value};

/// Load generator and benchmarks for CSI drivers (and loopvol's FlexVolume driver).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// CSI endpoint: unix:///path/csi.sock or a socket path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock", global = true)]
    endpoint: String,
    /// Staging and target directories are made below here (a run directory
    /// per run, removed afterwards when nothing is left mounted in it).
    #[arg(long, default_value = "/tmp/csi-bench", global = true)]
    work_dir: PathBuf,
    /// The driver's PID: its RSS (VmRSS) and peak RSS (VmHWM) are reported.
    #[arg(long, global = true)]
    driver_pid: Option<u32>,
    /// A file holding the driver's PID (re-read after a restart).
    #[arg(long, global = true, conflicts_with = "driver_pid")]
    driver_pid_file: Option<PathBuf>,
    /// The driver's pool directory, if it is loop-device based: loop devices
    /// whose backing file lies below it after the run are reported as leaked.
    #[arg(long, global = true)]
    pool: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Idle footprint: GetPluginInfo and Probe once, then the driver's RSS.
    Probe,
    /// N complete lifecycles (Create → Stage → Publish → Unpublish → Unstage → Delete) at concurrency C.
    Lifecycle {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[command(flatten)]
        volume: VolumeArgs,
        #[command(flatten)]
        reference: ReferenceArgs,
    },
    /// Many volumes in one pool: create, page through ListVolumes, GetCapacity,
    /// restart the driver (with --restart-cmd) until Probe is ready, delete.
    Scale {
        #[arg(long, default_value_t = 1000)]
        volumes: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// ListVolumes max_entries.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
        /// Program (an executable, run without a shell) that restarts the
        /// driver (stop, then start in the background); timed until Probe
        /// answers ready on the endpoint.
        #[arg(long)]
        restart_cmd: Option<String>,
        /// Seconds to wait for the restarted driver.
        #[arg(long, default_value_t = 120)]
        ready_timeout: u64,
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// Stage V volumes, then all NodePublish at once and all NodeUnpublish at once, R rounds.
    PublishStorm {
        #[arg(long, default_value_t = 64)]
        volumes: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Concurrency of the setup and cleanup (create + stage, unstage + delete).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// FlexVolume driver wall time as kubelet calls it: init, mount+unmount, and /bin/true.
    Flex {
        /// The FlexVolume executable (loopvol).
        #[arg(long)]
        exe: PathBuf,
        #[arg(long, default_value_t = 101)]
        runs: usize,
        /// defaultSize of the benchmark volume.
        #[arg(long, default_value = "64Mi")]
        size: String,
    },
    /// One published mount volume to run a data-path benchmark in
    /// (tests/bench/datapath.sh): `create` makes, stages and publishes it and
    /// prints the target path; `remove` takes it down and deletes it.
    Volume {
        #[command(subcommand)]
        action: VolumeAction,
    },
    /// Print what the driver advertises, one `SERVICE NAME` line each:
    /// `plugin CONTROLLER_SERVICE`, `controller MODIFY_VOLUME`, `node STAGE_UNSTAGE_VOLUME`, ...
    Capabilities,
    /// Regenerate the plot and the tables of docs/BENCHMARKS.md from the JSON results.
    Report {
        #[arg(long, default_value = "docs/bench")]
        dir: PathBuf,
        #[arg(long, default_value = "docs/BENCHMARKS.md")]
        doc: PathBuf,
        #[arg(long, default_value = "docs/bench/latency.svg")]
        svg: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeAction {
    /// CreateVolume → NodeStageVolume → NodePublishVolume of one mount
    /// volume; prints the target path on stdout. Kept in
    /// <work-dir>/volumes/NAME.json for `remove`. Exit status 3 when
    /// CreateVolume answers INVALID_ARGUMENT (e.g. an unknown parameter),
    /// with the driver's message on stderr.
    Create {
        /// The CreateVolume name (also names its directories below --work-dir).
        #[arg(long)]
        name: String,
        /// Publish it for this pod UID (NodePublish volume context
        /// `csi.storage.k8s.io/pod.uid`): its cgroup gets the I/O limits.
        #[arg(long)]
        pod_uid: Option<String>,
        #[command(flatten)]
        volume: VolumeArgs,
    },
    /// ControllerModifyVolume of a volume `create` made: new mutable
    /// parameters (key=value, repeatable), as a VolumeAttributesClass's.
    Modify {
        #[arg(long)]
        name: String,
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// NodeUnpublishVolume → NodeUnstageVolume → DeleteVolume of a volume
    /// `create` made with the same --work-dir.
    Remove {
        #[arg(long)]
        name: String,
    },
}

/// A second driver measured in the same run, for ratios to it: the lifecycles
/// are split into rounds, each run against --endpoint and then against the
/// reference, so that both drivers see the same (noisy) machine.
#[derive(Debug, Args)]
struct ReferenceArgs {
    /// The reference driver's endpoint.
    #[arg(long, requires = "reference_json")]
    reference_endpoint: Option<String>,
    /// A file holding the reference driver's PID (for its RSS).
    #[arg(long, requires = "reference_endpoint")]
    reference_pid_file: Option<PathBuf>,
    /// The reference driver's state directory (loop devices backed by files below it count as leaked).
    #[arg(long, requires = "reference_endpoint")]
    reference_pool: Option<PathBuf>,
    /// Where the reference's results go (JSON, same shape as --json).
    #[arg(long, requires = "reference_endpoint")]
    reference_json: Option<PathBuf>,
    /// How many rounds the lifecycles are split into, alternating between the drivers.
    #[arg(long, default_value_t = 10, requires = "reference_endpoint")]
    rounds: usize,
}

#[derive(Debug, Args)]
struct VolumeArgs {
    #[arg(long, value_enum, default_value_t = Access::Mount)]
    access: Access,
    /// Requested capacity (Kubernetes quantity). Default: 1Gi; 16Mi for scale; 64Mi for publish-storm.
    #[arg(long)]
    size: Option<String>,
    /// fs_type of the mount capability (empty: the driver's default).
    #[arg(long, default_value = "ext4")]
    fs_type: String,
    /// mount_flags of the mount capability (repeatable).
    #[arg(long = "mount-flag")]
    mount_flags: Vec<String>,
    /// CreateVolume parameter key=value, like a StorageClass's (repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
}

impl VolumeArgs {
    fn spec(&self, default_size: &str) -> anyhow::Result<VolumeSpec> {
        Ok(VolumeSpec {
            access: self.access,
            size_bytes: client::parse_size(self.size.as_deref().unwrap_or(default_size))?,
            fs_type: if self.access == Access::Mount { self.fs_type.clone() } else { String::new() },
            mount_flags: self.mount_flags.clone(),
            parameters: client::parse_params(&self.params)?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the client side must not compete with the driver for the
    // two cores; all it does is wait on the socket.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = runtime.block_on(run(cli))?;
    drop(runtime);
    std::process::exit(code);
}

/// Run-wide facts and helpers.
struct Run {
    cli_json: Option<PathBuf>,
    endpoint: String,
    socket: PathBuf,
    dir: PathBuf,
    run_id: String,
    pid: Option<u32>,
    pid_file: Option<PathBuf>,
    pool: Option<PathBuf>,
}

impl Run {
    fn driver_pid(&self) -> Option<u32> {
        self.pid.or_else(|| std::fs::read_to_string(self.pid_file.as_ref()?).ok()?.trim().parse().ok())
    }

    fn rss(&self) -> Value {
        self.driver_pid().and_then(client::rss).map(|r| r.to_json()).unwrap_or(Value::Null)
    }

    /// Loop devices backed by files below the pool (a loop-based driver's leaks).
    fn loops_under_pool(&self) -> Vec<String> {
        let Some(pool) = &self.pool else { return Vec::new() };
        let pool = std::fs::canonicalize(pool).unwrap_or_else(|_| pool.clone());
        loopvol_backend::host::loop_devices()
            .into_iter()
            .filter(|(_, backing)| backing.starts_with(&pool))
            .map(|(dev, backing)| format!("{} -> {}", dev.display(), backing.display()))
            .collect()
    }

    /// Removes the run directory once nothing is mounted in it.
    fn finish_dir(&self) -> Vec<String> {
        let left: Vec<String> = client::mounts_under(&self.dir).iter().map(|p| p.display().to_string()).collect();
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("csi-bench: still mounted below {} (left in place): {left:?}", self.dir.display());
        }
        left
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Report { dir, doc, svg } = &cli.command {
        return report(dir, doc, svg).map(|()| 0);
    }
    if let Command::Capabilities = &cli.command {
        let socket = client::socket_path(&cli.endpoint)?;
        let (c, _) =
            Csi::wait_ready(&socket, Duration::from_secs(10)).await.context("the driver does not answer Probe")?;
        for line in client::capabilities(&c).await? {
            println!("{line}");
        }
        return Ok(0);
    }
    bench::install_signal_handler();
    if let Command::Volume { action } = &cli.command {
        return volume(&cli, action).await;
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let run_id = format!("{:08x}", nanos ^ std::process::id().rotate_left(16));
    let mode = match &cli.command {
        Command::Probe => "probe",
        Command::Lifecycle { .. } => "lifecycle",
        Command::Scale { .. } => "scale",
        Command::PublishStorm { .. } => "publish-storm",
        Command::Flex { .. } => "flex",
        Command::Volume { .. } | Command::Report { .. } | Command::Capabilities => unreachable!("handled above"),
    };
    let dir = cli.work_dir.join(format!("{mode}-{run_id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let r = Run {
        cli_json: cli.json.clone(),
        endpoint: cli.endpoint.clone(),
        socket: client::socket_path(&cli.endpoint)?,
        dir,
        run_id,
        pid: cli.driver_pid,
        pid_file: cli.driver_pid_file.clone(),
        pool: cli.pool.clone(),
    };
    let rec = Arc::new(Recorder::default());
    let mut doc = base_doc(mode);
    let start = Instant::now();
    let mut not_undone: Vec<String> = Vec::new();

    if let Command::Lifecycle { count, concurrency, volume, reference } = &cli.command {
        if let (Some(endpoint), Some(json)) = (&reference.reference_endpoint, &reference.reference_json) {
            let theirs = Run {
                cli_json: Some(json.clone()),
                endpoint: endpoint.clone(),
                socket: client::socket_path(endpoint)?,
                dir: r.dir.with_file_name(format!("{mode}-{}-reference", r.run_id)),
                run_id: format!("{}r", r.run_id),
                pid: None,
                pid_file: reference.reference_pid_file.clone(),
                pool: reference.reference_pool.clone(),
            };
            std::fs::create_dir_all(&theirs.dir).with_context(|| format!("creating {}", theirs.dir.display()))?;
            let spec = volume.spec("1Gi")?;
            return lifecycle_pair([r, theirs], *count, *concurrency, reference.rounds, spec).await;
        }
    }

    if let Command::Flex { exe, runs, size } = &cli.command {
        let out = bench::flex::run(exe, &r.dir, *runs, size, &rec);
        doc["flex"] = out.as_ref().map(Value::clone).unwrap_or(Value::Null);
        if let Err(e) = &out {
            eprintln!("csi-bench flex: {e:#}");
        }
        return finish(&r, doc, &rec, start, not_undone, out.is_ok());
    }

    let csi_client = connect(&r, &mut doc).await?;

    let ok = match cli.command {
        Command::Probe => {
            // Let the driver settle after answering (its blocking threads idle out).
            tokio::time::sleep(Duration::from_millis(200)).await;
            true
        }
        Command::Lifecycle { count, concurrency, volume, reference: _ } => {
            let spec = volume.spec("1Gi")?;
            doc["config"] = json!({"count": count, "concurrency": concurrency, "volume": spec.to_json()});
            let ctx = Arc::new(Ctx {
                csi: csi_client,
                rec: Arc::clone(&rec),
                spec,
                work: r.dir.clone(),
                run_id: r.run_id.clone(),
            });
            let out = lifecycle::run(ctx, count, concurrency).await;
            doc["lifecycles"] = lifecycles_json(count, &out);
            not_undone = out.leftovers;
            out.failed == 0 && out.interrupted == 0
        }
        Command::Scale { volumes, concurrency, page_size, restart_cmd, ready_timeout, volume } => {
            let spec = volume.spec("16Mi")?;
            doc["config"] = json!({"volumes": volumes, "concurrency": concurrency, "page_size": page_size,
                                   "restart_cmd": restart_cmd, "volume": spec.to_json()});
            let ctx = Arc::new(Ctx {
                csi: csi_client,
                rec: Arc::clone(&rec),
                spec,
                work: r.dir.clone(),
                run_id: r.run_id.clone(),
            });
            let pid = r.pid;
            let pid_file = r.pid_file.clone();
            let opts = bench::scale::ScaleOptions {
                volumes,
                concurrency,
                page_size,
                restart_cmd,
                ready_timeout: Duration::from_secs(ready_timeout),
                socket: r.socket.clone(),
                driver_pid: Box::new(move || {
                    pid.or_else(|| std::fs::read_to_string(pid_file.as_ref()?).ok()?.trim().parse().ok())
                }),
            };
            let (out, left) = bench::scale::scale(ctx, &opts).await;
            let seen_all = out["list"]["seen_all"].as_bool().unwrap_or(false);
            doc["scale"] = out;
            not_undone = left;
            seen_all
        }
        Command::PublishStorm { volumes, rounds, concurrency, volume } => {
            let spec = volume.spec("64Mi")?;
            doc["config"] =
                json!({"volumes": volumes, "rounds": rounds, "concurrency": concurrency, "volume": spec.to_json()});
            let ctx = Arc::new(Ctx {
                csi: csi_client,
                rec: Arc::clone(&rec),
                spec,
                work: r.dir.clone(),
                run_id: r.run_id.clone(),
            });
            let (out, left) = bench::scale::storm(ctx, volumes, rounds, concurrency).await;
            doc["storm"] = out;
            not_undone = left;
            true
        }
        Command::Flex { .. } | Command::Volume { .. } | Command::Report { .. } | Command::Capabilities => {
            unreachable!("handled above")
        }
    };
    // The driver's figures after the run, once its blocking threads could idle.
    // (A new connection: the scale run may have restarted the driver.)
    let _ = Csi::wait_ready(&r.socket, Duration::from_secs(10)).await;
    doc["driver_rss"]["after"] = r.rss();
    finish(&r, doc, &rec, start, not_undone, ok)
}

/// The head of a result document.
fn base_doc(mode: &str) -> Value {
    json!({
        "tool": "csi-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "date": date_utc(),
        "command_line": command_line(),
        "host": host(),
    })
}

/// Connects to the driver of `r` (waiting for Probe) and records who it is,
/// how long connecting took and its RSS before the run.
async fn connect(r: &Run, doc: &mut Value) -> anyhow::Result<Csi> {
    doc["endpoint"] = json!(r.endpoint);
    let (csi_client, connect_time) = Csi::wait_ready(&r.socket, Duration::from_secs(10))
        .await
        .with_context(|| format!("the driver at {} does not answer Probe", r.endpoint))?;
    let info = csi_client.identity.clone().get_plugin_info(csi::GetPluginInfoRequest {}).await?.into_inner();
    doc["driver"] = json!({"name": info.name, "vendor_version": info.vendor_version, "pid": r.driver_pid()});
    doc["connect_ms"] = json!(bench::stats::ms(connect_time));
    doc["driver_rss"] = json!({"before": r.rss()});
    Ok(csi_client)
}

/// `lifecycle` against a driver and a reference driver, alternating: the
/// lifecycles are split into `rounds` chunks, and each chunk runs against the
/// first driver and then against the second, so that a burst of load on the
/// machine hits both alike. One result document per driver.
async fn lifecycle_pair(
    runs: [Run; 2],
    count: usize,
    concurrency: usize,
    rounds: usize,
    spec: VolumeSpec,
) -> anyhow::Result<i32> {
    let start = Instant::now();
    let rounds = rounds.clamp(1, count.max(1));
    let mut drivers = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let mut doc = base_doc("lifecycle");
        let csi_client = connect(r, &mut doc).await?;
        doc["config"] = json!({
            "count": count, "concurrency": concurrency, "volume": spec.to_json(),
            "rounds": rounds, "alternating_with": runs[1 - i].endpoint,
        });
        drivers.push((doc, csi_client, Arc::new(Recorder::default()), lifecycle::Outcome::default()));
    }
    'rounds: for round in 0..rounds {
        let n = count / rounds + usize::from(round < count % rounds);
        for (r, (_, csi_client, rec, out)) in runs.iter().zip(drivers.iter_mut()) {
            if bench::stopped() {
                break 'rounds;
            }
            let ctx = Arc::new(Ctx {
                csi: csi_client.clone(),
                rec: Arc::clone(rec),
                spec: spec.clone(),
                work: r.dir.clone(),
                run_id: format!("{}-{round}", r.run_id),
            });
            out.add(lifecycle::run(ctx, n, concurrency).await);
        }
    }
    let mut code = 0;
    for (r, (mut doc, _, rec, out)) in runs.iter().zip(drivers) {
        doc["lifecycles"] = lifecycles_json(count, &out);
        let ok = out.failed == 0 && out.interrupted == 0;
        let _ = Csi::wait_ready(&r.socket, Duration::from_secs(10)).await;
        doc["driver_rss"]["after"] = r.rss();
        code = code.max(finish(r, doc, &rec, start, out.leftovers, ok)?);
    }
    Ok(code)
}

fn finish(
    r: &Run,
    mut doc: Value,
    rec: &Recorder,
    start: Instant,
    not_undone: Vec<String>,
    ok: bool,
) -> anyhow::Result<i32> {
    doc["wall_s"] = json!(start.elapsed().as_secs_f64());
    doc["load_after"] = load();
    let mounts = r.finish_dir();
    let loops = r.loops_under_pool();
    let errors = rec.total_errors();
    doc["error_total"] = json!(errors);
    if let (Value::Object(d), Value::Object(stats)) = (&mut doc, rec.to_json()) {
        d.extend(stats);
    }
    doc["leftovers"] = json!({
        "not_undone": not_undone,
        "mounts_under_work_dir": mounts,
        "loop_devices_under_pool": loops,
    });

    // The human report on stdout.
    println!("csi-bench {} ({})", doc["mode"].as_str().unwrap_or(""), doc["driver"]["name"].as_str().unwrap_or("-"));
    if let Some(l) = doc.get("lifecycles") {
        println!(
            "lifecycles: {} completed, {} failed, {} interrupted in {:.2} s: {:.1}/s",
            l["completed"],
            l["failed"],
            l["interrupted"],
            l["wall_s"].as_f64().unwrap_or(0.0),
            l["per_s"].as_f64().unwrap_or(0.0)
        );
    }
    for key in ["scale", "storm", "flex"] {
        if let Some(v) = doc.get(key).filter(|v| !v.is_null()) {
            println!("{key}: {}", serde_json::to_string_pretty(v)?);
        }
    }
    print!("{}", rec.table());
    let kib = |v: &Value| v["current_kib"].as_u64().map(|k| format!("{:.1} MiB", k as f64 / 1024.0));
    if let Some(before) = kib(&doc["driver_rss"]["before"]) {
        println!(
            "driver RSS: {before} before, {} after, peak (VmHWM) {}; threads {} -> {}",
            kib(&doc["driver_rss"]["after"]).unwrap_or_else(|| "?".into()),
            doc["driver_rss"]["after"]["peak_kib"]
                .as_u64()
                .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            doc["driver_rss"]["before"]["threads"],
            doc["driver_rss"]["after"]["threads"],
        );
    }
    let leaked = !not_undone_empty(&doc)
        || !loops.is_empty()
        || !doc["leftovers"]["mounts_under_work_dir"].as_array().is_none_or(Vec::is_empty);
    if leaked {
        println!("LEFT BEHIND: {}", serde_json::to_string_pretty(&doc["leftovers"])?);
    } else {
        println!("left behind: nothing");
    }
    if let Some(path) = &r.cli_json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if bench::stopped() {
        130
    } else if ok && errors == 0 && !leaked {
        0
    } else {
        1
    })
}

/// `volume create|remove`: one volume, no statistics.
async fn volume(cli: &Cli, action: &VolumeAction) -> anyhow::Result<i32> {
    let socket = client::socket_path(&cli.endpoint)?;
    std::fs::create_dir_all(&cli.work_dir).with_context(|| format!("creating {}", cli.work_dir.display()))?;
    let work = std::fs::canonicalize(&cli.work_dir)?;
    let (csi_client, _) =
        Csi::wait_ready(&socket, Duration::from_secs(10)).await.context("the driver does not answer Probe")?;
    let spec = match action {
        VolumeAction::Create { volume, .. } => {
            anyhow::ensure!(volume.access == Access::Mount, "volume create makes mount volumes only");
            volume.spec("1Gi")?
        }
        VolumeAction::Remove { .. } | VolumeAction::Modify { .. } => VolumeSpec {
            access: Access::Mount,
            size_bytes: 0,
            fs_type: String::new(),
            mount_flags: Vec::new(),
            parameters: Default::default(),
        },
    };
    let ctx = Ctx { csi: csi_client, rec: Arc::new(Recorder::default()), spec, work, run_id: String::new() };
    let code = match action {
        VolumeAction::Create { name, pod_uid, .. } => match bench::volume::create(&ctx, name, pod_uid.as_deref()).await
        {
            Ok(target) => {
                println!("{}", target.display());
                0
            }
            Err(e) => {
                eprintln!("csi-bench volume create {name}: {e}");
                if matches!(e, bench::volume::CreateError::Refused(_)) {
                    3
                } else {
                    1
                }
            }
        },
        VolumeAction::Modify { name, params } => {
            match bench::volume::modify(&ctx, name, client::parse_params(params)?).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("csi-bench volume modify {name}: {e:#}");
                    1
                }
            }
        }
        VolumeAction::Remove { name } => match bench::volume::remove(&ctx, name).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("csi-bench volume remove {name}: {e:#}");
                1
            }
        },
    };
    Ok(if bench::stopped() && code == 0 { 130 } else { code })
}

/// The `lifecycles` section of a result document.
fn lifecycles_json(count: usize, out: &lifecycle::Outcome) -> Value {
    json!({
        "requested": count,
        "completed": out.completed,
        "failed": out.failed,
        "interrupted": out.interrupted,
        "wall_s": out.wall.as_secs_f64(),
        "per_s": out.completed as f64 / out.wall.as_secs_f64().max(1e-9),
    })
}

fn not_undone_empty(doc: &Value) -> bool {
    doc["leftovers"]["not_undone"].as_array().is_none_or(Vec::is_empty)
}

fn report(dir: &Path, doc: &Path, svg: &Path) -> anyhow::Result<()> {
    let runs = bench::report::load(dir)?;
    anyhow::ensure!(!runs.is_empty(), "no csi-bench results in {}", dir.display());
    std::fs::write(svg, bench::report::svg(&runs)).with_context(|| format!("writing {}", svg.display()))?;
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let binaries = std::fs::read_to_string(dir.join("binaries.txt")).ok();
    let reference = bench::report::load_reference(dir)?;
    let section = bench::report::markdown(&runs, &reference, binaries.as_deref());
    std::fs::write(doc, bench::report::splice(&text, &section))
        .with_context(|| format!("writing {}", doc.display()))?;
    println!(
        "wrote {} and {} from {} result files ({} of the reference driver)",
        svg.display(),
        doc.display(),
        runs.len(),
        reference.len()
    );
    Ok(())
}

/// The command line as typed (quoted where needed), for the report.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    std::iter::once(name.unwrap_or_default())
        .chain(args.into_iter().skip(1).map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|<>*?".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

fn host() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|r| r.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    json!({
        "load": load(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_kib": mem,
    })
}

/// How busy the machine is (other builds share it): load averages and the
/// 10-second CPU and I/O pressure (PSI, "some" line).
fn load() -> Value {
    let psi = |what: &str| {
        std::fs::read_to_string(format!("/proc/pressure/{what}")).ok().and_then(|t| {
            t.lines().next()?.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse::<f64>().ok()
        })
    };
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "loadavg": avg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "cpu_pressure_avg10": psi("cpu"),
        "io_pressure_avg10": psi("io"),
    })
}

/// Today in UTC as YYYY-MM-DD (civil-from-days, H. Hinnant's algorithm).
fn date_utc() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
