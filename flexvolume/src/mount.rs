//! `mount <pod dir> <json>`.
//!
//! attach:false: the whole lifecycle is one backend operation — create the
//! volume if needed, stage it at `<stateDir>/staging/<id>` (one staging mount
//! per node, shared by all pods) and bind it into the pod dir, undoing the
//! stage when the bind fails. attach:true: `mountdevice` staged it at the
//! global dir already; bind from there. Kubelet skips `mount` only when the
//! pod dir looks like a mountpoint, so every step is idempotent.

use std::path::Path;

use loopvol_backend::{AccessType, PrivateMount, PublishRequest};

use crate::context::Ctx;
use crate::log;
use crate::options::Options;
use crate::reply::{FlexResult, Reply};

pub fn run(ctx: &Ctx, target: &Path, json: &str) -> FlexResult<Reply> {
    let opts = Options::parse(json)?;
    let id = opts.id()?;
    log::info(format_args!("mount {id} at {}: {}", target.display(), opts.summary()));
    let mounted = if ctx.config.attach {
        publish_from_global_dir(ctx, &id, target, &opts)
    } else {
        let req = PrivateMount {
            volume: ctx.create_request(&id, &opts),
            create: opts.create,
            staging_root: Some(ctx.config.staging_root()),
            target_path: target.to_path_buf(),
            fs_type: opts.fs_type,
            // Each pod's bind mount carries `ro`; the shared staging is read-write.
            read_only: opts.read_only,
            stage_mount_options: opts.mount_options.clone(),
            publish_mount_options: Vec::new(),
            // RWO means one node, not one pod: several pods on this node may share it.
            exclusive: false,
            pod_uid: opts.pod_uid.clone(),
        };
        ctx.pool.mount_private(&req).map(|_| ()).map_err(Into::into)
    };
    if let Err(e) = mounted {
        // Kubelet removes the pod dir after a failed mount; keep it there, empty.
        let _ = std::fs::create_dir_all(target);
        return Err(e);
    }
    Ok(Reply::success())
}

fn publish_from_global_dir(ctx: &Ctx, id: &str, target: &Path, opts: &Options) -> FlexResult<()> {
    let Some(staged) = ctx.pool.node_state(id)?.staged else {
        return Err(loopvol_backend::Error::NotStaged { id: id.to_string() }.into());
    };
    let req = PublishRequest {
        pod_uid: opts.pod_uid.clone(),
        staging_path: staged.staging_path,
        target_path: target.to_path_buf(),
        access_type: AccessType::Mount,
        fs_type: None,
        read_only: opts.read_only,
        mount_options: Vec::new(),
        exclusive: false,
    };
    Ok(ctx.pool.publish(id, &req)?)
}
