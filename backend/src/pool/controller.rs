//! Controller-side operations: create (blank, from a snapshot, as a clone),
//! delete, expand, snapshots and group snapshots, FlexVolume attach mode.
//! Each is idempotent and takes the locks of the objects it changes.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};

use super::catalog::{
    GroupSnapshot, Lifecycle, Snapshot, Source, Volume, SNAPSHOT_RECORD_VERSION, VOLUME_RECORD_VERSION,
};
use super::{now, Pool, SIZE_ALIGN};
use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::kernel::{copy, fstools, loopdev, record};
use crate::types::{AccessType, IoLimits};
use crate::{failpoint, id};

/// CSI-style capacity range; 0 means "not set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityRange {
    pub required: u64,
    pub limit: u64,
}

/// A request to create a volume. Idempotent on `name`.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    /// CO-chosen name; the ID is derived from it (see `id::from_name`) unless `id` is set.
    pub name: String,
    /// Explicit ID (FlexVolume's `volumeID`).
    pub id: Option<String>,
    pub capacity: CapacityRange,
    /// None: the pool default for mount volumes.
    pub fs_type: Option<FsType>,
    pub access_type: AccessType,
    /// Preallocate the image (fallocate) instead of leaving it sparse.
    pub thick: bool,
    pub source: Option<Source>,
    /// Free-form parameters kept in the record (StorageClass parameters).
    pub parameters: BTreeMap<String, String>,
    pub lifecycle: Lifecycle,
    /// Attach with direct I/O where the pool's filesystem allows it.
    pub direct_io: bool,
    /// I/O limits for the pods that publish it.
    pub io_limits: IoLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpandOutcome {
    pub capacity_bytes: u64,
    /// The volume is staged: NodeExpandVolume must grow the filesystem.
    pub node_expansion_required: bool,
}

/// How long a delete waits for an autoclear loop device that nothing mounts
/// any more to be released by the kernel.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prefixes of IDs derived by hashing a name that is not itself a valid ID.
const VOLUME_ID_PREFIX: &str = "lv-";
const SNAPSHOT_ID_PREFIX: &str = "ls-";
const GROUP_ID_PREFIX: &str = "lg-";

impl Pool {
    // ---- volumes ----

