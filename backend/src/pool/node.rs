//! Node-side operations: stage, publish, unpublish, unstage, stats, expand.
//! Every one is idempotent and takes the volume's lock; the kernel's mount
//! table is the truth, the records only remember what was asked for.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::state::{NodeState, PublishRecord, StageRecord};
use super::{Pool, Volume};
use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::kernel::fstools;
use crate::kernel::loopdev::{self, AttachOptions};
use crate::kernel::mount;
use crate::kernel::mount_options::MountOptions;
use crate::kernel::mountinfo;
use crate::types::{AccessType, Condition, Usage};

#[derive(Debug, Clone)]
pub struct StageRequest {
    pub staging_path: PathBuf,
    pub access_type: AccessType,
    /// None: the volume's own fs type.
    pub fs_type: Option<FsType>,
    pub read_only: bool,
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub access_type: AccessType,
    /// None: whatever the volume holds; else it must match.
    pub fs_type: Option<FsType>,
    pub read_only: bool,
    pub mount_options: Vec<String>,
    /// Single-writer access modes: refuse a second live target (VolumeInUse).
    pub exclusive: bool,
    /// The pod the target is for (its cgroup gets the volume's I/O limits).
    pub pod_uid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    /// None for block volumes.
    pub usage: Option<Usage>,
    /// Size of the block device (block volumes) or filesystem total.
    pub total_bytes: u64,
    pub condition: Condition,
}

impl Pool {
    /// Attaches the image to a loop device, formats it when blank (never for a
    /// read-only request, never over anything blkid finds), checks it, grows it
    /// when the image outgrew it, and mounts it at the staging path. Block
    /// volumes are only attached. Repeating with the same arguments is success;
    /// different arguments at the same path are IncompatibleAtPath; another
    /// staging path while staged is StagedElsewhere.
    pub fn stage(&self, id: &str, req: &StageRequest) -> Result<StageRecord> {
        let staging = clean_path(&req.staging_path)?;
        let _guard = self.lock_volume(id)?;
        let (mut vol, mut state) = self.load(id)?;
        self.stage_locked(&mut vol, &mut state, &staging, req)
    }

    /// [`Pool::stage`] with the volume locked and loaded; `staging` is clean.
    pub(crate) fn stage_locked(
        &self,
        vol: &mut Volume,
        state: &mut NodeState,
        staging: &Path,
        req: &StageRequest,
    ) -> Result<StageRecord> {
        let id = vol.id.clone();
        check_access(vol, req.access_type)?;
        check_fs(vol, req.access_type, req.fs_type)?;
        let fs_type = vol.fs_type;
        let catalog_before = (vol.formatted, vol.fs_grow_pending);
        let opts = match req.access_type {
            AccessType::Mount => MountOptions::parse(&req.mount_options, Some(fs_type))?,
            AccessType::Block => MountOptions::default(),
        };
        if vol.thick && opts.given.iter().any(|o| o == "discard") {
            return Err(Error::MountOptionNotAllowed {
                option: "discard".into(),
                reason: "a thick volume keeps its preallocation, and discards would punch holes into it",
            });
        }
        let live = self.reconcile(vol, state)?;
        if let Some(st) = &state.staged {
            if st.staging_path != staging {
                return Err(Error::StagedElsewhere { id, existing: st.staging_path.clone() });
            }
            if st.read_only == req.read_only && st.mount_options == opts.given {
                return Ok(st.clone());
            }
            return Err(Error::IncompatibleAtPath { id, what: "staged", path: staging.into() });
        }
        if live.mount_points.iter().any(|p| p == staging) {
            // Ours but unrecorded (records lost): adopt it when it matches.
            let mounts = mountinfo::read()?;
            let ro = mountinfo::at(&mounts, staging).last().is_some_and(|e| e.read_only());
            if ro != req.read_only {
                return Err(Error::IncompatibleAtPath { id, what: "staged", path: staging.into() });
            }
        } else if !mountinfo::at(&mountinfo::read()?, staging).is_empty() {
            return Err(Error::InvalidPath { path: staging.into(), reason: "another filesystem is mounted there" });
        }

        let image = self.volume_image_path(&id);
        let direct_io;
        let device = match req.access_type {
            AccessType::Mount => {
                let grew = if live.mount_points.iter().any(|p| p == staging) {
                    direct_io = live.device.as_ref().is_some_and(loopdev::uses_direct_io);
                    false
                } else {
                    let (grew, dio) = self.mount_staging(vol, &image, staging, &opts, req.read_only)?;
                    direct_io = dio;
                    grew
                };
                vol.fs_grow_pending &= !grew;
                live.device.map(|d| d.path).or(loopdev::find(&image)?.map(|d| d.path)).unwrap_or_default()
            }
            AccessType::Block => {
                // No mount holds a block volume's device, so it must not
                // autoclear; unstage detaches it explicitly.
                let attached = loopdev::attach(&image, attach_options(vol, false, req.read_only))?;
                report_buffered(vol, &attached);
                direct_io = attached.direct_io;
                attached.device.path
            }
        };
        crate::failpoint::hit("stage.before-record");
        let st = StageRecord {
            staging_path: staging.into(),
            access_type: req.access_type,
            fs_type,
            read_only: req.read_only,
            mount_options: opts.given.clone(),
            device,
            direct_io,
        };
        vol.formatted |= req.access_type == AccessType::Mount;
        // The record itself changes only at the first stage (formatted) or
        // when a pending growth was done; the rest is node state.
        let mut written = Ok(());
        if (vol.formatted, vol.fs_grow_pending) != catalog_before {
            written = self.write_volume(vol);
        }
        state.staged = Some(st.clone());
        written = written.and_then(|()| self.write_node_state(&id, state));
        if let Err(e) = written {
            self.release(vol, staging);
            state.staged = None;
            return Err(e);
        }
        tracing::info!(volume = %id, staging = %staging.display(), device = %st.device.display(), "volume staged");
        Ok(st)
    }

