//! loopvol-csi: the CSI driver. Serves Identity, Controller, Node,
//! GroupController and SnapshotMetadata on one unix socket over the loopvol
//! backend, optionally Prometheus metrics over HTTP; its subcommands are the
//! admin CLI.

#![forbid(unsafe_code)]

mod admin;
mod attributes_follower;
mod authority;
mod capability;
mod controller;
mod driver;
mod group_controller;
mod identity;
mod io_limits_resync;
mod metrics;
mod node;
mod pagination;
mod snapshot_metadata;
mod status;
mod trim_schedule;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use loopvol_backend::{Pool, PoolOptions};
use loopvol_proto::v1::controller_server::ControllerServer;
use loopvol_proto::v1::group_controller_server::GroupControllerServer;
use loopvol_proto::v1::identity_server::IdentityServer;
use loopvol_proto::v1::node_server::NodeServer;
use loopvol_proto::v1::snapshot_metadata_server::SnapshotMetadataServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// loopvol CSI driver: node-local volumes as sparse image files on loop devices.
///
/// Without a subcommand it serves CSI on --endpoint; the subcommands are the
/// admin CLI (run them in the driver's container, where the pool is).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<admin::Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Pool directory holding the volume images and records.
    #[arg(
        long,
        env = "LOOPVOL_POOL",
        default_value = "./loopvol-pool",
        global = true,
        help_heading = "Global options"
    )]
    pool: PathBuf,
    /// CSI driver name (also names the topology key topology.<name>/node).
    #[arg(
        long,
        env = "LOOPVOL_DRIVER_NAME",
        default_value = "loopvol.csi.io",
        global = true,
        help_heading = "Global options"
    )]
    driver_name: String,
    /// Log format on stderr.
    #[arg(long, env = "LOOPVOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, help_heading = "Global options")]
    log_format: LogFormat,
}

/// Flags of the CSI server (no subcommand).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Serving (no subcommand)")]
struct ServeArgs {
    /// CSI endpoint: unix:///path/csi.sock or a plain socket path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name, reported as node ID and topology (required to serve).
    #[arg(long, env = "NODE_NAME")]
    node_id: Option<String>,
    /// Volumes this node may hold; 0 leaves the limit to the CO.
    #[arg(long, env = "LOOPVOL_MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    max_volumes_per_node: u32,
    /// List GET_SNAPSHOT (alpha in CSI 1.12) in ControllerGetCapabilities.
    /// Off by default: csi-sanity v5.4.0 fails its ControllerGetCapabilities
    /// test on any capability it does not know, GET_SNAPSHOT among them, and
    /// no sidecar calls GetSnapshot yet. The RPC works either way.
    #[arg(long, env = "LOOPVOL_ADVERTISE_GET_SNAPSHOT", default_value_t = false, action = clap::ArgAction::Set)]
    advertise_get_snapshot: bool,
    /// List SNAPSHOT_METADATA_SERVICE (alpha) in GetPluginCapabilities, so
    /// that the CO (external-snapshot-metadata) uses changed-block tracking.
    /// Off by default: csi-sanity v5.3.1 fails its Identity test on that
    /// capability (v5.4.0 accepts it). The service is served either way.
    #[arg(long, env = "LOOPVOL_ADVERTISE_SNAPSHOT_METADATA", default_value_t = false, action = clap::ArgAction::Set)]
    advertise_snapshot_metadata: bool,
    /// For the single external-resizer Deployment (it has no per-node mode):
    /// ControllerExpandVolume of a volume not in this driver's pool answers
    /// with node_expansion_required, and NodeExpandVolume on the node that
    /// holds the volume grows its image, loop device and filesystem.
    #[arg(long, env = "LOOPVOL_DEFER_EXPANSION_TO_NODE")]
    defer_expansion_to_node: bool,
    /// For the same Deployment: ControllerModifyVolume of a volume not in
    /// this driver's pool checks the mutable parameters and answers OK; the
    /// node that holds the volume applies the PV's new VolumeAttributesClass
    /// (--follow-volume-attributes-classes).
    #[arg(long, env = "LOOPVOL_DEFER_MODIFY_TO_NODE")]
    defer_modify_to_node: bool,
    /// For the node DaemonSet: watch PersistentVolumes and apply the
    /// VolumeAttributesClass of each one whose volume is in this pool (the
    /// central resizer's driver only checks it, --defer-modify-to-node).
    /// Needs get/list/watch on persistentvolumes and volumeattributesclasses.
    #[arg(long, env = "LOOPVOL_FOLLOW_VOLUME_ATTRIBUTES_CLASSES")]
    follow_volume_attributes_classes: bool,
    /// kubeconfig for --follow-volume-attributes-classes; default: the
    /// in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Where the cgroup filesystems are mounted: the pods' I/O limits
    /// (mutable parameters readIOPS, writeIOPS, readBytesPerSecond,
    /// writeBytesPerSecond) are written into their cgroups there.
    #[arg(long, env = "LOOPVOL_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Let the pool promise up to this many times its size (thin volumes
    /// overcommitted). 1, the default, reserves every volume's whole size.
    /// An overcommitted pool that runs low on real space (--low-space-percent)
    /// marks its volumes' condition abnormal before writes in them fail.
    #[arg(long, env = "LOOPVOL_OVERPROVISION_RATIO", default_value_t = 1.0, value_parser = ratio)]
    overprovision_ratio: f64,
    /// With --overprovision-ratio above 1: real free space (percent of the
    /// pool's size) below which volumes are reported abnormal.
    #[arg(long, env = "LOOPVOL_LOW_SPACE_PERCENT", default_value_t = 5.0, value_parser = percent)]
    low_space_percent: f64,
    /// Trim every staged filesystem once per interval (spread over it, one
    /// volume at a time), giving the space of deleted files back to the
    /// pool: `24h`, `30m`, `90s`, `7d`; `0` turns it off.
    #[arg(long, env = "LOOPVOL_TRIM_INTERVAL", default_value = "24h", value_parser = trim_schedule::parse_interval)]
    trim_interval: trim_schedule::Interval,
    /// Serve Prometheus metrics over plain HTTP at http://ADDRESS/metrics
    /// (e.g. 127.0.0.1:9808 or [::]:9808). Unset or empty: no metrics server.
    #[arg(long, env = "LOOPVOL_METRICS_ADDRESS", value_name = "ADDRESS")]
    metrics_address: Option<String>,
}

