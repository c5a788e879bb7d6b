//! HTTP/1.1 to clients, spoken by this process rather than through hyper's server: one task
//! per connection reads a request head, hands the request to the proxy, and writes the answer
//! with the body's first bytes in the same system call. hyper's dispatcher, its per-request
//! timer and its copies were a third of a keep-alive request's instructions.
//!
//! The grammar is RFC 9112's, read strictly: the gateway is a security boundary, and a
//! request that two parsers could frame differently is refused, never forwarded.
//! - a request with both `Content-Length` and `Transfer-Encoding`, with a transfer coding
//!   other than one final `chunked`, with differing or malformed `Content-Length`s, or with
//!   `Transfer-Encoding` in HTTP/1.0 is answered 400 and its connection closed;
//! - header syntax httparse refuses (obsolete line folding, whitespace before the colon,
//!   control characters) is 400; a head over the size or field limits 431; an unknown HTTP
//!   version 505;
//! - chunked bodies are read by [`crate::codec`], the same strict decoder the backend side uses.
//!
//! A connection takes its next request only after an answer sent whole, with the request's
//! body read to its end (a small unread rest is read and dropped); otherwise it closes, after
//! reading what the client still sends for a moment (a lingering close), so the client gets
//! the answer instead of a reset.
//!
//! Time limits: the head of each request (from the moment the connection waits for it, so
//! an idle keep-alive wait counts) must arrive within the header read timeout; writes that
//! stall fail after the write timeout (the connection's [`crate::conn::Guarded`]); request
//! bodies have their own ([`crate::body::ClientBody`]).

#[cfg(test)]
mod tests;

use crate::body::{ProxyBody, RequestBody};
use crate::codec::{
    BoxIo, Decoded, Decoder, Delimited, FramingFields, Reader, Returned, ServerBody, parse_length,
};
use crate::tunnel::TunnelSlot;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Most header fields a request head may have, whatever the settings say.
const HEADER_SLOTS: usize = 512;
/// Most of a request body left unread after its answer that is read and dropped to keep the
/// connection; beyond it the connection closes.
const MAX_DRAIN: usize = 64 * 1024;
/// How long a closing connection keeps reading (and dropping) what the client still sends,
/// and how much, so that the client reads the answer before the close resets it.
const LINGER: Duration = Duration::from_secs(2);
const MAX_LINGER: usize = 256 * 1024;

/// What a client's HTTP/1.1 connection may send.
#[derive(Clone, Copy, Debug)]
pub struct H1Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
}

/// A request head refused before it reached the proxy: the status that answers it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub why: &'static str,
}

fn refuse(status: StatusCode, why: &'static str) -> Refused {
    Refused { status, why }
}