    /// Attaches, formats or checks, mounts at `staging`, and grows the
    /// filesystem when pending. Undoes its own steps on failure. Returns
    /// whether a pending growth was done, and whether the device does direct I/O.
    fn mount_staging(
        &self,
        vol: &Volume,
        image: &Path,
        staging: &Path,
        opts: &MountOptions,
        ro: bool,
    ) -> Result<(bool, bool)> {
        let fs_type = vol.fs_type;
        prepare_dir(staging)?;
        // Autoclear: once our fd is closed, the mount is the only holder, and
        // unmounting frees the device; a crash cannot leak it.
        let attached = loopdev::attach(image, attach_options(vol, true, ro))?;
        report_buffered(vol, &attached);
        let dev = attached.device.path.clone();
        crate::failpoint::hit("stage.after-attach");
        let mut grew = false;
        match fstools::probe(&dev)? {
            None if ro => {
                return Err(Error::RefuseFormat {
                    id: vol.id.clone(),
                    device: dev,
                    reason: "it is blank and the request is read-only".into(),
                })
            }
            // Formatted before, blank now: the superblock was damaged.
            // mount-utils would format here; we know better than to destroy
            // the data (found by backend/tests/faults.rs).
            None if vol.formatted => {
                return Err(Error::RefuseFormat {
                    id: vol.id.clone(),
                    device: dev,
                    reason: "blkid finds no filesystem on a volume that held one: the image looks corrupted \
                             (repair it offline, e.g. e2fsck -b <backup superblock>)"
                        .into(),
                })
            }
            None => {
                fstools::format(&dev, fs_type, vol.thick)?;
                grew = true;
            }
            Some(found) if found == fs_type.as_str() => {
                if !ro {
                    fstools::check(&dev, fs_type)?;
                    if vol.fs_grow_pending && fstools::grows_offline(fs_type) {
                        fstools::grow_offline(&dev, fs_type)?;
                        grew = true;
                    }
                }
            }
            Some(found) => {
                return Err(Error::RefuseFormat {
                    id: vol.id.clone(),
                    device: dev,
                    reason: format!("it holds {found}, not {fs_type}"),
                })
            }
        }
        mount::mount_fs(&dev, staging, fs_type, opts, ro)?;
        if vol.fs_grow_pending && !ro && !fstools::grows_offline(fs_type) {
            if let Err(e) = fstools::grow_online(&dev, staging, fs_type) {
                let _ = mount::unmount(staging);
                return Err(e);
            }
            grew = true;
        }
        let direct_io = attached.direct_io;
        drop(attached);
        Ok((grew, direct_io))
    }

