//! Both front ends on one pool at once, as on a node that runs FlexVolume PVs
//! beside CSI ones: two FlexVolume processes race on one volume while the CSI
//! server creates, stages, publishes, expands and deletes volumes in the same
//! pool. The file locks must keep every record whole and every mount single.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loopvol_backend::{Pool, PoolOptions};
use loopvol_proto::v1 as csi;
use loopvol_test_support::flex::FlexWorld;
use loopvol_test_support::{loops_settle, privileged};
use loopvol_tests::bench::client::Csi;
use loopvol_tests::workspace_binary;

const MIB: i64 = 1 << 20;

struct World {
    /// Pool, FlexVolume state dir, kubelet dir and config (tests/support).
    flex: FlexWorld,
    socket: PathBuf,
    server: Child,
}

impl World {
    fn start() -> World {
        let flex = FlexWorld::new(workspace_binary("loopvol"), false);
        let socket = flex.root.join("csi.sock");
        let server = Command::new(workspace_binary("loopvol-csi"))
            .arg("--endpoint")
            .arg(&socket)
            .arg("--pool")
            .arg(&flex.pool)
            .args(["--node-id", "node-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        World { flex, socket, server }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.flex.root.join(rel)
    }

    /// Starts `loopvol <args>` as kubelet does; `finish` collects its reply.
    fn flex(&self, args: &[&str]) -> (Child, std::io::PipeReader) {
        let (reader, writer) = std::io::pipe().unwrap();
        let child = Command::new(workspace_binary("loopvol"))
            .args(args)
            .env("LOOPVOL_FLEX_CONFIG", &self.flex.config)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap();
        (child, reader)
    }
}

fn finish((mut child, mut reader): (Child, std::io::PipeReader)) -> serde_json::Value {
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn mounts_at(path: &Path) -> usize {
    loopvol_test_support::mount_count(path)
}

fn options(pv: &str) -> String {
    let m: BTreeMap<&str, &str> = [
        ("kubernetes.io/fsType", ""),
        ("kubernetes.io/readwrite", "rw"),
        ("kubernetes.io/pvOrVolumeName", pv),
        ("size", "64Mi"),
    ]
    .into_iter()
    .collect();
    serde_json::to_string(&m).unwrap()
}

fn mount_cap() -> csi::VolumeCapability {
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

/// One CSI volume's whole life, with an expansion while it is published.
async fn csi_lifecycle(mut c: Csi, root: PathBuf, n: usize) -> Result<(), tonic::Status> {
    let cap = mount_cap();
    let vol = c
        .controller
        .create_volume(csi::CreateVolumeRequest {
            name: format!("csi-{n}"),
            capacity_range: Some(csi::CapacityRange { required_bytes: 64 * MIB, limit_bytes: 0 }),
            volume_capabilities: vec![cap.clone()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id;
    let staging = root.join(format!("csi-staging/{n}"));
    fs::create_dir_all(&staging).unwrap();
    let target = root.join(format!("csi-pods/{n}/mount"));
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let staging_s = staging.to_string_lossy().into_owned();
    c.node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging_s.clone(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
    c.node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging_s.clone(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
    c.controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 96 * MIB, limit_bytes: 0 }),
            ..Default::default()
        })
        .await?;
    c.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.to_string_lossy().into_owned(),
        })
        .await?;
    c.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest { volume_id: id.clone(), staging_target_path: staging_s })
        .await?;
    c.controller.delete_volume(csi::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexvolume_processes_and_the_csi_server_share_one_pool() {
    if !privileged("flexvolume_processes_and_the_csi_server_share_one_pool") {
        return;
    }
    let w = World::start();
    let (client, _) = Csi::wait_ready(&w.socket, Duration::from_secs(30)).await.unwrap();

    for round in 0..3 {
        let pods: Vec<PathBuf> = (0..2)
            .map(|p| {
                let dir = w.path(&format!("kubelet/pods/pod-{round}-{p}/volumes/loopvol~loopvol/pv-shared"));
                fs::create_dir_all(&dir).unwrap();
                dir
            })
            .collect();
        // Two kubelet calls for one FlexVolume PV race each other and the
        // CSI server's work on other volumes of the same pool.
        let flex: Vec<_> =
            pods.iter().map(|pod| w.flex(&["mount", pod.to_str().unwrap(), &options("pv-shared")])).collect();
        let csi_work: Vec<_> =
            (0..4).map(|n| tokio::spawn(csi_lifecycle(client.clone(), w.flex.root.clone(), round * 10 + n))).collect();
        for work in csi_work {
            work.await.unwrap().unwrap();
        }
        for f in flex {
            let reply = tokio::task::spawn_blocking(move || finish(f)).await.unwrap();
            assert_eq!(reply["status"], "Success", "{reply}");
        }
        let staging = w.flex.state.join("staging/pv-shared");
        assert_eq!(mounts_at(&staging), 1, "one staging mount for both pods");
        for pod in &pods {
            assert_eq!(mounts_at(pod), 1, "one mount per pod");
        }
        // The CSI server sees the FlexVolume volume in its pool.
        let listed = client.clone().controller.list_volumes(csi::ListVolumesRequest::default()).await.unwrap();
        let ids: Vec<String> =
            listed.into_inner().entries.into_iter().filter_map(|e| e.volume.map(|v| v.volume_id)).collect();
        assert_eq!(ids, vec!["pv-shared".to_string()], "CSI volumes are gone, the FlexVolume one stays");
        let unmounts: Vec<_> = pods.iter().map(|pod| w.flex(&["unmount", pod.to_str().unwrap()])).collect();
        for f in unmounts {
            let reply = tokio::task::spawn_blocking(move || finish(f)).await.unwrap();
            assert_eq!(reply["status"], "Success", "{reply}");
        }
        assert_eq!(mounts_at(&staging), 0, "the last unmount unstages");
    }

    // Every record is whole and agrees with the kernel; nothing leaked.
    let pool = Pool::open(&w.path("pool"), PoolOptions::default()).unwrap();
    let vols = pool.volumes().unwrap();
    assert_eq!(vols.len(), 1);
    let state = pool.node_state(&vols[0].id).unwrap();
    assert!(state.staged.is_none() && state.published.is_empty());
    let under = loopvol_test_support::mounts_under(&w.flex.root.clone());
    assert!(under.is_empty(), "leaked mounts: {under:?}");
    assert_eq!(loops_settle(&w.flex.root.clone(), 0), 0, "leaked loop devices");
}
