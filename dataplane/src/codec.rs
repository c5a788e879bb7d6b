//! HTTP/1.1 message bodies as RFC 9112 frames them, read the same strict way on both sides of
//! the proxy: by the backend client (`upstream::h1`) and by the downstream server
//! (`listen::h1`), and the request body the server reads off a client's connection. A leaf: it
//! knows bytes, `http` and tokio's I/O, nothing of the proxy.
//!
//! Chunk sizes are hex without overflow, every line ends in CRLF (a bare LF is refused), chunk
//! extensions and trailers have limits.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::sync::oneshot;

/// Most header fields in a chunked body's trailers.
pub const MAX_TRAILERS: usize = 100;
/// Longest chunk extension (ignored, but read).
pub const MAX_CHUNK_EXTENSION: usize = 4 * 1024;
/// Largest trailer section of a chunked body.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What a message head's framing fields say, read by one strict rule on both sides of the
/// proxy (RFC 9112 §6): `Content-Length`s must agree; a transfer coding other than one final
/// `chunked`, both fields at once, or `Transfer-Encoding` in HTTP/1.0 is refused, since a
/// peer could read such a body another way.
#[derive(Debug, Default)]
pub struct FramingFields {
    length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
}

/// How a body is delimited, once [`FramingFields::resolve`]d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delimited {
    Chunked,
    /// `Content-Length`, or none (`None`).
    Length(Option<u64>),
}

impl FramingFields {
    /// Takes one header field. `Ok(false)`: not a framing field.
    pub fn read(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<bool, &'static str> {
        if name == http::header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or("invalid Content-Length")?;
                if self.length.is_some_and(|l| l != n) {
                    return Err("differing Content-Lengths");
                }
                self.length = Some(n);
            }
            Ok(true)
        } else if name == http::header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
            for coding in value.as_bytes().split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                // Anything after `chunked`, or a coding other than it: a body that could be
                // read two ways, or only forwarded without saying how it is coded.
                if self.chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err("unsupported transfer coding");
                }
                self.chunked = true;
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The framing the fields read say, for a message of HTTP/1.0 (`http10`) or 1.1.
    pub fn resolve(self, http10: bool) -> Result<Delimited, &'static str> {
        if !self.transfer_encoding {
            return Ok(Delimited::Length(self.length));
        }
        if self.length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if http10 {
            return Err("Transfer-Encoding in HTTP/1.0");
        }
        if !self.chunked {
            return Err("unsupported transfer coding");
        }
        Ok(Delimited::Chunked)
    }
}

/// A `Content-Length` value: decimal digits only, fitting a u64.
pub fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a chunk's size (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension (ignored), `len` bytes so far.
    Extension {
        size: u64,
        len: usize,
    },
    /// The LF ending the size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// Where a response body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// What decoding the buffer gave.
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The buffer holds no more of the body.
    More,
}

impl Decoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Self {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    }

    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size { size: 0, digits: 0 })
    }

    /// The body left to decode, as `http_body` says it.
    pub fn size_hint(self) -> SizeHint {
        match self {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// Takes what `buf` holds of the body; an error names the grammar rule broken.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        match self {
            Decoder::Done => Ok(Decoded::End),
            Decoder::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(state) => {
                let decoded = decode_chunked(state, buf)?;
                if matches!(decoded, Decoded::End | Decoded::Trailers(_)) {
                    *self = Decoder::Done;
                }
                Ok(decoded)
            }
        }
    }
}

