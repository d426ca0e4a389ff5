//! Whole lifecycles as single operations, each under the volume's one lock:
//! "mount a volume privately at this target, creating it if asked" and
//! "release it". FlexVolume's `mount`/`unmount` (attach: false) and CSI
//! ephemeral inline volumes are both this shape: the front end has no
//! staging step of its own, so the pool stages the volume in a directory it
//! is given (or its own), publishes it, and undoes what it did when a step
//! fails. Releasing unpublishes the target, unstages the volume once no
//! target uses it, and deletes it when its lifecycle is ephemeral.
//!
//! Crash safety: the target → volume hint is written before anything is
//! staged, so a process killed between staging and publishing leaves a
//! target whose release still finds the volume (the kernel has no mount at
//! the target to name it by), and releases its staging and loop device.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::controller::CreateVolume;
use super::node::{clean_path, PublishRequest, StageRequest};
use super::state::NodeState;
use super::{Lifecycle, Pool, Volume};
use crate::error::{Error, Result};
use crate::filesystem::FsType;
use crate::id;
use crate::kernel::{mount, record};
use crate::types::AccessType;

/// A mount private to one target (see the module docs).
#[derive(Debug, Clone)]
pub struct PrivateMount {
    /// The volume, created from this when missing and `create` is set. Its
    /// `id` must be set.
    pub volume: CreateVolume,
    pub create: bool,
    /// The volume is staged at `<staging_root>/<id>`; None: the pool's own
    /// staging directory.
    pub staging_root: Option<PathBuf>,
    pub target_path: PathBuf,
    /// When set, the volume must hold this filesystem.
    pub fs_type: Option<FsType>,
    /// The target is read-only; the staging mount, shared by every target,
    /// is always read-write.
    pub read_only: bool,
    /// Mount options of the staging mount (the filesystem's own).
    pub stage_mount_options: Vec<String>,
    /// Mount options of the bind mount at the target.
    pub publish_mount_options: Vec<String>,
    /// Single-writer access: refuse a second live target.
    pub exclusive: bool,
    /// The pod the target is for (its cgroup gets the volume's I/O limits).
    pub pod_uid: Option<String>,
}

/// Which volume a private mount's target got: the teardown hint.
#[derive(Debug, Serialize, Deserialize)]
struct TargetHint {
    target: PathBuf,
    id: String,
}

impl Pool {
    fn staging_under(&self, root: Option<&Path>, id: &str) -> Result<PathBuf> {
        match root {
            Some(root) => clean_path(&root.join(id)),
            None => self.internal_staging_path(id),
        }
    }

    /// Stages the volume (creating it first when missing and asked to) and
    /// publishes it at the target, under one lock. Repeating is success. A
    /// failure undoes the stage when no other target uses it, and deletes an
    /// ephemeral volume, so a retry starts clean and nothing leaks.
    ///
    /// Errors: VolumeNotFound (missing and `create` unset), the errors of
    /// create, stage and publish.
    pub fn mount_private(&self, req: &PrivateMount) -> Result<Volume> {
        let Some(id) = req.volume.id.clone() else {
            return Err(Error::InvalidArgument("a private mount needs the volume's id".into()));
        };
        id::validate(&id)?;
        let target = clean_path(&req.target_path)?;
        let staging = self.staging_under(req.staging_root.as_deref(), &id)?;
        let _guard = self.lock_volume(&id)?;
        self.remember_target(&target, &id);
        let mut limits_changed = false;
        let mut vol = match self.read_volume(&id)? {
            // The mount's own options (a FlexVolume PV's) say what the I/O
            // limits are: they have no ModifyVolume.
            Some(vol) if vol.io_limits != req.volume.io_limits => {
                let vol = Volume { io_limits: req.volume.io_limits, ..vol };
                self.write_volume(&vol)?;
                limits_changed = true;
                vol
            }
            Some(vol) => vol,
            None if req.create => self.create_volume_locked(&id, &req.volume)?,
            None => return Err(Error::VolumeNotFound(id)),
        };
        let (_, mut state) = self.load(&id)?;
        let stage = StageRequest {
            staging_path: staging.clone(),
            access_type: AccessType::Mount,
            fs_type: req.fs_type,
            read_only: false,
            mount_options: req.stage_mount_options.clone(),
        };
        let publish = PublishRequest {
            pod_uid: req.pod_uid.clone(),
            staging_path: staging.clone(),
            target_path: target.clone(),
            access_type: AccessType::Mount,
            fs_type: req.fs_type,
            read_only: req.read_only,
            mount_options: req.publish_mount_options.clone(),
            exclusive: req.exclusive,
        };
        let mounted = self
            .stage_locked(&mut vol, &mut state, &staging, &stage)
            .and_then(|_| self.publish_locked(&vol, &mut state, &staging, &target, &publish));
        if let Err(e) = mounted {
            let _ = self.unpublish_locked(&vol, &mut state, &target);
            if let Err(undo) = self.release_unused_locked(&vol, &mut state, &staging) {
                tracing::warn!(volume = %id, error = %undo, "could not undo a failed private mount");
            }
            return Err(e);
        }
        if limits_changed {
            // The pods that mounted it before get the new limits too.
            let live = self.reconcile(&vol, &mut state)?;
            self.enforce_locked(&vol, &mut state, &live)?;
        }
        Ok(vol)
    }

