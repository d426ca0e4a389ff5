//! Byte ranges of image files, for snapshot metadata (CSI changed-block
//! tracking):
//! - which ranges of an image hold data: SEEK_DATA/SEEK_HOLE (lseek(2));
//! - which ranges two images share on disk: FIEMAP (filesystems/fiemap.rst),
//!   where a reflinked copy (xfs, btrfs) maps each unchanged block to the same
//!   physical extent as its source;
//! - which ranges differ between two images: holes in both and shared extents
//!   are skipped without reading; everything else is read and compared block
//!   by block, so a changed byte is never missed, whatever FIEMAP says.
//!
//! A range list is "normal" when it is sorted, without empty or overlapping
//! ranges, and adjacent ranges are merged; every list returned here is.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Whence;

use crate::error::{Error, Result};

/// The half-open byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

impl Range {
    pub fn new(offset: u64, len: u64) -> Range {
        Range { offset, len }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Sorts, drops empty ranges, and merges overlapping and adjacent ones.
pub fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.len > 0);
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => last.len = last.end().max(r.end()) - last.offset,
            _ => out.push(r),
        }
    }
    out
}

/// Bytes in either list.
pub fn union(a: &[Range], b: &[Range]) -> Vec<Range> {
    normalize(a.iter().chain(b).copied().collect())
}

/// Bytes of `a` that are not in `b` (both normal).
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for r in a {
        let mut pos = r.offset;
        // Ranges of b that end before r starts can never matter again.
        while j < b.len() && b[j].end() <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < r.end() {
            match b.get(k) {
                Some(cut) if cut.offset < r.end() => {
                    if cut.offset > pos {
                        out.push(Range::new(pos, cut.offset - pos));
                    }
                    pos = pos.max(cut.end());
                    k += 1;
                }
                _ => {
                    out.push(Range::new(pos, r.end() - pos));
                    break;
                }
            }
        }
    }
    normalize(out)
}

/// The parts of `ranges` (normal) inside `[start, end)`: the first range may
/// be cut to begin at `start`, the last to stop at `end`.
pub fn clip(ranges: &[Range], start: u64, end: u64) -> Vec<Range> {
    ranges
        .iter()
        .filter_map(|r| {
            let (lo, hi) = (r.offset.max(start), r.end().min(end));
            (lo < hi).then(|| Range::new(lo, hi - lo))
        })
        .collect()
}

/// Ranges per response message when the caller sets no limit.
pub const DEFAULT_PAGE: usize = 4096;

/// The messages of a streamed answer: at most `max_results` ranges each
/// (0 = [`DEFAULT_PAGE`]), at least one message even when there is nothing
/// to say (it still carries the volume's capacity).
pub fn pages(ranges: &[Range], max_results: usize) -> Vec<&[Range]> {
    let size = if max_results == 0 { DEFAULT_PAGE } else { max_results };
    if ranges.is_empty() {
        return vec![&ranges[..0]];
    }
    ranges.chunks(size).collect()
}

// ---- allocation: SEEK_DATA / SEEK_HOLE ----

fn open(path: &Path) -> Result<File> {
    File::options().read(true).custom_flags(libc::O_CLOEXEC).open(path).map_err(|e| Error::io("open", path, e))
}

fn to_off(value: u64, path: &Path) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::sys("lseek", path, Errno::EOVERFLOW))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The data ranges of an open file inside `[start, end)`. lseek(2): the
/// kernel answers SEEK_DATA with the next offset that is not a hole (ext4
/// and xfs also treat unwritten, i.e. fallocated and never written, extents
/// as holes), ENXIO when only holes follow. Filesystems without hole
/// tracking report the whole file as data, which is correct, only slower.
fn data_ranges(file: &File, path: &Path, start: u64, end: u64) -> Result<Vec<Range>> {
    let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let end = end.min(len);
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match nix::unistd::lseek(file, to_off(pos, path)?, Whence::SeekData) {
            Ok(data) => to_u64(data),
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(Error::sys("lseek SEEK_DATA", path, errno)),
        };
        if data >= end {
            break;
        }
        let hole = nix::unistd::lseek(file, to_off(data, path)?, Whence::SeekHole)
            .map_err(|errno| Error::sys("lseek SEEK_HOLE", path, errno))?;
        let hole = to_u64(hole).min(end);
        if hole <= data {
            break;
        }
        out.push(Range::new(data, hole - data));
        pos = hole;
    }
    Ok(normalize(out))
}

