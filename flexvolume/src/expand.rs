//! `expandfs <json> <device> <mount dir> <new bytes> <old bytes>`: the only
//! resize kubelet really performs for flex volumes (spec §4.4), so it grows
//! the image, the loop device and the filesystem. `expandvolume` is never
//! reached (KCM has no flex expander) and is a no-op success.

use crate::context::{describe, Ctx};
use crate::log;
use crate::options::Options;
use crate::reply::{FlexError, FlexResult, Reply};

pub fn expand_fs(ctx: &Ctx, json: &str, device: &str, mount_dir: &str, new: &str, old: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    let new_size = bytes("new size", new)?;
    if opts.read_only {
        return Err(FlexError::usage(format!("volume {id} is mounted read-only; its filesystem cannot be grown")));
    }
    log::info(format_args!(
        "expandfs {id} to {new_size} bytes (from {}, device {}, at {})",
        describe(old),
        describe(device),
        describe(mount_dir)
    ));
    let capacity = ctx.pool.node_expand(&id, new_size)?;
    log::info(format_args!("expandfs {id}: capacity {capacity} bytes"));
    Ok(Reply::success())
}

pub fn expand_volume() -> Reply {
    Reply::success()
}

/// Kubelet sends `Quantity.Value()`: a plain decimal byte count.
fn bytes(what: &str, text: &str) -> FlexResult<u64> {
    text.parse().map_err(|_| FlexError::usage(format!("{what} {} is not a byte count", describe(text))))
}
