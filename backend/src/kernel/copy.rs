//! Copying images: reflink (FICLONE) where the pool's filesystem can (btrfs,
//! xfs with reflink, ...): instant and shares blocks until written; else a
//! sparse copy with SEEK_DATA/SEEK_HOLE that copies only the data ranges, so
//! a mostly empty 10 GiB image costs what it holds.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Whence;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

mod sys {
    // include/uapi/linux/fs.h: FICLONE _IOW(0x94, 9, int); the argument is the source fd.
    nix::ioctl_write_int!(ficlone, 0x94, 9);
}

/// Copies `src` to the new file `dst` (created with O_EXCL, mode 0600,
/// fsynced together with its directory entry), by reflink when possible,
/// else sparsely (holes, including trailing ones, are kept). The caller makes
/// sure `src` does not change meanwhile (freeze or detach).
///
/// Not idempotent: `dst` must not exist. On error `dst` is removed (unless
/// the error is that it already existed).
///
/// Errors: `Error::Io` for open/create (EEXIST when `dst` exists), read,
/// write, truncate and fsync; `Error::Sys` for FICLONE/lseek/copy_file_range.
pub fn copy_image(src: &Path, dst: &Path) -> Result<CopyMethod> {
    let source =
        File::options().read(true).custom_flags(libc::O_CLOEXEC).open(src).map_err(|e| Error::io("open", src, e))?;
    let target = File::options()
        .write(true)
        .create_new(true) // O_CREAT|O_EXCL
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    match copy_into(&source, src, &target, dst) {
        Ok(method) => Ok(method),
        Err(e) => {
            drop(target);
            if let Err(rm) = std::fs::remove_file(dst) {
                tracing::warn!(path = %dst.display(), error = %rm, "could not remove a partial copy");
            }
            Err(e)
        }
    }
}

fn copy_into(source: &File, src: &Path, target: &File, dst: &Path) -> Result<CopyMethod> {
    let len = source.metadata().map_err(|e| Error::io("stat", src, e))?.len();
    // SAFETY: both fds are open; FICLONE takes the source fd as its integer
    // argument and only reads from it.
    let method = match unsafe {
        sys::ficlone(target.as_raw_fd(), libc::c_ulong::try_from(source.as_raw_fd()).unwrap_or(libc::c_ulong::MAX))
    } {
        Ok(_) => CopyMethod::Reflink,
        // ioctl_ficlonerange(2): EOPNOTSUPP = the filesystem cannot share
        // blocks, EXDEV = different filesystems, EINVAL = unaligned or
        // unsupported, ENOTTY = no such ioctl here.
        Err(Errno::EOPNOTSUPP) | Err(Errno::EXDEV) | Err(Errno::EINVAL) | Err(Errno::ENOTTY) => {
            sparse_copy(source, src, target, dst, len)?;
            CopyMethod::Sparse
        }
        Err(errno) => return Err(Error::sys("FICLONE", dst, errno)),
    };
    // Trailing holes have no data range: give dst the source's length.
    target.set_len(len).map_err(|e| Error::io("truncate", dst, e))?;
    target.sync_all().map_err(|e| Error::io("fsync", dst, e))?;
    sync_parent(dst)?;
    tracing::debug!(src = %src.display(), dst = %dst.display(), ?method, len, "copied image");
    Ok(method)
}

/// Makes the new directory entry durable (fsync(2): fsync of a file does not
/// cover the entry naming it).
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(parent)
        .map_err(|e| Error::io("open directory", parent, e))?;
    dir.sync_all().map_err(|e| Error::io("fsync directory", parent, e))
}