/// The allocated (written) ranges of the image at `path` inside
/// `[start, end)`. Read-only; errors are `Error::Io` (open, stat) and
/// `Error::Sys` (lseek).
pub fn allocated(path: &Path, start: u64, end: u64) -> Result<Vec<Range>> {
    data_ranges(&open(path)?, path, start, end)
}

// ---- physical extents: FIEMAP ----

mod sys {
    /// `struct fiemap` of include/uapi/linux/fiemap.h, without the flexible
    /// array of extents that follows it in memory.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Fiemap {
        pub fm_start: u64,
        pub fm_length: u64,
        pub fm_flags: u32,
        pub fm_mapped_extents: u32,
        pub fm_extent_count: u32,
        pub fm_reserved: u32,
    }

    /// `struct fiemap_extent`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct FiemapExtent {
        pub fe_logical: u64,
        pub fe_physical: u64,
        pub fe_length: u64,
        pub fe_reserved64: [u64; 2],
        pub fe_flags: u32,
        pub fe_reserved: [u32; 3],
    }

    /// Extents asked for per call.
    pub const BATCH: u32 = 1024;

    /// The header and room for BATCH extents, contiguous as the kernel
    /// expects (it writes `fm_extents[]` right after the header).
    #[repr(C)]
    pub struct FiemapBuf {
        pub header: Fiemap,
        pub extents: [FiemapExtent; BATCH as usize],
    }

    pub const FIEMAP_FLAG_SYNC: u32 = 0x1;
    pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
    pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
    pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
    pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
    pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x80;
    pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
    pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
    pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
    pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;

    // include/uapi/linux/fs.h: FS_IOC_FIEMAP _IOWR('f', 11, struct fiemap);
    // the size in the request code is that of the header alone.
    nix::ioctl_readwrite!(fs_ioc_fiemap, b'f', 11, Fiemap);
}

/// One mapping of a file's logical range to a physical (device or, on
/// btrfs, filesystem-logical) address, as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

impl Extent {
    fn end(&self) -> u64 {
        self.logical.saturating_add(self.len)
    }

    /// Whether `physical` identifies the bytes: not for extents whose
    /// address is unknown or not yet allocated (delayed allocation), whose
    /// data is encoded (compressed, encrypted: an address no longer maps
    /// linearly to the bytes), inline in metadata, or packed into a tail.
    fn identifies_data(&self) -> bool {
        const UNTRUSTED: u32 = sys::FIEMAP_EXTENT_UNKNOWN
            | sys::FIEMAP_EXTENT_DELALLOC
            | sys::FIEMAP_EXTENT_ENCODED
            | sys::FIEMAP_EXTENT_DATA_ENCRYPTED
            | sys::FIEMAP_EXTENT_NOT_ALIGNED
            | sys::FIEMAP_EXTENT_DATA_INLINE
            | sys::FIEMAP_EXTENT_DATA_TAIL;
        self.flags & UNTRUSTED == 0
    }
}