fn bad(why: &'static str) -> Refused {
    refuse(StatusCode::BAD_REQUEST, why)
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head, and what the connection needs to know of it.
#[derive(Debug)]
pub struct Head {
    pub parts: http::request::Parts,
    pub framing: BodyFraming,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `TE: trailers`: the client takes trailers in a chunked answer.
    pub trailers: bool,
}

/// Parses a request head at the start of `buf`, consuming it. `Ok(None)`: not all of it has
/// arrived.
pub fn parse_head(buf: &mut BytesMut, limits: &H1Limits) -> Result<Option<Head>, Refused> {
    let max_headers = limits.max_headers.min(HEADER_SLOTS);
    let mut fields = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let mut req = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let parsed =
        config.parse_request_with_uninit_headers(&mut req, buf, &mut fields[..max_headers]);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_head_bytes {
                return Err(refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ));
        }
        Err(httparse::Error::Version) => {
            return Err(refuse(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "unsupported HTTP version",
            ));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > limits.max_head_bytes {
        return Err(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request head"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
    let version = match version {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let offset = |p: &[u8]| p.as_ptr() as usize - base;
    let path_span = (offset(path.as_bytes()), path.len());
    // Where each field lies in the head, so the values can share its bytes.
    let count = req.headers.len();
    let mut spans: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(count);
    for h in req.headers.iter() {
        spans.push((
            offset(h.name.as_bytes()),
            h.name.len(),
            offset(h.value),
            h.value.len(),
        ));
    }
    let bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(bytes.slice(path_span.0..path_span.0 + path_span.1)).map_err(
        |_| {
            if path_span.1 >= usize::from(u16::MAX) - 1 {
                refuse(StatusCode::URI_TOO_LONG, "request target too long")
            } else {
                bad("invalid request target")
            }
        },
    )?;
    // Room for what the proxy adds on the way (forwarding headers, the request id).
    let mut headers = HeaderMap::with_capacity(count + 6);
    let mut framing_fields = FramingFields::default();
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut trailers = false;
    for (name_at, name_len, value_at, value_len) in spans {
        let name = HeaderName::from_bytes(&bytes[name_at..name_at + name_len])
            .map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value_at..value_at + value_len))
            .map_err(|_| bad("invalid header value"))?;
        if framing_fields.read(&name, &value).map_err(bad)? {
            // Framing, resolved below.
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        headers.append(name, value);
    }
    let framing = match framing_fields
        .resolve(version == Version::HTTP_10)
        .map_err(bad)?
    {
        Delimited::Chunked => BodyFraming::Chunked,
        Delimited::Length(None | Some(0)) => BodyFraming::None,
        Delimited::Length(Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        trailers,
    }))
}

/// A deadline that costs a clock read to move: its timer is set once and, when it fires
/// early (the deadline moved on since), set again to the deadline then. Once its timer holds
/// the connection task's waker it is not polled again until it fires (the task is the same
/// for the connection's life), so a request costs no timer work at all.
struct Deadline {
    at: Instant,
    sleep: Pin<Box<Sleep>>,
    registered: bool,
}

impl Deadline {
    fn new(at: Instant) -> Self {
        Self {
            at,
            sleep: Box::pin(tokio::time::sleep_until(at)),
            registered: false,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.registered && !self.sleep.is_elapsed() {
            return false;
        }
        // Outside the task's cooperative budget: a timer polled over budget would answer
        // Pending without holding the waker, and the shortcut above would then never look
        // at it again.
        while Pin::new(&mut tokio::task::unconstrained(self.sleep.as_mut()))
            .poll(cx)
            .is_ready()
        {
            if Instant::now() >= self.at {
                return true;
            }
            self.sleep.as_mut().reset(self.at);
        }
        self.registered = true;
        false
    }
}

/// How waiting for a request head ended without one.
enum NoHead {
    /// The client closed, or the connection is closing while idle: end quietly.
    Closed,
    /// The head did not arrive within the header read timeout.
    TimedOut,
    Refused(Refused),
}

/// Reads the next request head, within the deadline; gives up at once while idle when
/// `closing` is ready.
async fn next_head(
    reader: &mut Reader,
    limits: &H1Limits,
    deadline: &mut Deadline,
    mut closing: Pin<&mut impl Future<Output = ()>>,
) -> Result<Head, NoHead> {
    poll_fn(|cx| {
        loop {
            if !reader.buf.is_empty() {
                match parse_head(&mut reader.buf, limits) {
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(r) => return Poll::Ready(Err(NoHead::Refused(r))),
                }
            }
            match reader.poll_fill(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(NoHead::Closed)),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break,
            }
        }
        if reader.buf.is_empty() && closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(NoHead::Closed));
        }
        if deadline.expired(cx) {
            return Poll::Ready(Err(NoHead::TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// The `Date` header value, made once a second.
fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != secs {
            *at = secs;
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        value.clone()
    })
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: the bytes still to send.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a length nobody knows).
    Close,
}

/// What answering a request needs to know of it.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub head_request: bool,
    pub version: Version,
    pub trailers: bool,
    /// Keep the connection after this answer, as far as the request and the connection go.
    pub keep_alive: bool,
}

/// Encodes a response head into `out` and decides its body's framing and whether the
/// connection survives it (`Connection: close` from the proxy, an HTTP/1.0 client, a body
/// delimited by the close).
fn encode_head<B: Body>(resp: &Response<B>, ex: &Exchange, out: &mut Vec<u8>) -> (Framing, bool) {
    let status = resp.status();
    let headers = resp.headers();
    let mut keep_alive = ex.keep_alive;
    let no_body = ex.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared: Option<u64> = None;
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::CONNECTION {
            keep_alive &= !value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == KEEP_ALIVE {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            // HEAD and 304 answers say the length of what a GET would get; with a body, the
            // framing below writes the length actually sent.
            let keep = no_body && !status.is_informational() && status != StatusCode::NO_CONTENT;
            if !keep {
                declared = declared.or_else(|| parse_length(value.as_bytes()));
                continue;
            }
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if no_body {
        Framing::None
    } else if let Some(n) = resp.body().size_hint().exact().or(declared) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(crate::util::itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else if ex.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if ex.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// A chunk's size line.
fn chunk_size(n: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len() - 2;
    buf[i..].copy_from_slice(b"\r\n");
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The write side of a client's connection.
struct Writer {
    io: WriteHalf<BoxIo>,
    /// The head being written; kept between responses for its capacity.
    head: Vec<u8>,
}

impl Writer {
    async fn write_slices(&mut self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut self.io).poll_write_vectored(cx, slices)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }

    /// Writes the head (if not yet written) and `data` framed as `framing` says.
    async fn write_data(
        &mut self,
        head_pending: &mut bool,
        framing: &mut Framing,
        data: &Bytes,
        end: bool,
    ) -> io::Result<()> {
        let head = std::mem::take(&mut self.head);
        let head_slice: &[u8] = if *head_pending { &head } else { &[] };
        let result = match framing {
            Framing::None => self.write_slices(&mut [IoSlice::new(head_slice)]).await,
            Framing::Length(left) => {
                let n = (data.len() as u64).min(*left) as usize;
                *left -= n as u64;
                self.write_slices(&mut [IoSlice::new(head_slice), IoSlice::new(&data[..n])])
                    .await
            }
            Framing::Close => {
                self.write_slices(&mut [IoSlice::new(head_slice), IoSlice::new(data)])
                    .await
            }
            Framing::Chunked => {
                let mut size = [0; 18];
                let size: &[u8] = if data.is_empty() {
                    &[]
                } else {
                    chunk_size(data.len(), &mut size)
                };
                let after: &[u8] = match (data.is_empty(), end) {
                    (true, true) => b"0\r\n\r\n",
                    (true, false) => b"",
                    (false, true) => b"\r\n0\r\n\r\n",
                    (false, false) => b"\r\n",
                };
                self.write_slices(&mut [
                    IoSlice::new(head_slice),
                    IoSlice::new(size),
                    IoSlice::new(data),
                    IoSlice::new(after),
                ])
                .await
            }
        };
        self.head = head;
        self.head.clear();
        *head_pending = false;
        result
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }
}

/// Why answering failed: the connection cannot be used any more.
#[derive(Debug)]
enum WriteFailed {
    Io(io::Error),
    /// The response body failed, or was shorter or longer than its length.
    Body,
}

impl From<io::Error> for WriteFailed {
    fn from(e: io::Error) -> Self {
        WriteFailed::Io(e)
    }
}

/// Writes `resp` to the client. Returns whether the connection may take another request.
async fn respond(
    w: &mut Writer,
    resp: Response<ProxyBody>,
    ex: &Exchange,
) -> Result<bool, WriteFailed> {
    let mut head = std::mem::take(&mut w.head);
    head.clear();
    let (mut framing, keep_alive) = encode_head(&resp, ex, &mut head);
    w.head = head;
    let mut body = pin!(resp.into_body());
    let mut head_pending = true;
    if framing == Framing::None || body.is_end_stream() {
        w.write_data(&mut head_pending, &mut framing, &Bytes::new(), true)
            .await?;
        w.flush().await?;
        let whole = !matches!(framing, Framing::Length(n) if n > 0);
        return if whole {
            Ok(keep_alive)
        } else {
            Err(WriteFailed::Body)
        };
    }
    loop {
        // The head waits for the body's first bytes only while they are already there: a
        // streamed answer's head goes out at once.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if head_pending {
                    w.write_data(&mut head_pending, &mut Framing::None, &Bytes::new(), false)
                        .await?;
                }
                w.flush().await?;
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        match frame {
            None => {
                if let Framing::Length(n) = framing
                    && n > 0
                {
                    return Err(WriteFailed::Body);
                }
                w.write_data(&mut head_pending, &mut framing, &Bytes::new(), true)
                    .await?;
                break;
            }
            Some(Err(_)) => return Err(WriteFailed::Body),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if let Framing::Length(n) = framing
                        && data.len() as u64 > n
                    {
                        // Sent up to the length; the rest has nowhere to go.
                        w.write_data(&mut head_pending, &mut framing, &data, false)
                            .await?;
                        return Err(WriteFailed::Body);
                    }
                    let end = body.is_end_stream();
                    w.write_data(&mut head_pending, &mut framing, &data, end)
                        .await?;
                    if end {
                        if let Framing::Length(n) = framing
                            && n > 0
                        {
                            return Err(WriteFailed::Body);
                        }
                        break;
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok().filter(|_| ex.trailers);
                    write_end(w, &mut head_pending, &mut framing, trailers.as_ref()).await?;
                    break;
                }
            },
        }
    }
    w.flush().await?;
    Ok(keep_alive && framing != Framing::Close)
}

/// Ends a body with trailers (chunked framing only; elsewhere they are dropped).
async fn write_end(
    w: &mut Writer,
    head_pending: &mut bool,
    framing: &mut Framing,
    trailers: Option<&HeaderMap>,
) -> Result<(), WriteFailed> {
    if let Framing::Length(n) = framing
        && *n > 0
    {
        return Err(WriteFailed::Body);
    }
    match (trailers, *framing) {
        (Some(trailers), Framing::Chunked) => {
            if *head_pending {
                w.write_data(head_pending, &mut Framing::None, &Bytes::new(), false)
                    .await?;
            }
            let mut end = Vec::with_capacity(64);
            end.extend_from_slice(b"0\r\n");
            for (name, value) in trailers {
                end.extend_from_slice(name.as_str().as_bytes());
                end.extend_from_slice(b": ");
                end.extend_from_slice(value.as_bytes());
                end.extend_from_slice(b"\r\n");
            }
            end.extend_from_slice(b"\r\n");
            w.write_slices(&mut [IoSlice::new(&end)]).await?;
        }
        _ => {
            w.write_data(head_pending, framing, &Bytes::new(), true)
                .await?;
        }
    }
    Ok(())
}

/// Writes the head of a 101 that hands the connection to a tunnel: the response's headers
/// (framing ones dropped), and `Connection: upgrade`.
async fn write_switched(w: &mut Writer, headers: &HeaderMap) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || name == KEEP_ALIVE
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: upgrade\r\n\r\n");
    w.write_slices(&mut [IoSlice::new(&head)]).await?;
    w.flush().await
}

/// An answer the connection gives itself to a head it refused, before closing.
async fn refuse_head(w: &mut Writer, refused: &Refused) -> io::Result<()> {
    let mut head = Vec::with_capacity(128);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(refused.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(refused.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\ndate: ");
    head.extend_from_slice(date().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    w.write_slices(&mut [IoSlice::new(&head)]).await?;
    w.flush().await
}

/// Whether the unread rest of a request body may be read and dropped to keep the connection:
/// the client was told to send it (no `Expect: 100-continue` left unanswered, or it would
/// send its next request instead, and that would be read as body), and it is not too much.
fn drainable(ret: &Returned, told_to_send: bool) -> bool {
    told_to_send
        && !ret.continue_pending
        && match ret.decoder {
            Decoder::Length(n) => n <= MAX_DRAIN as u64,
            Decoder::Chunked(_) | Decoder::Done => true,
            Decoder::Close => false,
        }
}

/// Reads and drops the rest of a request body the answer did not need, up to a limit (of
/// bytes read, framing included) and within the deadline, so the connection can take the
/// next request. `Err`: the body did not end; the reader comes back to linger on.
async fn drain(mut ret: Returned, deadline: &mut Deadline) -> Result<Reader, Reader> {
    let mut read = 0usize;
    let reader = &mut ret.reader;
    let decoder = &mut ret.decoder;
    let start = reader.buf.len();
    let ended = poll_fn(|cx| {
        loop {
            match decoder.decode(&mut reader.buf) {
                Ok(Decoded::Data(_)) => continue,
                Ok(Decoded::Trailers(_) | Decoded::End) => return Poll::Ready(true),
                Ok(Decoded::More) => {}
                Err(_) => return Poll::Ready(false),
            }
            if start + read > MAX_DRAIN + MAX_DRAIN / 4 {
                return Poll::Ready(false);
            }
            match reader.poll_fill(cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(n)) => read += n,
                Poll::Pending => {
                    return if deadline.expired(cx) {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    })
    .await;
    if ended {
        Ok(ret.reader)
    } else {
        Err(ret.reader)
    }
}

/// Closes a connection whose client may still be sending: our side first, then what arrives
/// is read and dropped for a moment, so the close does not reset the answer away.
async fn linger(w: &mut Writer, reader: Option<Reader>) {
    let _ = w.io.shutdown().await;
    let Some(mut reader) = reader else { return };
    let read = async {
        let mut total = 0usize;
        loop {
            reader.buf.clear();
            match poll_fn(|cx| reader.poll_fill(cx)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    total += n;
                    if total > MAX_LINGER {
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, read).await;
}

/// Serves HTTP/1.1 on `io` until the client closes, the connection fails, or `closing`
/// resolves (then the request in progress is answered with `Connection: close` and the
/// connection ends). `serve` answers each request.
pub async fn serve_connection<S, F>(
    io: BoxIo,
    limits: H1Limits,
    closing: impl Future<Output = ()>,
    is_closing: impl Fn() -> bool,
    serve: S,
) -> io::Result<()>
where
    S: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let (read, write) = tokio::io::split(io);
    let mut reader = Some(Reader::new(read));
    let mut w = Writer {
        io: write,
        head: Vec::with_capacity(512),
    };
    let mut closing = pin!(closing);
    let mut deadline = Deadline::new(Instant::now() + limits.header_read_timeout);
    while let Some(mut r) = reader.take() {
        deadline.at = Instant::now() + limits.header_read_timeout;
        let head = match next_head(&mut r, &limits, &mut deadline, closing.as_mut()).await {
            Ok(head) => head,
            Err(NoHead::Closed) => return Ok(()),
            Err(NoHead::TimedOut) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request head within the header read timeout",
                ));
            }
            Err(NoHead::Refused(refused)) => {
                tracing::debug!(status = %refused.status, why = refused.why, "request head refused");
                refuse_head(&mut w, &refused).await?;
                linger(&mut w, Some(r)).await;
                return Ok(());
            }
        };
        let mut ex = Exchange {
            head_request: head.parts.method == Method::HEAD,
            version: head.parts.version,
            trailers: head.trailers,
            keep_alive: head.keep_alive,
        };
        let decoder = match head.framing {
            BodyFraming::None => None,
            BodyFraming::Length(n) => Some(Decoder::length(n)),
            BodyFraming::Chunked => Some(Decoder::chunked()),
        };
        let (body, mut back, mut go_on) = match decoder {
            None => {
                reader = Some(r);
                (RequestBody::Empty, None, None)
            }
            Some(decoder) => {
                let (back_tx, back_rx) = oneshot::channel();
                let (go_tx, go_rx) = if head.expect_continue {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                let body = ServerBody::new(r, decoder, back_tx, go_tx);
                (RequestBody::H1(body), Some(back_rx), go_rx)
            }
        };
        let expect_continue = head.expect_continue;
        let mut continue_sent = false;
        let req = Request::from_parts(head.parts, body);
        let mut answer = pin!(serve(req));
        let resp = loop {
            let Some(go) = go_on.as_mut() else {
                break answer.await;
            };
            tokio::select! {
                biased;
                resp = answer.as_mut() => break resp,
                sent = go => {
                    go_on = None;
                    if sent.is_ok() {
                        w.write_slices(&mut [IoSlice::new(b"HTTP/1.1 100 Continue\r\n\r\n")])
                            .await?;
                        w.flush().await?;
                        continue_sent = true;
                    }
                }
            }
        };
        // The body hands its reader back when the message ends, or when it is dropped. One
        // that is still out (being streamed upstream), or whose rest is too much to read and
        // drop, or that the client was never told to send, ends the connection after this
        // answer, and the answer says so.
        let mut returned = back.as_mut().and_then(|b| b.try_recv().ok());
        let told_to_send = !expect_continue || continue_sent;
        let unfinished = match &returned {
            _ if back.is_none() => false,
            None => true,
            Some(ret) => ret.decoder != Decoder::Done && !drainable(ret, told_to_send),
        };
        ex.keep_alive &= !unfinished && !is_closing();
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && back.is_none()
            && let Some(r) = reader.take()
            && let Some(tunnel) = resp
                .extensions()
                .get::<TunnelSlot>()
                .and_then(TunnelSlot::take)
        {
            // A WebSocket: the connection is the client's side of the tunnel from here on,
            // and ends with it.
            write_switched(&mut w, resp.headers()).await?;
            let Reader { io: read, buf, .. } = r;
            let ended = tunnel.run(read.unsplit(w.io), buf.freeze()).await;
            tracing::debug!(?ended, "upgraded connection ended");
            return Ok(());
        }
        let kept = match respond(&mut w, resp, &ex).await {
            Ok(kept) => kept,
            Err(WriteFailed::Io(e)) => return Err(e),
            Err(WriteFailed::Body) => {
                return Err(io::Error::other("the response body failed"));
            }
        };
        if let Some(back) = back.as_mut() {
            if returned.is_none() {
                returned = back.try_recv().ok();
            }
            reader = match returned {
                Some(ret) if ret.decoder == Decoder::Done => Some(ret.reader),
                Some(ret) if kept && drainable(&ret, told_to_send) => {
                    deadline.at = Instant::now() + limits.header_read_timeout;
                    match drain(ret, &mut deadline).await {
                        Ok(reader) => Some(reader),
                        Err(reader) => {
                            linger(&mut w, Some(reader)).await;
                            return Ok(());
                        }
                    }
                }
                Some(ret) => {
                    linger(&mut w, Some(ret.reader)).await;
                    return Ok(());
                }
                None => None,
            };
        }
        if !kept || is_closing() || reader.is_none() {
            // A request read whole leaves nothing to linger for.
            let _ = w.io.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}
