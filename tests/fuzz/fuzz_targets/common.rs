//! Checks shared by the FlexVolume fuzz targets.

#![allow(dead_code)]

use base64::Engine;
use loopvol_flexvolume::options::{Options, SECRET_PREFIX};
use loopvol_flexvolume::{log, reply};

/// What a parse shows to the world, unredacted: the log summary and Debug
/// of accepted options, or the Failure reply of refused ones.
fn visible(json: &str) -> String {
    log::forget_secrets();
    match Options::parse(json) {
        Ok(opts) => {
            if let Ok(id) = opts.id() {
                loopvol_backend::id::validate(&id).expect("an accepted id is valid");
                assert!(!id.contains('/') && id != "." && id != "..");
            }
            if let Some(size) = opts.size {
                assert!(size > 0, "size 0 must be refused");
            }
            for o in &opts.mount_options {
                assert!(!o.is_empty() && !o.contains(',') && o.trim() == o, "mount option {o:?}");
            }
            for s in opts.secrets.values() {
                assert_eq!(format!("{s:?}"), "Secret([redacted])");
            }
            format!("ok {} {:?}", opts.summary(), opts)
        }
        Err(e) => {
            let r = reply::failure(&e);
            let json = r.to_json();
            let v: serde_json::Value = serde_json::from_str(&json).expect("a reply is JSON");
            assert_eq!(v["status"], "Failure", "{json}");
            assert!(!v["message"].as_str().expect("a Failure has a message").is_empty());
            format!("failure {json}")
        }
    }
}

/// Parses kubelet's options JSON the way every call does and checks what
/// can come out of it (a valid ID, a positive size, clean mount options, a
/// well-formed Failure), and that secrets never reach it: the same options
/// with other secret values (valid base64 stays valid, invalid stays
/// invalid) must produce exactly the same summary, Debug and reply.
pub fn check_options(json: &str) {
    visible(json);
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else { return };
    let has_secret = map.iter().any(|(k, v)| k.starts_with(SECRET_PREFIX) && v.is_string());
    if !has_secret {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut swapped = map.clone();
    for (key, value) in swapped.iter_mut() {
        if let (true, serde_json::Value::String(s)) = (key.starts_with(SECRET_PREFIX), &*value) {
            let other = if b64.decode(s).is_ok() { b64.encode("0ther-v4lue") } else { "%%not-base64%%".to_string() };
            *value = serde_json::Value::String(other);
        }
    }
    let original = serde_json::Value::Object(map).to_string();
    let swapped = serde_json::Value::Object(swapped).to_string();
    assert_eq!(visible(&original), visible(&swapped), "secret values leak into what the driver shows");
}
