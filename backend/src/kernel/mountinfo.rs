//! /proc/self/mountinfo: a pure parser plus the one function in the project
//! that reads it. Format (proc(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)    (10)         (11)
//! ```
//!
//! (7) is zero or more optional fields ended by the `-` separator (8). The
//! kernel escapes space, tab, newline and backslash in paths as `\040`,
//! `\011`, `\012` and `\134` (fs/proc_namespace.c, `mangle`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the source filesystem that is mounted (bind mounts).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (ro/rw, nosuid, ...).
    pub mount_options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }
}

/// Parses mountinfo text (octal escapes like `\040` undone); bad lines are
/// skipped. [`read`] parses the bytes directly; this is the tests' and the
/// fuzzer's entry.
#[cfg(any(test, feature = "test-hooks"))]
pub fn parse(text: &str) -> Vec<MountEntry> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] over raw bytes: paths need not be UTF-8 and the kernel passes
/// such bytes through unescaped.
fn parse_bytes(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    // Fields are separated by single spaces; escaped paths contain none.
    let mut fields = line.split(|&b| b == b' ');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.parse::<u32>().ok();
    let mount_id = number(fields.next())?;
    let parent_id = number(fields.next())?;
    let dev = std::str::from_utf8(fields.next()?).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let mount_options = split_options(fields.next()?);
    // Optional fields (shared:N, master:N, ...) up to the separator.
    fields.by_ref().find(|field| *field == b"-")?;
    let fs_type = unescape(fields.next()?).into_string().ok()?;
    let source = unescape(fields.next()?).to_string_lossy().into_owned();
    let super_options = split_options(fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    Some(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

fn split_options(field: &[u8]) -> Vec<String> {
    field.split(|&b| b == b',').filter(|o| !o.is_empty()).map(|o| unescape(o).to_string_lossy().into_owned()).collect()
}

/// Undoes the kernel's `\ooo` octal escapes; anything else is kept verbatim.
fn unescape(bytes: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && is_octal_escape(&bytes[i + 1..i + 4]) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|b| (b'0'..=b'7').contains(b))
}

/// Reads and parses /proc/self/mountinfo (the mounts of this process' mount
/// namespace). Errors: the file cannot be read (`Error::Io`).
pub fn read() -> Result<Vec<MountEntry>> {
    const PATH: &str = "/proc/self/mountinfo";
    let text = std::fs::read(PATH).map_err(|e| Error::io("read", PATH, e))?;
    Ok(parse_bytes(&text))
}

/// The mounts stacked on `path`, bottom first.
pub fn at<'a>(entries: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    entries.iter().filter(|e| e.mount_point == path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 27 98:0 /mnt1 /mnt2 rw,noatime master:1 propagate_from:2 - ext3 /dev/root rw,errors=continue
40 27 7:3 / /var/lib/kubelet/pods/x/volumes/my\\040vol rw,nosuid,nodev - xfs /dev/loop3 rw,nouuid,attr2
41 40 7:3 /sub\\011dir /tgt\\012line\\134back ro,nosuid - xfs /dev/loop3 rw
this line is garbage
42 27 7:4 / /blk ro,relatime - devtmpfs udev rw,size=10k
";

    #[test]
    fn parses_fields() {
        let e = parse(FIXTURE);
        assert_eq!(e.len(), 6);
        assert_eq!(e[0].mount_point, Path::new("/proc"));
        assert_eq!(e[0].fs_type, "proc");
        assert_eq!(e[0].super_options, vec!["rw"]);
        let m = &e[2];
        assert_eq!((m.mount_id, m.parent_id, m.major, m.minor), (36, 27, 98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.mount_options, vec!["rw", "noatime"]);
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, vec!["rw", "errors=continue"]);
        assert!(!m.read_only());
    }

    #[test]
    fn undoes_escapes() {
        let e = parse(FIXTURE);
        assert_eq!(e[3].mount_point, Path::new("/var/lib/kubelet/pods/x/volumes/my vol"));
        assert_eq!(e[4].root, Path::new("/sub\tdir"));
        assert_eq!(e[4].mount_point, Path::new("/tgt\nline\\back"));
        assert!(e[4].read_only());
        assert_eq!(e[3].source, "/dev/loop3");
    }

    #[test]
    fn escape_edge_cases() {
        assert_eq!(unescape(b"a\\04"), OsString::from("a\\04"));
        assert_eq!(unescape(b"\\0401"), OsString::from(" 1"));
        assert_eq!(unescape(b"x\\999"), OsString::from("x\\999"));
        assert_eq!(unescape(b"\\"), OsString::from("\\"));
        assert_eq!(unescape(b"\\377"), OsString::from_vec(vec![0xff]));
        assert_eq!(unescape(b"\\400"), OsString::from("\\400"));
    }

    #[test]
    fn skips_bad_lines() {
        assert!(parse("1 2 3:4 / /x rw shared:1 ext4 /dev/x rw\n").is_empty(), "no separator");
        assert!(parse("1 2 3 / /x rw - ext4 /dev/x rw\n").is_empty(), "bad dev");
        assert!(parse("").is_empty());
        assert_eq!(parse("1 2 3:4 / /x rw - ext4 /dev/x rw\n").len(), 1);
    }

    #[test]
    fn non_utf8_paths_survive() {
        let e = parse_bytes(b"1 2 3:4 / /a\xffb\\040c rw - ext4 /dev/x rw\n");
        assert_eq!(e[0].mount_point, PathBuf::from(OsString::from_vec(b"/a\xffb c".to_vec())));
    }

    #[test]
    fn stacked_mounts_bottom_first() {
        let text = "\
50 27 7:1 / /t rw - ext4 /dev/loop1 rw
51 50 7:2 / /t rw - ext4 /dev/loop2 rw
52 27 7:2 / /u rw - ext4 /dev/loop2 rw
";
        let e = parse(text);
        let at_t = at(&e, Path::new("/t"));
        assert_eq!(at_t.iter().map(|m| m.mount_id).collect::<Vec<_>>(), vec![50, 51]);
        assert!(at(&e, Path::new("/v")).is_empty());
    }

    #[test]
    fn reads_own_mountinfo() {
        let e = read().unwrap();
        assert!(e.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