    /// Creates a volume, or returns the existing one when `name` was already
    /// created with compatible parameters. Errors: InvalidName/InvalidId,
    /// VolumeNameConflict (ALREADY_EXISTS), SnapshotNotFound/VolumeNotFound
    /// for a missing source, SizeOutOfRange, Exhausted.
    ///
    /// Crash safety: the image is built under a dot-name and renamed into
    /// place; the record, written last, is the commit point. A crash leaves at
    /// worst an image without a record, which the retry overwrites.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<Volume> {
        let id = volume_id_of(req)?;
        let _guard = self.lock_volume(&id)?;
        self.create_volume_locked(&id, req)
    }

    /// [`Pool::create_volume`] with the volume's lock held.
    pub(crate) fn create_volume_locked(&self, id: &str, req: &CreateVolume) -> Result<Volume> {
        let id = id.to_string();
        if let Some(existing) = self.read_volume(&id)? {
            check_compatible(&existing, req, self.options.default_fs)?;
            return Ok(existing);
        }

        // Resolve the source first: its size and filesystem decide ours.
        let mut source_guard = None;
        let (source_image, source_size, source_fs, source_block) = match &req.source {
            None => (None, 0, None, None),
            Some(Source::Snapshot(sid)) => {
                let snap = self.snapshot(sid)?;
                if snap.access_type != req.access_type
                    && req.access_type == AccessType::Mount
                    && snap.access_type == AccessType::Block
                {
                    return Err(Error::InvalidArgument(format!("snapshot {sid} is of a block volume")));
                }
                (Some(self.snapshot_image_path(sid)), snap.size_bytes, Some(snap.fs_type), Some(snap.block_size))
            }
            Some(Source::Volume(vid)) => {
                id::validate(vid).map_err(|_| Error::VolumeNotFound(id::truncate(vid)))?;
                if *vid == id {
                    return Err(Error::InvalidArgument("a volume cannot be its own source".into()));
                }
                source_guard = Some(self.lock_volume(vid)?);
                let src = self.volume(vid)?;
                (Some(self.volume_image_path(vid)), src.capacity_bytes, Some(src.fs_type), Some(src.block_size))
            }
        };
        let fs_type = match (req.fs_type, source_fs) {
            (Some(want), Some(have)) if want != have && req.access_type == AccessType::Mount => {
                return Err(Error::InvalidArgument(format!("the source holds {have}, {want} was requested")));
            }
            (_, Some(have)) => have,
            (Some(want), None) => want,
            (None, None) => self.options.default_fs,
        };
        let size = choose_size(req.capacity, self.options.default_size, source_size, fs_type, req.access_type)?;

        let image = self.volume_image_path(&id);
        let tmp = self.root.join("volumes").join(format!(".{id}.img.tmp"));
        {
            let _alloc = self.lock_allocation()?;
            self.ensure_space(size)?;
            let _ = fs::remove_file(&tmp);
            let built = match &source_image {
                None => create_image(&tmp, size, req.thick),
                Some(src) => {
                    // A mounted source is frozen so the copy is consistent.
                    let _frozen = match &req.source {
                        Some(Source::Volume(vid)) => self.freeze_if_mounted(vid)?,
                        _ => None,
                    };
                    copy::copy_image(src, &tmp).and_then(|_| grow_file(&tmp, size, req.thick))
                }
            };
            if let Err(e) = built {
                let _ = fs::remove_file(&tmp);
                return Err(no_space_is_exhausted(e, size));
            }
            failpoint::hit("create.before-rename");
            fs::rename(&tmp, &image).map_err(|e| Error::io("rename", &image, e))?;
            record::sync_dir(&self.root.join("volumes"))?;
            failpoint::hit("create.before-record");
        }
        drop(source_guard);

        let vol = Volume {
            version: VOLUME_RECORD_VERSION,
            id: id.clone(),
            name: req.name.clone(),
            capacity_bytes: size,
            fs_type,
            access_type: req.access_type,
            thick: req.thick,
            source: req.source.clone(),
            created_at: now(),
            parameters: req.parameters.clone(),
            fs_grow_pending: source_image.is_some() && size > source_size,
            formatted: false,
            attached_node: None,
            lifecycle: req.lifecycle,
            direct_io: req.direct_io,
            io_limits: req.io_limits,
            // A copy keeps the sector size its content was made with.
            block_size: match source_block {
                Some(inherited) => inherited,
                None => Some(loopdev::preferred_block_size(&image)),
            },
        };
        if let Err(e) = self.write_volume(&vol) {
            let _ = fs::remove_file(&image);
            return Err(e);
        }
        tracing::info!(volume = %id, size, fs = %fs_type, "volume created");
        Ok(vol)
    }

    /// Deletes a volume; a missing one is success. VolumeInUse while it is
    /// staged or published (as the kernel sees it). Its snapshots are copies
    /// and stay usable.
    pub fn delete_volume(&self, id: &str) -> Result<()> {
        if id::validate(id).is_err() {
            // Nothing with such an ID can exist: deleting it is a no-op.
            return Ok(());
        }
        let _guard = self.lock_volume(id)?;
        self.delete_volume_locked(id)
    }

    /// [`Pool::delete_volume`] with the volume's lock held.
    pub(crate) fn delete_volume_locked(&self, id: &str) -> Result<()> {
        let image = self.volume_image_path(id);
        if let Some(vol) = self.read_volume(id)? {
            let mut state = self.node_state(id)?;
            let live = self.reconcile(&vol, &mut state)?;
            if live.staged || !live.mount_points.is_empty() {
                return Err(Error::VolumeInUse { id: id.into(), reason: "it is staged or published".into() });
            }
            if let Some(dev) = live.device {
                // Unstaged a moment ago: the autoclear device goes once udev
                // and blkid close it. Anything else keeps the volume in use.
                let releasing = self.releasing_device(id)?;
                if !(releasing && loopdev::wait_released(self.image_id(id)?, RELEASE_WAIT)?) {
                    return Err(Error::VolumeInUse {
                        id: id.into(),
                        reason: format!("attached to {}", dev.path.display()),
                    });
                }
            }
            record::remove(&self.volume_record_path(id))?;
        }
        self.remove_node_state(id)?;
        record::remove(&image)?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    /// Whether the volume's only loop device is an autoclear one that nothing
    /// mounts: the tail of an unstage, which the kernel finishes on its own.
    fn releasing_device(&self, id: &str) -> Result<bool> {
        let Some(backing) = loopdev::file_id(&self.volume_image_path(id)) else { return Ok(false) };
        let view = super::live::KernelView::read()?;
        let devices: Vec<_> = view.loops.iter().filter(|e| e.backing == backing).collect();
        Ok(!devices.is_empty() && devices.iter().all(|e| e.autoclear && view.mount_points_of(e).is_empty()))
    }

    fn image_id(&self, id: &str) -> Result<loopdev::FileId> {
        let image = self.volume_image_path(id);
        loopdev::file_id(&image).ok_or_else(|| Error::VolumeNotFound(id.to_string()))
    }

    /// Grows a volume's image (and its loop device, when attached). Requesting
    /// no more than the current size changes nothing and is success (the CSI
    /// idempotency rule; images are never shrunk). Exhausted when the pool is
    /// full. The filesystem grows at the next stage or by `node_expand`.
    pub fn expand_volume(&self, id: &str, new_size: u64) -> Result<ExpandOutcome> {
        let _guard = self.lock_volume(id)?;
        let (mut vol, mut state) = self.load(id)?;
        self.grow_image_locked(&mut vol, new_size)?;
        let live = self.reconcile(&vol, &mut state)?;
        Ok(ExpandOutcome {
            capacity_bytes: vol.capacity_bytes,
            node_expansion_required: vol.access_type == AccessType::Mount && live.staged,
        })
    }

    /// With the volume locked: grows the image to `new_size` and refreshes an
    /// attached loop device. Returns whether anything grew.
    pub(crate) fn grow_image_locked(&self, vol: &mut Volume, new_size: u64) -> Result<bool> {
        if new_size <= vol.capacity_bytes {
            return Ok(false);
        }
        check_max(new_size)?;
        let image = self.volume_image_path(&vol.id);
        {
            let _alloc = self.lock_allocation()?;
            self.ensure_space(new_size - vol.capacity_bytes)?;
            grow_file(&image, new_size, vol.thick)?;
        }
        vol.capacity_bytes = new_size;
        vol.fs_grow_pending = vol.access_type == AccessType::Mount;
        self.write_volume(vol)?;
        if let Some(dev) = loopdev::find(&image)? {
            loopdev::refresh_capacity(&dev)?;
        }
        tracing::info!(volume = %vol.id, size = new_size, "volume image grown");
        Ok(true)
    }

    /// Freezes the volume's staged filesystem, if it is mounted read-write.
    fn freeze_if_mounted(&self, id: &str) -> Result<Option<fstools::Frozen>> {
        let (vol, mut state) = match self.load(id) {
            Ok(loaded) => loaded,
            Err(Error::VolumeNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let live = self.reconcile(&vol, &mut state)?;
        match &state.staged {
            Some(st) if live.staged && st.access_type == AccessType::Mount && !st.read_only => {
                Ok(Some(fstools::freeze(&st.staging_path)?))
            }
            _ => Ok(None),
        }
    }

    // ---- snapshots ----

    /// Takes a snapshot of a volume (frozen while copied when it is mounted).
    /// Idempotent on `name`; SnapshotNameConflict for the same name with another source.
    pub fn create_snapshot(&self, name: &str, source_volume_id: &str) -> Result<Snapshot> {
        id::validate_name(name)?;
        let sid = id::from_name(SNAPSHOT_ID_PREFIX, name);
        let _guard = self.lock_snapshot(&sid)?;
        if let Some(existing) = self.read_snapshot(&sid)? {
            if existing.source_volume_id != source_volume_id || existing.name != name {
                return Err(Error::SnapshotNameConflict {
                    name: name.into(),
                    existing_source: existing.source_volume_id,
                });
            }
            return Ok(existing);
        }
        id::validate(source_volume_id).map_err(|_| Error::VolumeNotFound(id::truncate(source_volume_id)))?;
        let _vol_guard = self.lock_volume(source_volume_id)?;
        let vol = self.volume(source_volume_id)?;
        let frozen = self.freeze_if_mounted(source_volume_id)?;
        let snap = self.copy_to_snapshot(&sid, name, &vol, None);
        drop(frozen);
        snap
    }

    /// Copies a (locked, possibly frozen) volume's image into a new snapshot.
    fn copy_to_snapshot(&self, sid: &str, name: &str, vol: &Volume, group_id: Option<&str>) -> Result<Snapshot> {
        let image = self.snapshot_image_path(sid);
        let tmp = self.root.join("snapshots").join(format!(".{sid}.img.tmp"));
        let _ = fs::remove_file(&tmp);
        {
            let _alloc = self.lock_allocation()?;
            // A sparse copy needs the source's allocated bytes; a reflink less.
            self.ensure_space(allocated(&self.volume_image_path(&vol.id)))?;
            if let Err(e) = copy::copy_image(&self.volume_image_path(&vol.id), &tmp) {
                let _ = fs::remove_file(&tmp);
                return Err(no_space_is_exhausted(e, vol.capacity_bytes));
            }
        }
        failpoint::hit("snapshot.before-rename");
        fs::rename(&tmp, &image).map_err(|e| Error::io("rename", &image, e))?;
        record::sync_dir(&self.root.join("snapshots"))?;
        failpoint::hit("snapshot.before-record");
        let snap = Snapshot {
            version: SNAPSHOT_RECORD_VERSION,
            id: sid.into(),
            name: name.into(),
            source_volume_id: vol.id.clone(),
            size_bytes: vol.capacity_bytes,
            fs_type: vol.fs_type,
            access_type: vol.access_type,
            created_at: now(),
            group_id: group_id.map(str::to_string),
            ready: true,
            block_size: vol.block_size,
        };
        self.write_snapshot(&snap)?;
        tracing::info!(snapshot = %sid, volume = %vol.id, "snapshot created");
        Ok(snap)
    }

    /// Missing is success. A member of a group snapshot is deleted with its group.
    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        if id::validate(id).is_err() {
            return Ok(());
        }
        let _guard = self.lock_snapshot(id)?;
        if let Some(snap) = self.read_snapshot(id)? {
            if let Some(group) = &snap.group_id {
                if self.group_record_path(group).exists() {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot {id} belongs to group snapshot {group}: delete the group"
                    )));
                }
            }
        }
        self.remove_snapshot_files(id)
    }

    fn remove_snapshot_files(&self, id: &str) -> Result<()> {
        record::remove(&self.snapshot_record_path(id))?;
        record::remove(&self.snapshot_image_path(id))
    }

    /// Snapshots every volume at one instant: all mounted members are frozen
    /// together, copied, then thawed. Idempotent on `name`.
    pub fn create_group_snapshot(&self, name: &str, volume_ids: &[String]) -> Result<GroupSnapshot> {
        id::validate_name(name)?;
        if volume_ids.is_empty() {
            return Err(Error::InvalidArgument("a group snapshot needs at least one volume".into()));
        }
        let mut members: Vec<String> = volume_ids.to_vec();
        members.sort();
        members.dedup();
        let gid = id::from_name(GROUP_ID_PREFIX, name);
        let _guard = self.lock_group(&gid)?;
        if let Some(existing) = self.read_group(&gid)? {
            let mut have = existing.source_volume_ids.clone();
            have.sort();
            if have != members {
                return Err(Error::SnapshotNameConflict { name: name.into(), existing_source: have.join(",") });
            }
            return Ok(existing);
        }
        // Locks in sorted order, so two overlapping groups cannot deadlock.
        let mut guards = Vec::with_capacity(members.len());
        let mut vols = Vec::with_capacity(members.len());
        for vid in &members {
            id::validate(vid).map_err(|_| Error::VolumeNotFound(id::truncate(vid)))?;
            guards.push(self.lock_volume(vid)?);
            vols.push(self.volume(vid)?);
        }
        // Freeze all first, copy all, then thaw: one instant for the group.
        let mut frozen = Vec::new();
        for vol in &vols {
            frozen.push(self.freeze_if_mounted(&vol.id)?);
        }
        let mut snaps = Vec::with_capacity(vols.len());
        let mut result = Ok(());
        for vol in &vols {
            let sid = id::from_name(SNAPSHOT_ID_PREFIX, &format!("{name}/{}", vol.id));
            let _snap_guard = self.lock_snapshot(&sid)?;
            match self.copy_to_snapshot(&sid, &format!("{name}/{}", vol.id), vol, Some(&gid)) {
                Ok(s) => snaps.push(s),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(frozen);
        if let Err(e) = result {
            for s in &snaps {
                let _ = self.remove_snapshot_files(&s.id);
            }
            return Err(e);
        }
        let group = GroupSnapshot {
            version: SNAPSHOT_RECORD_VERSION,
            id: gid.clone(),
            name: name.into(),
            snapshot_ids: snaps.iter().map(|s| s.id.clone()).collect(),
            source_volume_ids: members,
            created_at: now(),
            ready: true,
        };
        self.write_group(&group)?;
        Ok(group)
    }

    /// Deletes the group and its member snapshots; missing is success.
    pub fn delete_group_snapshot(&self, id: &str) -> Result<()> {
        if id::validate(id).is_err() {
            return Ok(());
        }
        let _guard = self.lock_group(id)?;
        let Some(group) = self.read_group(id)? else { return Ok(()) };
        // The group record goes last: a crash midway leaves a group whose
        // delete can simply be repeated.
        for sid in &group.snapshot_ids {
            let _snap_guard = self.lock_snapshot(sid)?;
            self.remove_snapshot_files(sid)?;
        }
        record::remove(&self.group_record_path(id))
    }

    // ---- FlexVolume attach mode ----

    /// FlexVolume attach mode: records that `node` holds the volume.
    /// AttachedElsewhere when another node holds it; repeating is success.
    pub fn attach_to_node(&self, id: &str, node: &str) -> Result<()> {
        if node.is_empty() {
            return Err(Error::InvalidArgument("empty node name".into()));
        }
        let _guard = self.lock_volume(id)?;
        let mut vol = self.volume(id)?;
        match &vol.attached_node {
            Some(holder) if holder == node => Ok(()),
            Some(holder) => Err(Error::AttachedElsewhere { id: id.into(), node: holder.clone() }),
            None => {
                vol.attached_node = Some(node.to_string());
                self.write_volume(&vol)
            }
        }
    }

    /// Drops the attachment if `node` holds it; anything else is success.
    pub fn detach_from_node(&self, id: &str, node: &str) -> Result<()> {
        if id::validate(id).is_err() {
            return Ok(());
        }
        let _guard = self.lock_volume(id)?;
        let Some(mut vol) = self.read_volume(id)? else { return Ok(()) };
        if vol.attached_node.as_deref() == Some(node) {
            vol.attached_node = None;
            self.write_volume(&vol)?;
        }
        Ok(())
    }
}

/// The ID a create request names, validated.
fn volume_id_of(req: &CreateVolume) -> Result<String> {
    id::validate_name(&req.name)?;
    let id = match &req.id {
        Some(id) => id.clone(),
        None => id::from_name(VOLUME_ID_PREFIX, &req.name),
    };
    id::validate(&id)?;
    Ok(id)
}

/// Is an existing volume what `req` asks for? (CSI CreateVolume idempotency.)
fn check_compatible(existing: &Volume, req: &CreateVolume, default_fs: FsType) -> Result<()> {
    let conflict = |reason: String| Err(Error::VolumeNameConflict { name: req.name.clone(), reason });
    if existing.name != req.name {
        return conflict(format!("id {} belongs to volume {:?}", existing.id, existing.name));
    }
    let CapacityRange { required, limit } = req.capacity;
    if existing.capacity_bytes < required || (limit != 0 && existing.capacity_bytes > limit) {
        return conflict(format!("it has {} bytes", existing.capacity_bytes));
    }
    if existing.access_type != req.access_type {
        return conflict(format!("it is a {} volume", existing.access_type.as_str()));
    }
    if req.access_type == AccessType::Mount
        && req.source.is_none()
        && req.fs_type.unwrap_or(default_fs) != existing.fs_type
    {
        return conflict(format!("it has a {} filesystem", existing.fs_type));
    }
    if existing.thick != req.thick {
        return conflict(format!("thick is {}", existing.thick));
    }
    if existing.source != req.source {
        return conflict("it has another content source".into());
    }
    if existing.lifecycle != req.lifecycle {
        return conflict(format!("it is a {:?} volume", existing.lifecycle).to_lowercase());
    }
    Ok(())
}

fn check_max(size: u64) -> Result<()> {
    // Files and loop devices are limited to i64 bytes.
    if size > i64::MAX as u64 / 2 {
        return Err(Error::SizeOutOfRange { requested: size, reason: "larger than a file can be".into() });
    }
    Ok(())
}

/// Picks the image size for a capacity range: the required size rounded up
/// to whole MiB (exact when the limit leaves no room), at least what the
/// filesystem and the content source need.
fn choose_size(range: CapacityRange, default: u64, source: u64, fs: FsType, access: AccessType) -> Result<u64> {
    let CapacityRange { required, limit } = range;
    if limit != 0 && required > limit {
        return Err(Error::SizeOutOfRange { requested: required, reason: format!("the limit {limit} is below it") });
    }
    let floor = match access {
        AccessType::Mount => fs.min_size(),
        AccessType::Block => SIZE_ALIGN,
    }
    .max(source);
    let wanted = match (required, limit) {
        (0, 0) if source > 0 => floor,
        (0, 0) => default.max(floor),
        (0, l) => default.min(l).max(floor),
        (r, _) => r.max(floor),
    };
    check_max(wanted)?;
    let rounded = wanted.div_ceil(SIZE_ALIGN) * SIZE_ALIGN;
    let size = if limit == 0 || rounded <= limit { rounded } else { wanted.div_ceil(512) * 512 };
    if limit != 0 && size > limit {
        let reason = if source > limit { "the content source is larger" } else { "the filesystem needs more" };
        return Err(Error::SizeOutOfRange { requested: size, reason: format!("{reason} than the limit {limit}") });
    }
    Ok(size)
}

/// The kernel running out of space while an image is built or copied is the
/// pool being exhausted (RESOURCE_EXHAUSTED), not an internal error: the
/// accounting cannot see other users of the pool's filesystem.
pub(crate) fn no_space_is_exhausted(e: Error, requested: u64) -> Error {
    if e.is_no_space() {
        Error::Exhausted { requested, available: 0 }
    } else {
        e
    }
}

/// Bytes really allocated to a file (sparse images allocate on write).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// A new image: sparse, or preallocated when thick. ENOSPC is Exhausted.
fn create_image(path: &Path, size: u64, thick: bool) -> Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create image", path, e))?;
    drop(file);
    grow_file(path, size, thick)
}

