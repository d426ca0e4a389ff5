//! `unmount <pod dir>`: no options arrive (spec §2), so the pool finds the
//! volume from the kernel's mount table, or from the hint `mount` left when
//! the bind mount is already gone. attach:false releases the whole private
//! mount (unstaging once no pod on the node uses the volume); attach:true
//! only unpublishes and leaves the staging to `unmountdevice`.

use std::path::Path;

use crate::context::Ctx;
use crate::log;
use crate::reply::{FlexResult, Reply};

pub fn run(ctx: &Ctx, target: &Path) -> FlexResult<Reply> {
    if ctx.config.attach {
        let Some(id) = ctx.pool.volume_at(target)? else {
            log::info(format_args!("unmount {}: nothing mounted", target.display()));
            let _ = std::fs::remove_dir(target);
            return Ok(Reply::success());
        };
        log::info(format_args!("unmount {id} from {}", target.display()));
        ctx.pool.unpublish(&id, target)?;
        return Ok(Reply::success());
    }
    match ctx.pool.unmount_private(target, Some(&ctx.config.staging_root())) {
        Ok(Some(id)) => log::info(format_args!("unmounted {id} from {}", target.display())),
        // Not ours or already unmounted: success, and the leftover dir is
        // removed when empty (kubelet tolerates that, spec P19).
        Ok(None) => log::info(format_args!("unmount {}: nothing mounted", target.display())),
        Err(e) => {
            // Kubelet calls `unmount` again only while the pod dir exists;
            // put it back (empty) so the retry finds the hint and finishes.
            let _ = std::fs::create_dir_all(target);
            return Err(e.into());
        }
    }
    Ok(Reply::success())
}
