//! Identity service and the server process itself: socket, signals, flags.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::*;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::plugin_capability::{service, volume_expansion, Type};
use tonic::Code;

#[tokio::test]
async fn plugin_info_names_the_driver_and_version() {
    let mut s = Server::start().await;
    let info = s.identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn plugin_capabilities_are_the_advertised_set() {
    let mut s = Server::start().await;
    let caps = s.identity.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let mut services = Vec::new();
    let mut expansion = Vec::new();
    for cap in caps.capabilities {
        match cap.r#type.expect("capability type") {
            Type::Service(svc) => services.push(svc.r#type()),
            Type::VolumeExpansion(e) => expansion.push(e.r#type()),
        }
    }
    services.sort_by_key(|t| *t as i32);
    assert_eq!(
        services,
        [
            service::Type::ControllerService,
            service::Type::VolumeAccessibilityConstraints,
            service::Type::GroupControllerService
        ]
    );
    assert_eq!(expansion, [volume_expansion::Type::Online]);
}

#[tokio::test]
async fn probe_is_ready_and_fails_precondition_without_a_pool() {
    let mut s = Server::start().await;
    let probe = s.identity.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    // Take the pool away: the plugin is unhealthy and must say so.
    std::fs::rename(&s.pool, s.root.join("pool-gone")).unwrap();
    assert_eq!(code(s.identity.probe(csi::ProbeRequest {}).await), Code::FailedPrecondition);
    std::fs::rename(s.root.join("pool-gone"), &s.pool).unwrap();
    assert!(s.identity.probe(csi::ProbeRequest {}).await.is_ok());
}

/// The sidecars and livenessprobe start together and probe at once (issue
/// 13): every one of many concurrent Probes must answer ready. Before record
/// temp names were unique per write, two Probes of one process shared a temp
/// file and one of them failed its rename.
#[tokio::test]
async fn concurrent_probes_all_succeed() {
    let s = Server::start().await;
    for round in 0..4 {
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let mut identity = s.identity.clone();
                tokio::spawn(async move { identity.probe(csi::ProbeRequest {}).await })
            })
            .collect();
        for call in calls {
            let answer = call.await.unwrap();
            let probe = answer.unwrap_or_else(|e| panic!("round {round}: a concurrent Probe failed: {e:?}"));
            assert_eq!(probe.into_inner().ready, Some(true));
        }
    }
    // Nothing of the probes is left in the pool.
    let leftovers: Vec<_> = std::fs::read_dir(&s.pool)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("probe"))
        .collect();
    assert!(leftovers.is_empty(), "probe files left: {leftovers:?}");
}

/// stderr is a file here, as under kubelet: no ANSI colour codes in it.
#[tokio::test]
async fn logs_to_a_file_carry_no_ansi_codes() {
    let mut s = Server::start().await;
    // A call that fails logs a warning with fields, where colours were.
    let gone = csi::NodeGetVolumeStatsRequest {
        volume_id: "no-such".into(),
        volume_path: "/nowhere".into(),
        ..Default::default()
    };
    assert!(s.node.node_get_volume_stats(gone).await.is_err());
    s.stop().await;
    let log = s.log();
    assert!(log.contains("serving CSI"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file: {log:?}");
}

#[tokio::test]
async fn node_info_reports_node_topology_and_limit() {
    let mut s = Server::start_with(&["--max-volumes-per-node", "7"]).await;
    let info = s.node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, NODE);
    assert_eq!(info.max_volumes_per_node, 7);
    let topo = info.accessible_topology.expect("topology");
    assert_eq!(topo.segments.get(TOPOLOGY_KEY).map(String::as_str), Some(NODE));
    assert_eq!(topo.segments.len(), 1);
}

#[tokio::test]
async fn socket_is_not_world_accessible_and_sigterm_exits_cleanly() {
    let mut s = Server::start().await;
    let meta = std::fs::symlink_metadata(&s.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let status = s.stop().await;
    assert!(status.success(), "exit status {status}");
    assert!(!s.socket.exists(), "the socket is removed on shutdown");
    assert!(s.log().contains("SIGTERM"), "the shutdown is logged: {}", s.log());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_on_start() {
    let mut s = Server::start().await;
    // A server killed hard leaves its socket file behind.
    let mut child_status = s.stop().await;
    assert!(child_status.success());
    let _stale = std::os::unix::net::UnixListener::bind(&s.socket).unwrap();
    drop(_stale);
    assert!(s.socket.exists());
    s.restart_after_stop().await;
    let info = s.identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, DRIVER);
    child_status = s.stop().await;
    assert!(child_status.success());
}

#[tokio::test]
async fn flags_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("env.sock");
    let out = std::process::Command::new(EXE)
        .arg("--help")
        .env("CSI_ENDPOINT", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--endpoint", "--node-id", "--pool", "--driver-name", "--max-volumes-per-node", "--log-format"] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for env in ["CSI_ENDPOINT", "NODE_NAME", "LOOPVOL_POOL"] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
    // Without NODE_NAME or --node-id the driver refuses to start.
    let out = std::process::Command::new(EXE)
        .env_remove("NODE_NAME")
        .env("CSI_ENDPOINT", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!socket.exists());
}