    /// Best-effort undo of a stage whose record could not be written.
    fn release(&self, vol: &Volume, staging: &Path) {
        if vol.access_type == AccessType::Mount {
            let _ = mount::unmount(staging);
        }
        if let Ok(Some(dev)) = loopdev::find(&self.volume_image_path(&vol.id)) {
            let _ = loopdev::detach(&dev);
        }
    }

    /// Unmounts the staging path (the autoclear loop device then goes away) or,
    /// for block volumes, detaches the device. Not staged is success;
    /// VolumeInUse while a target is still published. `remove_dir` also removes
    /// the staging directory (FlexVolume owns its staging dirs; CSI's belong to kubelet).
    pub fn unstage(&self, id: &str, staging_path: &Path, remove_dir: bool) -> Result<()> {
        let staging = clean_path(staging_path)?;
        let _guard = self.lock_volume(id)?;
        let (vol, mut state) = self.load(id)?;
        self.unstage_locked(&vol, &mut state, &staging, remove_dir)
    }

    /// [`Pool::unstage`] with the volume locked and loaded; `staging` is clean.
    pub(crate) fn unstage_locked(
        &self,
        vol: &Volume,
        state: &mut NodeState,
        staging: &Path,
        remove_dir: bool,
    ) -> Result<()> {
        let live = self.reconcile(vol, state)?;
        let recorded = state.staged.as_ref().map(|st| st.staging_path.clone());
        if recorded.as_ref().is_some_and(|p| p != staging) {
            // Staged somewhere else: nothing is staged at this path.
            return Ok(());
        }
        let busy = live.others(&[staging]);
        if !busy.is_empty() {
            return Err(Error::VolumeInUse { id: vol.id.clone(), reason: format!("still published at {busy:?}") });
        }
        if live.mount_points.iter().any(|p| p == staging) {
            mount::unmount(staging)?;
        }
        if let Some(dev) = &live.device {
            // Autoclear devices are already going; block and attach-mode
            // devices are released here. Nothing else uses it (checked above).
            loopdev::detach(dev)?;
        }
        if state.staged.take().is_some() {
            self.write_shrunk_node_state(&vol.id, state)?;
        }
        if remove_dir {
            match fs::remove_dir(staging) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove staging directory", staging, e)),
            }
        }
        tracing::info!(volume = %vol.id, staging = %staging.display(), "volume unstaged");
        Ok(())
    }

    /// Bind-mounts the staged filesystem (or the loop device, for block) onto
    /// the target, creating the target (directory or file). NotStaged when the
    /// staging mount is missing.
    pub fn publish(&self, id: &str, req: &PublishRequest) -> Result<()> {
        let staging = clean_path(&req.staging_path)?;
        let target = clean_path(&req.target_path)?;
        let _guard = self.lock_volume(id)?;
        let (vol, mut state) = self.load(id)?;
        self.publish_locked(&vol, &mut state, &staging, &target, req)
    }

    /// [`Pool::publish`] with the volume locked and loaded; the paths are clean.
    pub(crate) fn publish_locked(
        &self,
        vol: &Volume,
        state: &mut NodeState,
        staging: &Path,
        target: &Path,
        req: &PublishRequest,
    ) -> Result<()> {
        let id = vol.id.clone();
        if target == staging {
            return Err(Error::InvalidArgument("target path and staging path are the same".into()));
        }
        check_access(vol, req.access_type)?;
        check_fs(vol, req.access_type, req.fs_type)?;
        let opts = match req.access_type {
            AccessType::Mount => MountOptions::parse(&req.mount_options, Some(vol.fs_type))?,
            AccessType::Block => MountOptions::parse(&req.mount_options, None)?,
        };
        let live = self.reconcile(vol, state)?;
        let (Some(st), Some(device)) = (&state.staged, &live.device) else {
            return Err(Error::NotStaged { id });
        };
        if st.staging_path != staging {
            return Err(Error::NotStaged { id });
        }
        let wanted = PublishRecord {
            access_type: req.access_type,
            exclusive: req.exclusive,
            read_only: req.read_only,
            mount_options: opts.given.clone(),
            pod_uid: req.pod_uid.clone(),
            io_limits_problem: None,
        };
        if live.mount_points.iter().any(|p| p == target) {
            return match state.published.get(target) {
                Some(existing) if existing.same_request(&wanted) => {
                    // Every publish applies the limits again (a pod's cgroup
                    // may have come late, or the limits changed meanwhile).
                    if self.enforce_io_limits(vol, state, device, Some(target))? {
                        self.write_node_state(&id, state)?;
                    }
                    Ok(())
                }
                Some(_) => Err(Error::IncompatibleAtPath { id, what: "published", path: target.into() }),
                None => {
                    // Ours but unrecorded (records lost): adopt it when the
                    // kernel's read-only flag matches the request.
                    let mounts = mountinfo::read()?;
                    let ro = mountinfo::at(&mounts, target).last().is_some_and(|e| e.read_only());
                    if ro != req.read_only {
                        return Err(Error::IncompatibleAtPath { id, what: "published", path: target.into() });
                    }
                    state.published.insert(target.into(), wanted);
                    self.write_node_state(&id, state)
                }
            };
        }
        let others = live.others(&[staging]);
        if !others.is_empty() && (req.exclusive || state.published.values().any(|p| p.exclusive)) {
            return Err(Error::VolumeInUse {
                id,
                reason: format!("a single-writer volume is already published at {others:?}"),
            });
        }
        let (source, created) = match req.access_type {
            AccessType::Mount => (staging.to_path_buf(), prepare_dir(target)?),
            AccessType::Block => (device.path.clone(), prepare_file(target)?),
        };
        if let Err(e) = mount::bind(&source, target, req.read_only, &opts) {
            if created {
                let _ = fs::remove_dir(target).or_else(|_| fs::remove_file(target));
            }
            return Err(e);
        }
        crate::failpoint::hit("publish.before-record");
        state.published.insert(target.into(), wanted);
        if let Err(e) = self.enforce_io_limits(vol, state, device, Some(target)) {
            tracing::warn!(volume = %id, error = %e, "I/O limits not applied");
        }
        if let Err(e) = self.write_node_state(&id, state) {
            let _ = mount::cleanup(target);
            state.published.remove(target);
            return Err(e);
        }
        tracing::info!(volume = %id, target = %target.display(), read_only = req.read_only, "volume published");
        Ok(())
    }

    /// Unmounts and removes the target; a missing target is success. An
    /// ephemeral volume whose last target this was is unstaged and deleted
    /// with it (see `lifecycle`).
    pub fn unpublish(&self, id: &str, target_path: &Path) -> Result<()> {
        let target = clean_path(target_path)?;
        let _guard = self.lock_volume(id)?;
        let (vol, mut state) = self.load(id)?;
        self.unpublish_locked(&vol, &mut state, &target)?;
        if vol.lifecycle == super::Lifecycle::Ephemeral {
            let staging = self.internal_staging_path(id)?;
            self.release_unused_locked(&vol, &mut state, &staging)?;
            self.forget_target(&target);
        }
        Ok(())
    }

    /// [`Pool::unpublish`] of one target, with the volume locked and loaded.
    pub(crate) fn unpublish_locked(&self, vol: &Volume, state: &mut NodeState, target: &Path) -> Result<()> {
        mount::cleanup(target)?;
        if state.published.remove(target).is_some() {
            self.write_shrunk_node_state(&vol.id, state)?;
        }
        tracing::info!(volume = %vol.id, target = %target.display(), "volume unpublished");
        Ok(())
    }

    /// Usage and condition of the volume at `path` (its staging path or a
    /// published target). NotAtPath when the volume is not mounted there.
    /// Takes no lock: stats must not queue behind a long operation.
    pub fn stats(&self, id: &str, path: &Path) -> Result<VolumeStats> {
        let path = clean_path(path)?;
        let (vol, state) = self.load(id)?;
        let live = self.live_now(&vol, &state)?;
        if !live.mount_points.contains(&path) {
            return Err(Error::NotAtPath { id: id.into(), path });
        }
        let mut condition = self.pool_condition()?.unwrap_or_else(|| self.condition_of(&vol, &state, &live));
        match (vol.access_type, &live.device) {
            (AccessType::Mount, _) => match fstools::usage(&path) {
                Ok(usage) => Ok(VolumeStats { usage: Some(usage), total_bytes: usage.bytes_total, condition }),
                Err(e) => {
                    condition = Condition::abnormal(format!("cannot read filesystem usage: {e}"));
                    Ok(VolumeStats { usage: None, total_bytes: 0, condition })
                }
            },
            (AccessType::Block, Some(dev)) => {
                Ok(VolumeStats { usage: None, total_bytes: loopdev::size_bytes(&dev.path)?, condition })
            }
            (AccessType::Block, None) => Err(Error::NotAtPath { id: id.into(), path }),
        }
    }

    /// Grows the image to at least `new_size` if needed, refreshes the loop
    /// device and grows the staged filesystem. Returns the new capacity.
    /// When the kernel refuses to grow a mounted filesystem (ext4 here) and no
    /// target is published, the staging mount is briefly taken down and the
    /// filesystem grown offline; with live targets that is impossible and the
    /// result is OnlineGrowRefused (the growth then happens at the next stage).
    pub fn node_expand(&self, id: &str, new_size: u64) -> Result<u64> {
        let _guard = self.lock_volume(id)?;
        let (mut vol, mut state) = self.load(id)?;
        self.grow_image_locked(&mut vol, new_size)?;
        crate::failpoint::hit("expand.after-image");
        let live = self.reconcile(&vol, &mut state)?;
        let (Some(st), Some(dev)) = (state.staged.clone(), &live.device) else {
            return Ok(vol.capacity_bytes);
        };
        loopdev::refresh_capacity(dev)?;
        if st.access_type == AccessType::Block || !vol.fs_grow_pending || st.read_only {
            return Ok(vol.capacity_bytes);
        }
        match fstools::grow_online(&dev.path, &st.staging_path, vol.fs_type) {
            Ok(()) => {}
            Err(Error::OnlineGrowRefused { .. }) if live.others(&[st.staging_path.as_path()]).is_empty() => {
                self.grow_by_remount(&vol, &st)?;
            }
            Err(e) => return Err(e),
        }
        vol.fs_grow_pending = false;
        self.write_volume(&vol)?;
        tracing::info!(volume = %id, size = vol.capacity_bytes, "filesystem grown");
        Ok(vol.capacity_bytes)
    }

    /// Unmounts the staging path, grows the filesystem offline and mounts it
    /// again, holding the loop device open so autoclear cannot free it.
    fn grow_by_remount(&self, vol: &Volume, st: &StageRecord) -> Result<()> {
        let image = self.volume_image_path(&vol.id);
        let held = loopdev::attach(&image, attach_options(vol, true, false))?;
        let opts = MountOptions::parse(&st.mount_options, Some(vol.fs_type))?;
        mount::unmount(&st.staging_path)?;
        crate::failpoint::hit("expand.unmounted");
        let grown = fstools::grow_offline(&held.device.path, vol.fs_type);
        mount::mount_fs(&held.device.path, &st.staging_path, vol.fs_type, &opts, false)?;
        grown
    }

    /// Attaches the loop device without mounting (FlexVolume waitforattach);
    /// returns the device path. Reuses an existing device.
    pub fn attach_device(&self, id: &str) -> Result<PathBuf> {
        let _guard = self.lock_volume(id)?;
        let vol = self.volume(id)?;
        let attached = loopdev::attach(&self.volume_image_path(&vol.id), attach_options(&vol, false, false))?;
        Ok(attached.device.path)
    }
}

