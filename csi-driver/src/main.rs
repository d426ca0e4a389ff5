//! loopvol-csi: the CSI driver. Serves Identity, Controller, Node and
//! GroupController on one unix socket over the loopvol backend.

#![forbid(unsafe_code)]

mod capability;
mod controller;
mod driver;
mod group_controller;
mod identity;
mod node;
mod pagination;
mod status;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use loopvol_backend::{Pool, PoolOptions};
use loopvol_proto::v1::controller_server::ControllerServer;
use loopvol_proto::v1::group_controller_server::GroupControllerServer;
use loopvol_proto::v1::identity_server::IdentityServer;
use loopvol_proto::v1::node_server::NodeServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// loopvol CSI driver: node-local volumes as sparse image files on loop devices.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// CSI endpoint: unix:///path/csi.sock or a plain socket path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name, reported as node ID and topology.
    #[arg(long, env = "NODE_NAME")]
    node_id: String,
    /// Pool directory holding the volume images and records.
    #[arg(long, env = "LOOPVOL_POOL", default_value = "./loopvol-pool")]
    pool: PathBuf,
    /// CSI driver name (also names the topology key topology.<name>/node).
    #[arg(long, env = "LOOPVOL_DRIVER_NAME", default_value = "loopvol.csi.io")]
    driver_name: String,
    /// Volumes this node may hold; 0 leaves the limit to the CO.
    #[arg(long, env = "LOOPVOL_MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    max_volumes_per_node: u32,
    /// List GET_SNAPSHOT in ControllerGetCapabilities. csi-sanity v5.4.0
    /// fails on capabilities it does not know, GET_SNAPSHOT (CSI 1.12) among
    /// them: run it with `--advertise-get-snapshot=false`.
    #[arg(long, env = "LOOPVOL_ADVERTISE_GET_SNAPSHOT", default_value_t = true, action = clap::ArgAction::Set)]
    advertise_get_snapshot: bool,
    /// For the single external-resizer Deployment (it has no per-node mode):
    /// ControllerExpandVolume of a volume not in this driver's pool answers
    /// with node_expansion_required, and NodeExpandVolume on the node that
    /// holds the volume grows its image, loop device and filesystem.
    #[arg(long, env = "LOOPVOL_DEFER_EXPANSION_TO_NODE")]
    defer_expansion_to_node: bool,
    /// Log format on stderr.
    #[arg(long, env = "LOOPVOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How long SIGTERM waits for in-flight calls (Kubernetes' default grace
/// period is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    if args.node_id.is_empty() {
        bail!("--node-id (NODE_NAME) must not be empty");
    }
    // One event-loop thread is plenty for a node plugin; the backend's
    // blocking work runs on a small blocking pool (idle RSS stays low).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(10))
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(serve(args));
    // Backend calls cut off by the drain timeout are crash-safe; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = socket_path(&args.endpoint)?;
    let pool_dir = args.pool.clone();
    let pool = tokio::task::spawn_blocking(move || {
        let pool = Pool::open(&pool_dir, PoolOptions::default())?;
        // Trust the kernel over the records after a crash or reboot.
        if let Err(e) = pool.reconcile_all() {
            tracing::warn!(error = %e, "start-up reconcile failed; volumes reconcile when next touched");
        }
        Ok::<_, loopvol_backend::Error>(pool)
    })
    .await?
    .with_context(|| format!("opening pool {}", args.pool.display()))?;
    let mut driver = driver::Driver::new(pool, args.driver_name, args.node_id, i64::from(args.max_volumes_per_node));
    driver.advertise_get_snapshot = args.advertise_get_snapshot;
    driver.defer_expansion_to_node = args.defer_expansion_to_node;
    let driver = std::sync::Arc::new(driver);
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
        .add_service(IdentityServer::new(identity::IdentityService(driver.clone())))
        .add_service(ControllerServer::new(controller::ControllerService(driver.clone())))
        .add_service(NodeServer::new(node::NodeService(driver.clone())))
        .add_service(GroupControllerServer::new(group_controller::GroupControllerService(driver)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
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
