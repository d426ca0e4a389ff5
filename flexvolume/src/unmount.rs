//! `unmount <pod dir>`: no options arrive (spec §2), so the volume is found
//! from the kernel's mount table, or from the record `mount` left when the
//! bind mount is already gone. attach:false also unstages once no pod on the
//! node uses the volume any more; attach:true leaves that to `unmountdevice`.

use std::path::Path;

use crate::context::Ctx;
use crate::log;
use crate::reply::{FlexResult, Reply};

pub fn run(ctx: &Ctx, target: &Path) -> FlexResult<Reply> {
    let id = match ctx.pool.volume_at(target)? {
        Some(id) => id,
        None => match ctx.recorded_target(target) {
            Some(id) => id,
            None => {
                // Not ours or already unmounted: success, and the leftover dir
                // is removed when empty (kubelet tolerates that, spec P19).
                log::info(format_args!("unmount {}: nothing mounted", target.display()));
                let _ = std::fs::remove_dir(target);
                return Ok(Reply::success());
            }
        },
    };
    log::info(format_args!("unmount {id} from {}", target.display()));
    let _guard = ctx.lock(&id)?;
    match ctx.pool.unpublish(&id, target) {
        Ok(()) => {}
        // The image's record is gone from the pool (deleted behind a live
        // mount): still take the mount down, or kubelet retries forever.
        Err(loopvol_backend::Error::VolumeNotFound(_)) => {
            log::warn(format_args!("{id} has no record in the pool; unmounting {} directly", target.display()));
            loopvol_backend::mount::cleanup(target)?;
            ctx.forget_target(target);
            return Ok(Reply::success());
        }
        Err(e) => return Err(e.into()),
    }

    if !ctx.config.attach {
        let staging = ctx.config.staging_dir(&id);
        // With the pool's records lost, `users` also lists the staging mount.
        let users: Vec<_> = ctx.pool.users(&id)?.into_iter().filter(|p| *p != staging).collect();
        if users.is_empty() {
            if let Err(e) = ctx.pool.unstage(&id, &staging, true) {
                // Kubelet calls `unmount` again only while the pod dir exists;
                // put it back (empty) so the retry finds the record and unstages.
                let _ = std::fs::create_dir_all(target);
                return Err(e.into());
            }
        } else {
            log::info(format_args!("{id} stays staged for {} other target(s)", users.len()));
        }
    }
    ctx.forget_target(target);
    Ok(Reply::success())
}
