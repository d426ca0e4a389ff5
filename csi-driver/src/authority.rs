//! Serves gRPC clients that send the unix socket path as HTTP/2 `:authority`.
//!
//! gRPC C-core (Python grpcio, the C++ and Ruby clients), grpc-java and older
//! grpcurl send `:authority` = the socket path (`/var/lib/kubelet/plugins/
//! loopvol.csi.io/csi.sock`) on a `unix:` channel. A `/` is not allowed in a
//! URI authority, and h2 (under hyper and tonic) answers such a request with
//! RST_STREAM PROTOCOL_ERROR while turning the header block into a request,
//! before any code of ours runs (hyperium/h2 issue #442, PR #487 still open;
//! hyper and tonic expose no setting for it). grpc-go, which kubelet and the
//! sidecars use, sends `localhost`, which is why nothing of Kubernetes saw it.
//!
//! So each accepted connection is relayed to tonic through an in-process
//! pipe, and the client-to-server direction is read frame by frame: every
//! header block is HPACK-decoded (the client's dynamic table is followed
//! across the connection), an `:authority` that is not a valid URI authority
//! becomes `localhost` (a unix socket has no host; the path names nothing our
//! services read), and the block is re-encoded as literals without indexing,
//! so h2's decoder needs no shared table state with ours. All other frames,
//! and everything the server sends, are copied unchanged. A header block
//! that does not decode ends the connection, as h2 would (COMPRESSION_ERROR
//! is a connection error).
//!
//! Cost: one extra copy of the bytes of every call through a 64 KiB pipe; CSI
//! messages are small. Why not a patched h2: a fork to carry and rebase, for a
//! rule h2's maintainers keep on purpose for HTTP; why not rewriting bytes in
//! place: with HPACK the authority is often an index into the per-connection
//! dynamic table, so it cannot be found without decoding every block.

use std::io;

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value; tonic's server keeps it, so
/// every frame we emit stays within it.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this (over all its frames) ends the
/// connection: a CSI request's headers are a few hundred bytes.
const MAX_BLOCK: usize = 1 << 20;
/// What replaces an authority that h2 would refuse.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// Starts relaying `client` and returns the end to hand to the gRPC server.
pub fn relay<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, server_end) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Err(e) = pump(client, ours).await {
            tracing::debug!(error = %e, "client connection ended");
        }
    });
    server_end
}

async fn pump<S>(client: S, server: DuplexStream) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let up = async {
        let result = rewrite_stream(&mut client_rx, &mut server_tx).await;
        // EOF (or a broken client) reaches the server either way.
        let _ = server_tx.shutdown().await;
        result
    };
    let down = async {
        tokio::io::copy(&mut server_rx, &mut client_tx).await?;
        client_tx.shutdown().await
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// Copies an HTTP/2 client byte stream from `rx` to `tx`, rewriting header
/// blocks as the module comment says. Returns at EOF.
pub async fn rewrite_stream<R, W>(rx: &mut R, tx: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    if !read_full(rx, &mut preface).await? {
        return Ok(());
    }
    tx.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: h2 refuses it; pass it on unchanged.
        tokio::io::copy(rx, tx).await?;
        return Ok(());
    }
    let mut decoder = Decoder::new();
    loop {
        let mut head = [0u8; 9];
        if !read_full(rx, &mut head).await? {
            return tx.flush().await;
        }
        let len = frame_len(&head);
        if head[3] != HEADERS {
            tx.write_all(&head).await?;
            copy_exact(rx, tx, len).await?;
            tx.flush().await?;
            continue;
        }
        let mut payload = vec![0u8; len];
        read_exact(rx, &mut payload).await?;
        let flags = head[4];
        let stream = stream_id(&head);
        let (priority, fragment) = split_headers_payload(flags, &payload)?;
        let mut block = fragment.to_vec();
        let mut end = flags & END_HEADERS != 0;
        while !end {
            let mut next = [0u8; 9];
            read_exact(rx, &mut next).await?;
            if next[3] != CONTINUATION || stream_id(&next) != stream {
                return Err(protocol("a header block is interrupted by another frame"));
            }
            let len = frame_len(&next);
            if block.len() + len > MAX_BLOCK {
                return Err(protocol("header block too large"));
            }
            let start = block.len();
            block.resize(start + len, 0);
            read_exact(rx, &mut block[start..]).await?;
            end = next[4] & END_HEADERS != 0;
        }
        let mut fields =
            decoder.decode(&block).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("hpack: {e:?}")))?;
        fix_authority(&mut fields);
        let encoded = encode_literals(&fields);
        for frame in header_frames(stream, flags & END_STREAM, priority, &encoded) {
            tx.write_all(&frame).await?;
        }
        tx.flush().await?;
    }
}

/// Replaces an `:authority` that is not a valid URI authority (h2's test).
pub fn fix_authority(fields: &mut [(Vec<u8>, Vec<u8>)]) {
    for (name, value) in fields.iter_mut() {
        if name.as_slice() == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
            *value = LOCAL_AUTHORITY.to_vec();
        }
    }
}