/// Extends an image to `size` (never shrinks), preallocating when thick.
fn grow_file(path: &Path, size: u64, thick: bool) -> Result<()> {
    let file = fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io("open image", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("stat image", path, e))?.len();
    if size > len {
        let size_i64 =
            i64::try_from(size).map_err(|_| Error::SizeOutOfRange { requested: size, reason: "too large".into() })?;
        if thick {
            fallocate(file.as_fd(), FallocateFlags::empty(), 0, size_i64).map_err(|errno| match errno {
                Errno::ENOSPC => Error::Exhausted { requested: size, available: 0 },
                e => Error::sys("fallocate", path, e),
            })?;
        } else {
            file.set_len(size).map_err(|e| Error::io("truncate image", path, e))?;
        }
    }
    file.sync_all().map_err(|e| Error::io("fsync image", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn range(required: u64, limit: u64) -> CapacityRange {
        CapacityRange { required, limit }
    }

    #[test]
    fn sizes_follow_the_capacity_range() {
        let m = AccessType::Mount;
        assert_eq!(choose_size(range(0, 0), GIB, 0, FsType::Ext4, m).unwrap(), GIB);
        assert_eq!(choose_size(range(10 * GIB, 10 * GIB), GIB, 0, FsType::Ext4, m).unwrap(), 10 * GIB);
        assert_eq!(choose_size(range(MIB + 1, 0), GIB, 0, FsType::Ext4, m).unwrap(), 2 * MIB);
        // Exact when the limit leaves no room for rounding to MiB.
        assert_eq!(choose_size(range(MIB + 512, MIB + 512), GIB, 0, FsType::Ext4, m).unwrap(), MIB + 512);
        assert_eq!(choose_size(range(0, 512 * MIB), GIB, 0, FsType::Ext4, m).unwrap(), 512 * MIB);
        // xfs needs 300 MiB.
        assert_eq!(choose_size(range(MIB, 0), GIB, 0, FsType::Xfs, m).unwrap(), 300 * MIB);
        assert!(matches!(
            choose_size(range(MIB, 100 * MIB), GIB, 0, FsType::Xfs, m),
            Err(Error::SizeOutOfRange { .. })
        ));
        // A restore is at least as large as its source.
        assert_eq!(choose_size(range(0, 0), MIB, 2 * GIB, FsType::Ext4, m).unwrap(), 2 * GIB);
        assert!(matches!(
            choose_size(range(GIB, GIB), GIB, 2 * GIB, FsType::Ext4, m),
            Err(Error::SizeOutOfRange { .. })
        ));
        assert!(matches!(choose_size(range(2 * GIB, GIB), GIB, 0, FsType::Ext4, m), Err(Error::SizeOutOfRange { .. })));
        assert!(matches!(choose_size(range(u64::MAX, 0), GIB, 0, FsType::Ext4, m), Err(Error::SizeOutOfRange { .. })));
    }

    #[test]
    fn enospc_while_building_an_image_is_exhausted() {
        let sys = Error::Sys { op: "copy_file_range", path: "/p".into(), errno: Errno::ENOSPC };
        assert!(matches!(no_space_is_exhausted(sys, 7), Error::Exhausted { requested: 7, .. }));
        let io = Error::Io { op: "fsync", path: "/p".into(), source: std::io::Error::from_raw_os_error(libc::EDQUOT) };
        assert!(matches!(no_space_is_exhausted(io, 7), Error::Exhausted { .. }));
        let other = Error::Sys { op: "lseek", path: "/p".into(), errno: Errno::EIO };
        assert!(matches!(no_space_is_exhausted(other, 7), Error::Sys { .. }));
    }
}
