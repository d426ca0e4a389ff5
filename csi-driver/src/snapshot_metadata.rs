//! SnapshotMetadata service (CSI changed-block tracking, alpha): the
//! allocated ranges of a snapshot and the ranges that changed between two
//! snapshots of one volume, streamed as VARIABLE_LENGTH byte ranges (at most
//! `max_results` per message; every message carries the volume's capacity).
//! The backend finds the ranges; this checks arguments and streams them as
//! they are found, so a long delta starts answering at once and stops when
//! the client goes away.

use std::sync::Arc;

use loopvol_backend::ranges::{self, Range};
use loopvol_backend::Pool;
use loopvol_proto::v1 as csi;
use loopvol_proto::v1::snapshot_metadata_server::SnapshotMetadata;
use tokio_stream::StreamExt;
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

/// What a backend job hands its ranges to: `(capacity_bytes, ranges)`,
/// false when the client is gone.
type Emit<'a> = &'a mut dyn FnMut(u64, &[Range]) -> bool;

/// Runs `job` on the blocking pool and streams what it emits, one message
/// per page of at most `max_results` ranges; a job that emits nothing still
/// sends one message (it carries the capacity). An error before the first
/// message is the call's status; a later one ends the stream with it (never
/// a clean end: the client must not take a partial answer for the whole).
async fn stream<T, J, M>(driver: &Driver, max_results: usize, job: J, message: M) -> Result<BoxStream<T>, Status>
where
    T: Send + 'static,
    J: FnOnce(&Pool, Emit<'_>) -> loopvol_backend::Result<u64> + Send + 'static,
    M: Fn(u64, &[Range]) -> T + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<T, Status>>(4);
    let pool = Arc::clone(&driver.pool);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut sent = false;
        let run = std::panic::AssertUnwindSafe(|| {
            job(&pool, &mut |capacity, ranges| {
                ranges::pages(ranges, max_results).into_iter().all(|page| {
                    sent = true;
                    tx.blocking_send(Ok(message(capacity, page))).is_ok()
                })
            })
        });
        let last = match std::panic::catch_unwind(run) {
            Ok(Ok(_)) if sent => return,
            Ok(Ok(capacity)) => Ok(message(capacity, &[])),
            Ok(Err(e)) => Err(crate::status::to_status(e)),
            Err(_) => Err(Status::internal("the snapshot metadata worker panicked")),
        };
        let _ = tx.blocking_send(last);
    });
    match rx.recv().await {
        Some(Ok(first)) => {
            let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
            Ok(Box::pin(tokio_stream::once(Ok(first)).chain(rest)))
        }
        Some(Err(status)) => Err(status),
        None => Err(Status::internal("the snapshot metadata worker ended without an answer")),
    }
}

fn blocks(ranges: &[Range]) -> Vec<csi::BlockMetadata> {
    ranges.iter().map(|r| csi::BlockMetadata { byte_offset: to_i64(r.offset), size_bytes: to_i64(r.len) }).collect()
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
        let job = move |pool: &Pool, emit: Emit<'_>| {
            let answer = pool.snapshot_allocated(&id, start)?;
            emit(answer.capacity_bytes, &answer.ranges);
            Ok(answer.capacity_bytes)
        };
        let messages = stream(&self.0, max, job, |capacity, ranges| csi::GetMetadataAllocatedResponse {
            block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
            volume_capacity_bytes: to_i64(capacity),
            block_metadata: blocks(ranges),
        });
        Ok(Response::new(messages.await?))
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
        let job = move |pool: &Pool, emit: Emit<'_>| pool.snapshot_delta_each(&base, &target, start, emit);
        let messages = stream(&self.0, max, job, |capacity, ranges| csi::GetMetadataDeltaResponse {
            block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
            volume_capacity_bytes: to_i64(capacity),
            block_metadata: blocks(ranges),
        });
        Ok(Response::new(messages.await?))
    }
}
