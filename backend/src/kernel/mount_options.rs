//! User-supplied mount options (StorageClass `mountOptions`, CSI
//! `mount_flags`), checked against an allow-list and split into mount(2)
//! flags and the filesystem's data string.
//!
//! Policy:
//! - each list element is exactly one option; a comma inside an element is
//!   refused (it would smuggle further options past the allow-list);
//! - `suid` and `dev` are refused: loopvol always mounts volumes nosuid and
//!   nodev (see `mount::mount_fs`), so they could only weaken that;
//! - `exec` is accepted as the default it is (it only conflicts with `noexec`);
//! - `ro` and `rw` are refused: read-only is chosen by the volume's access
//!   mode / readonly flag, and a second switch could contradict it;
//! - options that contradict each other (`noexec`+`exec`, `commit=5`+`commit=9`)
//!   are refused rather than resolved by order;
//! - filesystem data options are allowed only for their filesystem.

use nix::mount::MsFlags;

use crate::error::{Error, Result};
use crate::filesystem::FsType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: nix::mount::MsFlags,
    /// Comma-separated data string passed to the filesystem.
    pub data: String,
    /// The options as given (normalised), for comparing with an existing mount.
    pub given: Vec<String>,
}

/// What one allowed option turns into.
#[derive(Clone, Copy)]
enum Kind {
    /// A mount(2) flag.
    Flag(MsFlags),
    /// Accepted, changes nothing (the default, e.g. `exec`).
    Default,
    /// Goes into the data string; allowed for the filesystems whose policy
    /// (`filesystem::POLICIES`) lists it.
    Data,
}

/// How an option's value is checked.
#[derive(Clone, Copy)]
enum Value {
    None,
    OneOf(&'static [&'static str]),
    /// A decimal number in the range.
    Number(u64, u64),
    /// A size: digits with an optional k/m/g suffix.
    Size,
    /// btrfs compression: algorithm with an optional `:level`.
    Compression,
}

struct Rule {
    name: &'static str,
    kind: Kind,
    value: Value,
    /// Options in the same group contradict each other.
    group: Option<&'static str>,
}

const fn flag(name: &'static str, flag: MsFlags, group: Option<&'static str>) -> Rule {
    Rule { name, kind: Kind::Flag(flag), value: Value::None, group }
}

const fn data(name: &'static str, value: Value, group: Option<&'static str>) -> Rule {
    Rule { name, kind: Kind::Data, value, group }
}

/// The allow-list. `group` names a set of mutually exclusive options; an
/// option with a value is also exclusive with itself under another value.
const RULES: &[Rule] = &[
    // Generic per-mount flags (mount(2)).
    flag("noatime", MsFlags::MS_NOATIME, Some("atime")),
    flag("relatime", MsFlags::MS_RELATIME, Some("atime")),
    flag("strictatime", MsFlags::MS_STRICTATIME, Some("atime")),
    flag("nodiratime", MsFlags::MS_NODIRATIME, None),
    flag("lazytime", MsFlags::MS_LAZYTIME, None),
    flag("nosuid", MsFlags::MS_NOSUID, None),
    flag("nodev", MsFlags::MS_NODEV, None),
    flag("noexec", MsFlags::MS_NOEXEC, Some("exec")),
    Rule { name: "exec", kind: Kind::Default, value: Value::None, group: Some("exec") },
    flag("sync", MsFlags::MS_SYNCHRONOUS, None),
    flag("dirsync", MsFlags::MS_DIRSYNC, None),
    // Filesystem options: each filesystem's policy says which it accepts.
    data("discard", Value::None, Some("discard")),
    data("nodiscard", Value::None, Some("discard")),
    // ext4's (errors=panic is not offered: a user's volume must not be able
    // to panic the node).
    data("data", Value::OneOf(&["ordered", "writeback", "journal"]), None),
    data("commit", Value::Number(0, 300), None),
    data("barrier", Value::None, Some("barrier")),
    data("nobarrier", Value::None, Some("barrier")),
    data("errors", Value::OneOf(&["remount-ro", "continue"]), None),
    data("usrquota", Value::None, None),
    data("grpquota", Value::None, None),
    data("prjquota", Value::None, None),
    // xfs's.
    data("inode64", Value::None, None),
    data("noquota", Value::None, None),
    data("logbsize", Value::Size, None),
    data("allocsize", Value::Size, None),
    // btrfs's.
    data("compress", Value::Compression, Some("compress")),
    data("compress-force", Value::Compression, Some("compress")),
    data("ssd", Value::None, Some("ssd")),
    data("nossd", Value::None, Some("ssd")),
    data("space_cache", Value::OneOf(&["v2"]), None),
    data("autodefrag", Value::None, None),
];

