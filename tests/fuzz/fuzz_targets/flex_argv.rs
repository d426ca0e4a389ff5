//! A whole FlexVolume argv (NUL-separated): the call name picks which
//! arguments are paths, options JSON or byte counts, as main.rs does. Paths
//! must be absolute and normalise without `..`; a quoted argument never
//! echoes an options object (secrets) into a reply.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use loopvol_backend::clean_path;
use loopvol_flexvolume::context::{absolute_path, describe};
use loopvol_flexvolume::reply;

/// (call, which arguments are: p = path, j = options JSON, n = byte count, s = other)
const CALLS: [(&str, &str); 9] = [
    ("attach", "js"),
    ("isattached", "js"),
    ("waitforattach", "sj"),
    ("detach", "ss"),
    ("mountdevice", "psj"),
    ("unmountdevice", "p"),
    ("mount", "pj"),
    ("unmount", "p"),
    ("expandfs", "jspnn"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (_call, kinds) = CALLS[usize::from(selector) % CALLS.len()];
    let args: Vec<String> = rest.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    for (kind, arg) in kinds.chars().zip(&args) {
        // Quoting for messages: never an options object, never longer than
        // a path can be; anything else (paths) whole.
        let quoted = describe(arg);
        if arg.contains('{') || arg.len() > 4096 {
            assert!(!quoted.contains('{') && quoted.len() < 64, "{quoted}");
        } else {
            assert_eq!(quoted, format!("{arg:?}"));
        }
        match kind {
            'p' => match absolute_path("path", arg) {
                Ok(path) => {
                    assert!(arg.starts_with('/'));
                    if let Ok(clean) = clean_path(&path) {
                        assert!(clean.is_absolute());
                        assert!(!clean.components().any(|c| c == std::path::Component::ParentDir));
                    }
                }
                Err(e) => {
                    assert!(!arg.starts_with('/'));
                    let json = reply::failure(&e).to_json();
                    let v: serde_json::Value = serde_json::from_str(&json).expect("a reply is JSON");
                    assert_eq!(v["status"], "Failure");
                }
            },
            'j' => common::check_options(arg),
            'n' => {
                let _ = arg.parse::<u64>();
            }
            _ => {}
        }
    }
});
