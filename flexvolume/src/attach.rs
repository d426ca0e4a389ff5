//! attach:true, controller side: `attach <json> <node>`,
//! `isattached <json> <node>`, `detach <volName> <node>`. The attachment is
//! a record in the pool: one node holds a volume at a time.

use crate::context::Ctx;
use crate::log;
use crate::options::Options;
use crate::reply::{FlexError, FlexResult, Reply};

/// The device token `attach` returns; kubelet hands it to `waitforattach`.
pub const TOKEN_PREFIX: &str = "loopvol:";

pub fn attach(ctx: &Ctx, json: &str, node: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    let node = node_name(node)?;
    log::info(format_args!("attach {id} to node {node}: {}", opts.summary()));
    ctx.ensure_volume(&id, &opts)?;
    ctx.pool.attach_to_node(&id, node)?;
    Ok(Reply::device(format!("{TOKEN_PREFIX}{id}")))
}

/// `isattached` always answers with a boolean `attached`: a missing key
/// reads as "not attached" and makes the controller re-attach (spec P17).
/// The JSON is accepted as either argument (1.6-era kubelets swapped them).
pub fn is_attached(ctx: &Ctx, first: &str, second: &str) -> FlexResult<Reply> {
    let (json, node) = if second.trim_start().starts_with('{') { (second, first) } else { (first, second) };
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    let node = node_name(node)?;
    let attached = match ctx.pool.volume(&id) {
        Ok(volume) => volume.attached_node.as_deref() == Some(node),
        // A volume that does not exist is attached nowhere.
        Err(loopvol_backend::Error::VolumeNotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    Ok(Reply::attached(attached))
}

/// `detach` gets the PV (or inline volume) name, not the device (spec P6).
/// A name that matches no volume is already detached.
pub fn detach(ctx: &Ctx, name: &str, node: &str) -> FlexResult<Reply> {
    let node = node_name(node)?;
    let Some(volume) = ctx.find_volume(name)? else {
        log::info(format_args!("detach {name:?} from {node}: no such volume"));
        return Ok(Reply::success());
    };
    log::info(format_args!("detach {} from node {node}", volume.id));
    ctx.pool.detach_from_node(&volume.id, node)?;
    Ok(Reply::success())
}

fn node_name(node: &str) -> FlexResult<&str> {
    if node.is_empty() {
        Err(FlexError::usage("node name is empty"))
    } else {
        Ok(node)
    }
}
