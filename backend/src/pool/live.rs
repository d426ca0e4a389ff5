//! What the kernel has of a volume right now, and reconciling the recorded
//! node state with it. The kernel's mount table and loop devices are the
//! truth; the state file only remembers what was asked for.
//!
//! A volume's loop device is found one way only: the device whose backing
//! file has the image's device and inode ([`KernelView::device_of`]); a mount
//! belongs to a device by its source, its device number, or (block publishes)
//! the device node it binds ([`KernelView::mount_points_of`]).

use std::fs;
use std::path::{Path, PathBuf};

use super::state::NodeState;
use super::{Pool, Volume};
use crate::error::{Error, Result};
use crate::kernel::fstools;
use crate::kernel::loopdev::{self, LoopDevice, LoopEntry};
use crate::kernel::mountinfo::{self, MountEntry};
use crate::types::{AccessType, Condition};

/// One reading of the kernel's mount table and bound loop devices, shared by
/// every volume an operation looks at (each reading costs a mountinfo parse
/// and an ioctl per loop device).
pub(crate) struct KernelView {
    pub mounts: Vec<MountEntry>,
    pub loops: Vec<LoopEntry>,
}

impl KernelView {
    pub fn read() -> Result<KernelView> {
        Ok(KernelView { mounts: mountinfo::read()?, loops: loopdev::list()? })
    }

    /// A reading for one volume: of its device alone when that is known
    /// ([`Pool::recorded_device`]), else of every loop device. Reading them
    /// all cost each operation 3–16 ms on a node where the kernel had made
    /// 500 (BENCHMARKS.md, "The node side with N published volumes").
    pub fn read_for(known: Option<LoopEntry>) -> Result<KernelView> {
        let loops = match known {
            Some(entry) => vec![entry],
            None => loopdev::list()?,
        };
        Ok(KernelView { mounts: mountinfo::read()?, loops })
    }

    /// The device backed by `image`, matched by device and inode; None when
    /// the image is missing or not attached.
    pub fn device_of(&self, image: &Path) -> Option<LoopDevice> {
        let id = loopdev::file_id(image)?;
        self.loops.iter().find(|e| e.backing == id).map(|e| e.device.clone())
    }

    /// Every mount point of a loop device: its filesystem, bind mounts of
    /// it, and bind mounts of its device node (block volumes).
    pub fn mount_points_of(&self, entry: &LoopEntry) -> Vec<PathBuf> {
        let node_name = format!("/{}", entry.device.path.file_name().unwrap_or_default().to_string_lossy());
        let source = entry.device.path.to_string_lossy();
        let mut points: Vec<PathBuf> = self
            .mounts
            .iter()
            .filter(|e| {
                // btrfs reports an anonymous device number, so the source
                // counts too; block publishes are binds of the device node.
                ((e.major, e.minor) == entry.rdev)
                    || (e.source == source && e.fs_type != "devtmpfs")
                    || (e.fs_type == "devtmpfs" && e.root.as_os_str() == node_name.as_str())
            })
            .map(|e| e.mount_point.clone())
            .collect();
        points.dedup();
        points
    }

    /// The loop device behind the top mount at `path`, if any.
    fn device_mounted_at(&self, path: &Path) -> Option<&LoopEntry> {
        let top = mountinfo::at(&self.mounts, path).last().copied()?;
        self.loops.iter().find(|entry| {
            let node_name = format!("/{}", entry.device.path.file_name().unwrap_or_default().to_string_lossy());
            if top.fs_type == "devtmpfs" {
                top.root.as_os_str() == node_name.as_str()
            } else {
                top.source == entry.device.path.to_string_lossy() || (top.major, top.minor) == entry.rdev
            }
        })
    }
}

/// What the kernel says about a volume right now.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// The loop device backed by the volume's image.
    pub device: Option<LoopDevice>,
    /// Every mount point of the volume (see [`KernelView::mount_points_of`]).
    pub mount_points: Vec<PathBuf>,
    /// The recorded staging is really there.
    pub staged: bool,
}

impl Live {
    /// Mount points other than the given staging path(s): live publishes.
    pub fn others(&self, staging: &[&Path]) -> Vec<PathBuf> {
        self.mount_points.iter().filter(|p| !staging.contains(&p.as_path())).cloned().collect()
    }
}

