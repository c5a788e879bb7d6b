//! HTTP/1.1 to backends, spoken by this process rather than through hyper's client: the
//! request's own task writes the request, reads the answer and streams its body, with no
//! channel, no second task and no copy of the head on the way (the profile put hyper's client
//! dispatcher at a third of a proxied request's instructions).
//!
//! The grammar is RFC 9112's, read strictly, because a connection to a backend is reused by
//! other clients' requests and a response framed two ways would poison it:
//! - a response with both `Content-Length` and `Transfer-Encoding`, with a transfer coding
//!   other than one `chunked`, with differing or malformed `Content-Length`s, or with
//!   `Transfer-Encoding` in HTTP/1.0 is refused (502), as nginx does;
//! - chunk sizes are hex without overflow, every line ends in CRLF (a bare LF is refused),
//!   chunk extensions and trailers have limits;
//! - no body for `HEAD`, 1xx, 204 and 304, whatever the headers say; 1xx other than 101 are
//!   read past;
//! - a connection is reused only after an HTTP/1.1 response without `Connection: close` whose
//!   body was read to its end, after a request sent whole, with no byte beyond the response.
//!
//! Requests are framed by what their body knows about itself: none, a `Content-Length`, or
//! `chunked` (with trailers). A request the backend answers before reading all of its body is
//! not sent further, and its connection is closed after the answer.

use super::gate::Open;
use super::tls::UpstreamIo;
use crate::body::{BoxError, ConnBody};
use crate::codec::{Decoded, Decoder, Delimited, FramingFields, Reader};
use crate::tunnel::{Prefixed, Switched};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

/// Largest response head (status line and headers) a backend may send.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head, and in a chunked body's trailers.
pub(super) const MAX_HEADERS: usize = 100;

/// How an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection ended before a response began (`received`: some of a head came).
    #[error("the backend closed the connection before it answered")]
    Closed { received: bool },
    /// The connection ended inside the response body.
    #[error("the backend closed the connection before the end of the response body")]
    Truncated,
    /// The backend broke HTTP/1.1's grammar.
    #[error("invalid response from the backend: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The client's request body failed (its fault is in the request's body outcome).
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
}

impl H1Error {
    /// Whether the backend said nothing at all before the connection failed: a reused
    /// connection the backend had already given up on.
    pub(super) fn nothing_received(&self) -> bool {
        match self {
            H1Error::Closed { received } => !received,
            H1Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// An HTTP/1.1 connection to a backend.
pub(super) struct H1Conn {
    /// The socket, and the bytes read and not consumed: what is left of a response.
    r: Reader<UpstreamIo>,
    /// Counted in its backend's open connections until closed.
    open: Option<Open>,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("buffered", &self.r.buf.len())
            .finish()
    }
}

impl H1Conn {
    pub(super) fn new(io: UpstreamIo, open: Option<Open>) -> Self {
        Self {
            r: Reader::new(io),
            open,
        }
    }

    /// Whether an idle connection can take a request: the backend has neither closed it
    /// nor sent anything since the last exchange. Looks at the socket's readiness first, so
    /// there is no system call unless something arrived; keeps no waker.
    pub(super) fn is_usable(&mut self) -> bool {
        self.r.buf.is_empty() && self.r.io.is_usable()
    }

    /// The connection of a backend that switched protocols (101), for a tunnel: its socket,
    /// read from what the backend sent past the 101 first. It stays counted in its backend's
    /// open connections, and `guard` held, until the tunnel drops it.
    pub(super) fn into_switched<G: Send + Sync + 'static>(self, guard: G) -> Switched {
        let H1Conn { r, open } = self;
        Switched {
            io: Box::new(Prefixed {
                io: r.io,
                first: r.buf.freeze(),
            }),
            hold: Box::new((open, guard)),
        }
    }

    /// Reads what the socket has. `Ok(0)`: the backend closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.r.poll_fill(cx)
    }

    /// Reads until a final response head is complete (informational ones are read past).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.r.buf.is_empty() {
                match parse_head(&mut self.r.buf, head_request)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Informational => continue,
                    Parsed::Partial => {}
                }
            }
            let received = !self.r.buf.is_empty();
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(H1Error::Closed { received }));
            }
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    /// `Content-Length`: the bytes still to send.
    Length(u64),
    Chunked,
}

/// A request encoded for the wire: its head, kept (a bodiless idempotent request can be
/// sent again on another connection), and its body.
pub(super) struct Outgoing<B> {
    head: Vec<u8>,
    body: Option<(B, RequestFraming)>,
    head_request: bool,
    /// Safe to send again: idempotent and without a body (RFC 9110 §9.2.2).
    pub(super) resendable: bool,
    /// The request itself, kept when it is resendable, so that it can go to another
    /// endpoint if this one cannot be reached any more.
    original: Option<(http::request::Parts, B)>,
}

