//! Crash injection for `loopvol-csi`: the server is started with
//! `LOOPVOL_FAILPOINT=<point>` (backend/src/failpoint.rs), so it aborts at
//! that step inside NodeStage, NodePublish, NodeExpand, CreateSnapshot or
//! CreateVolume from a snapshot. It is then restarted on the same pool and
//! driven, as kubelet and the sidecars would, to the state they want. After
//! every trial: the data written before the crash reads back byte for byte
//! (also through a snapshot and a clone), the catalog agrees with the
//! kernel, no half-built image is left, and after teardown no loop device or
//! mount is leaked.
//!
//! `LOOPVOL_CSI_CRASH_TRIALS` sets the number of trials (default 108: 12 per
//! failpoint).

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{cleanup_under, loops_under, mount_rw, mounts_under, snapshot_source, MIB};
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::controller_client::ControllerClient;
use loopvol_proto::v1::node_client::NodeClient;
use tonic::transport::Channel;

/// Every failpoint in the backend, with the RPC it sits in.
const POINTS: [(&str, &str); 9] = [
    ("stage.after-attach", "NodeStage"),
    ("stage.before-record", "NodeStage"),
    ("expand.after-image", "NodeExpand"),
    ("expand.unmounted", "NodeExpand"),
    ("publish.before-record", "NodePublish"),
    ("snapshot.before-rename", "CreateSnapshot"),
    ("snapshot.before-record", "CreateSnapshot"),
    ("create.before-rename", "CreateVolume from snapshot"),
    ("create.before-record", "CreateVolume from snapshot"),
];

/// A server of one test world, started and restarted by hand with a
/// failpoint (the common spawner), and killed where the failpoint says.
struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    pool: PathBuf,
    child: Option<Child>,
    node: Option<NodeClient<Channel>>,
    controller: Option<ControllerClient<Channel>>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new().prefix("loopvol-csi-crash-").tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        World {
            socket: root.join("csi.sock"),
            pool: root.join("pool"),
            root,
            _dir: dir,
            child: None,
            node: None,
            controller: None,
        }
    }

    async fn start(&mut self, failpoint: Option<&str>) {
        assert!(self.child.is_none());
        let _ = fs::remove_file(&self.socket);
        self.child = Some(common::spawn(&self.socket, &self.pool, &self.root, &[], failpoint));
        let channel = common::connect(&self.socket, &self.root).await;
        self.node = Some(NodeClient::new(channel.clone()));
        self.controller = Some(ControllerClient::new(channel));
    }

    /// Stops a server that is still running (SIGTERM) and reaps it.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a server");
        self.node = None;
        self.controller = None;
        if child.try_wait().unwrap().is_none() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        child.wait().unwrap()
    }

    /// Whether the server died (its failpoint hit).
    fn died(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some())
    }

    fn node(&mut self) -> &mut NodeClient<Channel> {
        self.node.as_mut().unwrap()
    }

    fn controller(&mut self) -> &mut ControllerClient<Channel> {
        self.controller.as_mut().unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    // ---- the RPCs, as kubelet and the sidecars send them ----

    async fn stage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            volume_capability: Some(mount_rw()),
            ..Default::default()
        };
        self.node().node_stage_volume(req).await.map(|_| ())
    }

    async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
        };
        self.node().node_unstage_volume(req).await.map(|_| ())
    }

    async fn publish(&mut self, id: &str, staging: &Path, target: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.to_string_lossy().into_owned(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_rw()),
            ..Default::default()
        };
        self.node().node_publish_volume(req).await.map(|_| ())
    }

    async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
        };
        self.node().node_unpublish_volume(req).await.map(|_| ())
    }

    /// ControllerExpandVolume then NodeExpandVolume at `path`.
    async fn expand(&mut self, id: &str, path: &Path, size: i64) -> Result<(), tonic::Status> {
        let range = Some(csi::CapacityRange { required_bytes: size, limit_bytes: 0 });
        let req = csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: range,
            volume_capability: Some(mount_rw()),
            ..Default::default()
        };
        self.controller().controller_expand_volume(req).await?;
        let req = csi::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.to_string_lossy().into_owned(),
            capacity_range: range,
            volume_capability: Some(mount_rw()),
            ..Default::default()
        };
        self.node().node_expand_volume(req).await.map(|_| ())
    }

    async fn snapshot(&mut self, name: &str, source: &str) -> Result<String, tonic::Status> {
        let req =
            csi::CreateSnapshotRequest { source_volume_id: source.into(), name: name.into(), ..Default::default() };
        Ok(self.controller().create_snapshot(req).await?.into_inner().snapshot.unwrap().snapshot_id)
    }

    async fn clone_from(&mut self, name: &str, snapshot_id: &str) -> Result<String, tonic::Status> {
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: vec![mount_rw()],
            volume_content_source: Some(csi::VolumeContentSource { r#type: Some(snapshot_source(snapshot_id)) }),
            ..Default::default()
        };
        Ok(self.controller().create_volume(req).await?.into_inner().volume.unwrap().volume_id)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- loopvol-csi log (tail) ----");
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        cleanup_under(&self.root);
    }
}