/// Options refused with a specific reason rather than "unknown".
fn refused(name: &str) -> Option<&'static str> {
    Some(match name {
        "suid" => "volumes are always mounted nosuid",
        "dev" => "volumes are always mounted nodev",
        "ro" | "rw" => "read-only access is set by the volume's access mode or readonly flag",
        "defaults" => "use no option for the defaults",
        "bind" | "rbind" | "remount" | "move" | "loop" => "the driver decides how the volume is mounted",
        "nouuid" => "the driver sets it for xfs",
        "errors=panic" => "a volume must not be able to panic the node",
        _ => return None,
    })
}

impl MountOptions {
    /// Validates `options` against the allow-list (see the module docs) for
    /// a filesystem of type `fs` (None: only generic options are allowed).
    /// Empty strings are ignored. Pure function.
    ///
    /// Errors: `Error::MountOptionNotAllowed` naming the first offending
    /// option (refused, unknown, for another filesystem, bad value,
    /// contradicting an earlier one, or containing a comma).
    pub fn parse<S: AsRef<str>>(options: &[S], fs: Option<FsType>) -> Result<Self> {
        let mut flags = MsFlags::empty();
        let mut seen: Vec<(String, &'static Rule)> = Vec::new();
        for raw in options {
            let option = raw.as_ref().trim();
            if option.is_empty() {
                continue;
            }
            let rule = check_one(option, fs)?;
            if seen.iter().any(|(o, _)| o == option) {
                continue; // exact duplicate
            }
            if let Some((other, _)) =
                seen.iter().find(|(_, r)| std::ptr::eq(*r, rule) || (rule.group.is_some() && r.group == rule.group))
            {
                return Err(not_allowed(option, conflict_reason(other)));
            }
            if let Kind::Flag(f) = rule.kind {
                flags |= f;
            }
            seen.push((option.to_string(), rule));
        }
        let mut given: Vec<String> = seen.iter().map(|(o, _)| o.clone()).collect();
        given.sort();
        let data = given
            .iter()
            .filter(|o| matches!(rule_for(o).map(|r| r.kind), Some(Kind::Data)))
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        Ok(MountOptions { flags, data, given })
    }
}

fn not_allowed(option: &str, reason: &'static str) -> Error {
    Error::MountOptionNotAllowed { option: crate::id::truncate(option), reason }
}

fn conflict_reason(_other: &str) -> &'static str {
    "it contradicts another option given"
}

fn rule_for(option: &str) -> Option<&'static Rule> {
    let name = option.split_once('=').map_or(option, |(n, _)| n);
    RULES.iter().find(|r| r.name == name)
}

fn check_one(option: &str, fs: Option<FsType>) -> Result<&'static Rule> {
    if option.contains(',') {
        return Err(not_allowed(option, "give one option per entry, commas are not allowed"));
    }
    if !option.bytes().all(|b| b.is_ascii_alphanumeric() || b"=_-:.".contains(&b)) {
        return Err(not_allowed(option, "only letters, digits and = _ - : . are allowed"));
    }
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if let Some(reason) = refused(option).or_else(|| refused(name)) {
        return Err(not_allowed(option, reason));
    }
    let Some(rule) = RULES.iter().find(|r| r.name == name) else {
        return Err(not_allowed(option, "not a supported mount option"));
    };
    if let Kind::Data = rule.kind {
        match fs {
            None => return Err(not_allowed(option, "a filesystem option needs a filesystem type")),
            Some(fs) if !fs.policy().data_options.contains(&rule.name) => {
                return Err(not_allowed(option, "not an option of this filesystem type"));
            }
            Some(_) => {}
        }
    }
    let ok = match (rule.value, value) {
        (Value::None, None) => true,
        (Value::None, Some(_)) => return Err(not_allowed(option, "this option takes no value")),
        (_, None) => return Err(not_allowed(option, "this option needs a value")),
        (Value::OneOf(allowed), Some(v)) => allowed.contains(&v),
        (Value::Number(lo, hi), Some(v)) => is_digits(v) && v.parse::<u64>().is_ok_and(|n| (lo..=hi).contains(&n)),
        (Value::Size, Some(v)) => is_size(v),
        (Value::Compression, Some(v)) => is_compression(v),
    };
    if !ok {
        return Err(not_allowed(option, "invalid value"));
    }
    Ok(rule)
}