/// Copies the data ranges of `source` (found with SEEK_DATA/SEEK_HOLE,
/// lseek(2)) to the same offsets of `target`, leaving holes as holes.
fn sparse_copy(source: &File, src: &Path, target: &File, dst: &Path, len: u64) -> Result<()> {
    let end = i64::try_from(len).map_err(|_| Error::sys("lseek", src, Errno::EOVERFLOW))?;
    let mut use_copy_file_range = true;
    let mut offset: i64 = 0;
    while offset < end {
        let data = match nix::unistd::lseek(source, offset, Whence::SeekData) {
            Ok(data) => data,
            // ENXIO: no data at or after offset (only holes to the end).
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(Error::sys("lseek SEEK_DATA", src, errno)),
        };
        let hole = nix::unistd::lseek(source, data, Whence::SeekHole)
            .map_err(|errno| Error::sys("lseek SEEK_HOLE", src, errno))?;
        let hole = hole.min(end);
        if hole <= data {
            break;
        }
        if use_copy_file_range {
            match copy_range_in_kernel(source, target, data, hole) {
                Ok(()) => {}
                // copy_file_range(2): EXDEV before 5.3 across filesystems,
                // EINVAL/EOPNOTSUPP/ENOSYS where unsupported. Nothing was
                // written past what we retry, so redo the range by hand.
                Err(Errno::EXDEV) | Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => {
                    use_copy_file_range = false;
                    copy_range_by_hand(source, src, target, dst, data, hole)?;
                }
                Err(errno) => return Err(Error::sys("copy_file_range", dst, errno)),
            }
        } else {
            copy_range_by_hand(source, src, target, dst, data, hole)?;
        }
        offset = hole;
    }
    Ok(())
}

/// copy_file_range(2) of [start, end) to the same offsets; the kernel can
/// share or offload the copy.
fn copy_range_in_kernel(source: &File, target: &File, start: i64, end: i64) -> std::result::Result<(), Errno> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        // At most 1 GiB per call: the kernel caps a single copy anyway.
        let chunk = usize::try_from((end - off_in).min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both fds are open for the duration of the call; the offset
        // pointers refer to live i64s (loff_t) the kernel advances.
        let n = unsafe {
            libc::copy_file_range(source.as_raw_fd(), &mut off_in, target.as_raw_fd(), &mut off_out, chunk, 0)
        };
        let n = Errno::result(n)?;
        if n == 0 {
            // The source shrank under us.
            return Err(Errno::EIO);
        }
    }
    Ok(())
}

/// pread/pwrite of [start, end), skipping all-zero blocks so they stay holes.
fn copy_range_by_hand(source: &File, src: &Path, target: &File, dst: &Path, start: i64, end: i64) -> Result<()> {
    const BUF: usize = 1 << 20;
    let mut buf = vec![0u8; BUF];
    let mut offset = u64::try_from(start).unwrap_or(0);
    let end = u64::try_from(end).unwrap_or(0);
    while offset < end {
        let want = usize::try_from((end - offset).min(BUF as u64)).unwrap_or(BUF);
        let n = source.read_at(&mut buf[..want], offset).map_err(|e| Error::io("read", src, e))?;
        if n == 0 {
            return Err(Error::io("read", src, std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
        }
        if buf[..n].iter().any(|&b| b != 0) {
            target.write_all_at(&buf[..n], offset).map_err(|e| Error::io("write", dst, e))?;
        }
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The root filesystem here (ext4) has no reflink: the sparse path runs.
    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let f = File::create(&src).unwrap();
        let len = 64u64 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(&[0xab; 4096], 1 << 20).unwrap();
        f.write_all_at(b"end", (32 << 20) + 5).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let dst = dir.path().join("dst.img");
        let method = copy_image(&src, &dst).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(a == b, "contents differ");
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), len);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        if method == CopyMethod::Sparse {
            // 512-byte blocks; two small data ranges, far below 64 MiB.
            assert!(meta.blocks() * 512 < 1 << 20, "copy is not sparse: {} blocks", meta.blocks());
        }
    }

    #[test]
    fn refuses_existing_destination_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&src, b"new").unwrap();
        std::fs::write(&dst, b"old").unwrap();
        match copy_image(&src, &dst) {
            Err(Error::Io { op: "create", source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(std::fs::read(&dst).unwrap(), b"old");
    }

    #[test]
    fn missing_source_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("b");
        assert!(copy_image(&dir.path().join("nope"), &dst).is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn by_hand_copy_skips_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        let mut data = vec![0u8; 4 << 20];
        data[3 << 20] = 1;
        std::fs::write(&src, &data).unwrap();
        let (s, t) = (File::open(&src).unwrap(), File::create(&dst).unwrap());
        copy_range_by_hand(&s, &src, &t, &dst, 0, 4 << 20).unwrap();
        t.set_len(4 << 20).unwrap();
        t.sync_all().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 <= 2 << 20);
    }
}
