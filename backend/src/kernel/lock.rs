//! Per-object file locks in the pool. FlexVolume calls are separate processes
//! and the CSI server is a daemon; `flock(2)` on a lock file serialises them
//! all, and the kernel drops the lock if a holder dies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct Guard {
    _lock: Flock<File>,
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
            Ok(lock) => return Ok(Guard { _lock: lock }),
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
