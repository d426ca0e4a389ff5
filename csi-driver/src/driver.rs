//! State shared by every service, and the bridge from async handlers to the
//! blocking backend.

use std::collections::HashMap;
use std::sync::Arc;

use loopvol_backend::Pool;
use loopvol_proto::v1::Topology;
use tonic::Status;

#[derive(Debug)]
pub struct Driver {
    pub pool: Arc<Pool>,
    pub name: String,
    pub node_id: String,
    pub max_volumes_per_node: i64,
    /// Whether ControllerGetCapabilities lists GET_SNAPSHOT (the RPC works either way).
    pub advertise_get_snapshot: bool,
    /// `topology.<driver-name>/node`: the one segment key loopvol reports.
    pub topology_key: String,
    /// ControllerExpandVolume of a volume this pool does not hold asks for
    /// node expansion instead of NOT_FOUND (the central resizer's driver).
    pub defer_expansion_to_node: bool,
    /// ControllerModifyVolume of a volume not in this pool checks the
    /// parameters and leaves applying them to the owning node.
    pub defer_modify_to_node: bool,
}

impl Driver {
    pub fn new(pool: Pool, name: String, node_id: String, max_volumes_per_node: i64) -> Driver {
        let topology_key = format!("topology.{name}/node");
        Driver {
            pool: Arc::new(pool),
            name,
            node_id,
            max_volumes_per_node,
            advertise_get_snapshot: false,
            topology_key,
            defer_expansion_to_node: false,
            defer_modify_to_node: false,
        }
    }

    /// This node's topology segment.
    pub fn topology(&self) -> Topology {
        Topology { segments: HashMap::from([(self.topology_key.clone(), self.node_id.clone())]) }
    }

    /// Whether a topology names this node (other keys are ignored, so a CO
    /// that adds zone labels still matches).
    pub fn is_this_node(&self, topology: &Topology) -> bool {
        topology.segments.get(&self.topology_key).is_some_and(|node| *node == self.node_id)
    }

    /// Runs one backend call on the blocking pool (the backend sleeps on file
    /// locks and waits for mkfs) and maps its error.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Pool) -> loopvol_backend::Result<T> + Send + 'static,
    {
        let pool = Arc::clone(&self.pool);
        // The backend's events (which name the volume) belong to the RPC's span.
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| f(&pool))).await {
            Ok(result) => result.map_err(crate::status::to_status),
            Err(join) => Err(Status::internal(format!("backend call failed: {join}"))),
        }
    }
}

/// INVALID_ARGUMENT unless the field is set.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

/// CSI sizes are int64; negative ones are invalid.
pub fn bytes(value: i64, field: &str) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| Status::invalid_argument(format!("{field} must not be negative")))
}

/// Backend sizes back into CSI's int64 (images are capped far below i64::MAX).
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Seconds since the epoch as a protobuf timestamp.
pub fn timestamp(secs: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: to_i64(secs), nanos: 0 }
}
