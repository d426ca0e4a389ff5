//! Observability of the gRPC server, in one place: a tower layer around the
//! whole tonic server that counts and times every RPC and logs one event per
//! RPC, and the Prometheus endpoint (`--metrics-address`) that also reports
//! the pool, read from the backend at scrape time.
//!
//! The layer sees HTTP/2 requests, not decoded messages, so the per-RPC
//! event carries the method, the gRPC code (and the status message on
//! failure), and the duration, never a request field: secrets cannot leak
//! through it. Volume IDs come from two places instead of a helper in every
//! handler: the status message of a failure names the volume (the backend's
//! errors do), and the layer's `rpc{method=...}` span is carried into the
//! backend's blocking calls (`Driver::run`), so the backend's own events
//! ("volume staged", "volume deleted", ... each with `volume=`) are logged
//! inside the span of the RPC that caused them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use loopvol_backend::Pool;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;
use tracing::Instrument;

/// Every RPC of CSI v1.12 (`rpc` lines of proto/csi.proto, in order). The
/// method label takes only these values, so a client cannot grow the label
/// set with made-up paths; anything else is `unknown`.
pub const METHODS: [&str; 32] = [
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "GetSnapshot",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
    "GroupControllerGetCapabilities",
    "CreateVolumeGroupSnapshot",
    "DeleteVolumeGroupSnapshot",
    "GetVolumeGroupSnapshot",
    "GetMetadataAllocated",
    "GetMetadataDelta",
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
];

