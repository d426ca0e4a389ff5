//! kubelet's options JSON (the FlexVolume `mount`/`attach`/... argument):
//! never a panic, an accepted ID is a valid file name, secrets never reach a
//! log summary or a Failure reply.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        common::check_options(json);
    }
});