fn forbidden_in_trailers(name: &HeaderName) -> bool {
    use http::header;
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        header::SET_COOKIE,
        header::EXPECT,
        header::CACHE_CONTROL,
    ]
    .contains(name)
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    let invalid = |why| Err(why);
    loop {
        if let Chunk::Data(left) = *state {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            *state = if left == n as u64 {
                Chunk::DataCr
            } else {
                Chunk::Data(left - n as u64)
            };
            return Ok(Decoded::Data(buf.split_to(n).freeze()));
        }
        if *state == Chunk::Trailers {
            if buf.len() >= 2 && buf[..2] == *b"\r\n" {
                buf.advance(2);
                return Ok(Decoded::End);
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            return match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, _))) if len > MAX_TRAILER_BYTES => {
                    invalid("trailer section too large")
                }
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields.iter() {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| "invalid trailer name")?;
                        // Framing, routing and control fields are not allowed in trailers
                        // (RFC 9110 §6.5.1): dropped, never passed on as if they were.
                        if forbidden_in_trailers(&name) {
                            continue;
                        }
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| "invalid trailer value")?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    Ok(Decoded::Trailers(trailers))
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILER_BYTES => Ok(Decoded::More),
                Ok(httparse::Status::Partial) => invalid("trailer section too large"),
                Err(_) => invalid("malformed trailer section"),
            };
        }
        let Some(&b) = buf.first() else {
            return Ok(Decoded::More);
        };
        buf.advance(1);
        *state = match *state {
            Chunk::Size { size, digits } => match (b, hex_value(b)) {
                (_, Some(v)) => {
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(v))
                        .filter(|_| digits < 16);
                    match size {
                        Some(size) => Chunk::Size {
                            size,
                            digits: digits + 1,
                        },
                        None => return invalid("chunk size too large"),
                    }
                }
                _ if digits == 0 => return invalid("chunk size missing"),
                (b' ' | b'\t', _) => Chunk::SizeSpace { size },
                (b';', _) => Chunk::Extension { size, len: 0 },
                (b'\r', _) => Chunk::SizeLf { size },
                _ => return invalid("invalid chunk size"),
            },
            Chunk::SizeSpace { size } => match b {
                b' ' | b'\t' => Chunk::SizeSpace { size },
                b';' => Chunk::Extension { size, len: 0 },
                b'\r' => Chunk::SizeLf { size },
                _ => return invalid("invalid chunk size line"),
            },
            Chunk::Extension { size, len } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return invalid("bare LF in a chunk extension"),
                _ if len >= MAX_CHUNK_EXTENSION => return invalid("chunk extension too long"),
                _ => Chunk::Extension { size, len: len + 1 },
            },
            Chunk::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunk::Trailers,
                b'\n' => Chunk::Data(size),
                _ => return invalid("chunk size line without CRLF"),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return invalid("chunk data without CRLF"),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return invalid("chunk data without CRLF"),
            },
            Chunk::Data(_) | Chunk::Trailers => unreachable!("handled above"),
        };
    }
}

/// A downstream connection's I/O, plain or TLS, behind one type.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

const READ_SIZE: usize = 8 * 1024;
const MAX_READ_SIZE: usize = 256 * 1024;

/// The read side of an HTTP/1.1 connection, either way (a client's read half, a backend's
/// socket): the I/O and the bytes read past the last message (a pipelined request, the start
/// of a body, what is left of a response). Reads start at 8 KiB and double while they fill
/// the room, up to 256 KiB.
pub struct Reader<R = tokio::io::ReadHalf<BoxIo>> {
    pub io: R,
    pub buf: BytesMut,
    read_size: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            read_size: READ_SIZE,
        }
    }

    /// Reads what the I/O has into `buf`. `Ok(0)`: the peer closed its side.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx))?;
        if n == room && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// What a request body gives back to its connection when it ends or is dropped: the reader,
/// and where the body's decoding stopped (`Decoder::Done`: at the end of the message).
pub struct Returned {
    pub reader: Reader,
    pub decoder: Decoder,
    /// The client asked to be told to send the body (`Expect: 100-continue`) and was not: it
    /// may never send it.
    pub continue_pending: bool,
}

/// How a request body read from a client failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error("invalid request body: {0}")]
    Invalid(&'static str),
    #[error("the client closed the connection inside the request body")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A request body read off the client's HTTP/1.1 connection. It holds the connection's reader
/// while it reads, and hands it back when the message ends (at once, so the connection can
/// take its next request whoever still holds the body) or when it is dropped before.
pub struct ServerBody {
    reader: Option<Reader>,
    decoder: Decoder,
    back: Option<oneshot::Sender<Returned>>,
    /// Asks the connection to send `100 Continue`, on the first read of the body.
    continue_: Option<oneshot::Sender<()>>,
}

impl ServerBody {
    pub fn new(
        reader: Reader,
        decoder: Decoder,
        back: oneshot::Sender<Returned>,
        continue_: Option<oneshot::Sender<()>>,
    ) -> Self {
        Self {
            reader: Some(reader),
            decoder,
            back: Some(back),
            continue_,
        }
    }

    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned {
                reader,
                decoder: self.decoder,
                continue_pending: self.continue_.is_some(),
            });
        }
    }

    /// Ends the body with an error; the reader is dropped (the connection closes).
    fn fail(&mut self, e: BodyReadError) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        self.reader = None;
        self.back = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for ServerBody {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl http_body::Body for ServerBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = self.get_mut();
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(go) = this.continue_.take()
                && reader.buf.is_empty()
            {
                let _ = go.send(());
            }
            match this.decoder.decode(&mut reader.buf) {
                Ok(Decoded::Data(d)) => {
                    if this.decoder == Decoder::Done {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.give_back();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(why) => return this.fail(BodyReadError::Invalid(why)),
            }
            match ready!(reader.poll_fill(cx)) {
                Ok(0) => return this.fail(BodyReadError::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(BodyReadError::Io(e)),
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
