//! Kubernetes quantities (`loopvol_backend::quantity`, the one parser behind
//! the FlexVolume `size` option, `defaultSize` and CSI ephemeral `size`)
//! against a reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopvol_flexvolume::quantity;

const SUFFIXES: [(&str, u128); 13] = [
    ("", 1),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// Reference for `<digits><suffix>`: exact in u128, None above u64.
fn reference(text: &str) -> Option<Option<u64>> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let factor = SUFFIXES.iter().find(|(s, _)| *s == suffix)?.1;
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Some(None);
    }
    let n: u128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    Some(n.checked_mul(factor).and_then(|v| u64::try_from(v).ok()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 9 {
        // Structured: any u64 with any suffix round-trips.
        let n = u64::from_le_bytes(data[1..9].try_into().unwrap());
        let (suffix, factor) = SUFFIXES[usize::from(data[0]) % SUFFIXES.len()];
        let want = u128::from(n).checked_mul(factor).and_then(|v| u64::try_from(v).ok());
        assert_eq!(quantity::parse(&format!("{n}{suffix}")).ok(), want, "{n}{suffix}");
        // Millis round up to whole bytes.
        assert_eq!(quantity::parse(&format!("{n}m")), Ok(n.div_ceil(1000)), "{n}m");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let flex = quantity::parse(text);
    if flex.is_ok() {
        assert!(!text.is_empty() && !text.starts_with('-'), "{text:?}");
    }
    if let Some(want) = reference(text) {
        assert_eq!(flex.clone().ok(), want, "{text:?} against the reference");
    }
});