fn is_digits(v: &str) -> bool {
    !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit())
}

fn is_size(v: &str) -> bool {
    let digits = v.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(v);
    is_digits(digits)
}

fn is_compression(v: &str) -> bool {
    let (algo, level) = match v.split_once(':') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    // Levels per btrfs(5): zlib 1-9, zstd 1-15 (negative levels left out), lzo none.
    let max = match algo {
        "zlib" => 9,
        "zstd" => 15,
        "lzo" => 0,
        _ => return false,
    };
    match level {
        None => true,
        Some(l) => is_digits(l) && l.parse::<u32>().is_ok_and(|n| (1..=max).contains(&n)),
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { flags: nix::mount::MsFlags::empty(), data: String::new(), given: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str], fs: Option<FsType>) -> Result<MountOptions> {
        MountOptions::parse(opts, fs)
    }

    fn reason(opts: &[&str], fs: Option<FsType>) -> (String, &'static str) {
        match parse(opts, fs) {
            Err(Error::MountOptionNotAllowed { option, reason }) => (option, reason),
            other => panic!("expected a refusal for {opts:?}, got {other:?}"),
        }
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(parse(&[], None).unwrap(), MountOptions::default());
        assert_eq!(parse(&["", "  "], Some(FsType::Ext4)).unwrap(), MountOptions::default());
    }

    #[test]
    fn generic_flags() {
        let o = parse(&["noatime", "nosuid", "nodev", "noexec", "sync", "dirsync", "lazytime", "nodiratime"], None)
            .unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_NOATIME
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_SYNCHRONOUS
                | MsFlags::MS_DIRSYNC
                | MsFlags::MS_LAZYTIME
                | MsFlags::MS_NODIRATIME
        );
        assert_eq!(o.data, "");
        assert_eq!(o.given, vec!["dirsync", "lazytime", "noatime", "nodev", "nodiratime", "noexec", "nosuid", "sync"]);
        assert_eq!(parse(&["exec"], None).unwrap().flags, MsFlags::empty());
        assert_eq!(parse(&["strictatime"], None).unwrap().flags, MsFlags::MS_STRICTATIME);
        assert_eq!(parse(&["relatime"], None).unwrap().flags, MsFlags::MS_RELATIME);
    }

    #[test]
    fn fs_data_options() {
        let o = parse(
            &["noatime", "data=writeback", "commit=30", "errors=remount-ro", "prjquota", "discard"],
            Some(FsType::Ext4),
        )
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOATIME);
        assert_eq!(o.data, "commit=30,data=writeback,discard,errors=remount-ro,prjquota");
        let o = parse(&["inode64", "logbsize=256k", "allocsize=64m", "noquota"], Some(FsType::Xfs)).unwrap();
        assert_eq!(o.data, "allocsize=64m,inode64,logbsize=256k,noquota");
        let o = parse(&["compress=zstd:3", "ssd", "space_cache=v2", "autodefrag", "commit=120"], Some(FsType::Btrfs))
            .unwrap();
        assert_eq!(o.data, "autodefrag,commit=120,compress=zstd:3,space_cache=v2,ssd");
        assert!(parse(&["compress-force=lzo"], Some(FsType::Btrfs)).is_ok());
        assert!(parse(&["compress=zlib:9"], Some(FsType::Btrfs)).is_ok());
        assert!(parse(&["nodiscard", "nobarrier"], Some(FsType::Ext4)).is_ok());
    }

    #[test]
    fn duplicates_collapse_and_order_does_not_matter() {
        let a = parse(&["noatime", "nodev", "noatime"], None).unwrap();
        let b = parse(&["nodev", "noatime"], None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.given, vec!["noatime", "nodev"]);
    }

    #[test]
    fn refuses_with_reasons() {
        assert_eq!(reason(&["suid"], None).1, "volumes are always mounted nosuid");
        assert_eq!(reason(&["dev"], None).1, "volumes are always mounted nodev");
        assert!(reason(&["ro"], None).1.contains("read-only"));
        assert!(reason(&["rw"], Some(FsType::Ext4)).1.contains("read-only"));
        assert_eq!(reason(&["frobnicate"], None).1, "not a supported mount option");
        assert_eq!(reason(&["errors=panic"], Some(FsType::Ext4)).1, "a volume must not be able to panic the node");
        assert_eq!(reason(&["nouuid"], Some(FsType::Xfs)).1, "the driver sets it for xfs");
    }

    #[test]
    fn refuses_comma_injection_and_bad_characters() {
        let (option, why) = reason(&["noatime,suid"], None);
        assert_eq!(option, "noatime,suid");
        assert!(why.contains("comma"));
        assert!(reason(&["data=ordered,dev"], Some(FsType::Ext4)).1.contains("comma"));
        assert!(reason(&["commit=5 suid"], Some(FsType::Ext4)).1.contains("only letters"));
        assert!(reason(&["logbsize=$(reboot)"], Some(FsType::Xfs)).1.contains("only letters"));
        assert!(reason(&["noatime\0"], None).1.contains("only letters"));
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(reason(&["data=wild"], Some(FsType::Ext4)).1, "invalid value");
        assert_eq!(reason(&["commit=-1"], Some(FsType::Ext4)).1, "invalid value");
        assert_eq!(reason(&["commit=99999"], Some(FsType::Ext4)).1, "invalid value");
        assert_eq!(reason(&["commit"], Some(FsType::Ext4)).1, "this option needs a value");
        assert_eq!(reason(&["noatime=1"], None).1, "this option takes no value");
        assert_eq!(reason(&["compress=zstd:99"], Some(FsType::Btrfs)).1, "invalid value");
        assert_eq!(reason(&["compress=lzo:1"], Some(FsType::Btrfs)).1, "invalid value");
        assert_eq!(reason(&["compress=brotli"], Some(FsType::Btrfs)).1, "invalid value");
        assert_eq!(reason(&["logbsize=k"], Some(FsType::Xfs)).1, "invalid value");
        assert_eq!(reason(&["space_cache=v1"], Some(FsType::Btrfs)).1, "invalid value");
    }

    #[test]
    fn fs_options_need_their_fs() {
        assert_eq!(reason(&["inode64"], Some(FsType::Ext4)).1, "not an option of this filesystem type");
        assert_eq!(reason(&["data=ordered"], Some(FsType::Xfs)).1, "not an option of this filesystem type");
        assert_eq!(reason(&["compress=zstd"], Some(FsType::Ext4)).1, "not an option of this filesystem type");
        assert_eq!(reason(&["barrier"], Some(FsType::Xfs)).1, "not an option of this filesystem type");
        assert_eq!(reason(&["discard"], None).1, "a filesystem option needs a filesystem type");
    }

    #[test]
    fn refuses_contradictions() {
        let (option, why) = reason(&["noexec", "exec"], None);
        assert_eq!(option, "exec");
        assert!(why.contains("contradicts"));
        assert!(reason(&["noatime", "relatime"], None).1.contains("contradicts"));
        assert!(reason(&["commit=5", "commit=9"], Some(FsType::Ext4)).1.contains("contradicts"));
        assert!(reason(&["compress=zstd", "compress-force=lzo"], Some(FsType::Btrfs)).1.contains("contradicts"));
        assert!(reason(&["discard", "nodiscard"], Some(FsType::Xfs)).1.contains("contradicts"));
    }

    #[test]
    fn policies_and_rules_agree() {
        for fs in FsType::all() {
            for name in fs.policy().data_options {
                let rule = RULES.iter().find(|r| r.name == *name);
                assert!(rule.is_some_and(|r| matches!(r.kind, Kind::Data)), "{fs}: {name} has no data rule");
            }
        }
        for rule in RULES.iter().filter(|r| matches!(r.kind, Kind::Data)) {
            assert!(FsType::all().any(|fs| fs.policy().data_options.contains(&rule.name)), "{} is unused", rule.name);
        }
    }
}