impl Pool {
    /// What the kernel has of a volume, in a view read once per operation.
    pub(crate) fn live(&self, vol: &Volume, state: &NodeState, view: &KernelView) -> Live {
        let Some(id) = loopdev::file_id(&self.volume_image_path(&vol.id)) else { return Live::default() };
        let Some(entry) = view.loops.iter().find(|e| e.backing == id) else { return Live::default() };
        let mount_points = view.mount_points_of(entry);
        let staged = match &state.staged {
            Some(st) if st.access_type == AccessType::Mount => mount_points.contains(&st.staging_path),
            Some(_) => true,
            None => false,
        };
        Live { device: Some(entry.device.clone()), mount_points, staged }
    }

    /// The device the volume's staging record names, when it is still bound
    /// to the volume's image (by device and inode: one ioctl). None when
    /// nothing is recorded or the record is stale (a reboot renumbers
    /// devices; an image detached or re-attached behind our back).
    pub(crate) fn recorded_device(&self, id: &str, state: &NodeState) -> Option<LoopEntry> {
        let recorded = &state.staged.as_ref()?.device;
        loopdev::bound_to(recorded, &self.volume_image_path(id)).ok().flatten()
    }

    /// What the kernel has of one volume right now (see [`KernelView::read_for`]).
    pub(crate) fn live_now(&self, vol: &Volume, state: &NodeState) -> Result<Live> {
        Ok(self.live(vol, state, &KernelView::read_for(self.recorded_device(&vol.id, state))?))
    }

    /// Drops state entries the kernel no longer backs (after a reboot, a
    /// crash, or a mount removed behind our back) and returns the live state.
    /// The caller holds the volume's lock.
    pub(crate) fn reconcile(&self, vol: &Volume, state: &mut NodeState) -> Result<Live> {
        let live = self.live_now(vol, state)?;
        let mut changed = false;
        if state.staged.is_some() && !live.staged {
            tracing::warn!(volume = %vol.id, "staging recorded but gone from the kernel; forgetting it");
            state.staged = None;
            changed = true;
        }
        if let Some(st) = state.staged.as_ref().filter(|st| live.staged && st.access_type == AccessType::Mount) {
            // A process that died during a snapshot leaves the filesystem
            // frozen (found by backend/tests/faults.rs); we hold the lock, so
            // nobody else is freezing it now.
            if !st.read_only && fstools::thaw_stale(&st.staging_path).unwrap_or(false) {
                tracing::warn!(volume = %vol.id, "thawed a filesystem a crashed snapshot left frozen");
            }
        }
        let before = state.published.len();
        state.published.retain(|target, _| live.mount_points.contains(target));
        changed |= state.published.len() != before;
        if changed {
            self.write_shrunk_node_state(&vol.id, state)?;
        }
        Ok(live)
    }