/// Latency buckets in seconds: identity calls take microseconds, a stage
/// with mkfs and fsck of a big image takes seconds.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The registry and the metrics the layer and the scrape update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pool_up: Gauge,
    pool_capacity: Gauge,
    pool_available: Gauge,
    pool_volumes: Gauge,
    pool_snapshots: Gauge,
    pool_loop_devices: Gauge,
    pool_allocated: Gauge,
    pool_reserved: Gauge,
    pool_buffered: Gauge,
    pool_limits_not_in_force: Gauge,
    volume_allocated: Family<VolumeLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RpcLabels, Counter>::default();
        let durations = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        // prometheus-client appends `_total` to counters.
        registry.register("loopvol_csi_requests", "CSI RPCs served, by method and gRPC code", requests.clone());
        registry.register(
            "loopvol_csi_request_duration_seconds",
            "Time to answer a CSI RPC, by method",
            durations.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("loopvol_build_info", "Version of the running loopvol-csi", build);
        let pool_up = gauge(&mut registry, "loopvol_pool_up", "1 when the pool could be read at this scrape");
        let pool_capacity =
            gauge(&mut registry, "loopvol_pool_capacity_bytes", "Size of the filesystem holding the pool");
        let pool_available = gauge(
            &mut registry,
            "loopvol_pool_available_bytes",
            "Bytes new volumes can still reserve (free space less what thin images may still grow into)",
        );
        let pool_volumes = gauge(&mut registry, "loopvol_pool_volumes", "Volumes in the pool");
        let pool_snapshots = gauge(&mut registry, "loopvol_pool_snapshots", "Snapshots in the pool");
        let pool_loop_devices =
            gauge(&mut registry, "loopvol_pool_loop_devices", "Loop devices backed by images of the pool");
        let pool_allocated = gauge(
            &mut registry,
            "loopvol_pool_allocated_bytes",
            "Bytes of the pool's filesystem the volumes' images really use",
        );
        let pool_reserved = gauge(
            &mut registry,
            "loopvol_pool_reserved_bytes",
            "Bytes promised to volumes and not yet allocated (what thin images may still grow into)",
        );
        let pool_buffered = gauge(
            &mut registry,
            "loopvol_pool_buffered_volumes",
            "Staged volumes that asked for direct I/O and got a buffered loop device (the pool's filesystem refused O_DIRECT)",
        );
        let pool_limits_not_in_force = gauge(
            &mut registry,
            "loopvol_pool_io_limits_not_in_force",
            "Published targets whose pod did not get the volume's I/O limits (its cgroup was not found or refused \
             them); the volume's condition says why",
        );
        let volume_allocated = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "loopvol_volume_allocated_bytes",
            "Bytes of the pool's filesystem a volume's image really uses",
            volume_allocated.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            pool_up,
            pool_capacity,
            pool_available,
            pool_volumes,
            pool_snapshots,
            pool_loop_devices,
            pool_allocated,
            pool_reserved,
            pool_buffered,
            pool_limits_not_in_force,
            volume_allocated,
        }
    }

    fn observe(&self, method: &'static str, code: Code, elapsed: Duration) {
        self.requests.get_or_create(&RpcLabels { method, code: code_name(code) }).inc();
        self.durations.get_or_create(&MethodLabels { method }).observe(elapsed.as_secs_f64());
    }

    /// Reads the pool's gauges from the backend (on the blocking pool: it
    /// reads every record and walks sysfs) and encodes everything.
    pub async fn render(&self, pool: Arc<Pool>) -> String {
        match tokio::task::spawn_blocking(move || PoolStats::read(&pool)).await {
            Ok(Ok(stats)) => {
                self.pool_up.set(1);
                self.pool_capacity.set(gauge_value(stats.capacity));
                self.pool_available.set(gauge_value(stats.available));
                self.pool_volumes.set(gauge_value(stats.volumes));
                self.pool_snapshots.set(gauge_value(stats.snapshots));
                self.pool_loop_devices.set(gauge_value(stats.loop_devices));
                self.pool_allocated.set(gauge_value(stats.allocated));
                self.pool_reserved.set(gauge_value(stats.reserved));
                self.pool_buffered.set(gauge_value(stats.buffered));
                self.pool_limits_not_in_force.set(gauge_value(stats.limits_not_in_force));
                // Deleted volumes leave the family.
                self.volume_allocated.clear();
                for (volume, bytes) in stats.per_volume {
                    self.volume_allocated.get_or_create(&VolumeLabels { volume }).set(gauge_value(bytes));
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: cannot read the pool");
                self.pool_up.set(0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: pool reader failed");
                self.pool_up.set(0);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge_value(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The pool as the gauges report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub capacity: u64,
    pub available: u64,
    pub allocated: u64,
    pub reserved: u64,
    pub volumes: usize,
    pub snapshots: usize,
    pub loop_devices: usize,
    /// Staged volumes that asked for direct I/O and got a buffered device.
    pub buffered: usize,
    /// Published targets whose pod did not get the volume's I/O limits.
    pub limits_not_in_force: usize,
    /// Allocated bytes of each volume's image.
    pub per_volume: Vec<(String, u64)>,
}

impl PoolStats {
    pub fn read(pool: &Pool) -> loopvol_backend::Result<PoolStats> {
        let capacity = pool.capacity()?;
        let loop_devices = pool.attached_devices()?.len();
        let volumes = pool.volumes()?;
        let mut buffered = 0;
        let mut limits_not_in_force = 0;
        let mut per_volume = Vec::with_capacity(volumes.len());
        for vol in &volumes {
            let state = pool.node_state(&vol.id).unwrap_or_default();
            buffered += usize::from(vol.direct_io && state.staged.as_ref().is_some_and(|st| !st.direct_io));
            limits_not_in_force += state.published.values().filter(|p| p.io_limits_problem.is_some()).count();
            per_volume.push((vol.id.clone(), pool.allocated_bytes(&vol.id).unwrap_or(0)));
        }
        Ok(PoolStats {
            capacity: capacity.total_bytes,
            available: capacity.available_bytes,
            allocated: capacity.allocated_bytes,
            reserved: capacity.reserved_bytes,
            volumes: volumes.len(),
            snapshots: pool.snapshots()?.len(),
            loop_devices,
            buffered,
            limits_not_in_force,
            per_volume,
        })
    }
}

/// The gRPC status code names (grpc/doc/statuscodes.md), as labels and logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `/csi.v1.Node/NodeStageVolume` -> `NodeStageVolume`; anything that is not
/// a CSI method -> `unknown`.
pub fn method_of(path: &str) -> &'static str {
    let name = path
        .strip_prefix("/csi.v1.")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_service, method)| method)
        .unwrap_or_default();
    METHODS.iter().copied().find(|m| *m == name).unwrap_or("unknown")
}

/// The outcome of a gRPC response as far as its headers tell. tonic answers
/// a failed unary call "trailers-only": `grpc-status` is in the headers. A
/// success sends its status in the trailers after the message, so an HTTP
/// 200 without `grpc-status` in the headers is a success (a failure while
/// encoding the response body would be missed; a unary CSI handler has none
/// that is not a bug). A non-200 answer without a gRPC status is mapped as
/// gRPC's "HTTP to gRPC status code mapping" says.
pub fn outcome<B>(response: &http::Response<B>) -> (Code, Option<String>) {
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        let message = (status.code() != Code::Ok).then(|| status.message().to_string());
        return (status.code(), message);
    }
    let code = match response.status().as_u16() {
        200 => Code::Ok,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    (code, None)
}

/// RPCs that only read: logged at debug level when they succeed, so the
/// liveness probe and kubelet's stats polling do not flood the log.
fn is_read(method: &str) -> bool {
    ["Get", "List", "Probe", "Validate", "NodeGet", "ControllerGet", "GroupControllerGet"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// Wraps the tonic server: every RPC is counted, timed and logged once.
/// Without a metrics registry (no `--metrics-address`) it only logs.
#[derive(Debug, Clone, Default)]
pub struct RpcLayer {
    metrics: Option<Arc<Metrics>>,
}

impl RpcLayer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> RpcLayer {
        RpcLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

/// One RPC in flight; records itself once: when the response headers are
/// there, or as CANCELLED when the client went away first (the future is
/// dropped unfinished).
struct Call {
    method: &'static str,
    start: Instant,
    metrics: Option<Arc<Metrics>>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code, message: Option<&str>) {
        self.done = true;
        let elapsed = self.start.elapsed();
        if let Some(m) = &self.metrics {
            m.observe(self.method, code, elapsed);
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let (method, code) = (self.method, code_name(code));
        match message {
            Some(error) => tracing::warn!(method, code, duration_ms, error, "rpc failed"),
            None if is_read(method) => tracing::debug!(method, code, duration_ms, "rpc"),
            None => tracing::info!(method, code, duration_ms, "rpc"),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled, Some("the client went away before the answer"));
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = method_of(request.uri().path());
        let span = tracing::info_span!("rpc", method);
        let mut call = Call { method, start: Instant::now(), metrics: self.metrics.clone(), done: false };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = response.await;
                match &result {
                    Ok(response) => {
                        let (code, message) = outcome(response);
                        call.finish(code, message.as_deref());
                    }
                    Err(_) => call.finish(Code::Unknown, Some("transport error")),
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Parses `--metrics-address` (`127.0.0.1:9808`, `[::]:9808`).
pub fn parse_address(address: &str) -> anyhow::Result<SocketAddr> {
    address.parse().map_err(|_| {
        anyhow::anyhow!(
            "metrics address {address:?} is not host:port with a numeric host, like 127.0.0.1:9808 or [::]:9808"
        )
    })
}

/// Serves `GET /metrics` over plain HTTP/1 on the server's own runtime (no
/// thread of its own). Runs until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, pool: Arc<Pool>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, pool) = (metrics.clone(), pool.clone());
        let service = hyper::service::service_fn(move |request| scrape(request, metrics.clone(), pool.clone()));
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

async fn scrape<B>(
    request: http::Request<B>,
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/metrics") => http::Response::builder()
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(metrics.render(pool).await))),
        _ => http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(b"loopvol-csi serves GET /metrics only\n"))),
    };
    // Builders fed with constant, valid parts cannot fail.
    Ok(response.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn methods_are_the_rpcs_of_the_proto() {
        let proto = include_str!("../../proto/csi.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("rpc "))
            .filter_map(|l| l.split(|c: char| !c.is_ascii_alphanumeric()).next())
            .collect();
        assert_eq!(rpcs, METHODS);
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_of("/csi.v1.Node/NodeStageVolume"), "NodeStageVolume");
        assert_eq!(method_of("/csi.v1.Identity/Probe"), "Probe");
        assert_eq!(method_of("/csi.v1.Node/MadeUp"), "unknown");
        assert_eq!(method_of("/other.Service/Probe"), "unknown");
        assert_eq!(method_of("/"), "unknown");
    }

    fn response(status: u16, grpc_status: Option<&str>) -> http::Response<()> {
        let mut b = http::Response::builder().status(status);
        if let Some(s) = grpc_status {
            b = b.header("grpc-status", s).header("grpc-message", "volume%20v1%20not%20found");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn outcome_reads_trailers_only_status_and_defaults_to_ok() {
        assert_eq!(outcome(&response(200, None)), (Code::Ok, None));
        assert_eq!(outcome(&response(200, Some("0"))).0, Code::Ok);
        assert_eq!(outcome(&response(200, Some("5"))), (Code::NotFound, Some("volume v1 not found".to_string())));
        assert_eq!(outcome(&response(503, None)).0, Code::Unavailable);
        assert_eq!(outcome(&response(500, None)).0, Code::Unknown);
    }

    #[tokio::test]
    async fn layer_counts_by_method_and_code() {
        let metrics = Arc::new(Metrics::new());
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let failed = req.uri().path().ends_with("DeleteVolume");
            Ok::<_, Infallible>(response(200, failed.then_some("5")))
        });
        let mut svc = RpcLayer::new(Some(metrics.clone())).layer(inner);
        for path in ["/csi.v1.Identity/Probe", "/csi.v1.Identity/Probe", "/csi.v1.Controller/DeleteVolume"] {
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(text.contains(r#"loopvol_csi_requests_total{method="Probe",code="OK"} 2"#), "{text}");
        assert!(text.contains(r#"loopvol_csi_requests_total{method="DeleteVolume",code="NOT_FOUND"} 1"#), "{text}");
        assert!(text.contains(r#"loopvol_csi_request_duration_seconds_count{method="Probe"} 2"#), "{text}");
    }

    #[tokio::test]
    async fn a_dropped_call_counts_as_cancelled() {
        let metrics = Arc::new(Metrics::new());
        let inner =
            tower::service_fn(|_: http::Request<()>| std::future::pending::<Result<http::Response<()>, Infallible>>());
        let mut svc = RpcLayer::new(Some(metrics.clone())).layer(inner);
        let req = http::Request::builder().uri("/csi.v1.Node/NodeStageVolume").body(()).unwrap();
        let fut = svc.ready().await.unwrap().call(req);
        drop(fut);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        assert!(text.contains(r#"loopvol_csi_requests_total{method="NodeStageVolume",code="CANCELLED"} 1"#), "{text}");
    }
}
