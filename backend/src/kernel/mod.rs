//! The kernel layer: everything that talks to the kernel or the pool's
//! files directly — loop devices, mount(2), mountinfo, the filesystem tools,
//! image copies, file locks and the atomic record writer. Crate-private: the
//! front ends reach all of it through [`crate::Pool`]. Nothing here knows
//! about volumes, records' meaning or locking policy; that is `pool`'s job.

pub(crate) mod cgroup;
pub(crate) mod copy;
pub(crate) mod extents;
pub(crate) mod fstools;
pub(crate) mod lock;
pub(crate) mod loopdev;
pub(crate) mod mount;
pub(crate) mod mount_options;
pub(crate) mod mountinfo;
pub(crate) mod record;
pub(crate) mod tools;

#[cfg(test)]
mod tests;
