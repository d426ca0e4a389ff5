//! attach:true, node side: `mountdevice <global dir> <device> <json>` stages
//! the volume at kubelet's global dir; `unmountdevice <global dir>` unstages
//! it (kubelet removes the dir itself).

use std::path::Path;

use loopvol_backend::{AccessType, StageRequest};

use crate::context::Ctx;
use crate::log;
use crate::options::Options;
use crate::reply::{FlexResult, Reply};

pub fn mount_device(ctx: &Ctx, global: &Path, device: &str, json: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    // The device is informational: the backend finds the loop device by its
    // backing file, never by trusting a path from node status.
    log::info(format_args!("mountdevice {id} ({device}) at {}: {}", global.display(), opts.summary()));
    ctx.ensure_volume(&id, &opts)?;
    let req = StageRequest {
        staging_path: global.to_path_buf(),
        access_type: AccessType::Mount,
        fs_type: opts.fs_type,
        read_only: opts.read_only,
        mount_options: opts.mount_options.clone(),
    };
    ctx.pool.stage(&id, &req)?;
    Ok(Reply::success())
}

pub fn unmount_device(ctx: &Ctx, global: &Path) -> FlexResult<Reply> {
    // The staging mount names its volume (a mountdevice that died before
    // mounting left nothing: its autoclear loop device went with it).
    let Some(id) = ctx.pool.volume_at(global)? else {
        log::info(format_args!("unmountdevice {}: nothing mounted", global.display()));
        return Ok(Reply::success());
    };
    log::info(format_args!("unmountdevice {id} at {}", global.display()));
    ctx.pool.unstage(&id, global, false)?;
    Ok(Reply::success())
}
