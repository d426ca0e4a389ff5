//! The CSI client side: connecting to a unix socket, the volume spec from the
//! command line, and timed RPC calls. Only the CSI protocol is used, so any
//! CSI driver can be measured.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_client::ControllerClient;
use loopvol_proto::v1::identity_client::IdentityClient;
use loopvol_proto::v1::node_client::NodeClient;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

use super::stats::Recorder;

/// `unix:///path` or a plain path.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some((scheme, _)) => bail!("endpoint {endpoint:?}: only unix sockets are supported, not {scheme}"),
        None => endpoint,
    };
    if path.is_empty() {
        bail!("endpoint {endpoint:?} names no socket");
    }
    Ok(PathBuf::from(path))
}

/// Clients of the three services over one HTTP/2 connection (as kubelet and
/// the sidecars each hold one).
#[derive(Clone)]
pub struct Csi {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl Csi {
    pub async fn connect(socket: &Path) -> anyhow::Result<Csi> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Csi {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    /// Connects and waits until Probe answers ready (or `timeout` passes).
    /// Returns the client and how long it took.
    pub async fn wait_ready(socket: &Path, timeout: Duration) -> anyhow::Result<(Csi, Duration)> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(mut c) = Csi::connect(socket).await {
                match c.identity.probe(csi::ProbeRequest {}).await {
                    // An unset `ready` means ready (CSI spec, Probe).
                    Ok(r) if r.get_ref().ready.unwrap_or(true) => return Ok((c, start.elapsed())),
                    Ok(_) => last = "probe: not ready".into(),
                    Err(e) => last = format!("probe: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("driver at {} not ready after {timeout:?} ({last})", socket.display())
    }
}

/// Times one RPC: successful latencies go into the recorder under `name`,
/// failures are counted by code.
pub async fn timed<T, F>(rec: &Recorder, name: &str, call: F) -> Result<T, Status>
where
    F: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let start = Instant::now();
    match call.await {
        Ok(resp) => {
            rec.sample(name, start.elapsed());
            Ok(resp.into_inner())
        }
        Err(status) => {
            rec.error(name, &status);
            Err(status)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Access {
    Mount,
    Block,
}

/// What the volumes of a run look like (CreateVolume + capability).
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub access: Access,
    pub size_bytes: i64,
    /// Empty: the driver's default.
    pub fs_type: String,
    pub mount_flags: Vec<String>,
    /// StorageClass-like parameters of CreateVolume.
    pub parameters: HashMap<String, String>,
}

impl VolumeSpec {
    pub fn capability(&self) -> csi::VolumeCapability {
        let access_type = match self.access {
            Access::Mount => AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: String::new(),
            }),
            Access::Block => AccessType::Block(BlockVolume {}),
        };
        csi::VolumeCapability {
            access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
            access_type: Some(access_type),
        }
    }

    pub fn create_request(&self, name: &str) -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: Some(csi::CapacityRange { required_bytes: self.size_bytes, limit_bytes: 0 }),
            volume_capabilities: vec![self.capability()],
            parameters: self.parameters.clone(),
            ..Default::default()
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "access_type": match self.access { Access::Mount => "mount", Access::Block => "block" },
            "size_bytes": self.size_bytes,
            "fs_type": self.fs_type,
            "mount_flags": self.mount_flags,
            "parameters": self.parameters,
        })
    }
}

/// What the driver advertises, as `SERVICE NAME` lines (`plugin CONTROLLER_SERVICE`,
/// `controller CREATE_DELETE_VOLUME`, `node STAGE_UNSTAGE_VOLUME`, ...), in the
/// driver's order. The controller is asked only when the plugin advertises it.
pub async fn capabilities(c: &Csi) -> anyhow::Result<Vec<String>> {
    use csi::controller_service_capability::Type as Controller;
    use csi::node_service_capability::Type as Node;
    use csi::plugin_capability::service::Type as ServiceType;
    use csi::plugin_capability::Type as Plugin;

    let mut out = Vec::new();
    let plugin = c.identity.clone().get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await?;
    let mut has_controller = false;
    for cap in plugin.into_inner().capabilities {
        match cap.r#type {
            Some(Plugin::Service(s)) => {
                has_controller |= s.r#type() == ServiceType::ControllerService;
                out.push(format!("plugin {}", s.r#type().as_str_name()));
            }
            Some(Plugin::VolumeExpansion(e)) => {
                out.push(format!("plugin VOLUME_EXPANSION_{}", e.r#type().as_str_name()))
            }
            None => {}
        }
    }
    if has_controller {
        let req = csi::ControllerGetCapabilitiesRequest {};
        for cap in c.controller.clone().controller_get_capabilities(req).await?.into_inner().capabilities {
            if let Some(Controller::Rpc(r)) = cap.r#type {
                out.push(format!("controller {}", r.r#type().as_str_name()));
            }
        }
    }
    let node = c.node.clone().node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await?;
    for cap in node.into_inner().capabilities {
        if let Some(Node::Rpc(r)) = cap.r#type {
            out.push(format!("node {}", r.r#type().as_str_name()));
        }
    }
    Ok(out)
}

/// A Kubernetes quantity (`10Gi`, `512Mi`, `1G`, `4096`) as CSI's int64 bytes.
pub fn parse_size(s: &str) -> anyhow::Result<i64> {
    let bytes = loopvol_backend::quantity::parse(s).map_err(|e| anyhow::anyhow!("size {s:?}: {e}"))?;
    i64::try_from(bytes).with_context(|| format!("size {s:?} is too large"))
}

/// `key=value` parameters.
pub fn parse_params(items: &[String]) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').with_context(|| format!("parameter {kv:?}: want key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Memory of the driver process from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    /// VmRSS, KiB.
    pub current_kib: u64,
    /// VmHWM (peak resident set since start), KiB.
    pub peak_kib: u64,
    pub threads: u64,
}

pub fn rss(pid: u32) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Rss { current_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")?, threads: field("Threads:").unwrap_or(0) })
}

impl Rss {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({"current_kib": self.current_kib, "peak_kib": self.peak_kib, "threads": self.threads})
    }
}

/// Mount points at or below `dir` (the backend's one mountinfo parser).
pub use loopvol_backend::host::mounts_under;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_params_parse() {
        assert_eq!(parse_size("10Gi").unwrap(), 10 << 30);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err());
        let p = parse_params(&["fsType=xfs".into(), "thick=false".into()]).unwrap();
        assert_eq!(p["fsType"], "xfs");
        assert!(parse_params(&["novalue".into()]).is_err());
    }
}
