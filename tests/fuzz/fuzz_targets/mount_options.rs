//! User mount options (`MountOptions::parse`, the allow-list): whatever is
//! accepted can never weaken nosuid/nodev, switch read-only, change how the
//! driver mounts (bind, remount, move), or smuggle a second option inside
//! one entry; parsing is deterministic and its result re-parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopvol_backend::test_hooks::MountOptions;
use loopvol_backend::{Error, FsType};
use nix::mount::MsFlags;

const NEVER: &[&str] =
    &["suid", "dev", "ro", "rw", "defaults", "bind", "rbind", "remount", "move", "loop", "nouuid", "errors=panic"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let fs = match selector % 4 {
        0 => None,
        1 => Some(FsType::Ext4),
        2 => Some(FsType::Xfs),
        _ => Some(FsType::Btrfs),
    };
    let text = String::from_utf8_lossy(rest);
    let list: Vec<&str> = text.split('\n').collect();
    match MountOptions::parse(&list, fs) {
        Ok(m) => {
            let forbidden = MsFlags::MS_RDONLY
                | MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_MOVE
                | MsFlags::MS_REC
                | MsFlags::MS_SHARED
                | MsFlags::MS_PRIVATE
                | MsFlags::MS_SLAVE
                | MsFlags::MS_UNBINDABLE
                | MsFlags::MS_MANDLOCK;
            assert!((m.flags & forbidden).is_empty(), "{:?}", m.flags);
            let mut sorted = m.given.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, m.given, "given is sorted and unique");
            for o in &m.given {
                assert!(!o.is_empty() && !o.contains(','), "{o:?}");
                assert!(o.bytes().all(|b| b.is_ascii_alphanumeric() || b"=_-:.".contains(&b)), "{o:?}");
                let name = o.split_once('=').map_or(o.as_str(), |(n, _)| n);
                assert!(!NEVER.contains(&o.as_str()) && !NEVER.contains(&name), "{o:?} must be refused");
                assert!(list.iter().any(|l| l.trim() == o), "{o:?} was given");
            }
            if !m.data.is_empty() {
                assert!(fs.is_some(), "filesystem options need a filesystem");
                for d in m.data.split(',') {
                    assert!(m.given.iter().any(|g| g == d), "data option {d:?} was given");
                }
            }
            assert_eq!(MountOptions::parse(&m.given, fs).expect("accepted options re-parse"), m);
        }
        Err(Error::MountOptionNotAllowed { .. }) => {}
        Err(e) => panic!("unexpected error kind {e:?}"),
    }
});