impl<B: Body> Outgoing<B> {
    /// Encodes `req` (origin-form target, `Host` set, hop-by-hop headers gone). The body's
    /// own length decides the framing; any `Content-Length` or `Transfer-Encoding` the
    /// request carried is replaced by it.
    pub(super) fn new(req: http::Request<B>) -> Self {
        let (parts, body) = req.into_parts();
        let framing = if body.is_end_stream() {
            None
        } else {
            match body.size_hint().exact() {
                Some(n) => Some(RequestFraming::Length(n)),
                // A GET, HEAD or CONNECT with a body of unknown length is sent without it
                // (as hyper's client did): backends that ignore bodies on them would read
                // the chunks as the next request.
                None if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                    None
                }
                None => Some(RequestFraming::Chunked),
            }
        };
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let original_length = parts.headers.get(header::CONTENT_LENGTH);
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match framing {
            Some(RequestFraming::Length(n)) => {
                head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            }
            Some(RequestFraming::Chunked) => {
                head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            // An empty body keeps the `Content-Length: 0` it came with; methods whose
            // requests normally carry one get it anyway (RFC 9110 §8.6).
            None if original_length.is_some()
                || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
            {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
            None => {}
        }
        head.extend_from_slice(b"\r\n");
        let resendable = framing.is_none() && parts.method.is_idempotent();
        let head_request = parts.method == Method::HEAD;
        let (body, original) = match framing {
            Some(f) => (Some((body, f)), None),
            None if resendable => (None, Some((parts, body))),
            None => (None, None),
        };
        Self {
            head,
            body,
            head_request,
            resendable,
            original,
        }
    }

    /// The request, if it is resendable and was kept.
    pub(super) fn take_request(&mut self) -> Option<http::Request<B>> {
        self.original
            .take()
            .map(|(parts, body)| http::Request::from_parts(parts, body))
    }
}

/// What a backend's response head says.
pub(super) struct Head {
    pub(super) parts: http::response::Parts,
    framing: ResponseFraming,
    keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// By the end of the connection.
    Close,
}

impl ResponseFraming {
    fn decoder(self) -> Decoder {
        match self {
            ResponseFraming::Empty => Decoder::Done,
            ResponseFraming::Length(n) => Decoder::length(n),
            ResponseFraming::Chunked => Decoder::chunked(),
            ResponseFraming::Close => Decoder::Close,
        }
    }
}

/// Writes a request: its head, then its body as it arrives.
struct Writer<'a, B> {
    head: &'a [u8],
    body: Option<(B, RequestFraming)>,
    /// A chunk's size line, its data and what follows it, being written.
    prefix: Vec<u8>,
    data: Bytes,
    suffix: &'static [u8],
    finished: bool,
}

enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

impl<'a, B> Writer<'a, B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(head: &'a [u8], body: Option<(B, RequestFraming)>) -> Self {
        Self {
            head,
            finished: body.is_none(),
            body,
            prefix: Vec::new(),
            data: Bytes::new(),
            suffix: b"",
        }
    }

    fn queued(&self) -> bool {
        !self.head.is_empty()
            || !self.prefix.is_empty()
            || !self.data.is_empty()
            || !self.suffix.is_empty()
    }

    /// Whether the whole request is on the wire.
    fn done(&self) -> bool {
        self.finished && !self.queued()
    }

    fn consume(&mut self, mut n: usize) {
        let k = n.min(self.head.len());
        self.head = &self.head[k..];
        n -= k;
        let k = n.min(self.prefix.len());
        self.prefix.drain(..k);
        n -= k;
        let k = n.min(self.data.len());
        self.data.advance(k);
        n -= k;
        let k = n.min(self.suffix.len());
        self.suffix = &self.suffix[k..];
    }

    fn poll(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            while self.queued() {
                let slices = [
                    IoSlice::new(self.head),
                    IoSlice::new(&self.prefix),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.suffix),
                ];
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))
                    .map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.consume(n);
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            let Some((body, framing)) = &mut self.body else {
                self.finished = true;
                continue;
            };
            let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    match *framing {
                        RequestFraming::Chunked => self.suffix = b"0\r\n\r\n",
                        RequestFraming::Length(0) => {}
                        RequestFraming::Length(_) => {
                            return Poll::Ready(Err(WriteError::Body(
                                "request body shorter than its Content-Length".into(),
                            )));
                        }
                    }
                    self.body = None;
                    self.finished = true;
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Err(WriteError::Body(e.into()))),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => match framing {
                    RequestFraming::Length(left) => {
                        let len = data.len() as u64;
                        if len > *left {
                            return Poll::Ready(Err(WriteError::Body(
                                "request body longer than its Content-Length".into(),
                            )));
                        }
                        *left -= len;
                        self.data = data;
                    }
                    RequestFraming::Chunked => {
                        self.prefix.clear();
                        self.prefix
                            .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        self.data = data;
                        self.suffix = b"\r\n";
                    }
                },
                Err(frame) => {
                    // Trailers end the body; only chunked framing can carry them.
                    if *framing == RequestFraming::Chunked
                        && let Ok(trailers) = frame.into_trailers()
                    {
                        self.prefix.clear();
                        self.prefix.extend_from_slice(b"0\r\n");
                        for (name, value) in &trailers {
                            self.prefix.extend_from_slice(name.as_str().as_bytes());
                            self.prefix.extend_from_slice(b": ");
                            self.prefix.extend_from_slice(value.as_bytes());
                            self.prefix.extend_from_slice(b"\r\n");
                        }
                        self.suffix = b"\r\n";
                        self.body = None;
                        self.finished = true;
                    }
                }
            }
        }
    }
}