/// How a volume's device is attached: its direct-I/O choice and its block size.
fn attach_options(vol: &Volume, autoclear: bool, read_only: bool) -> AttachOptions {
    AttachOptions { autoclear, read_only, direct_io: vol.direct_io, block_size: vol.device_block_size() }
}

/// A volume that asked for direct I/O and got a buffered device (the pool's
/// filesystem refuses O_DIRECT at its block size) still works; say so.
fn report_buffered(vol: &Volume, attached: &loopdev::Attached) {
    if vol.direct_io && !attached.direct_io && attached.created {
        tracing::warn!(
            volume = %vol.id,
            device = %attached.device.path.display(),
            "the pool's filesystem refuses direct I/O at this volume's block size; the device is buffered"
        );
    }
}

fn check_access(vol: &Volume, wanted: AccessType) -> Result<()> {
    if vol.access_type != wanted {
        return Err(Error::WrongAccessType {
            id: vol.id.clone(),
            actual: vol.access_type.as_str(),
            wanted: wanted.as_str(),
        });
    }
    Ok(())
}

/// A mount request naming a filesystem must name the volume's.
fn check_fs(vol: &Volume, access: AccessType, wanted: Option<FsType>) -> Result<()> {
    match wanted {
        Some(want) if access == AccessType::Mount && want != vol.fs_type => {
            Err(Error::InvalidArgument(format!("volume {} has a {} filesystem, not {want}", vol.id, vol.fs_type)))
        }
        _ => Ok(()),
    }
}