fn pattern(seed: u32) -> Vec<u8> {
    (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)).to_le_bytes()[1]).collect()
}

fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Waits (bounded) for `cond`; autoclear loop devices can linger while udev
/// holds them. A liveness bound, not a timing assertion.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// The volume record (the catalog), read as the backend reads it.
fn record(pool: &Path, id: &str) -> loopvol_backend::Volume {
    loopvol_backend::Pool::open(pool, loopvol_backend::PoolOptions::default()).unwrap().volume(id).unwrap()
}

fn no_temp_images(pool: &Path) -> Vec<String> {
    ["volumes", "snapshots"]
        .iter()
        .flat_map(|d| fs::read_dir(pool.join(d)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img.tmp"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_the_server_converges_after_a_restart() {
    if !loopvol_test_support::privileged("killed_at_every_step_the_server_converges_after_a_restart") {
        return;
    }
    let trials: usize = std::env::var("LOOPVOL_CSI_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(108);
    let mut w = World::new();
    w.start(None).await;
    let create = csi::CreateVolumeRequest {
        name: "crash-vol".into(),
        capacity_range: Some(csi::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 }),
        volume_capabilities: vec![mount_rw()],
        ..Default::default()
    };
    let id = w.controller().create_volume(create).await.unwrap().into_inner().volume.unwrap().volume_id;
    let staging = w.root.join("staging/crash-vol");
    let target = w.root.join("pods/p/mount");
    let clone_staging = w.root.join("staging/clone");
    fs::create_dir_all(&staging).unwrap();
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::create_dir_all(&clone_staging).unwrap();
    // Data that every trial must find again.
    w.stage(&id, &staging).await.unwrap();
    w.publish(&id, &staging, &target).await.unwrap();
    let first = pattern(0);
    write_synced(&target.join("first"), &first);
    let mut last = pattern(1);
    write_synced(&target.join("last"), &last);
    w.unpublish(&id, &target).await.unwrap();
    w.unstage(&id, &staging).await.unwrap();
    assert_eq!(w.stop().code(), Some(0));

    let mut hits = [0usize; POINTS.len()];
    let mut size = 64 * MIB;
    for trial in 0..trials {
        let (point, rpc) = POINTS[trial % POINTS.len()];
        let what = format!("trial {trial} ({point} in {rpc})");
        size += MIB;
        let snap_name = format!("snap-{trial}");
        let clone_name = format!("clone-{trial}");
        let data = pattern(u32::try_from(trial).unwrap() + 2);

        // The kubelet/sidecar sequence on a server armed with the failpoint;
        // it stops at the first call that fails (the server died).
        w.start(Some(point)).await;
        let mut steps = 0;
        let result: Result<(), tonic::Status> = async {
            w.stage(&id, &staging).await?;
            steps += 1;
            w.expand(&id, &staging, size).await?;
            steps += 1;
            w.publish(&id, &staging, &target).await?;
            steps += 1;
            write_synced(&target.join("last"), &data);
            last.clone_from(&data);
            let sid = w.snapshot(&snap_name, &id).await?;
            steps += 1;
            w.clone_from(&clone_name, &sid).await?;
            steps += 1;
            Ok(())
        }
        .await;
        assert!(result.is_err(), "{what}: the failpoint was never reached ({steps} steps done)");
        assert!(
            eventually(|| w.died()).await,
            "{what}: the call failed ({:?}) but the server did not die",
            result.unwrap_err()
        );
        let status = w.stop();
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "{what}: died at the failpoint ({status:?})"
        );
        hits[trial % POINTS.len()] += 1;

        // Restart on the same pool and drive everything to the wanted state.
        w.start(None).await;
        assert!(no_temp_images(&w.pool).is_empty(), "{what}: start-up leaves no half-built image");
        w.stage(&id, &staging).await.unwrap_or_else(|e| panic!("{what}: stage after restart: {e:?}"));
        w.expand(&id, &staging, size).await.unwrap_or_else(|e| panic!("{what}: expand after restart: {e:?}"));
        w.publish(&id, &staging, &target).await.unwrap_or_else(|e| panic!("{what}: publish after restart: {e:?}"));
        assert!(fs::read(target.join("first")).unwrap() == first, "{what}: the first data reads back");
        assert!(fs::read(target.join("last")).unwrap() == last, "{what}: the data written before the crash reads back");
        write_synced(&target.join("last"), &data);
        last.clone_from(&data);
        let sid = w.snapshot(&snap_name, &id).await.unwrap_or_else(|e| panic!("{what}: snapshot after restart: {e:?}"));
        let clone =
            w.clone_from(&clone_name, &sid).await.unwrap_or_else(|e| panic!("{what}: clone after restart: {e:?}"));

        // The catalog agrees with the kernel: staged and published where the
        // kernel says, once each, on one loop device.
        let rec = record(&w.pool, &id);
        let state = loopvol_backend::Pool::open(&w.pool, loopvol_backend::PoolOptions::default())
            .unwrap()
            .node_state(&id)
            .unwrap();
        assert_eq!(state.staged.as_ref().map(|st| st.staging_path.clone()), Some(staging.clone()), "{what}: {state:?}");
        let published: Vec<&PathBuf> = state.published.keys().collect();
        assert_eq!(published, [&target], "{what}: {state:?}");
        assert_eq!(rec.capacity_bytes, u64::try_from(size).unwrap(), "{what}: the last expansion is recorded");
        assert!(!rec.fs_grow_pending, "{what}: the filesystem was grown");
        let mut mounts = mounts_under(&w.root);
        mounts.sort();
        assert_eq!(mounts, vec![target.clone(), staging.clone()], "{what}: exactly the staging and target mounts");
        assert_eq!(loops_under(&w.pool).len(), 1, "{what}: one loop device");
        let stats = w
            .node()
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.to_string_lossy().into_owned(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!stats.volume_condition.unwrap().abnormal, "{what}: the volume is healthy");

        // The snapshot holds the data written before it: read it from the clone.
        w.stage(&clone, &clone_staging).await.unwrap_or_else(|e| panic!("{what}: stage the clone: {e:?}"));
        assert!(fs::read(clone_staging.join("last")).unwrap() == data, "{what}: the clone holds the snapshot's data");
        assert!(fs::read(clone_staging.join("first")).unwrap() == first, "{what}: and the first data");
        w.unstage(&clone, &clone_staging).await.unwrap();
        w.controller()
            .delete_volume(csi::DeleteVolumeRequest { volume_id: clone.clone(), ..Default::default() })
            .await
            .unwrap();
        w.controller()
            .delete_snapshot(csi::DeleteSnapshotRequest { snapshot_id: sid, ..Default::default() })
            .await
            .unwrap();

        // Kubelet tears down: nothing is left mounted or attached.
        w.unpublish(&id, &target).await.unwrap();
        w.unstage(&id, &staging).await.unwrap();
        assert!(mounts_under(&w.root).is_empty(), "{what}: mounts left: {:?}", mounts_under(&w.root));
        let pool = w.pool.clone();
        assert!(eventually(|| loops_under(&pool).is_empty()).await, "{what}: loop devices left");
        assert!(no_temp_images(&w.pool).is_empty(), "{what}: half-built images left");
        let status = w.stop();
        assert!(status.success(), "{what}: the server exits cleanly ({status:?})");
    }
    let report: Vec<String> = POINTS.iter().zip(hits).map(|((p, _), n)| format!("{p}: {n}")).collect();
    eprintln!("{trials} crash trials passed: {}", report.join(", "));
    assert_eq!(hits.iter().sum::<usize>(), trials);
}
