//! `waitforattach <device> <json>`, on the node: attaches the loop device
//! and answers with its path, which kubelet passes on to `mountdevice`. The
//! only call kubelet times out (10 min, spec §3.1); the backend's lock wait is
//! far shorter.

use crate::attach::TOKEN_PREFIX;
use crate::context::Ctx;
use crate::log;
use crate::options::Options;
use crate::reply::{FlexError, FlexResult, Reply};

pub fn run(ctx: &Ctx, token: &str, json: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    // A token from another volume means node status and options disagree.
    if let Some(token_id) = token.strip_prefix(TOKEN_PREFIX) {
        if token_id != id {
            return Err(FlexError::usage(format!("device token names volume {token_id:?}, the options name {id:?}")));
        }
    }
    log::info(format_args!("waitforattach {id}: {}", opts.summary()));
    ctx.ensure_volume(&id, &opts)?;
    let device = ctx.pool.attach_device(&id)?;
    Ok(Reply::device(device.to_string_lossy()))
}