/// Everything `serve` needs, checked.
struct Serve {
    args: ServeArgs,
    node_id: String,
    pool: PathBuf,
    driver_name: String,
    metrics_address: Option<std::net::SocketAddr>,
}

/// How long SIGTERM waits for in-flight calls (Kubernetes' default grace
/// period is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// `--overprovision-ratio`: a finite number, at least 1.
fn ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("{text:?}: want a number of at least 1 (1 = no overcommit)")),
    }
}

/// `--low-space-percent`: 0 to 100.
fn percent(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?}: want a percentage from 0 to 100")),
    }
}

fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some((scheme, _)) => bail!("endpoint {endpoint:?}: only unix sockets are supported, not {scheme}"),
        None => endpoint,
    };
    if path.is_empty() {
        bail!("endpoint {endpoint:?} names no socket path");
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket, replacing a stale one left by a previous run, and makes
/// it reachable by owner and group only (it grants root's powers).
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The umask closes the window between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down: draining in-flight calls");
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: a file or pipe (what `kubectl
    // logs` and log collectors read) gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(command) => {
            // Admin commands: the result goes to stdout, only problems to stderr.
            init_logging(cli.log_format, "warn");
            let context = admin::Context { pool: cli.pool, driver_name: cli.driver_name };
            match admin::run(command, &context) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("loopvol-csi: {e:#}");
                    admin::exit_error()
                }
            }
        }
        None => {
            init_logging(cli.log_format, "info");
            let serve = match check_serve_args(cli.serve, cli.pool, cli.driver_name) {
                Ok(serve) => serve,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            match run_server(serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e:?}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_serve_args(args: ServeArgs, pool: PathBuf, driver_name: String) -> anyhow::Result<Serve> {
    let node_id = match args.node_id.as_deref() {
        None => bail!("--node-id (NODE_NAME) is required to serve CSI"),
        Some("") => bail!("--node-id (NODE_NAME) must not be empty"),
        Some(id) => id.to_string(),
    };
    let metrics_address = match args.metrics_address.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(addr) => Some(metrics::parse_address(addr)?),
    };
    Ok(Serve { args, node_id, pool, driver_name, metrics_address })
}

fn run_server(serve: Serve) -> anyhow::Result<()> {
    // One event-loop thread is plenty for a node plugin; the backend's
    // blocking work runs on a small blocking pool (idle RSS stays low). The
    // metrics endpoint, when enabled, runs on the same thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        // Idle blocking threads (and their malloc arenas) go soon after a
        // burst, so RSS comes back down.
        .thread_keep_alive(Duration::from_secs(2))
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(serve_csi(serve));
    // Backend calls cut off by the drain timeout are crash-safe; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve_csi(serve: Serve) -> anyhow::Result<()> {
    let Serve { args, node_id, pool: pool_path, driver_name, metrics_address } = serve;
    let socket = socket_path(&args.endpoint)?;
    let pool_dir = pool_path.clone();
    let options = PoolOptions {
        overprovision_ratio: args.overprovision_ratio,
        low_space_percent: args.low_space_percent,
        cgroup_root: args.cgroup_root.clone(),
        ..PoolOptions::default()
    };
    let pool = tokio::task::spawn_blocking(move || {
        let pool = Pool::open(&pool_dir, options)?;
        // Trust the kernel over the records after a crash or reboot.
        if let Err(e) = pool.reconcile_all() {
            tracing::warn!(error = %e, "start-up reconcile failed; volumes reconcile when next touched");
        }
        Ok::<_, loopvol_backend::Error>(pool)
    })
    .await?
    .with_context(|| format!("opening pool {}", pool_path.display()))?;
    let mut driver = driver::Driver::new(pool, driver_name, node_id, i64::from(args.max_volumes_per_node));
    driver.advertise_get_snapshot = args.advertise_get_snapshot;
    driver.defer_expansion_to_node = args.defer_expansion_to_node;
    driver.defer_modify_to_node = args.defer_modify_to_node;
    let driver = std::sync::Arc::new(driver);
    if args.follow_volume_attributes_classes {
        tokio::spawn(attributes_follower::run(driver.clone(), args.kubeconfig.clone()));
    }
    if let trim_schedule::Interval(Some(interval)) = args.trim_interval {
        tokio::spawn(trim_schedule::run(driver.clone(), interval));
    }
    io_limits_resync::spawn(&driver);
    // Metrics first: once the CSI socket exists, everything is up.
    let metrics = match metrics_address {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            let local = listener.local_addr().unwrap_or(addr);
            let metrics = std::sync::Arc::new(metrics::Metrics::new());
            tokio::spawn(metrics::serve(listener, metrics.clone(), driver.pool.clone()));
            tracing::info!(address = %local, "serving metrics at /metrics");
            Some(metrics)
        }
    };
    let listener = bind(&socket)?;
    tracing::info!(
        socket = %socket.display(),
        pool = %driver.pool.root().display(),
        driver = %driver.name,
        node = %driver.node_id,
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(metrics::RpcLayer::new(metrics))
        .add_service(IdentityServer::new(identity::IdentityService {
            driver: driver.clone(),
            advertise_snapshot_metadata: args.advertise_snapshot_metadata,
        }))
        .add_service(ControllerServer::new(controller::ControllerService(driver.clone())))
        .add_service(NodeServer::new(node::NodeService(driver.clone())))
        .add_service(GroupControllerServer::new(group_controller::GroupControllerService(driver.clone())))
        .add_service(SnapshotMetadataServer::new(snapshot_metadata::SnapshotMetadataService(driver)))
        // Every connection goes through the :authority relay (authority.rs),
        // so that gRPC C-core and grpc-java clients are served too.
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener).map(|c| c.map(authority::relay)), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown_signal() => {
            // Stop accepting, let in-flight calls finish; a client that keeps
            // its connection open must not hold the exit past the grace period.
            let _ = stop.send(());
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(timeout = ?DRAIN_TIMEOUT, "calls or connections still open after the drain timeout");
                    Ok(())
                }
            }
        }
    };
    let _ = std::fs::remove_file(&socket);
    result.context("serving gRPC")?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), PathBuf::from("/csi/csi.sock"));
        assert_eq!(socket_path("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("tcp://0.0.0.0:1").is_err());
        assert!(socket_path("unix://").is_err());
    }
}