/// The extents of an open file that overlap `[start, end)`, in logical
/// order. `Err(errno)` when the filesystem has no FIEMAP (EOPNOTSUPP,
/// ENOTTY: tmpfs, overlayfs, ...) or it failed.
pub fn extents(file: &File, start: u64, end: u64) -> std::result::Result<Vec<Extent>, Errno> {
    let mut out = Vec::new();
    let mut buf = Box::new(sys::FiemapBuf {
        header: sys::Fiemap::default(),
        extents: [sys::FiemapExtent::default(); sys::BATCH as usize],
    });
    let mut pos = start;
    while pos < end {
        // FIEMAP_FLAG_SYNC: write dirty pages back first, so no extent is
        // still delayed-allocated (snapshots are fsynced anyway: cheap).
        buf.header = sys::Fiemap {
            fm_start: pos,
            fm_length: end - pos,
            fm_flags: sys::FIEMAP_FLAG_SYNC,
            fm_mapped_extents: 0,
            fm_extent_count: sys::BATCH,
            fm_reserved: 0,
        };
        let ptr = std::ptr::addr_of_mut!(*buf).cast::<sys::Fiemap>();
        // SAFETY: the fd is open for the duration of the call; `ptr` points
        // to a live, exclusively borrowed FiemapBuf: the header followed by
        // room for exactly `fm_extent_count` extents, which is all the
        // kernel writes (it never maps more than fm_extent_count).
        unsafe { sys::fs_ioc_fiemap(file.as_raw_fd(), ptr) }?;
        let mapped = usize::try_from(buf.header.fm_mapped_extents).unwrap_or(0).min(buf.extents.len());
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for e in &buf.extents[..mapped] {
            out.push(Extent { logical: e.fe_logical, physical: e.fe_physical, len: e.fe_length, flags: e.fe_flags });
            last |= e.fe_flags & sys::FIEMAP_EXTENT_LAST != 0;
        }
        let next = out.last().map_or(end, Extent::end);
        if last || next <= pos {
            break;
        }
        pos = next;
    }
    Ok(out)
}

/// The logical ranges that both files map to the same physical bytes, so
/// hold the same data without reading it: for two overlapping extents,
/// the logical-to-physical mapping is linear in each, so equal addresses at
/// the start of the overlap mean equal addresses throughout. Both lists are
/// in logical order (as FIEMAP returns them); the answer is normal.
pub fn shared(base: &[Extent], target: &[Extent]) -> Vec<Range> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < base.len() && j < target.len() {
        let (b, t) = (&base[i], &target[j]);
        let (lo, hi) = (b.logical.max(t.logical), b.end().min(t.end()));
        let same_state = b.flags & sys::FIEMAP_EXTENT_UNWRITTEN == t.flags & sys::FIEMAP_EXTENT_UNWRITTEN;
        if lo < hi
            && b.identifies_data()
            && t.identifies_data()
            && same_state
            && b.physical.checked_add(lo - b.logical) == t.physical.checked_add(lo - t.logical)
        {
            out.push(Range::new(lo, hi - lo));
        }
        if b.end() <= t.end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    normalize(out)
}

// ---- delta ----

/// Granularity of the byte compare and of the ranges it reports: the page
/// and block size of every filesystem loopvol makes, so one write of a
/// volume's filesystem dirties whole blocks of this size.
pub const COMPARE_BLOCK: u64 = 4096;
/// Bytes read from each file at a time.
const CHUNK: usize = 1 << 20;

/// What a delta cost and found, for the log and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Length of the window looked at (`end - start`).
    pub window_bytes: u64,
    /// Skipped without reading: a hole in both images.
    pub hole_bytes: u64,
    /// Skipped without reading: the same physical extent in both (reflink).
    pub shared_bytes: u64,
    /// Read from both images and compared.
    pub compared_bytes: u64,
    /// Compared, not shared, and equal: what an answer from extents alone
    /// would have reported as changed.
    pub unshared_equal_bytes: u64,
    /// Bytes in the reported ranges.
    pub changed_bytes: u64,
    /// Reported ranges.
    pub ranges: usize,
    /// Reported ranges in which no byte differs. Every reported range is
    /// made of compared blocks that differ, so this stays 0; counted so the
    /// log and the benchmark say so rather than assume it.
    pub unchanged_ranges: usize,
    /// FIEMAP was usable on both images (same filesystem, supported).
    pub used_extents: bool,
}

/// The ranges inside `[start, end)` where the images `base` and `target`
/// differ (bytes past an image's end read as zeros), in blocks of
/// [`COMPARE_BLOCK`] aligned to the image start (the first and last range
/// are cut to the window). Never misses a changed byte: only holes in both
/// and extents both images share are skipped unread.
///
/// Read-only. Errors: `Error::Io` (open, stat, read), `Error::Sys` (lseek).
/// A FIEMAP failure is not an error: everything is compared instead. (The
/// pool streams with [`delta_each`]; this collecting form serves the tests
/// and the benchmark.)
#[cfg(any(test, feature = "test-hooks"))]
pub fn delta(base: &Path, target: &Path, start: u64, end: u64) -> Result<(Vec<Range>, DeltaStats)> {
    let mut all = Vec::new();
    let stats = delta_each(base, target, start, end, &mut |ranges| {
        all.extend_from_slice(ranges);
        true
    })?;
    Ok((all, stats))
}

