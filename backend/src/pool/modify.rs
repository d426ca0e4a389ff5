//! ModifyVolume: changing a live volume's mutable parameters (direct I/O,
//! thick preallocation, I/O limits), and keeping the node in line with them.
//!
//! The record is the commit point: a modify preallocates first (which a
//! retry repeats harmlessly), writes the record, then brings what is live on
//! this node into line (the loop device's direct I/O, the I/O limits in the
//! cgroup of each pod that publishes the volume). A crash after the record is
//! caught up by the next publish or the next start-up (`enforce_locked`),
//! which apply the record again.

use std::fs::OpenOptions;
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};
use nix::sys::stat::{major, minor};

use super::live::Live;
use super::state::NodeState;
use super::{Pool, Volume};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::kernel::cgroup;
use crate::kernel::loopdev::{self, LoopDevice};
use crate::params::VolumeParams;
use crate::types::IoLimits;

impl Pool {
    /// Applies mutable parameters (parsed with `Dialect::Mutable`) to a
    /// volume: `directIO` and `thick` when given; the I/O limits as a whole
    /// (an absent limit is unlimited). Repeating it is a no-op. Returns the
    /// new record.
    ///
    /// Errors: VolumeNotFound, InvalidId, Exhausted (thick: no room to
    /// preallocate), Busy.
    pub fn modify_volume(&self, id: &str, params: &VolumeParams) -> Result<Volume> {
        let _guard = self.lock_volume(id)?;
        let (vol, mut state) = self.load(id)?;
        let wanted = Volume {
            direct_io: params.direct_io.unwrap_or(vol.direct_io),
            thick: params.thick.unwrap_or(vol.thick),
            io_limits: params.io_limits.over(IoLimits::default()),
            ..vol.clone()
        };
        if wanted.thick && !vol.thick {
            self.preallocate(&wanted)?;
        }
        if wanted != vol {
            failpoint::hit("modify.before-record");
            self.write_volume(&wanted)?;
            tracing::info!(
                volume = %id, direct_io = wanted.direct_io, thick = wanted.thick, io_limits = ?wanted.io_limits,
                "volume modified"
            );
            failpoint::hit("modify.after-record");
        }
        let live = self.reconcile(&wanted, &mut state)?;
        self.enforce_locked(&wanted, &mut state, &live)?;
        Ok(wanted)
    }

    /// Allocates every block of the image (fallocate keeps what is written).
    fn preallocate(&self, vol: &Volume) -> Result<()> {
        let image = self.volume_image_path(&vol.id);
        let _alloc = self.lock_allocation()?;
        let file = OpenOptions::new().write(true).open(&image).map_err(|e| Error::io("open", &image, e))?;
        let len = i64::try_from(vol.capacity_bytes).map_err(|_| Error::InvalidArgument("volume too large".into()))?;
        fallocate(&file, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, len).map_err(|errno| {
            super::controller::no_space_is_exhausted(Error::sys("fallocate", &image, errno), vol.capacity_bytes)
        })
    }

    /// Brings what is live on this node into line with the record: the loop
    /// device's direct I/O, and the I/O limits in the cgroup of every pod
    /// that publishes it. Problems with a pod's cgroup are recorded in the
    /// node state (they show in the volume's condition), never an error: the
    /// pod keeps running either way.
    pub(crate) fn enforce_locked(&self, vol: &Volume, state: &mut NodeState, live: &Live) -> Result<()> {
        let Some(device) = &live.device else { return Ok(()) };
        let mut changed = false;
        if let Some(st) = state.staged.as_mut() {
            if st.direct_io != vol.direct_io || loopdev::uses_direct_io(device) != vol.direct_io {
                let now = loopdev::switch_direct_io(device, vol.direct_io, vol.device_block_size())?;
                if vol.direct_io && !now {
                    tracing::warn!(volume = %vol.id, device = %device.path.display(),
                        "the pool's filesystem refuses direct I/O for this image: staying buffered");
                }
                changed |= st.direct_io != now;
                st.direct_io = now;
            }
        }
        changed |= self.enforce_io_limits(vol, state, device, None)?;
        if changed {
            self.write_node_state(&vol.id, state)?;
        }
        Ok(())
    }

