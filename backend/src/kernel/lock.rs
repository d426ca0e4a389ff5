//! Per-object file locks in the pool. FlexVolume calls are separate processes
//! and the CSI server is a daemon; `flock(2)` on a lock file serialises them
//! all, and the kernel drops the lock once no process holds it open.
//!
//! A tool we run (mkfs, fsck, resize2fs) inherits the locks its thread holds
//! (see [`held_by_this_thread`]): if we are killed while it runs, the tool
//! keeps the volume locked until it exits, so a retried call waits for it
//! instead of finding the device busy or half-formatted.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A held lock; released when dropped. Not `Send`: the thread that took it
/// is the one whose tools inherit it.
#[derive(Debug)]
pub struct Guard {
    lock: Flock<File>,
    _this_thread: PhantomData<*const ()>,
}

thread_local! {
    /// The fds of the locks this thread holds, oldest first.
    static HELD: RefCell<Vec<RawFd>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Guard {
    fn drop(&mut self) {
        let fd = self.lock.as_raw_fd();
        HELD.with(|held| held.borrow_mut().retain(|&h| h != fd));
        // `Flock` unlocks and closes after this.
    }
}

/// The fds of the locks the calling thread holds: a child it spawns keeps
/// them open (clear FD_CLOEXEC in the child), so the locks outlive us while
/// the child runs. Harmless while we live: we unlock explicitly on drop,
/// which releases the lock whoever else has the file open.
pub fn held_by_this_thread() -> Vec<RawFd> {
    HELD.with(|held| held.borrow().clone())
}

/// Takes the exclusive lock `dir/<name>.lock`, polling for up to `wait`
/// (flock has no timeout of its own). A lock still held after `wait` is
/// `Error::Busy`, which the CSI side reports as ABORTED.
pub fn acquire(dir: &Path, name: &str, wait: Duration) -> Result<Guard> {
    let path: PathBuf = dir.join(format!("{name}.lock"));
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                HELD.with(|held| held.borrow_mut().push(lock.as_raw_fd()));
                return Ok(Guard { lock, _this_thread: PhantomData });
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, Errno::EINTR)) => continue,
            Err((_, errno)) => return Err(Error::sys("flock", &path, errno)),
        }
        if Instant::now() >= deadline {
            return Err(Error::Busy(name.to_string()));
        }
        sleep(pause);
        // Short pauses: the locks guard steps of milliseconds, and a waiter
        // should not sleep long after the holder is done.
        pause = (pause * 2).min(Duration::from_millis(8));
    }
}

#[cfg(test)]
impl Guard {
    /// What our death does to the lock: the fd is closed without unlocking,
    /// so it stays locked while a child we spawned holds the file open.
    pub(crate) fn close_as_if_killed(self) {
        let this = std::mem::ManuallyDrop::new(self);
        let fd = this.lock.as_raw_fd();
        HELD.with(|held| held.borrow_mut().retain(|&h| h != fd));
        // SAFETY: the fd is ours and never used again (the guard is not dropped).
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_gets_busy() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), "vol-a", Duration::ZERO).unwrap();
        // flock locks belong to the open file description, so a second open in
        // the same process contends exactly like another process would.
        match acquire(dir.path(), "vol-a", Duration::from_millis(20)) {
            Err(Error::Busy(name)) => assert_eq!(name, "vol-a"),
            other => panic!("expected Busy, got {other:?}"),
        }
        let _other = acquire(dir.path(), "vol-b", Duration::ZERO).unwrap();
        drop(first);
        acquire(dir.path(), "vol-a", Duration::ZERO).unwrap();
    }
}
