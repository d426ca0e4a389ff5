//! Volume and snapshot IDs. IDs become file names in the pool, so they are
//! validated before any path is built from them.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest accepted ID (the CSI spec's string limit).
pub const MAX_ID_LEN: usize = 128;

/// Checks an ID: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or
/// `-` (no hidden files, no option-looking arguments), so `/` and `..` cannot occur.
pub fn validate(id: &str) -> Result<()> {
    let bad = |reason| Err(Error::InvalidId { id: truncate(id), reason });
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 128 bytes");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks a CO-chosen name (CSI: any UTF-8 up to 128 bytes).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidName { name: String::new(), reason: "empty" });
    }
    if name.len() > MAX_ID_LEN {
        return Err(Error::InvalidName { name: truncate(name), reason: "longer than 128 bytes" });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidName { name: truncate(name), reason: "control characters are not allowed" });
    }
    Ok(())
}

/// The ID a name maps to. A name that is already a valid ID is its own ID
/// (so `pvc-…` volumes keep readable file names and a FlexVolume volumeID equals
/// the CSI volume handle); any other name maps to a hash, deterministically, so
/// that retries and racing processes agree without a shared index.
pub fn from_name(prefix: &str, name: &str) -> String {
    if validate(name).is_ok() && !name.starts_with(prefix) {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Error messages quote at most 64 bytes of hostile input (a 1 MB ID echoed
/// into a gRPC status would not even fit in HTTP/2 headers).
pub(crate) fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["pvc-0b7c2f0e-4a1d-4c59-9a5e-1f2e3d4c5b6a", "a", "vol_1.img", &"x".repeat(128)] {
            validate(id).unwrap();
        }
    }

    #[test]
    fn rejects_hostile_ids() {
        for id in ["", ".", "..", "../etc", "a/b", "/abs", ".hidden", "-rf", "a b", "é", &"x".repeat(129), "a\0b"] {
            assert!(validate(id).is_err(), "{id:?} must be rejected");
        }
    }

    #[test]
    fn names_map_to_stable_valid_ids() {
        let a = from_name("h-", "sanity Node Service 1");
        assert_eq!(a, from_name("h-", "sanity Node Service 1"));
        assert_ne!(a, from_name("h-", "sanity Node Service 2"));
        validate(&a).unwrap();
        assert_eq!(from_name("h-", "pvc-123"), "pvc-123");
        // A name that looks like a hashed ID is hashed too, so it cannot collide with one.
        assert_ne!(from_name("h-", "h-abc"), "h-abc");
        validate(&from_name("h-", &"é".repeat(64))).unwrap();
    }

    #[test]
    fn names_are_checked() {
        validate_name("any name, with spaces / slashes").unwrap();
        assert!(validate_name("").is_err());
        assert!(validate_name(&"n".repeat(129)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
