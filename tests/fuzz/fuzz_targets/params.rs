//! The one volume-parameter parser (`loopvol_backend::params`) on arbitrary
//! key/value maps in every dialect: it never panics; what it accepts obeys
//! the one boolean rule and the fs type table (and, for mutable parameters,
//! holds only the mutable keys); what it refuses names the key
//! (bounded) and never echoes a value longer than an error may quote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopvol_backend::params::{parse_bool, Dialect, VolumeParams, MUTABLE_KEYS};
use loopvol_backend::{Error, FsType};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Lines of `key=value`; the first byte picks the dialect.
    let dialect = match data.first().map(|b| b % 4) {
        Some(0) => Dialect::StorageClass,
        Some(1) => Dialect::EphemeralVolume,
        Some(2) => Dialect::Mutable,
        _ => Dialect::FlexVolume,
    };
    let pairs: Vec<(&str, &str)> = text.lines().skip(1).filter_map(|l| l.split_once('=')).collect();
    match VolumeParams::parse(pairs.iter().copied(), dialect) {
        Ok(p) => {
            for (key, value) in &pairs {
                if matches!(*key, "thick" | "directIO") {
                    let want = parse_bool(key, value).expect("an accepted boolean parses alone");
                    assert!(value.is_empty() || want.is_some());
                }
            }
            if let Some(fs) = p.fs_type {
                assert!(FsType::all().any(|f| f == fs));
            }
            assert!(p.size.is_none_or(|s| s > 0), "a size is never zero");
            assert!(p.mount_options.iter().all(|o| !o.is_empty() && !o.contains(',')));
            if dialect != Dialect::StorageClass {
                assert!(p.kept.is_empty());
            }
            if dialect == Dialect::Mutable {
                // Only what ModifyVolume may change gets through.
                assert!(pairs.iter().all(|(k, _)| MUTABLE_KEYS.contains(k)), "{pairs:?}");
                assert!(p.fs_type.is_none() && p.size.is_none() && p.mount_options.is_empty());
            }
        }
        Err(Error::InvalidParameter { key, reason }) => {
            assert!(key.len() <= 64, "the key is quoted bounded: {}", key.len());
            // At most 64 bytes of input quoted twice (value, parser message),
            // each byte escaped to at most 6 (`\u{1d}`), plus the text.
            assert!(reason.len() <= 1024, "the reason is bounded: {}", reason.len());
        }
        Err(Error::InvalidId { .. }) => unreachable!("ids are not parsed here"),
        Err(other) => panic!("unexpected error kind: {other}"),
    }
});
