//! SnapshotMetadata service (CSI changed-block tracking, alpha): the
//! allocated ranges of a snapshot and the ranges that changed between two
//! snapshots of one volume, streamed as VARIABLE_LENGTH byte ranges (at most
//! `max_results` per message; every message carries the volume's capacity).
//! The backend finds the ranges; this checks arguments and pages them.

use std::sync::Arc;

use loopvol_backend::extents::{self, Range};
use loopvol_backend::snapshot_metadata::SnapshotRanges;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::snapshot_metadata_server::SnapshotMetadata;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::driver::{required, to_i64, Driver};

pub struct SnapshotMetadataService(pub Arc<Driver>);

/// The spec's error table puts a negative offset under OUT_OF_RANGE, with
/// one past the end; the backend checks the end.
fn starting_offset(value: i64) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| Status::out_of_range(format!("starting_offset {value} is negative")))
}

/// 0 lets the plugin choose; a negative limit is a bad argument.
fn max_results(value: i32) -> Result<usize, Status> {
    usize::try_from(value).map_err(|_| Status::invalid_argument(format!("max_results {value} is negative")))
}

/// The answer as a stream: one message per page of ranges, at least one.
fn stream<T: Send + 'static>(
    answer: SnapshotRanges,
    max_results: usize,
    message: impl Fn(i64, Vec<csi::BlockMetadata>) -> T,
) -> BoxStream<T> {
    let capacity = to_i64(answer.capacity_bytes);
    let block = |r: &Range| csi::BlockMetadata { byte_offset: to_i64(r.offset), size_bytes: to_i64(r.len) };
    let messages: Vec<Result<T, Status>> = extents::pages(&answer.ranges, max_results)
        .into_iter()
        .map(|page| Ok(message(capacity, page.iter().map(block).collect())))
        .collect();
    Box::pin(tokio_stream::iter(messages))
}

#[tonic::async_trait]
impl SnapshotMetadata for SnapshotMetadataService {
    async fn get_metadata_allocated(
        &self,
        req: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<BoxStream<csi::GetMetadataAllocatedResponse>>, Status> {
        let req = req.into_inner();
        let id = required(&req.snapshot_id, "snapshot_id")?.to_string();
        let start = starting_offset(req.starting_offset)?;
        let max = max_results(req.max_results)?;
        let answer = self.0.run(move |pool| pool.snapshot_allocated(&id, start)).await?;
        Ok(Response::new(stream(answer, max, |volume_capacity_bytes, block_metadata| {
            csi::GetMetadataAllocatedResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes,
                block_metadata,
            }
        })))
    }

    async fn get_metadata_delta(
        &self,
        req: Request<csi::GetMetadataDeltaRequest>,
    ) -> Result<Response<BoxStream<csi::GetMetadataDeltaResponse>>, Status> {
        let req = req.into_inner();
        let base = required(&req.base_snapshot_id, "base_snapshot_id")?.to_string();
        let target = required(&req.target_snapshot_id, "target_snapshot_id")?.to_string();
        let start = starting_offset(req.starting_offset)?;
        let max = max_results(req.max_results)?;
        let answer = self.0.run(move |pool| pool.snapshot_delta(&base, &target, start)).await?;
        Ok(Response::new(stream(answer, max, |volume_capacity_bytes, block_metadata| csi::GetMetadataDeltaResponse {
            block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
            volume_capacity_bytes,
            block_metadata,
        })))
    }
}