/// Candidate bytes compared before the ranges found so far are handed on.
const WINDOW: u64 = 512 << 20;

/// [`delta`], handing the ranges to `emit` as they are found (in order,
/// merged across calls, possibly several calls), so a caller can stream
/// them. `emit` returning false stops the work (the receiver is gone); the
/// statistics then cover what was done.
pub fn delta_each(
    base: &Path,
    target: &Path,
    start: u64,
    end: u64,
    emit: &mut dyn FnMut(&[Range]) -> bool,
) -> Result<DeltaStats> {
    delta_in_windows(base, target, start, end, WINDOW, emit)
}

fn delta_in_windows(
    base: &Path,
    target: &Path,
    start: u64,
    end: u64,
    window_bytes: u64,
    emit: &mut dyn FnMut(&[Range]) -> bool,
) -> Result<DeltaStats> {
    let (bf, tf) = (open(base)?, open(target)?);
    for f in [&bf, &tf] {
        // The whole window is read front to back.
        let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    }
    let mut stats = DeltaStats { window_bytes: end.saturating_sub(start), ..Default::default() };
    let data = union(&data_ranges(&bf, base, start, end)?, &data_ranges(&tf, target, start, end)?);
    stats.hole_bytes = stats.window_bytes - data.iter().map(|r| r.len).sum::<u64>();

    let same_fs = match (bf.metadata(), tf.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    };
    // Physical addresses are only comparable within one filesystem.
    let shared_ranges = if same_fs && !data.is_empty() {
        match (extents(&bf, start, end), extents(&tf, start, end)) {
            (Ok(b), Ok(t)) => {
                stats.used_extents = true;
                clip(&shared(&b, &t), start, end)
            }
            (Err(errno), _) | (_, Err(errno)) => {
                tracing::debug!(base = %base.display(), target = %target.display(), %errno, "no FIEMAP: comparing all data");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let candidates = subtract(&data, &shared_ranges);
    let candidate_bytes: u64 = candidates.iter().map(|r| r.len).sum();
    stats.shared_bytes = stats.window_bytes - stats.hole_bytes - candidate_bytes;

    // Window by window; the last range found is held back until the next
    // window shows whether it continues there.
    let mut held: Option<Range> = None;
    let windows = usize::try_from(candidate_bytes.div_ceil(window_bytes.max(1))).unwrap_or(1);
    for window in split(&candidates, windows, CHUNK as u64) {
        let mut found = compare_in_parallel(&bf, base, &tf, target, &window)?;
        stats.compared_bytes += window.iter().map(|r| r.len).sum::<u64>();
        if let (Some(h), Some(first)) = (held, found.first_mut()) {
            if h.end() == first.offset {
                *first = Range::new(h.offset, h.len + first.len);
                held = None;
            }
        }
        let mut out: Vec<Range> = held.take().into_iter().collect();
        held = found.pop();
        out.extend(found);
        if !deliver(&out, &mut stats, emit) {
            return Ok(stats);
        }
    }
    if let Some(h) = held {
        deliver(&[h], &mut stats, emit);
    }
    stats.unshared_equal_bytes = stats.compared_bytes - stats.changed_bytes;
    Ok(stats)
}

/// Counts and hands on found ranges; false when the receiver is gone.
fn deliver(ranges: &[Range], stats: &mut DeltaStats, emit: &mut dyn FnMut(&[Range]) -> bool) -> bool {
    if ranges.is_empty() {
        return true;
    }
    stats.changed_bytes += ranges.iter().map(|r| r.len).sum::<u64>();
    stats.ranges += ranges.len();
    emit(ranges)
}

/// Reads `buf.len()` bytes at `offset`, zeros past the end of the file.
fn read_full(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    Ok(())
}

/// Readers working at once: the compare waits on the disk, not the CPU,
/// and a disk serves several requests at a time (scattered unshared blocks
/// on a reflink pool are latency-bound reads).
const READERS: usize = 8;
/// Below this many bytes in fewer than PARALLEL_MIN_RANGES ranges, one reader.
const PARALLEL_MIN: u64 = 64 << 20;
const PARALLEL_MIN_RANGES: usize = 64;

/// Splits normal `ranges` into at most `parts` consecutive lists of about
/// equal bytes, cutting ranges only at multiples of `align`.
pub fn split(ranges: &[Range], parts: usize, align: u64) -> Vec<Vec<Range>> {
    let align = align.max(1);
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    let share = total.div_ceil(u64::try_from(parts.max(1)).unwrap_or(1)).div_ceil(align) * align;
    let (mut out, mut current, mut filled) = (Vec::new(), Vec::new(), 0);
    for &r in ranges {
        let mut r = r;
        while r.len > 0 {
            if filled >= share {
                out.push(std::mem::take(&mut current));
                filled = 0;
            }
            // Up to the part's share, rounded up to an aligned cut.
            let cut = (r.offset + (share - filled)).div_ceil(align) * align;
            let end = cut.min(r.end());
            current.push(Range::new(r.offset, end - r.offset));
            filled += end - r.offset;
            r = Range::new(end, r.end() - end);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// [`compare`] over [`READERS`] threads, each with a consecutive share of
/// the candidates; the answers are joined in order.
fn compare_in_parallel(bf: &File, base: &Path, tf: &File, target: &Path, candidates: &[Range]) -> Result<Vec<Range>> {
    let total: u64 = candidates.iter().map(|r| r.len).sum();
    if total < PARALLEL_MIN && candidates.len() < PARALLEL_MIN_RANGES {
        return compare(bf, base, tf, target, candidates);
    }
    let parts = split(candidates, READERS, CHUNK as u64);
    let answers: Vec<Result<Vec<Range>>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            parts.iter().map(|part| scope.spawn(move || compare(bf, base, tf, target, part))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut out = Vec::new();
    for answer in answers {
        out.extend(answer?);
    }
    Ok(normalize(out))
}

/// Compares the candidate ranges of both files chunk by chunk; a chunk
/// that differs is split into [`COMPARE_BLOCK`]s and each differing block is
/// reported. The answer is normal (adjacent blocks merged).
fn compare(bf: &File, base: &Path, tf: &File, target: &Path, candidates: &[Range]) -> Result<Vec<Range>> {
    let mut bbuf = vec![0u8; CHUNK];
    let mut tbuf = vec![0u8; CHUNK];
    let mut out: Vec<Range> = Vec::new();
    let mut push = |r: Range| match out.last_mut() {
        Some(last) if last.end() == r.offset => last.len += r.len,
        _ => out.push(r),
    };
    for r in candidates {
        let mut off = r.offset;
        while off < r.end() {
            let n = usize::try_from((r.end() - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            read_full(bf, base, &mut bbuf[..n], off)?;
            read_full(tf, target, &mut tbuf[..n], off)?;
            if bbuf[..n] != tbuf[..n] {
                let chunk_end = off + n as u64;
                let mut p = off;
                while p < chunk_end {
                    let q = ((p / COMPARE_BLOCK + 1) * COMPARE_BLOCK).min(chunk_end);
                    let (i, j) = (usize::try_from(p - off).unwrap_or(0), usize::try_from(q - off).unwrap_or(0));
                    if bbuf[i..j] != tbuf[i..j] {
                        push(Range::new(p, q - p));
                    }
                    p = q;
                }
            }
            off += n as u64;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u64, len: u64) -> Range {
        Range::new(offset, len)
    }

    fn ext(logical: u64, physical: u64, len: u64, flags: u32) -> Extent {
        Extent { logical, physical, len, flags }
    }

    #[test]
    fn normalize_sorts_merges_and_drops_empty() {
        let got = normalize(vec![r(10, 5), r(0, 4), r(4, 2), r(12, 10), r(30, 0), r(40, 1)]);
        assert_eq!(got, vec![r(0, 6), r(10, 12), r(40, 1)]);
        assert_eq!(normalize(vec![]), vec![]);
    }

    #[test]
    fn union_and_subtract() {
        let a = vec![r(0, 10), r(20, 10), r(50, 5)];
        let b = vec![r(5, 20), r(52, 1)];
        assert_eq!(union(&a, &b), vec![r(0, 30), r(50, 5)]);
        assert_eq!(subtract(&a, &b), vec![r(0, 5), r(25, 5), r(50, 2), r(53, 2)]);
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(subtract(&a, &[r(0, 100)]), vec![]);
        // One cut spanning several ranges, and ranges between cuts.
        assert_eq!(subtract(&[r(0, 4), r(6, 4), r(12, 4)], &[r(2, 12)]), vec![r(0, 2), r(14, 2)]);
    }

    #[test]
    fn clip_cuts_the_ends() {
        let a = vec![r(0, 10), r(20, 10), r(40, 10)];
        assert_eq!(clip(&a, 5, 45), vec![r(5, 5), r(20, 10), r(40, 5)]);
        assert_eq!(clip(&a, 10, 20), vec![]);
        assert_eq!(clip(&a, 50, 60), vec![]);
    }

    #[test]
    fn split_shares_bytes_at_aligned_cuts() {
        let a = vec![r(0, 100), r(200, 300), r(1000, 40)];
        let parts = split(&a, 4, 10);
        assert_eq!(parts.concat().iter().map(|r| r.len).sum::<u64>(), 440);
        assert_eq!(normalize(parts.concat()), a);
        assert!(parts.len() <= 4 && parts.len() >= 3, "{parts:?}");
        // Cuts fall on multiples of the alignment, and parts are in order.
        for w in parts.windows(2) {
            let (last, first) = (w[0].last().unwrap(), w[1].first().unwrap());
            assert!(last.end() <= first.offset);
            assert!(last.end() % 10 == 0 || a.iter().any(|x| x.end() == last.end()), "{parts:?}");
        }
        assert_eq!(split(&a, 1, 10), vec![a.clone()]);
        assert!(split(&[], 4, 10).is_empty());
        // Unaligned ranges still come out whole.
        assert_eq!(normalize(split(&[r(3, 7), r(15, 1)], 8, 4).concat()), vec![r(3, 7), r(15, 1)]);
    }

    #[test]
    fn pages_honour_max_results_and_always_send_one() {
        let a: Vec<Range> = (0..5).map(|i| r(i * 10, 1)).collect();
        let p = pages(&a, 2);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(p.concat(), a);
        assert_eq!(pages(&a, 0).len(), 1);
        let empty = pages(&[], 3);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].is_empty());
    }

    #[test]
    fn shared_needs_the_same_physical_bytes() {
        // base: one extent [0, 100) at 1000. target: [0, 40) shared, [40, 50)
        // rewritten elsewhere, [50, 100) shared again but split in two.
        let base = vec![ext(0, 1000, 100, 0)];
        let target = vec![ext(0, 1000, 40, 0), ext(40, 9000, 10, 0), ext(50, 1050, 30, 0), ext(80, 1080, 20, 1)];
        assert_eq!(shared(&base, &target), vec![r(0, 40), r(50, 50)]);
        // Same logical range, shifted physical range: not shared.
        assert_eq!(shared(&base, &[ext(0, 1001, 100, 0)]), vec![]);
        // Encoded (compressed) or delayed extents prove nothing.
        assert_eq!(shared(&base, &[ext(0, 1000, 100, sys::FIEMAP_EXTENT_ENCODED)]), vec![]);
        assert_eq!(shared(&[ext(0, 1000, 100, sys::FIEMAP_EXTENT_DELALLOC)], &base), vec![]);
        // Written in one, unwritten (reads as zeros) in the other.
        assert_eq!(shared(&base, &[ext(0, 1000, 100, sys::FIEMAP_EXTENT_UNWRITTEN)]), vec![]);
        // Overlap that starts inside both extents.
        assert_eq!(shared(&[ext(10, 2010, 50, 0)], &[ext(0, 2000, 30, 0)]), vec![r(10, 20)]);
    }

    fn image(dir: &Path, name: &str, len: u64, writes: &[(u64, &[u8])]) -> std::path::PathBuf {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
        f.sync_all().unwrap();
        path
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn allocated_finds_the_written_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(dir.path(), "a.img", 64 * MIB, &[(MIB, &[1; 4096]), (10 * MIB, &[2; 8192])]);
        let got = allocated(&p, 0, 64 * MIB).unwrap();
        let total: u64 = got.iter().map(|r| r.len).sum();
        // Each write is covered; the filesystem may round to its blocks.
        for (off, len) in [(MIB, 4096), (10 * MIB, 8192)] {
            assert!(got.iter().any(|g| g.offset <= off && g.end() >= off + len), "{off} not in {got:?}");
        }
        assert!(total < 4 * MIB, "holes reported as data: {got:?}");
        // A window starting inside the second write cuts it there.
        let tail = allocated(&p, 10 * MIB + 4096, 64 * MIB).unwrap();
        assert_eq!(tail.first().map(|r| r.offset), Some(10 * MIB + 4096));
        assert!(allocated(&p, 11 * MIB, 64 * MIB).unwrap().is_empty());
    }

    #[test]
    fn delta_reports_exactly_the_changed_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = vec![7u8; 3 << 20];
        let base = image(dir.path(), "base.img", 64 * MIB, &[(0, &big), (40 * MIB, &[9; 4096])]);
        // Target: one byte changed in block 5, blocks 100..102 rewritten,
        // the same bytes written again at 2 MiB (equal: not reported), new
        // data at 20 MiB where the base has a hole, and 40 MiB zeroed.
        big[5 * 4096 + 17] = 8;
        big[100 * 4096..102 * 4096].fill(1);
        let target =
            image(dir.path(), "target.img", 64 * MIB, &[(0, &big), (20 * MIB, &[3; 100]), (40 * MIB, &[0; 4096])]);
        let (got, stats) = delta(&base, &target, 0, 64 * MIB).unwrap();
        assert_eq!(got, vec![r(5 * 4096, 4096), r(100 * 4096, 2 * 4096), r(20 * MIB, 4096), r(40 * MIB, 4096)]);
        assert_eq!(stats.ranges, 4);
        assert_eq!(stats.changed_bytes, 5 * 4096);
        assert_eq!(stats.unchanged_ranges, 0);
        // Holes in both were skipped: far less than the window was read.
        assert!(stats.compared_bytes < 8 * MIB, "{stats:?}");
        assert_eq!(stats.hole_bytes + stats.shared_bytes + stats.compared_bytes, 64 * MIB);
        // A window: starting inside block 100 cuts the range there.
        let (part, _) = delta(&base, &target, 100 * 4096 + 10, 21 * MIB).unwrap();
        assert_eq!(part, vec![r(100 * 4096 + 10, 2 * 4096 - 10), r(20 * MIB, 4096)]);
        // A file and itself: nothing.
        assert_eq!(delta(&base, &base, 0, 64 * MIB).unwrap().0, vec![]);
    }

    /// Large enough for the compare to run on several threads.
    #[test]
    fn delta_in_parallel_finds_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let len = PARALLEL_MIN + 32 * MIB;
        let mut data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let base = image(dir.path(), "base.img", len, &[(0, &data)]);
        let changes = [0, 4096 * 5, 30 * MIB + 1, 48 * MIB - 1, len - 1];
        for &c in &changes {
            data[usize::try_from(c).unwrap()] ^= 0xff;
        }
        let target = image(dir.path(), "target.img", len, &[(0, &data)]);
        let (got, stats) = delta(&base, &target, 0, len).unwrap();
        let want: Vec<Range> = normalize(changes.iter().map(|c| r(c / 4096 * 4096, 4096)).collect());
        assert_eq!(got, want);
        assert_eq!(stats.compared_bytes, len);
    }

    /// Ranges that span windows come out merged, and a receiver that is
    /// gone stops the work.
    #[test]
    fn delta_each_merges_across_windows_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let len = 32 * MIB;
        let base = image(dir.path(), "base.img", len, &[(0, &[1; 4096])]);
        // A changed range over several 2 MiB windows, and one later.
        let across = vec![9u8; 8 << 20];
        let target = image(dir.path(), "target.img", len, &[(0, &[1; 4096]), (3 * MIB, &across), (20 * MIB, &[5; 10])]);
        let mut calls = Vec::new();
        let stats = delta_in_windows(&base, &target, 0, len, 2 * MIB, &mut |rs| {
            calls.push(rs.to_vec());
            true
        })
        .unwrap();
        assert!(calls.len() >= 2, "{calls:?}");
        assert_eq!(calls.concat(), vec![r(3 * MIB, 8 * MIB), r(20 * MIB, 4096)]);
        assert_eq!((stats.ranges, stats.changed_bytes), (2, 8 * MIB + 4096));
        assert_eq!(delta(&base, &target, 0, len).unwrap().0, calls.concat());
        let mut seen = 0;
        let stopped = delta_in_windows(&base, &target, 0, len, 2 * MIB, &mut |_| {
            seen += 1;
            false
        })
        .unwrap();
        assert_eq!(seen, 1);
        assert!(stopped.ranges <= 1, "{stopped:?}");
    }

    #[test]
    fn delta_reads_past_a_shorter_base_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path(), "base.img", 4 * MIB, &[(0, &[1; 4096])]);
        let target = image(dir.path(), "target.img", 8 * MIB, &[(0, &[1; 4096]), (6 * MIB, &[2; 10])]);
        let (got, _) = delta(&base, &target, 0, 8 * MIB).unwrap();
        assert_eq!(got, vec![r(6 * MIB, 4096)]);
    }

    /// On a reflink filesystem (made here on a loop device), a copy shares
    /// every block it did not rewrite: those are skipped unread.
    #[test]
    fn reflinked_copy_is_skipped_unread_on_xfs() {
        if loopvol_test_support::privileged("reflinked_copy_is_skipped_unread_on_xfs") {
            reflinked_copy_is_skipped_unread(&["mkfs.xfs", "-q", "-m", "reflink=1"]);
        }
    }

    #[test]
    fn reflinked_copy_is_skipped_unread_on_btrfs() {
        if loopvol_test_support::privileged("reflinked_copy_is_skipped_unread_on_btrfs") {
            reflinked_copy_is_skipped_unread(&["mkfs.btrfs", "-q"]);
        }
    }

    fn reflinked_copy_is_skipped_unread(mkfs: &[&str]) {
        let sandbox = loopvol_test_support::Sandbox::new();
        let fs_image = image(&sandbox.path(), "fs.img", 512 * MIB, &[]);
        let mnt = sandbox.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new(program).args(args).output().unwrap();
            assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let mkfs_args: Vec<&std::ffi::OsStr> =
            mkfs[1..].iter().map(|a| a.as_ref()).chain([fs_image.as_os_str()]).collect();
        run(mkfs[0], &mkfs_args);
        run("mount", &["-o".as_ref(), "loop".as_ref(), fs_image.as_os_str(), mnt.as_os_str()]);

        let data: Vec<u8> = (0..16 * MIB).map(|i| (i % 251) as u8).collect();
        let base = image(&mnt, "base.img", 64 * MIB, &[(0, &data)]);
        let target = mnt.join("target.img");
        assert_eq!(crate::kernel::copy::copy_image(&base, &target).unwrap(), crate::kernel::copy::CopyMethod::Reflink);
        let f = File::options().write(true).open(&target).unwrap();
        f.write_all_at(&[0xee; 10], 3 * MIB + 5).unwrap();
        f.write_all_at(&[0xee; 4096], 40 * MIB).unwrap();
        f.sync_all().unwrap();
        drop(f);

        let (got, stats) = delta(&base, &target, 0, 64 * MIB).unwrap();
        assert_eq!(got, vec![r(3 * MIB, 4096), r(40 * MIB, 4096)]);
        assert!(stats.used_extents, "{stats:?}");
        // All but the rewritten blocks (xfs copies on write in blocks) is shared.
        assert!(stats.shared_bytes >= 16 * MIB - 4096, "{stats:?}");
        assert!(stats.compared_bytes <= 64 * 1024, "{stats:?}");
        drop(sandbox);
    }

    #[test]
    fn missing_image_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.img");
        assert!(matches!(allocated(&p, 0, 1), Err(Error::Io { op: "open", .. })));
        assert!(matches!(delta(&p, &p, 0, 1), Err(Error::Io { op: "open", .. })));
    }
}