    /// Reconciles every volume and removes half-built images and records of
    /// writes that died (the CSI server calls this at start-up).
    pub fn reconcile_all(&self) -> Result<()> {
        for id in self.volume_ids()? {
            let _guard = match self.lock_volume(&id) {
                Ok(guard) => guard,
                Err(Error::Busy(_)) => continue,
                Err(e) => return Err(e),
            };
            match self.load(&id) {
                Ok((vol, mut state)) => {
                    let live = self.reconcile(&vol, &mut state)?;
                    // After a restart (or a crash mid-modify) the kernel may
                    // lag the record: direct I/O and the pods' I/O limits.
                    if let Err(e) = self.enforce_locked(&vol, &mut state, &live) {
                        tracing::warn!(volume = %id, error = %e, "could not bring the volume in line with its record");
                    }
                }
                Err(Error::VolumeNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for (path, _guard) in self.abandoned_temp_files()? {
            tracing::warn!(file = %path.display(), "removing a temp file left by a write that died");
            let _ = fs::remove_file(&path);
        }
        Ok(())
    }

    /// Health of a volume wherever it is (ControllerGetVolume).
    pub fn condition(&self, id: &str) -> Result<Condition> {
        let (vol, state) = self.load(id)?;
        let live = self.live_now(&vol, &state)?;
        Ok(self.pool_condition()?.unwrap_or_else(|| self.condition_of(&vol, &state, &live)))
    }

    /// Health of many volumes from one reading of the kernel (ListVolumes).
    pub fn conditions(&self, vols: &[Volume]) -> Result<Vec<Condition>> {
        let view = KernelView::read()?;
        let pool = self.pool_condition()?;
        vols.iter()
            .map(|vol| {
                // The caller has the record: read only the state file (the
                // record again only for a version 1 one without it).
                let state =
                    self.read_state_file(&vol.id).unwrap_or_else(|| self.node_state(&vol.id).unwrap_or_default());
                Ok(pool.clone().unwrap_or_else(|| self.condition_of(vol, &state, &self.live(vol, &state, &view))))
            })
            .collect()
    }

    /// Abnormal for every volume when an overcommitted pool runs low on real
    /// space (see `Capacity::low_space`).
    pub(crate) fn pool_condition(&self) -> Result<Option<Condition>> {
        // Only an overcommitted pool can run out under its volumes: skip the
        // walk over every image otherwise (stats are asked for often).
        if self.options.overprovision_ratio <= 1.0 {
            return Ok(None);
        }
        Ok(self.capacity()?.low_space(&self.options).map(Condition::abnormal))
    }

    pub(crate) fn condition_of(&self, vol: &Volume, state: &NodeState, live: &Live) -> Condition {
        let image = self.volume_image_path(&vol.id);
        match fs::metadata(&image) {
            Err(e) => return Condition::abnormal(format!("image {} is unreadable: {e}", image.display())),
            Ok(m) if m.len() < vol.capacity_bytes => {
                return Condition::abnormal(format!("image is {} bytes, the volume {}", m.len(), vol.capacity_bytes))
            }
            Ok(_) => {}
        }
        if let Some((target, why)) =
            state.published.iter().find_map(|(t, p)| p.io_limits_problem.as_ref().map(|why| (t, why)))
        {
            return Condition::abnormal(format!("I/O limits not in force at {}: {why}", target.display()));
        }
        match &state.staged {
            Some(st) if !live.staged => {
                Condition::abnormal(format!("staging at {} has disappeared", st.staging_path.display()))
            }
            Some(st) if st.access_type == AccessType::Mount => match fstools::usage(&st.staging_path) {
                Ok(_) => Condition::healthy(),
                Err(e) => Condition::abnormal(format!("staged filesystem does not answer: {e}")),
            },
            _ => Condition::healthy(),
        }
    }

    /// The volume whose filesystem or device is mounted at `path`, if any
    /// (FlexVolume `unmount` gets nothing but the path): the loop device
    /// behind the mount, whose backing file must be one of the pool's images.
    pub fn volume_at(&self, path: &Path) -> Result<Option<String>> {
        let path = super::node::clean_path(path)?;
        let view = KernelView::read()?;
        let Some(entry) = view.device_mounted_at(&path) else { return Ok(None) };
        if entry.backing_path.parent() != Some(self.root.join("volumes").as_path()) {
            return Ok(None);
        }
        let id = entry.backing_path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".img"));
        let Some(id) = id.filter(|id| crate::id::validate(id).is_ok()) else { return Ok(None) };
        // The sysfs name is only a candidate: the image must be the file.
        if loopdev::file_id(&self.volume_image_path(id)) != Some(entry.backing) {
            return Ok(None);
        }
        Ok(Some(id.to_string()))
    }

    /// The loop device backing the volume's image, if attached, and every
    /// place the kernel has it mounted (staging, publishes, block binds):
    /// for reports (the admin CLI's `inspect`).
    pub fn live_mounts(&self, id: &str) -> Result<(Option<PathBuf>, Vec<PathBuf>)> {
        let (vol, state) = self.load(id)?;
        let live = self.live_now(&vol, &state)?;
        Ok((live.device.map(|d| d.path), live.mount_points))
    }

    /// Paths where the volume is mounted besides its recorded staging path
    /// (live publishes; with the records lost, the staging mount too).
    pub fn users(&self, id: &str) -> Result<Vec<PathBuf>> {
        let (vol, state) = self.load(id)?;
        let live = self.live_now(&vol, &state)?;
        Ok(users_of(&state, &live))
    }
}

/// Live mount points besides the recorded staging path.
pub(crate) fn users_of(state: &NodeState, live: &Live) -> Vec<PathBuf> {
    let staging: Vec<&Path> = state.staged.iter().map(|st| st.staging_path.as_path()).collect();
    live.others(&staging)
}