/// Sends `out` on `conn` and reads the final response head, writing the request body while
/// waiting (a backend may answer before reading it all). Returns the head and whether the
/// request went whole.
pub(super) async fn exchange<B>(
    conn: &mut H1Conn,
    out: &mut Outgoing<B>,
) -> Result<(Head, bool), H1Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut writer = Writer::new(&out.head, out.body.take());
    let head_request = out.head_request;
    // A write error does not end the exchange at once: a backend that refused the upload
    // (413, 401) may have answered before closing.
    let mut write_failed: Option<io::Error> = None;
    poll_fn(|cx| {
        if write_failed.is_none() && !writer.done() {
            match writer.poll(&mut conn.r.io, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(WriteError::Body(e))) => {
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
                Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e),
            }
        }
        match conn.poll_head(cx, head_request) {
            Poll::Ready(Ok(head)) => Poll::Ready(Ok((head, writer.done()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(match (e, write_failed.take()) {
                (H1Error::Closed { received: false }, Some(w)) => H1Error::Io(w),
                (e, _) => e,
            })),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// One response read by the same grammar a connection uses, from `pieces` (its bytes as they
/// would arrive): the head, then the body to its end (or to the end of the input, for a body
/// delimited by the connection's close). Returns the status, the headers, the body and its
/// trailers. For the fuzz target (`make fuzz`) and tests; connections use [`exchange`] and
/// [`H1Body`].
pub fn read_response(
    pieces: &[&[u8]],
    head_request: bool,
) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>), H1Error> {
    let mut buf = BytesMut::new();
    let mut input = pieces.iter();
    let head = loop {
        match parse_head(&mut buf, head_request)? {
            Parsed::Final(head) => break head,
            Parsed::Informational => {}
            Parsed::Partial => match input.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    return Err(H1Error::Closed {
                        received: !buf.is_empty(),
                    });
                }
            },
        }
    };
    let mut decoder = head.framing.decoder();
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match decoder.decode(&mut buf).map_err(H1Error::Invalid)? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => break,
            Decoded::More => match input.next() {
                Some(p) => buf.extend_from_slice(p),
                None if decoder == Decoder::Close => break,
                None => return Err(H1Error::Truncated),
            },
        }
    }
    Ok((head.parts.status, head.parts.headers, body, trailers))
}

/// The result of looking at the start of the read buffer for a response head.
enum Parsed {
    Partial,
    /// A 1xx other than 101, consumed.
    Informational,
    Final(Head),
}

/// Where a header's name and value lie in the head's bytes.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Headers most responses fit in without a heap allocation.
const INLINE_SPANS: usize = 24;

fn span_of(base: &[u8], part: &[u8]) -> (u32, u32) {
    // Within a head of at most MAX_HEAD_BYTES: the offsets fit.
    let start = (part.as_ptr() as usize - base.as_ptr() as usize) as u32;
    (start, start + part.len() as u32)
}

fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, H1Error> {
    // Neither array is initialised up front: a response head is parsed once per request.
    let mut inline = [Span::default(); INLINE_SPANS];
    let mut spilled = Vec::new();
    let (len, code, version, count) = {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(H1Error::Invalid("response head too large"));
                }
                return Ok(Parsed::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Invalid("too many response header fields"));
            }
            Err(_) => return Err(H1Error::Invalid("malformed response head")),
        };
        if len > MAX_HEAD_BYTES {
            return Err(H1Error::Invalid("response head too large"));
        }
        let (Some(code), Some(version)) = (resp.code, resp.version) else {
            return Err(H1Error::Invalid("malformed response head"));
        };
        let count = resp.headers.len();
        let spans: &mut [Span] = if count <= INLINE_SPANS {
            &mut inline[..count]
        } else {
            spilled.resize(count, Span::default());
            &mut spilled
        };
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            span.name = span_of(buf, h.name.as_bytes());
            span.value = span_of(buf, h.value);
        }
        (len, code, version, count)
    };
    let spans: &[Span] = if count <= INLINE_SPANS {
        &inline[..count]
    } else {
        &spilled
    };
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let bytes = buf.split_to(len).freeze();
    // Room for what the proxy adds on the way back (the request id, response-header
    // filters), so adding them does not rehash the map.
    let mut headers = HeaderMap::with_capacity(count + 4);
    let mut framing_fields = FramingFields::default();
    let mut close = false;
    for span in spans {
        let (name, value) = (span.name, span.value);
        let name = HeaderName::from_bytes(&bytes[name.0 as usize..name.1 as usize])
            .map_err(|_| H1Error::Invalid("invalid response header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value.0 as usize..value.1 as usize))
            .map_err(|_| H1Error::Invalid("invalid response header value"))?;
        if !framing_fields
            .read(&name, &value)
            .map_err(H1Error::Invalid)?
            && name == header::CONNECTION
        {
            close |= value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        headers.append(name, value);
    }
    let delimited = framing_fields
        .resolve(version == 0)
        .map_err(H1Error::Invalid)?;
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        ResponseFraming::Empty
    } else {
        match delimited {
            Delimited::Chunked => ResponseFraming::Chunked,
            Delimited::Length(Some(n)) => ResponseFraming::Length(n),
            Delimited::Length(None) => ResponseFraming::Close,
        }
    };
    let keep_alive = version == 1
        && !close
        && framing != ResponseFraming::Close
        && status != StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    parts.headers = headers;
    Ok(Parsed::Final(Head {
        parts,
        framing,
        keep_alive,
    }))
}

/// An endpoint's idle HTTP/1.1 connections, newest last. Nobody drives an idle connection:
/// it is looked at when it is checked out, and by the sweep.
#[derive(Default)]
pub(super) struct H1Pool {
    idle: Mutex<Vec<(Box<H1Conn>, Instant)>>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

impl H1Pool {
    /// The newest idle connection that can take a request; older or closed ones met on the
    /// way are closed.
    pub(super) fn checkout(&self, idle_timeout: Duration) -> Option<Box<H1Conn>> {
        let mut idle = self.idle.lock();
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection that finished its exchange for the next request.
    fn checkin(&self, conn: Box<H1Conn>, max_idle: usize) {
        let mut idle = self.idle.lock();
        if idle.len() < max_idle {
            idle.push((conn, Instant::now()));
            // A request waiting for room under a connection limit may take it.
            if let Some(open) = idle.last().and_then(|(c, _)| c.open.as_ref()) {
                open.idle();
            }
        }
    }

    /// Closes the oldest idle connection, if there is one (to make room under a connection
    /// limit).
    pub(super) fn close_one_idle(&self) -> bool {
        let mut idle = self.idle.lock();
        if idle.is_empty() {
            return false;
        }
        drop(idle.remove(0));
        true
    }

    /// Closes idle connections past the idle timeout or that the backend closed.
    pub(super) fn prune(&self, idle_timeout: Duration) {
        self.idle
            .lock()
            .retain_mut(|(conn, since)| since.elapsed() < idle_timeout && conn.is_usable());
    }
}

/// A backend's response body read off its HTTP/1.1 connection. When it ends whole on a
/// connection that can be reused, the connection goes back to its pool; otherwise it is
/// closed with the body. `G` is dropped with the body (the endpoint's in-flight count).
pub(super) struct H1Body<G> {
    conn: Option<Box<H1Conn>>,
    decoder: Decoder,
    reusable: bool,
    pool: Arc<H1Pool>,
    max_idle: usize,
    _guard: G,
}

impl<G> H1Body<G> {
    /// `whole`: the request was sent whole (else the connection cannot be reused).
    pub(super) fn new(
        conn: Box<H1Conn>,
        head: &Head,
        whole: bool,
        pool: Arc<H1Pool>,
        max_idle: usize,
        guard: G,
    ) -> Self {
        Self {
            conn: Some(conn),
            decoder: head.framing.decoder(),
            reusable: head.keep_alive && whole,
            pool,
            max_idle,
            _guard: guard,
        }
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.decoder = Decoder::Done;
        self.reusable = false;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl<G> Drop for H1Body<G> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && self.decoder == Decoder::Done
            // Anything past the response is a backend out of step: not reused.
            && conn.r.buf.is_empty()
        {
            self.pool.checkin(conn, self.max_idle);
        }
    }
}

impl<G: Unpin> Body for H1Body<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this
                .decoder
                .decode(&mut conn.r.buf)
                .map_err(H1Error::Invalid)
            {
                Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.decoder == Decoder::Close => {
                    this.decoder = Decoder::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

impl<G: Send + Sync + Unpin + 'static> ConnBody for H1Body<G> {}

#[cfg(test)]
mod tests;
