//! /proc/self/mountinfo parsing (`mountinfo::parse`): any text parses
//! without a panic, line by line; and a line built from arbitrary fields,
//! escaped as the kernel escapes them (fs/proc_namespace.c: space, tab,
//! newline, backslash as \ooo), parses back to exactly those fields.
#![no_main]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use loopvol_backend::test_hooks::mountinfo_parser::{parse, MountEntry};

fn escape(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    // Paths need not be UTF-8; the parser works on the UTF-8 text it is given.
    String::from_utf8(out).unwrap_or_default()
}

fn options(part: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(part).split(',').filter(|o| !o.is_empty()).map(str::to_string).collect()
}

fn number(part: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    for (j, x) in b.iter_mut().enumerate() {
        *x = part.get(i * 4 + j).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    // Any text: no panic, and lines parse independently.
    let text = String::from_utf8_lossy(data);
    let all = parse(&text);
    let by_line: Vec<MountEntry> = text.split('\n').flat_map(parse).collect();
    assert_eq!(all, by_line);
    for e in &all {
        // read_only is the per-mount "ro" flag, never a filesystem option.
        assert_eq!(e.read_only(), e.mount_options.iter().any(|o| o == "ro"));
    }

    // Structured round trip: NUL-separated fields.
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let [ids, root, mount_point, mount_options, optional, fs_type, source, super_options, ..] = parts[..] else {
        return;
    };
    let (root, mount_point) = (String::from_utf8_lossy(root), String::from_utf8_lossy(mount_point));
    let (fs_type, source) = (String::from_utf8_lossy(fs_type), String::from_utf8_lossy(source));
    let (mount_options, super_options) = (options(mount_options), options(super_options));
    let optional: Vec<String> = options(optional).iter().map(|o| escape(o.as_bytes())).filter(|o| o != "-").collect();
    if root.is_empty() || mount_point.is_empty() || fs_type.is_empty() || source.is_empty() {
        return;
    }
    if mount_options.is_empty() || super_options.is_empty() {
        return;
    }
    let want = MountEntry {
        mount_id: number(ids, 0),
        parent_id: number(ids, 1),
        major: number(ids, 2),
        minor: number(ids, 3),
        root: PathBuf::from(OsString::from_vec(root.as_bytes().to_vec())),
        mount_point: PathBuf::from(OsStr::from_bytes(mount_point.as_bytes())),
        mount_options: mount_options.clone(),
        fs_type: fs_type.to_string(),
        source: source.to_string(),
        super_options: super_options.clone(),
    };
    let esc_list = |l: &[String]| l.iter().map(|o| escape(o.as_bytes())).collect::<Vec<_>>().join(",");
    let mut fields = vec![
        format!("{} {} {}:{}", want.mount_id, want.parent_id, want.major, want.minor),
        escape(root.as_bytes()),
        escape(mount_point.as_bytes()),
        esc_list(&mount_options),
    ];
    fields.extend(optional);
    fields.push("-".into());
    fields.push(escape(fs_type.as_bytes()));
    fields.push(escape(source.as_bytes()));
    fields.push(esc_list(&super_options));
    let line = fields.join(" ");
    let got = parse(&format!("{line}\n"));
    assert_eq!(got, vec![want], "line {line:?}");
});
