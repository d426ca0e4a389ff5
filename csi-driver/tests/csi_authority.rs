//! gRPC clients that send the unix socket path as HTTP/2 `:authority` (gRPC
//! C-core, i.e. Python grpcio, and grpc-java) are served like grpc-go's.
//! h2 alone resets such a request with RST_STREAM PROTOCOL_ERROR before our
//! code runs; this talks raw HTTP/2 to the real server to prove the answer.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = len[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A short HPACK string literal (no Huffman), as C-core sends many.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127);
    out.push(u8::try_from(s.len()).unwrap());
    out.extend(s);
}

/// A Probe request's header block. The first request puts `:authority`
/// into the dynamic table (literal with incremental indexing, name index 1),
/// the next ones refer to it by its dynamic index 62: what C-core does.
fn probe_headers(authority: &[u8], first: bool) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    b.push(0x04); // :path, literal without indexing, name index 4
    string(&mut b, b"/csi.v1.Identity/Probe");
    if first {
        b.push(0x41);
        string(&mut b, authority);
    } else {
        b.push(0x80 | 62);
    }
    for (name, value) in [(&b"content-type"[..], &b"application/grpc"[..]), (b"te", b"trailers")] {
        b.push(0x00);
        string(&mut b, name);
        string(&mut b, value);
    }
    b
}

struct Answer {
    message: Vec<u8>,
    grpc_status: Option<String>,
    reset: Option<u32>,
}

/// Sends `requests` Probes on one connection with `authority` and collects
/// what the server answered on each stream.
fn probe_raw(socket: &std::path::Path, authority: &[u8], requests: u32) -> Vec<Answer> {
    let mut conn = UnixStream::connect(socket).unwrap();
    // Only a guard against a hung test; no timing is asserted.
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..requests {
        let stream = 1 + 2 * i;
        out.extend(frame(HEADERS, END_HEADERS, stream, &probe_headers(authority, i == 0)));
        // An empty ProbeRequest: the 5-byte gRPC message prefix only.
        out.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    }
    conn.write_all(&out).unwrap();
    let mut answers: Vec<Answer> =
        (0..requests).map(|_| Answer { message: Vec::new(), grpc_status: None, reset: None }).collect();
    let mut decoder = loona_hpack::Decoder::new();
    let mut done = 0;
    while done < requests {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).expect("the server answers or resets");
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).unwrap();
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if kind == SETTINGS && flags & 1 == 0 {
            conn.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
        }
        assert_ne!(kind, GOAWAY, "the server closed the connection: {payload:?}");
        if stream == 0 {
            continue;
        }
        let answer = &mut answers[usize::try_from((stream - 1) / 2).unwrap()];
        match kind {
            DATA => answer.message.extend(&payload),
            HEADERS => {
                assert!(flags & END_HEADERS != 0, "short answers need no CONTINUATION");
                for (name, value) in decoder.decode(&payload).unwrap() {
                    if name == b"grpc-status" {
                        answer.grpc_status = Some(String::from_utf8(value).unwrap());
                    }
                }
            }
            RST_STREAM => answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            _ => {}
        }
        if kind == RST_STREAM || (kind == HEADERS && flags & END_STREAM != 0) {
            done += 1;
        }
    }
    answers
}

/// ProbeResponse { ready: Some(true) } in a gRPC message frame.
const READY: [u8; 9] = [0, 0, 0, 0, 4, 0x0a, 0x02, 0x08, 0x01];

#[tokio::test]
async fn a_client_sending_the_socket_path_as_authority_is_served() {
    let s = Server::start().await;
    let authority = s.socket.to_str().unwrap().as_bytes().to_vec();
    assert!(authority.contains(&b'/'));
    for (i, answer) in probe_raw(&s.socket, &authority, 3).iter().enumerate() {
        assert_eq!(answer.reset, None, "request {i} was reset (1 = PROTOCOL_ERROR)");
        assert_eq!(answer.grpc_status.as_deref(), Some("0"), "request {i}");
        assert_eq!(answer.message, READY, "request {i}");
    }
}

/// `localhost` (grpc-go) was always served; the percent-encoded socket path
/// (newer C-core) was reset too before the relay.
#[tokio::test]
async fn grpc_go_style_and_percent_encoded_authorities_are_served() {
    let s = Server::start().await;
    let encoded = s.socket.to_str().unwrap().replace('/', "%2F");
    for authority in [&b"localhost"[..], encoded.as_bytes()] {
        for answer in probe_raw(&s.socket, authority, 2) {
            assert_eq!(answer.reset, None);
            assert_eq!(answer.grpc_status.as_deref(), Some("0"));
            assert_eq!(answer.message, READY);
        }
    }
}
