//! The crash-safe catalog: one JSON record per object, replaced atomically
//! (temp file in the same directory, fsync, rename, fsync the directory), so a
//! reader sees the old record or the new one and never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// How far a record write goes before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The new record survives a power loss (the directory is fsynced after
    /// the rename).
    Durable,
    /// Readers, and a process that crashes, see the old record or the new
    /// one, whole (rename of a written temp file); nothing is fsynced, so a
    /// power loss may leave it old, empty or missing. Only for state that
    /// dies with the machine anyway (what is mounted), which the kernel tells
    /// again.
    Volatile,
}

/// Writes `value` to `path` atomically and durably.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_with(path, value, Durability::Durable)
}

pub fn write_with<T: Serialize>(path: &Path, value: &T, durability: Durability) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::CorruptRecord { path: path.into(), reason: e.to_string() })?;
    write_bytes_with(path, &bytes, durability)
}

pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_bytes_with(path, bytes, Durability::Durable)
}

fn write_bytes_with(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let dir = parent(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Dot-prefixed and tagged with the pid and a per-process write number:
    // never mistaken for a record, never shared between two racing writers,
    // be they two processes or two threads of one (concurrent CSI Probes).
    let tmp = dir.join(format!(".{name}.{}.tmp", temp_tag()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::io("write", &tmp, e))?;
        if durability == Durability::Durable {
            file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
        match durability {
            Durability::Durable => sync_dir(dir),
            Durability::Volatile => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `<pid>-<n>`: unique per write among all live processes (`n` counts this
/// process's writes). doctor's `temp_owner` parses the names this makes.
fn temp_tag() -> String {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed))
}

/// Reads a record; a missing file is `None`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::CorruptRecord { path: path.into(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Removes a file durably; a missing file is success.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// fsync of a directory makes a rename or unlink in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync dir", dir, e))
}

fn parent(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| Error::InvalidPath { path: path.into(), reason: "no parent directory" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        a: u32,
    }

    #[test]
    fn write_read_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert_eq!(read::<Rec>(&p).unwrap(), None);
        write(&p, &Rec { a: 1 }).unwrap();
        write(&p, &Rec { a: 2 }).unwrap();
        assert_eq!(read::<Rec>(&p).unwrap(), Some(Rec { a: 2 }));
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert_eq!(read::<Rec>(&p).unwrap(), None);
    }

    #[test]
    fn temp_names_differ_per_write_in_one_process() {
        let (a, b) = (temp_tag(), temp_tag());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-", std::process::id())), "{a}");
    }

    /// Many threads of one process replacing one record: every write
    /// succeeds (each has its own temp file) and none is left behind.
    #[test]
    fn concurrent_writers_in_one_process_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..16u32)
                .map(|i| {
                    let p = &p;
                    scope.spawn(move || (0..20).map(|_| write(p, &Rec { a: i })).collect::<Result<Vec<()>>>())
                })
                .collect();
            for writer in writers {
                writer.join().unwrap().unwrap();
            }
        });
        assert!(read::<Rec>(&p).unwrap().is_some());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn torn_record_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        fs::write(&p, b"{\"a\": 1").unwrap();
        assert!(matches!(read::<Rec>(&p), Err(Error::CorruptRecord { .. })));
    }
}
