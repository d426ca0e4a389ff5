//! Black-box harness: starts the real `loopvol-csi` binary on a unix socket
//! in a temp dir with a temp pool and talks to it with tonic clients, as the
//! CSI sidecars and kubelet do. On drop it stops the server and unmounts and
//! detaches everything under its directory, so a failing test leaks nothing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_client::ControllerClient;
use loopvol_proto::v1::group_controller_client::GroupControllerClient;
use loopvol_proto::v1::identity_client::IdentityClient;
use loopvol_proto::v1::node_client::NodeClient;
use loopvol_proto::v1::volume_capability::access_mode::Mode;
use loopvol_proto::v1::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

pub const EXE: &str = env!("CARGO_BIN_EXE_loopvol-csi");
pub const NODE: &str = "test-node";
pub const DRIVER: &str = "loopvol.csi.io";
pub const TOPOLOGY_KEY: &str = "topology.loopvol.csi.io/node";
pub const GIB: i64 = 1 << 30;
pub const MIB: i64 = 1 << 20;
/// csi-sanity's default test volume size.
pub const SANITY_SIZE: i64 = 10 * GIB;

pub struct Server {
    child: Option<Child>,
    /// Everything of this test lives below here (canonical path).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub pool: PathBuf,
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub node: NodeClient<Channel>,
    pub group: GroupControllerClient<Channel>,
    extra_args: Vec<String>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Server {
        let dir = tempfile::Builder::new().prefix("loopvol-csi-test-").tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        let socket = root.join("csi.sock");
        let pool = root.join("pool");
        let extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = spawn(&socket, &pool, &root, &extra_args, None);
        let channel = connect(&socket, &root).await;
        Server {
            child: Some(child),
            root,
            _dir: dir,
            socket,
            pool,
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            node: NodeClient::new(channel.clone()),
            group: GroupControllerClient::new(channel),
            extra_args,
        }
    }

    /// Stops the server with SIGTERM and returns its exit status. Async so
    /// that the client side of the connections can answer the server's GOAWAY.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Restarts the server on the same socket and pool (the kernel state stays).
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert!(status.success(), "server exited with {status}: {}", self.log());
        self.restart_after_stop().await;
    }

    /// Starts the server again after [`Server::stop`].
    pub async fn restart_after_stop(&mut self) {
        self.restart_with_failpoint(None).await;
    }

    /// Starts the server again after it stopped (or aborted), with a
    /// failpoint (`LOOPVOL_FAILPOINT`) or none.
    pub async fn restart_with_failpoint(&mut self, failpoint: Option<&str>) {
        if let Some(mut old) = self.child.take() {
            let _ = old.wait();
        }
        self.child = Some(spawn(&self.socket, &self.pool, &self.root, &self.extra_args, failpoint));
        let channel = connect(&self.socket, &self.root).await;
        self.identity = IdentityClient::new(channel.clone());
        self.controller = ControllerClient::new(channel.clone());
        self.node = NodeClient::new(channel.clone());
        self.group = GroupControllerClient::new(channel);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// A fresh path below the test directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A staging directory, created as kubelet does.
    pub fn staging(&self, name: &str) -> PathBuf {
        let p = self.root.join("staging").join(name);
        std::fs::create_dir_all(&p).expect("create staging dir");
        p
    }

    /// A target path whose parent exists (kubelet creates only the parent).
    pub fn target(&self, name: &str) -> PathBuf {
        let parent = self.root.join("pods").join(name);
        std::fs::create_dir_all(&parent).expect("create target parent");
        parent.join("mount")
    }

    // ---- one-call helpers ----

    pub async fn create(&mut self, name: &str, size: i64, cap: csi::VolumeCapability) -> csi::Volume {
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: size, limit_bytes: 0 }),
            volume_capabilities: vec![cap],
            ..Default::default()
        };
        self.controller.create_volume(req).await.expect("CreateVolume").into_inner().volume.expect("volume")
    }

    pub async fn create_from(
        &mut self,
        name: &str,
        cap: csi::VolumeCapability,
        source: csi::volume_content_source::Type,
    ) -> Result<csi::Volume, tonic::Status> {
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: vec![cap],
            volume_content_source: Some(csi::VolumeContentSource { r#type: Some(source) }),
            ..Default::default()
        };
        Ok(self.controller.create_volume(req).await?.into_inner().volume.expect("volume"))
    }

    pub async fn stage(&mut self, id: &str, staging: &Path, cap: csi::VolumeCapability) -> Result<(), tonic::Status> {
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            volume_capability: Some(cap),
            ..Default::default()
        };
        self.node.node_stage_volume(req).await.map(|_| ())
    }

    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
        };
        self.node.node_unstage_volume(req).await.map(|_| ())
    }

    pub async fn publish(
        &mut self,
        id: &str,
        staging: &Path,
        target: &Path,
        cap: csi::VolumeCapability,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(cap),
            readonly,
            ..Default::default()
        };
        self.node.node_publish_volume(req).await.map(|_| ())
    }

    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
        };
        self.node.node_unpublish_volume(req).await.map(|_| ())
    }

    pub async fn stats(&mut self, id: &str, path: &Path) -> Result<csi::NodeGetVolumeStatsResponse, tonic::Status> {
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.to_string_lossy().into_owned(),
            staging_target_path: String::new(),
        };
        self.node.node_get_volume_stats(req).await.map(|r| r.into_inner())
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.controller
            .delete_volume(csi::DeleteVolumeRequest { volume_id: id.into(), secrets: HashMap::new() })
            .await
            .map(|_| ())
    }

    pub async fn snapshot(&mut self, name: &str, source: &str) -> Result<csi::Snapshot, tonic::Status> {
        let req =
            csi::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
        Ok(self.controller.create_snapshot(req).await?.into_inner().snapshot.expect("snapshot"))
    }

    pub async fn list_volume_ids(&mut self) -> Vec<String> {
        let resp = self.controller.list_volumes(csi::ListVolumesRequest::default()).await.expect("ListVolumes");
        resp.into_inner().entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id).collect()
    }

    /// Mount points below this test's directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.root)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Drop cannot await the graceful path: kill.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- loopvol-csi log ----\n{}", self.log());
        }
        cleanup_under(&self.root);
    }
}

