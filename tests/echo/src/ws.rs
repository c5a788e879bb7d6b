//! WebSocket echo (RFC 6455), for the demo, the tests and the WebSocket benchmark: a GET with
//! `Upgrade: websocket` and a `Sec-WebSocket-Key` is answered 101, and every data message is
//! sent back (unmasked, as a server must), pings are answered with pongs, and a close is
//! answered with a close. Frames over 16 MiB end the connection.

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_FRAME: u64 = 16 << 20;

/// `Some(key)` when `req` opens a WebSocket.
pub(crate) fn key(req: &Request<Incoming>) -> Option<HeaderValue> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade
        .then(|| req.headers().get("sec-websocket-key").cloned())
        .flatten()
}

/// `Sec-WebSocket-Accept` for `key`.
pub(crate) fn accept(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Answers the handshake and echoes on the upgraded connection once hyper hands it over.
pub(crate) fn answer(
    mut req: Request<Incoming>,
    key: &HeaderValue,
) -> Response<Full<bytes::Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                if let Err(e) = echo(TokioIo::new(io)).await {
                    tracing::debug!(error = %e, "websocket ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Reads frames and writes each data frame's payload back in a frame of the same opcode.
pub(crate) async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        // Answer every whole frame read so far, in one write.
        out.clear();
        let mut closing = false;
        while let Some((opcode, payload)) = frame(&mut buf)? {
            let reply = match opcode {
                0x8 => {
                    closing = true;
                    0x8
                }
                0x9 => 0xA,
                0xA => continue,
                op => op,
            };
            header_into(&mut out, reply, payload.len());
            out.extend_from_slice(&payload);
            if closing {
                break;
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
        }
        if closing {
            return io.shutdown().await;
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// A frame's header for a payload of `len`, FIN set, unmasked.
pub(crate) fn header_into(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The next whole frame at the start of `buf` (taken off it), unmasked: its opcode and
/// payload. `None`: not all of it is here.
pub(crate) fn frame(buf: &mut BytesMut) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len).to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some((opcode, payload)))
}
