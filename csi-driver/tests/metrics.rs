//! `--metrics-address`: the real binary's /metrics after real RPCs, and the
//! one log event per RPC that the same tower layer emits.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};

use common::*;
use loopvol_proto::v1 as csi;
use tonic::Code;

/// The address the server logged for its metrics listener (started on port 0).
fn metrics_address(log: &str) -> String {
    for line in log.lines().filter(|l| l.contains("serving metrics")) {
        if let Some(start) = line.find("127.0.0.1:") {
            let rest = &line[start + "127.0.0.1:".len()..];
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !port.is_empty() {
                return format!("127.0.0.1:{port}");
            }
        }
    }
    panic!("no metrics address in the log:\n{log}");
}

/// A plain HTTP/1.0 GET; returns the status line and the body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of one sample line (`name{labels} value`).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(s: &Server) -> String {
    let addr = metrics_address(&s.log());
    let (status, body) = tokio::task::spawn_blocking(move || get(&addr, "/metrics")).await.unwrap();
    assert!(status.contains("200"), "{status}\n{body}");
    body
}

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code_and_report_the_pool() {
    let mut s = Server::start_with(&["--metrics-address", "127.0.0.1:0", "--log-format", "json"]).await;
    for _ in 0..2 {
        s.identity.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap();
    }
    let a = s.create("metrics-a", 64 * MIB, mount_rw()).await;
    s.create("metrics-b", 64 * MIB, mount_rw()).await;
    s.snapshot("metrics-snap", &a.volume_id).await.unwrap();
    // Failures: trailers-only answers with grpc-status in the headers.
    let missing = csi::ControllerGetVolumeRequest { volume_id: "no-such-volume".into() };
    assert_eq!(code(s.controller.controller_get_volume(missing).await), Code::NotFound);
    assert_eq!(code(s.stage("", &s.staging("x"), mount_rw()).await), Code::InvalidArgument);
    let secret = HashMap::from([("password".to_string(), "hunter2-metrics-secret".to_string())]);
    let publish =
        csi::ControllerPublishVolumeRequest { volume_id: a.volume_id.clone(), secrets: secret, ..Default::default() };
    assert_eq!(code(s.controller.controller_publish_volume(publish).await), Code::Unimplemented);

    let body = scrape(&s).await;
    for (series, want) in [
        (r#"loopvol_csi_requests_total{method="GetPluginInfo",code="OK"}"#, 2.0),
        (r#"loopvol_csi_requests_total{method="CreateVolume",code="OK"}"#, 2.0),
        (r#"loopvol_csi_requests_total{method="CreateSnapshot",code="OK"}"#, 1.0),
        (r#"loopvol_csi_requests_total{method="ControllerGetVolume",code="NOT_FOUND"}"#, 1.0),
        (r#"loopvol_csi_requests_total{method="NodeStageVolume",code="INVALID_ARGUMENT"}"#, 1.0),
        (r#"loopvol_csi_requests_total{method="ControllerPublishVolume",code="UNIMPLEMENTED"}"#, 1.0),
        (r#"loopvol_csi_request_duration_seconds_count{method="GetPluginInfo"}"#, 2.0),
        (r#"loopvol_csi_request_duration_seconds_bucket{le="+Inf",method="CreateVolume"}"#, 2.0),
        ("loopvol_pool_up", 1.0),
        ("loopvol_pool_volumes", 2.0),
        ("loopvol_pool_snapshots", 1.0),
        ("loopvol_pool_loop_devices", 0.0),
        ("loopvol_pool_io_limits_not_in_force", 0.0),
    ] {
        assert_eq!(sample(&body, series), Some(want), "{series} in\n{body}");
    }
    let capacity = sample(&body, "loopvol_pool_capacity_bytes").expect("capacity");
    let available = sample(&body, "loopvol_pool_available_bytes").expect("available");
    assert!(capacity > 0.0 && available <= capacity, "capacity {capacity}, available {available}");
    assert!(body.contains("# TYPE loopvol_csi_requests counter"), "{body}");
    assert!(body.contains("# TYPE loopvol_csi_request_duration_seconds histogram"), "{body}");
    assert!(body.contains(&format!(r#"loopvol_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))));
    // The scrape itself is no RPC.
    assert_eq!(body.matches("loopvol_csi_requests_total{").count(), 6, "{body}");
    let addr = metrics_address(&s.log());
    let (status, _) = tokio::task::spawn_blocking(move || get(&addr, "/other")).await.unwrap();
    assert!(status.contains("404"), "{status}");

    // One event per RPC, with method, code and duration; failures carry the
    // status message, which names the volume.
    let log = s.log();
    assert!(!log.contains("hunter2-metrics-secret"), "a secret reached the log");
    let events: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let rpc_events = |method: &str| {
        events
            .iter()
            .filter(|e| {
                e["fields"]["method"] == method && e["fields"]["message"].as_str().unwrap_or("").starts_with("rpc")
            })
            .collect::<Vec<_>>()
    };
    let creates = rpc_events("CreateVolume");
    assert_eq!(creates.len(), 2, "{log}");
    assert!(creates.iter().all(|e| e["fields"]["code"] == "OK" && e["fields"]["duration_ms"].is_number()));
    let failed = rpc_events("ControllerGetVolume");
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(failed[0]["fields"]["code"], "NOT_FOUND");
    assert_eq!(failed[0]["fields"]["message"], "rpc failed");
    assert!(failed[0]["fields"]["error"].as_str().unwrap().contains("no-such-volume"), "{log}");
    // The backend's own event, which names the volume, is in the RPC's span.
    let created = events
        .iter()
        .find(|e| e["fields"]["message"] == "volume created" && e["fields"]["volume"] == a.volume_id.as_str())
        .unwrap_or_else(|| panic!("no 'volume created' event for {}:\n{log}", a.volume_id));
    assert_eq!(created["span"]["name"], "rpc", "{created}");
    assert_eq!(created["span"]["method"], "CreateVolume", "{created}");
}

#[tokio::test]
async fn metrics_count_the_pools_attached_loop_devices() {
    if !loopvol_test_support::privileged("metrics_count_the_pools_attached_loop_devices") {
        return;
    }
    let mut s = Server::start_with(&["--metrics-address", "127.0.0.1:0"]).await;
    let vol = s.create("metrics-staged", 64 * MIB, mount_rw()).await;
    s.create("metrics-idle", 64 * MIB, mount_rw()).await;
    let staging = s.staging("metrics-staged");
    s.stage(&vol.volume_id, &staging, mount_rw()).await.unwrap();
    let body = scrape(&s).await;
    assert_eq!(sample(&body, "loopvol_pool_loop_devices"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "loopvol_pool_volumes"), Some(2.0), "{body}");
    assert_eq!(sample(&body, "loopvol_pool_io_limits_not_in_force"), Some(0.0), "{body}");

    // A limited volume published for a pod whose cgroup does not exist.
    let modify = csi::ControllerModifyVolumeRequest {
        volume_id: vol.volume_id.clone(),
        mutable_parameters: HashMap::from([("readIOPS".to_string(), "100".to_string())]),
        ..Default::default()
    };
    s.controller.controller_modify_volume(modify).await.unwrap();
    let target = s.target("metrics-pod");
    let publish = csi::NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.to_string_lossy().into_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(mount_rw()),
        volume_context: HashMap::from([(
            "csi.storage.k8s.io/pod.uid".to_string(),
            "00000000-0000-4000-8000-00000000dead".to_string(),
        )]),
        ..Default::default()
    };
    s.node.node_publish_volume(publish).await.unwrap();
    let body = scrape(&s).await;
    assert_eq!(sample(&body, "loopvol_pool_io_limits_not_in_force"), Some(1.0), "{body}");
    s.unpublish(&vol.volume_id, &target).await.unwrap();
    s.unstage(&vol.volume_id, &staging).await.unwrap();
}

#[tokio::test]
async fn a_bad_metrics_address_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let out = std::process::Command::new(EXE)
        .arg("--endpoint")
        .arg(&socket)
        .args(["--node-id", NODE, "--metrics-address", "localhost"])
        .arg("--pool")
        .arg(dir.path().join("pool"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics address"), "{out:?}");
    assert!(!socket.exists());
}
