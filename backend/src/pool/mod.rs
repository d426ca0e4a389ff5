//! The pool: a directory that holds every volume and snapshot as a sparse
//! image file plus a record, and every operation on them. [`Pool`] is the
//! backend's whole API; its methods are spread over this module's files by
//! what they serve:
//!
//! - `catalog`: the durable, versioned records (volumes, snapshots, groups);
//! - `state`: what is staged and published on this node (`<id>.state`);
//! - `live`: what the kernel has of a volume, and reconciling the state with it;
//! - `controller`: create, delete, expand, snapshot, clone, attach mode;
//! - `node`: stage, publish, unpublish, unstage, stats, node expansion;
//! - `lifecycle`: whole lifecycles under one lock (FlexVolume mounts, CSI
//!   ephemeral volumes);
//! - `modify`: changing a live volume's mutable parameters (ModifyVolume)
//!   and its pods' I/O limits;
//! - `trim`: giving the space of deleted files back to the pool;
//! - `doctor`: finding and repairing what is out of line.
//!
//! Layout on disk:
//! ```text
//! <pool>/volumes/<id>.img   <id>.json (record)   <id>.state (node state)
//! <pool>/snapshots/<id>.img <id>.json
//! <pool>/groups/<id>.json
//! <pool>/locks/<name>.lock
//! <pool>/staging/<id>/      staging mounts the pool makes itself (ephemeral volumes)
//! <pool>/targets/<key>.json which volume a private mount's target got (teardown hint)
//! ```
//!
//! Locking: every operation takes the `flock` of each object it changes, in
//! one order (group, snapshot, volume, source volume, allocation), so separate
//! processes (FlexVolume calls) and the CSI daemon serialise on the pool.

mod catalog;
mod controller;
mod doctor;
mod lifecycle;
mod live;
mod modify;
mod node;
mod snapshot_metadata;
mod state;
mod trim;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::statvfs::statvfs;

pub use catalog::{GroupSnapshot, Lifecycle, Snapshot, Source, Volume, SNAPSHOT_RECORD_VERSION, VOLUME_RECORD_VERSION};
pub use controller::{CapacityRange, CreateVolume, ExpandOutcome};
pub use doctor::{Finding, FindingKind};
pub use lifecycle::PrivateMount;
pub use node::{clean_path, PublishRequest, StageRequest, VolumeStats};
pub use snapshot_metadata::SnapshotRanges;
pub use state::{NodeState, PublishRecord, StageRecord};
pub use trim::TrimOutcome;

use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::id;
use crate::kernel::{lock, record};

/// Tunables of an open pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How long an operation waits for another holder of the same volume's
    /// lock before giving up with `Error::Busy`.
    pub lock_wait: Duration,
    /// Size of a volume created without a requested size.
    pub default_size: u64,
    /// Filesystem of a mount volume created without an fs type.
    pub default_fs: FsType,
    /// How many times its size the pool may promise. 1 (the default): every
    /// volume reserves its whole capacity, and thin images are never
    /// overcommitted. Above 1, volumes are promised up to this many times
    /// the pool's size, and running out of real space is a risk that
    /// `low_space_percent` warns about.
    pub overprovision_ratio: f64,
    /// An overcommitted pool with less real free space than this (percent of
    /// its size) marks its volumes' condition abnormal, before any
    /// filesystem in them sees ENOSPC.
    pub low_space_percent: f64,
    /// Where the cgroup filesystems are mounted (I/O limits of pods).
    pub cgroup_root: PathBuf,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            lock_wait: Duration::from_secs(30),
            default_size: 1 << 30,
            default_fs: FsType::Ext4,
            overprovision_ratio: 1.0,
            low_space_percent: 5.0,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Space in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Size of the pool's filesystem.
    pub total_bytes: u64,
    /// Free bytes of the pool's filesystem (what writes can still use).
    pub free_bytes: u64,
    /// What new volumes may still be promised.
    pub available_bytes: u64,
    /// Largest volume that can still be created.
    pub max_volume_bytes: u64,
    /// Σ volume capacities (what is promised).
    pub provisioned_bytes: u64,
    /// Σ bytes the volumes' images really use.
    pub allocated_bytes: u64,
    /// Promised but not yet allocated: Σ (capacity − allocated).
    pub reserved_bytes: u64,
}

impl Capacity {
    /// The pool promises more than it has and its real free space is below
    /// `low_space_percent` of its size: the message says why.
    pub fn low_space(&self, options: &PoolOptions) -> Option<String> {
        if options.overprovision_ratio <= 1.0 || self.total_bytes == 0 {
            return None;
        }
        // Display and a threshold: f64 precision is plenty.
        #[allow(clippy::cast_precision_loss)]
        let free_percent = self.free_bytes as f64 * 100.0 / self.total_bytes as f64;
        (free_percent < options.low_space_percent).then(|| {
            format!(
                "the pool is overcommitted ({} bytes promised on {} bytes) and has only {free_percent:.1}% ({} bytes) \
                 of real space left: writes in its volumes will fail with ENOSPC when it runs out",
                self.provisioned_bytes, self.total_bytes, self.free_bytes
            )
        })
    }
}

/// An open pool. Cheap to share between threads (`&Pool` methods); every
/// method takes the file locks it needs.
#[derive(Debug)]
pub struct Pool {
    pub(crate) root: PathBuf,
    pub(crate) options: PoolOptions,
}

