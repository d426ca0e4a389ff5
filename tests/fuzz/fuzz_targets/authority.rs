//! The HTTP/2 relay that fixes gRPC C-core's `:authority`
//! (csi-driver/src/authority.rs) on arbitrary client byte streams: it never
//! panics; a stream that is not HTTP/2 passes unchanged; and when it accepts
//! a stream, every header block it emits decodes with a fresh HPACK decoder
//! (it shares no table state with the server's) and carries only an
//! `:authority` that h2 accepts.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loona_hpack::Decoder;

#[path = "../../../csi-driver/src/authority.rs"]
#[allow(dead_code)]
mod authority;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    // The first byte says whether the client sends the HTTP/2 preface.
    let Some((&mode, body)) = data.split_first() else { return };
    let mut input = Vec::with_capacity(PREFACE.len() + body.len());
    if mode & 1 == 1 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(body);
    let mut rx: &[u8] = &input;
    let mut out = Vec::new();
    if runtime().block_on(authority::rewrite_stream(&mut rx, &mut out)).is_err() {
        return;
    }
    if !input.starts_with(PREFACE) {
        assert_eq!(out, input, "a stream that is not HTTP/2 passes unchanged");
        return;
    }
    // Walk the frames written: every one is complete, and each header block
    // (HEADERS and its CONTINUATIONs, all ours) decodes on its own.
    let mut rest = &out[PREFACE.len()..];
    let mut block: Option<Vec<u8>> = None;
    while !rest.is_empty() {
        assert!(rest.len() >= 9, "a truncated frame head");
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        assert!(rest.len() >= 9 + len, "a truncated frame");
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        let fragment = match (kind, block.is_some()) {
            (0x1, false) => {
                assert_eq!(flags & 0x8, 0, "emitted header blocks are not padded");
                if flags & 0x20 != 0 { &payload[5..] } else { payload }
            }
            (0x9, true) => payload,
            (0x1, true) => panic!("a HEADERS frame inside a header block"),
            _ => continue,
        };
        let mut whole = block.take().unwrap_or_default();
        whole.extend_from_slice(fragment);
        if flags & 0x4 == 0 {
            block = Some(whole);
            continue;
        }
        let fields = Decoder::new().decode(&whole).expect("an emitted header block decodes without shared state");
        for (name, value) in &fields {
            if name.as_slice() == b":authority" {
                assert!(http::uri::Authority::try_from(value.as_slice()).is_ok(), "{value:?}");
            }
        }
    }
    assert!(block.is_none(), "an emitted header block ends");
});
