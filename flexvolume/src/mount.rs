//! `mount <pod dir> <json>`.
//!
//! attach:false: create the volume if needed, stage it at
//! `<stateDir>/staging/<id>` (one staging mount per node, shared by all pods)
//! and bind it into the pod dir. attach:true: `mountdevice` staged it at the
//! global dir already; bind from there. Kubelet skips `mount` only when the
//! pod dir looks like a mountpoint, so every step is idempotent.

use std::path::Path;

use loopvol_backend::{AccessType, PublishRequest, StageRequest};

use crate::context::Ctx;
use crate::log;
use crate::options::Options;
use crate::reply::{FlexResult, Reply};

pub fn run(ctx: &Ctx, target: &Path, json: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    log::info(format_args!("mount {id} at {}: {}", target.display(), opts.summary()));
    let _guard = ctx.lock(&id)?;
    // Remembered before anything is staged: a driver killed after staging but
    // before the bind leaves a pod dir the kernel cannot name the volume of,
    // and the `unmount` of a pod deleted meanwhile must still find the volume
    // to release its staging mount and loop device (found by tests/crash.rs).
    ctx.remember_target(target, &id);

    let staging_path = if ctx.config.attach {
        let volume = ctx.pool.volume(&id)?;
        match volume.staged {
            Some(staged) => staged.staging_path,
            None => return Err(loopvol_backend::Error::NotStaged { id }.into()),
        }
    } else {
        ctx.ensure_volume(&id, &opts)?;
        let staging_path = ctx.config.staging_dir(&id);
        let req = StageRequest {
            staging_path: staging_path.clone(),
            access_type: AccessType::Mount,
            fs_type: opts.fs_type,
            // The staging mount is shared by every pod on the node, read-only
            // and read-write ones alike; each pod's bind mount carries `ro`.
            read_only: false,
            mount_options: opts.mount_options.clone(),
        };
        ctx.pool.stage(&id, &req)?;
        staging_path
    };

    let req = PublishRequest {
        staging_path: staging_path.clone(),
        target_path: target.to_path_buf(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: opts.read_only,
        mount_options: Vec::new(),
        // RWO means one node, not one pod: several pods on this node may share it.
        exclusive: false,
    };
    if let Err(e) = ctx.pool.publish(&id, &req) {
        if !ctx.config.attach {
            roll_back_stage(ctx, &id, &staging_path);
        }
        // Kubelet removes the pod dir after a failed mount; keep it there, empty.
        let _ = std::fs::create_dir_all(target);
        return Err(e.into());
    }
    Ok(Reply::success())
}

/// A failed publish must not leave a staging mount that no pod uses (spec §6.15).
fn roll_back_stage(ctx: &Ctx, id: &str, staging_path: &Path) {
    match ctx.pool.users(id) {
        Ok(users) if users.iter().all(|p| p == staging_path) => {
            if let Err(e) = ctx.pool.unstage(id, staging_path, true) {
                log::warn(format_args!("rollback: cannot unstage {id}: {e}"));
            }
        }
        Ok(_) => {}
        Err(e) => log::warn(format_args!("rollback: cannot list users of {id}: {e}")),
    }
}