    /// Releases a private mount at `target`: unpublishes it, unstages the
    /// volume from `<staging_root>/<id>` once no target uses it, and deletes
    /// an ephemeral volume. The volume is the one mounted at the target, or
    /// the one the target was given (a mount that died halfway). Returns its
    /// ID; None when nothing of the pool's is there (success: the empty
    /// directory is removed). A volume whose record is gone is still
    /// unmounted from the target.
    pub fn unmount_private(&self, target: &Path, staging_root: Option<&Path>) -> Result<Option<String>> {
        let target = clean_path(target)?;
        let Some(id) = self.volume_at(&target)?.or_else(|| self.recorded_target(&target)) else {
            tracing::info!(target = %target.display(), "nothing of the pool is mounted there");
            let _ = fs::remove_dir(&target);
            return Ok(None);
        };
        let _guard = self.lock_volume(&id)?;
        let (vol, mut state) = match self.load(&id) {
            Ok(loaded) => loaded,
            Err(Error::VolumeNotFound(_)) => {
                // Deleted behind a live mount: still take the mount down, or
                // the caller retries forever.
                tracing::warn!(volume = %id, target = %target.display(), "no record in the pool; unmounting directly");
                mount::cleanup(&target)?;
                self.forget_target(&target);
                return Ok(Some(id));
            }
            Err(e) => return Err(e),
        };
        self.unpublish_locked(&vol, &mut state, &target)?;
        let staging = self.staging_under(staging_root, &id)?;
        self.release_unused_locked(&vol, &mut state, &staging)?;
        self.forget_target(&target);
        Ok(Some(id))
    }

    /// With the volume locked: unstages it from `staging` when no target
    /// uses it any more, then deletes it when it is ephemeral. Returns
    /// whether it was released.
    pub(crate) fn release_unused_locked(&self, vol: &Volume, state: &mut NodeState, staging: &Path) -> Result<bool> {
        let live = self.reconcile(vol, state)?;
        let recorded = state.staged.as_ref().map(|st| st.staging_path.clone());
        let mut staging_paths = vec![staging];
        staging_paths.extend(recorded.as_deref());
        let users = live.others(&staging_paths);
        if !users.is_empty() {
            tracing::info!(volume = %vol.id, users = users.len(), "stays staged for its other targets");
            return Ok(false);
        }
        self.unstage_locked(vol, state, recorded.as_deref().unwrap_or(staging), true)?;
        if vol.lifecycle == Lifecycle::Ephemeral {
            self.delete_volume_locked(&vol.id)?;
        }
        Ok(true)
    }

    // ---- target hints ----

    fn target_hint_path(&self, target: &Path) -> PathBuf {
        let key = id::from_name("t-", &target.to_string_lossy());
        self.root.join("targets").join(format!("{key}.json"))
    }

    /// Only a hint: teardown works from the mount table without it, so a
    /// failure to write it is logged, not returned.
    fn remember_target(&self, target: &Path, id: &str) {
        let hint = TargetHint { target: target.to_path_buf(), id: id.to_string() };
        if let Err(e) = record::write(&self.target_hint_path(target), &hint) {
            tracing::warn!(target = %target.display(), error = %e, "cannot record which volume the target got");
        }
    }

    fn recorded_target(&self, target: &Path) -> Option<String> {
        match record::read::<TargetHint>(&self.target_hint_path(target)) {
            Ok(Some(hint)) if hint.target == target && id::validate(&hint.id).is_ok() => Some(hint.id),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "ignoring an unreadable target hint");
                None
            }
        }
    }

    pub(crate) fn forget_target(&self, target: &Path) {
        if let Err(e) = record::remove(&self.target_hint_path(target)) {
            tracing::warn!(target = %target.display(), error = %e, "cannot remove a target hint");
        }
    }
}