/// Image sizes are rounded up to this (the loop driver works in 512-byte
/// sectors; whole MiB keep filesystems' geometry simple).
pub(crate) const SIZE_ALIGN: u64 = 1 << 20;

/// The names of a pool directory's entries (UTF-8 ones), sorted.
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Pool {
    /// Opens (creating if needed) the pool at `root`. Cheap: it creates the
    /// directories and nothing else, so one-shot FlexVolume calls stay fast;
    /// the CSI server calls [`Pool::reconcile_all`] once at start-up.
    pub fn open(root: &Path, options: PoolOptions) -> Result<Pool> {
        if root.as_os_str().is_empty() {
            return Err(Error::InvalidPath { path: root.into(), reason: "empty pool path" });
        }
        for dir in ["", "volumes", "snapshots", "groups", "locks", "staging", "targets"] {
            let path = root.join(dir);
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create pool directory", &path, e)),
            }
        }
        let root = fs::canonicalize(root).map_err(|e| Error::io("resolve pool directory", root, e))?;
        Ok(Pool { root, options })
    }

    /// Whether a pool has been made at `root` (the admin CLI refuses to
    /// create one by a typo).
    pub fn exists(root: &Path) -> bool {
        root.join("volumes").is_dir()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &PoolOptions {
        &self.options
    }

    /// Checks that the pool directory is reachable and writable (CSI Probe).
    pub fn probe(&self) -> Result<()> {
        let path = self.root.join(format!(".probe.{}", std::process::id()));
        record::write_bytes(&path, b"ok")?;
        record::remove(&path)
    }

    // ---- paths and locks ----

    /// The image file of a volume (IDs are validated before this is called).
    pub fn volume_image_path(&self, id: &str) -> PathBuf {
        self.root.join("volumes").join(format!("{id}.img"))
    }

    /// The image file of a snapshot (IDs are validated before this is called).
    pub fn snapshot_image_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.img"))
    }

    /// A staging directory owned by the pool (ephemeral volumes, tools).
    pub fn internal_staging_path(&self, id: &str) -> Result<PathBuf> {
        id::validate(id)?;
        Ok(self.root.join("staging").join(id))
    }

    pub(crate) fn lock_volume(&self, id: &str) -> Result<lock::Guard> {
        id::validate(id)?;
        lock::acquire(&self.root.join("locks"), &format!("vol.{id}"), self.options.lock_wait)
    }

    pub(crate) fn lock_snapshot(&self, id: &str) -> Result<lock::Guard> {
        lock::acquire(&self.root.join("locks"), &format!("snap.{id}"), self.options.lock_wait)
    }

    pub(crate) fn lock_group(&self, id: &str) -> Result<lock::Guard> {
        lock::acquire(&self.root.join("locks"), &format!("group.{id}"), self.options.lock_wait)
    }

    /// Serialises space accounting with the allocation it guards, so two
    /// creates cannot both spend the same free bytes. Always taken last.
    pub(crate) fn lock_allocation(&self) -> Result<lock::Guard> {
        lock::acquire(&self.root.join("locks"), "allocation", self.options.lock_wait)
    }

    // ---- capacity ----

    pub fn capacity(&self) -> Result<Capacity> {
        let st = statvfs(&self.root).map_err(|e| Error::sys("statvfs", &self.root, e))?;
        let frsize = st.fragment_size();
        let total = st.blocks().saturating_mul(frsize);
        let free = st.blocks_available().saturating_mul(frsize);
        // Every image is as long as its volume's capacity, so its reservation
        // is its length minus what is already allocated: a stat per image,
        // no record to parse (create runs this under the allocation lock).
        let dir = self.root.join("volumes");
        let (mut provisioned, mut allocated, mut reserved) = (0u64, 0u64, 0u64);
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".img") {
                continue;
            }
            if let Ok(m) = entry.metadata() {
                let used = m.blocks() * 512;
                provisioned = provisioned.saturating_add(m.len());
                allocated = allocated.saturating_add(used);
                reserved = reserved.saturating_add(m.len().saturating_sub(used));
            }
        }
        let available = if self.options.overprovision_ratio > 1.0 {
            // Promise up to R times the pool's size (a ratio; f64 is plenty).
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let promisable = (total as f64 * self.options.overprovision_ratio) as u64;
            promisable.saturating_sub(provisioned)
        } else {
            free.saturating_sub(reserved)
        };
        Ok(Capacity {
            total_bytes: total,
            free_bytes: free,
            available_bytes: available,
            max_volume_bytes: available / SIZE_ALIGN * SIZE_ALIGN,
            provisioned_bytes: provisioned,
            allocated_bytes: allocated,
            reserved_bytes: reserved,
        })
    }

    pub(crate) fn ensure_space(&self, needed: u64) -> Result<()> {
        let cap = self.capacity()?;
        if needed > cap.available_bytes {
            return Err(Error::Exhausted { requested: needed, available: cap.available_bytes });
        }
        Ok(())
    }

    // ---- what the kernel has of the pool ----

    /// The pool's images that are attached to loop devices: volume ID →
    /// device path, matched by backing file (device and inode). For reports
    /// and metrics.
    pub fn attached_devices(&self) -> Result<std::collections::BTreeMap<String, PathBuf>> {
        let view = live::KernelView::read()?;
        let mut out = std::collections::BTreeMap::new();
        for id in self.volume_ids()? {
            if let Some(device) = view.device_of(&self.volume_image_path(&id)) {
                out.insert(id, device.path);
            }
        }
        Ok(out)
    }
}