/// Requires an absolute path without `..` and returns it in the normal form
/// that /proc/self/mountinfo uses (no `.`, no doubled or trailing slashes).
pub fn clean_path(path: &Path) -> Result<PathBuf> {
    // The error quotes a bounded prefix of a hostile path.
    let quoted = || PathBuf::from(crate::id::truncate(&path.to_string_lossy()));
    let bad = |reason| Err(Error::InvalidPath { path: quoted(), reason });
    if !path.is_absolute() {
        return bad("not an absolute path");
    }
    if path.as_os_str().len() > 4096 {
        return bad("longer than PATH_MAX");
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => return bad("'..' is not allowed"),
            Component::Prefix(_) => return bad("not a unix path"),
        }
    }
    if out.as_os_str().as_encoded_bytes().contains(&0) {
        return bad("contains a NUL byte");
    }
    Ok(out)
}

/// Makes sure a directory exists at `path` (mount targets); a symlink or a
/// file there is refused (a symlink could point the mount anywhere). Returns
/// whether it was created.
fn prepare_dir(path: &Path) -> Result<bool> {
    check_no_symlink_on_the_way(path)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(m) => Err(Error::TargetKind { path: path.into(), actual: kind(&m), wanted: "directory" }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(path)
                .map_err(|e| Error::io("create directory", path, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Makes sure a regular file exists at `path` (block targets).
fn prepare_file(path: &Path) -> Result<bool> {
    check_no_symlink_on_the_way(path)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(false),
        Ok(m) => Err(Error::TargetKind { path: path.into(), actual: kind(&m), wanted: "file" }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(parent)
                    .map_err(|e| Error::io("create directory", parent, e))?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io("create block target", path, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Refuses a (clean) path whose directories on the way include a symlink.
/// mount(2) follows them, so the mount would land where neither mountinfo
/// nor the records know it by this name: a repeated publish then mounts
/// twice, unstage sees a stranger, and the mount may sit outside the
/// kubelet directory (found by tests/tests/security.rs). The nearest
/// existing ancestor of a clean path resolves to itself unless a symlink is
/// on the way. The path's own kind is checked by the callers.
fn check_no_symlink_on_the_way(path: &Path) -> Result<()> {
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor {
        match fs::symlink_metadata(dir) {
            Ok(_) => {
                let real = fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
                if real != dir {
                    return Err(Error::InvalidPath {
                        path: path.into(),
                        reason: "a directory on the way is a symlink",
                    });
                }
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ancestor = dir.parent(),
            Err(e) => return Err(Error::io("stat", dir, e)),
        }
    }
    Ok(())
}

fn kind(m: &fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_checked() {
        assert_eq!(clean_path(Path::new("/a//b/./c/")).unwrap(), PathBuf::from("/a/b/c"));
        for bad in ["relative/x", "/a/../etc", "", "../x"] {
            assert!(clean_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_of_the_wrong_kind_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(matches!(prepare_dir(&file), Err(Error::TargetKind { actual: "file", .. })));
        assert!(matches!(prepare_file(dir.path()), Err(Error::TargetKind { actual: "directory", .. })));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(matches!(prepare_dir(&link), Err(Error::TargetKind { actual: "symlink", .. })));
        assert!(prepare_dir(&dir.path().join("new/sub")).unwrap());
        assert!(!prepare_dir(&dir.path().join("new/sub")).unwrap());
        assert!(prepare_file(&dir.path().join("blk/dev")).unwrap());
        assert!(!prepare_file(&dir.path().join("blk/dev")).unwrap());
        // A symlink on the way is refused before anything is created.
        let root = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(root.join("new"), root.join("hop")).unwrap();
        for target in [root.join("hop/x"), root.join("hop/sub/deeper")] {
            assert!(matches!(prepare_dir(&target), Err(Error::InvalidPath { .. })), "{target:?}");
            assert!(matches!(prepare_file(&target), Err(Error::InvalidPath { .. })), "{target:?}");
        }
        assert!(!root.join("new/x").exists() && !root.join("new/sub/deeper").exists());
    }
}