/// Starts loopvol-csi on `socket` and `pool`, logging to `<root>/server.log`;
/// with `failpoint`, it aborts there (`LOOPVOL_FAILPOINT`, see the crash tests).
pub fn spawn(socket: &Path, pool: &Path, root: &Path, extra: &[String], failpoint: Option<&str>) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("server.log")).expect("log file");
    let mut cmd = Command::new(EXE);
    cmd.arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--node-id", NODE])
        .arg("--pool")
        .arg(pool)
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove(loopvol_backend::failpoint::ENV)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if let Some(point) = failpoint {
        cmd.env(loopvol_backend::failpoint::ENV, point);
    }
    cmd.spawn().expect("start loopvol-csi")
}

/// A channel to the server at `socket`, once it listens.
pub async fn connect(socket: &Path, root: &Path) -> Channel {
    // Readiness wait, not a timing assertion: the server binds after opening
    // and reconciling the pool.
    for _ in 0..1500 {
        if socket.exists() {
            let path = socket.to_path_buf();
            let channel = Endpoint::try_from("http://[::]:50051")
                .expect("endpoint")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await;
            if let Ok(channel) = channel {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("loopvol-csi did not come up: {}", std::fs::read_to_string(root.join("server.log")).unwrap_or_default());
}

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use loopvol_test_support::{cleanup_under, loops_under, mounts_under};

// ---- capabilities ----

pub fn mount_cap(mode: Mode, fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
    }
}

pub fn mount_rw() -> csi::VolumeCapability {
    mount_cap(Mode::SingleNodeWriter, "")
}

pub fn block_rw() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Block(BlockVolume {})),
    }
}

/// The gRPC code of a result that must have failed.
#[track_caller]
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(status) => {
            assert!(!status.message().is_empty(), "a failure carries a message");
            status.code()
        }
    }
}

pub fn snapshot_source(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Snapshot(csi::volume_content_source::SnapshotSource { snapshot_id: id.into() })
}

pub fn volume_source(id: &str) -> csi::volume_content_source::Type {
    csi::volume_content_source::Type::Volume(csi::volume_content_source::VolumeSource { volume_id: id.into() })
}

pub fn read_all(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)).expect("read");
    buf
}