/// HPACK "literal header field without indexing, new name" (RFC 7541
/// 6.2.2), strings without Huffman coding: no state shared with the decoder.
pub fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            encode_int(&mut out, s.len(), 7, 0x00);
            out.extend_from_slice(s);
        }
    }
    out
}

/// RFC 7541 5.1: an integer with an N-bit prefix, `first` holding the bits
/// above the prefix.
fn encode_int(out: &mut Vec<u8>, mut value: usize, prefix_bits: u32, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | low_byte(value));
        return;
    }
    out.push(first | low_byte(max));
    value -= max;
    while value >= 128 {
        out.push(low_byte(value % 128) | 0x80);
        value /= 128;
    }
    out.push(low_byte(value));
}

fn low_byte(v: usize) -> u8 {
    u8::try_from(v & 0xff).unwrap_or(0)
}

/// One HEADERS frame and as many CONTINUATION frames as the block needs.
fn header_frames(stream: u32, end_stream: u8, priority: Option<[u8; 5]>, block: &[u8]) -> Vec<Vec<u8>> {
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut frames = Vec::new();
    let mut payload = Vec::with_capacity(first.len() + 5);
    let mut flags = end_stream;
    if let Some(p) = priority {
        payload.extend_from_slice(&p);
        flags |= PRIORITY;
    }
    payload.extend_from_slice(first);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frames.push(frame(HEADERS, flags, stream, &payload));
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        frames.push(frame(CONTINUATION, if rest.is_empty() { END_HEADERS } else { 0 }, stream, chunk));
    }
    frames
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The priority fields (if any) and the header block fragment of a HEADERS
/// payload, padding removed (RFC 9113 6.2).
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or_else(|| protocol("PADDED HEADERS without a pad length"))?;
        pad = usize::from(n);
        body = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, rest) = body.split_first_chunk::<5>().ok_or_else(|| protocol("short PRIORITY fields"))?;
        priority = Some(*p);
        body = rest;
    }
    let end = body.len().checked_sub(pad).ok_or_else(|| protocol("padding longer than the frame"))?;
    Ok((priority, &body[..end]))
}

fn frame_len(head: &[u8; 9]) -> usize {
    (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2])
}

fn stream_id(head: &[u8; 9]) -> u32 {
    u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Fills `buf`; false on EOF before its first byte.
async fn read_full<R: AsyncRead + Unpin>(rx: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = rx.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n;
    }
    Ok(true)
}

async fn read_exact<R: AsyncRead + Unpin>(rx: &mut R, buf: &mut [u8]) -> io::Result<()> {
    rx.read_exact(buf).await.map(|_| ())
}

async fn copy_exact<R, W>(rx: &mut R, tx: &mut W, len: usize) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    let copied = tokio::io::copy(&mut rx.take(want), tx).await?;
    if copied < want {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        Decoder::new().decode(block).unwrap()
    }

    #[test]
    fn literals_round_trip_through_a_decoder() {
        let long = vec![b'x'; 300];
        let fields = vec![
            (b":authority".to_vec(), b"/var/lib/kubelet/plugins/loopvol.csi.io/csi.sock".to_vec()),
            (b"x-long".to_vec(), long),
        ];
        assert_eq!(decode(&encode_literals(&fields)), fields);
    }

    #[test]
    fn only_an_invalid_authority_is_replaced() {
        let mut fields = vec![
            (b":authority".to_vec(), b"/run/csi/csi.sock".to_vec()),
            (b":path".to_vec(), b"/csi.v1.Identity/Probe".to_vec()),
        ];
        fix_authority(&mut fields);
        assert_eq!(fields[0].1, b"localhost");
        assert_eq!(fields[1].1, b"/csi.v1.Identity/Probe");
        let mut good = vec![(b":authority".to_vec(), b"localhost:1234".to_vec())];
        fix_authority(&mut good);
        assert_eq!(good[0].1, b"localhost:1234");
    }

    #[test]
    fn big_blocks_are_split_into_continuations() {
        let block = vec![7u8; MAX_FRAME * 2 + 10];
        let frames = header_frames(3, END_STREAM, Some([0, 0, 0, 1, 16]), &block);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0][3], HEADERS);
        assert_eq!(frames[0][4], END_STREAM | PRIORITY);
        assert_eq!(frame_len(frames[0][..9].try_into().unwrap()), MAX_FRAME);
        assert_eq!((frames[1][3], frames[1][4]), (CONTINUATION, 0));
        assert_eq!((frames[2][3], frames[2][4]), (CONTINUATION, END_HEADERS));
        let total: usize = frames.iter().map(|f| f.len() - 9).sum();
        assert_eq!(total, block.len() + 5);
    }

    #[test]
    fn padding_and_priority_are_stripped() {
        let payload = [2u8, 1, 2, 3, 4, 5, 0xaa, 0xbb, 0, 0];
        let (priority, fragment) = split_headers_payload(PADDED | PRIORITY, &payload).unwrap();
        assert_eq!(priority, Some([1, 2, 3, 4, 5]));
        assert_eq!(fragment, [0xaa, 0xbb]);
        assert!(split_headers_payload(PADDED, &[9, 1]).is_err());
    }
}
