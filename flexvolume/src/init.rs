//! `init`: must always succeed (a failed init unregisters the driver, spec
//! P3), so it reads nothing but the `attach` flag and touches no pool, no
//! state directory and no log.

use crate::config;
use crate::reply::{Capabilities, Reply};

pub fn run() -> Reply {
    Reply {
        capabilities: Some(Capabilities {
            attach: config::attach_capability(),
            selinux_relabel: true,
            fs_group: true,
            supports_metrics: true,
            requires_fs_resize: true,
        }),
        ..Reply::success()
    }
}
