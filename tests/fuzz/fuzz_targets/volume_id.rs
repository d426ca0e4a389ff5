//! Volume/snapshot IDs, CO names and the paths built from them
//! (`id::validate`, `id::validate_name`, `id::from_name`, `node::clean_path`):
//! whatever is accepted can only name a file inside its pool directory.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use loopvol_backend::id;
use loopvol_backend::clean_path;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    match id::validate(&s) {
        Ok(()) => {
            assert!(!s.is_empty() && s.len() <= id::MAX_ID_LEN);
            assert!(!s.starts_with('.') && !s.starts_with('-'));
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            // A path built from it stays in the pool directory.
            let dir = Path::new("/pool/volumes");
            for name in [format!("{s}.img"), format!("{s}.json"), format!(".{s}.img.tmp")] {
                let p = dir.join(&name);
                assert_eq!(p.parent(), Some(dir), "{name:?} escapes");
                assert_eq!(p.components().count(), 4, "{name:?}");
            }
        }
        // At most 64 bytes of the input are quoted (Debug-escaped: <= 10 chars each).
        Err(e) => assert!(e.to_string().len() < 1024, "error messages quote a bounded prefix"),
    }
    match id::validate_name(&s) {
        Ok(()) => assert!(!s.is_empty() && s.len() <= id::MAX_ID_LEN && !s.chars().any(char::is_control)),
        Err(e) => assert!(e.to_string().len() < 1024),
    }
    for prefix in ["lv-", "ls-", "lg-", "t-"] {
        let derived = id::from_name(prefix, &s);
        id::validate(&derived).expect("a derived id is valid");
        assert_eq!(derived, id::from_name(prefix, &s), "deterministic");
        if id::validate(&s).is_ok() && !s.starts_with(prefix) {
            assert_eq!(derived, s);
        } else {
            assert!(derived.starts_with(prefix) && derived.len() == prefix.len() + 40, "{derived}");
        }
    }

    let path = Path::new(OsStr::from_bytes(data));
    match clean_path(path) {
        Ok(clean) => {
            assert!(clean.is_absolute());
            assert!(clean.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
            assert!(!clean.as_os_str().as_bytes().contains(&0));
            let bytes = clean.as_os_str().as_bytes();
            assert!(bytes == b"/" || !bytes.ends_with(b"/"), "{clean:?}");
            assert!(!bytes.windows(2).any(|w| w == b"//"), "{clean:?}");
            assert_eq!(clean_path(&clean).unwrap(), clean, "idempotent");
            let names = |p: &Path| {
                p.components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .map(|c| c.as_os_str().to_owned())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(path), names(&clean), "same names in the same order");
        }
        Err(_) => assert!(
            !path.is_absolute()
                || path.components().any(|c| c == Component::ParentDir)
                || data.contains(&0)
                || data.len() > 4096
        ),
    }
});