    /// Writes the volume's I/O limits into the cgroup of the pod of each
    /// published target (or of `only` that one) and records in the state
    /// why a pod did not get them. Returns whether the state changed.
    pub(crate) fn enforce_io_limits(
        &self,
        vol: &Volume,
        state: &mut NodeState,
        device: &LoopDevice,
        only: Option<&Path>,
    ) -> Result<bool> {
        let rdev = device_number(&device.path)?;
        let mut changed = false;
        for (target, publish) in &mut state.published {
            if only.is_some_and(|t| t != target) {
                continue;
            }
            let Some(pod_uid) = publish.pod_uid.clone() else { continue };
            let problem = self.apply_io_limits(&vol.io_limits, rdev, &pod_uid).err();
            match &problem {
                Some(why) => tracing::warn!(volume = %vol.id, target = %target.display(), pod_uid = %pod_uid,
                    problem = %why, "I/O limits not applied; the pod runs without them"),
                None if !vol.io_limits.is_unlimited() => tracing::debug!(volume = %vol.id, pod_uid = %pod_uid,
                    limits = ?vol.io_limits, "I/O limits applied"),
                None => {}
            }
            changed |= publish.io_limits_problem != problem;
            publish.io_limits_problem = problem;
        }
        Ok(changed)
    }

    /// Writes `limits` for the device into the pod's cgroup. Err: why not.
    fn apply_io_limits(&self, limits: &IoLimits, rdev: (u64, u64), pod_uid: &str) -> std::result::Result<(), String> {
        let root = &self.options.cgroup_root;
        match cgroup::find_pod(root, pod_uid) {
            Ok(Some(pod)) => cgroup::apply(&pod, rdev, limits).map_err(|e| e.to_string()),
            // Nothing to lift where nothing can have been set.
            Ok(None) | Err(_) if limits.is_unlimited() => Ok(()),
            Ok(None) => Err(format!("no cgroup for pod {pod_uid} under {}", root.display())),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Pool {
    /// Whether [`Pool::resync_io_limits`] is needed here: on cgroup v1 a
    /// limit holds only for the cgroups it was written into, and a pod's
    /// containers (and their restarts) get new cgroups after NodePublish.
    pub fn io_limits_need_resync(&self) -> bool {
        cgroup::needs_resync(&self.options.cgroup_root)
    }

    /// Writes every published volume's I/O limits into its pods' cgroups
    /// again (the CSI node plugin does it every few seconds on cgroup v1;
    /// FlexVolume publishes in the same pool are included). Volumes busy
    /// with another operation are skipped until the next round. Returns how
    /// many volumes were visited.
    pub fn resync_io_limits(&self) -> Result<usize> {
        let mut visited = 0;
        for id in self.volume_ids()? {
            // Cheap first look, without the lock: no pod, nothing to do.
            let Some(state) = self.read_state_file(&id) else { continue };
            if !state.published.values().any(|p| p.pod_uid.is_some()) {
                continue;
            }
            let _guard = match self.lock_volume(&id) {
                Ok(guard) => guard,
                Err(Error::Busy(_)) => continue,
                Err(e) => return Err(e),
            };
            let (vol, mut state) = match self.load(&id) {
                Ok(loaded) => loaded,
                Err(Error::VolumeNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            // Only the device is needed. A reconcile also reads mountinfo,
            // which made a pass over N volumes cost N² (node_at_scale bench).
            let device = match self.recorded_device(&id, &state) {
                Some(entry) => Some(entry.device),
                None => self.reconcile(&vol, &mut state)?.device,
            };
            if let Some(device) = &device {
                if self.enforce_io_limits(&vol, &mut state, device, None)? {
                    self.write_node_state(&vol.id, &state)?;
                }
            }
            visited += 1;
        }
        Ok(visited)
    }
}

/// The device number of a device node.
fn device_number(path: &Path) -> Result<(u64, u64)> {
    let st = nix::sys::stat::stat(path).map_err(|errno| Error::sys("stat", path, errno))?;
    Ok((major(st.st_rdev), minor(st.st_rdev)))
}
