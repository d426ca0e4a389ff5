//! I/O limits on cgroup v1 hosts: blkio throttling there is not
//! hierarchical, so a limit written into a pod's cgroup at NodePublish does
//! not hold for the container cgroups kubelet makes below it afterwards (or
//! for a restarted container's new one). Every few seconds the rules are
//! written again into each publishing pod's cgroup and all cgroups below it
//! (`Pool::resync_io_limits`), FlexVolume publishes on the same pool
//! included. cgroup v2 throttles whole subtrees: nothing runs there.

use std::sync::Arc;
use std::time::Duration;

use crate::driver::Driver;

/// How soon a new container of a limited pod is throttled.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Starts the resync when this host needs it; None when it does not.
pub fn spawn(driver: &Arc<Driver>) -> Option<tokio::task::JoinHandle<()>> {
    if !driver.pool.io_limits_need_resync() {
        return None;
    }
    tracing::info!(interval_s = INTERVAL.as_secs(), "cgroup v1: re-applying I/O limits to new container cgroups");
    Some(tokio::spawn(run(driver.clone())))
}

async fn run(driver: Arc<Driver>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        if let Err(status) = driver.run(|pool| pool.resync_io_limits()).await {
            tracing::warn!(error = %status.message(), "I/O limit resync failed; trying again next round");
        }
    }
}
