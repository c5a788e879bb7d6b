//! Response compression (a BackendPolicy's `compression`): gzip, Brotli or zstd, chosen from
//! the client's `Accept-Encoding` (RFC 9110 §12.5.3: q-values, `*`, `q=0` refusing) and the
//! policy's order of preference, streamed as the backend's body arrives.
//!
//! A response is compressed only when every one of these holds:
//! - it has a body (not 1xx, 204 or 304; a HEAD answer gets the headers only) and is not a
//!   range (206, `Content-Range`);
//! - the backend did not encode it already (`Content-Encoding`), and did not forbid it
//!   (`Cache-Control: no-transform`);
//! - its media type is one of the policy's, and its length (when known) is at least the
//!   minimum;
//! - it sets no cookie and answers a request without credentials (`Authorization`,
//!   `Cookie` other than the gateway's own session cookie), unless the policy says
//!   `credentialed`: a secret compressed beside text a third party can inject is readable
//!   from the sizes (BREACH).
//!
//! Such a response gets `Vary: Accept-Encoding` whether or not this client accepts an
//! encoding, so caches keep the variants apart; a compressed one loses `Content-Length` and
//! `Accept-Ranges`, and a strong `ETag` becomes weak (the bytes are not the backend's).
//!
//! Output is flushed whenever the backend's body has nothing more ready, so a stream (server
//! sent events) reaches the client as it comes instead of waiting for a full block.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use portico_model::{Compression, Encoding};
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gzip level, Brotli quality and zstd level: fast settings for compressing on the fly (nginx
/// users commonly set `gzip_comp_level` 4-6; Brotli above 5 costs several times the CPU).
pub const GZIP_LEVEL: u32 = 5;
pub const BROTLI_QUALITY: u32 = 4;
pub const ZSTD_LEVEL: i32 = 3;
/// Brotli's and zstd's window: 512 KiB (their defaults, 4 MiB and 2 MiB, cost that much
/// memory per response being compressed, for little gain on answers of this size).
const WINDOW_LOG: u32 = 19;
/// Responses being compressed at once per process; beyond, responses go uncompressed (each
/// encoder holds up to a few MiB while its client reads).
pub const MAX_ENCODERS: usize = 256;
/// Compressed output handed on once this much has built up, even while input keeps coming.
const EMIT_AT: usize = 32 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum TypeMatch {
    Exact(String),
    /// `type/*`.
    AnySubtype(String),
    /// `type/*+suffix`: the type, and `+suffix`.
    Suffix(String, String),
}

/// A backend's compression policy, ready to apply.
#[derive(Debug, PartialEq, Eq)]
pub struct CompressionPolicy {
    encodings: Vec<Encoding>,
    min_size: u64,
    types: Vec<TypeMatch>,
    credentialed: bool,
}

/// What a request allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The encoding this client gets, if any.
    pub encoding: Option<Encoding>,
    /// The request carries credentials.
    pub credentials: bool,
}

impl CompressionPolicy {
    pub fn new(c: &Compression) -> Self {
        let types = c
            .content_types
            .iter()
            .map(|t| {
                let (ty, sub) = t.split_once('/').unwrap_or((t, ""));
                match sub.strip_prefix('*') {
                    Some("") => TypeMatch::AnySubtype(ty.to_string()),
                    Some(suffix) => TypeMatch::Suffix(ty.to_string(), suffix.to_string()),
                    None => TypeMatch::Exact(t.clone()),
                }
            })
            .collect();
        Self {
            encodings: c.encodings.clone(),
            min_size: c.min_size,
            types,
            credentialed: c.credentialed,
        }
    }

    /// Reads the request's `Accept-Encoding`; `credentials`: the client's request carried
    /// any (as it arrived, before policies removed them) or authenticated.
    pub fn negotiate(&self, headers: &HeaderMap, credentials: bool) -> Negotiated {
        Negotiated {
            encoding: choose(&self.encodings, headers),
            credentials,
        }
    }

    fn type_matches(&self, content_type: &str) -> bool {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some((ty, sub)) = media.split_once('/') else {
            return false;
        };
        // gRPC has compression of its own; an HTTP Content-Encoding breaks its clients.
        if ty == "application" && sub.starts_with("grpc") {
            return false;
        }
        self.types.iter().any(|m| match m {
            TypeMatch::Exact(t) => *t == media,
            TypeMatch::AnySubtype(t) => t == ty,
            TypeMatch::Suffix(t, suffix) => t == ty && sub.ends_with(suffix.as_str()),
        })
    }

    /// Decides for a response (its status, headers and known length, to a HEAD request or
    /// not), adding `Vary` when the response could be compressed, and, when it is to be,
    /// the headers of the encoded representation. Returns the encoding to compress with.
    /// A HEAD answer gets the headers its GET would (but no body to compress), a 304 the
    /// `Vary` and weakened `ETag` of the representation it revalidates.
    pub fn on_response(
        &self,
        n: &Negotiated,
        head_request: bool,
        status: StatusCode,
        headers: &mut HeaderMap,
        length: Option<u64>,
    ) -> Option<Encoding> {
        let not_modified = status == StatusCode::NOT_MODIFIED;
        let header_only = head_request || not_modified;
        let no_body = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT;
        let encoded = headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
        });
        // A 304 carries no Content-Type: its representation's type is not known here, and
        // it is taken to be the compressed one if anything about it may be.
        let typed = not_modified
            || headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| self.type_matches(t));
        let secret = n.credentials || headers.contains_key(header::SET_COOKIE);
        let eligible = !no_body
            && !encoded
            && !no_transform
            && !headers.contains_key(header::CONTENT_RANGE)
            && typed
            && (header_only || length.is_none_or(|l| l >= self.min_size))
            && (self.credentialed || !secret);
        if !eligible {
            return None;
        }
        let varies = headers.get_all(header::VARY).iter().any(|v| {
            v.as_bytes().split(|b| *b == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding")
            })
        });
        if !varies {
            headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        let encoding = n.encoding?;
        if let Some(etag) = headers.get(header::ETAG)
            && !etag.as_bytes().starts_with(b"W/")
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, v);
            }
        }
        if not_modified {
            return None;
        }
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        (!head_request).then_some(encoding)
    }
}

/// The `q` of one `Accept-Encoding` element (`None`: malformed, the element is ignored).
fn quality(params: &str) -> Option<u16> {
    let mut q = 1000;
    for p in params.split(';') {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        // qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), as thousandths.
        let value = value.trim();
        let (int, frac) = value.split_once('.').unwrap_or((value, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
        q = match int {
            "0" => thousandths,
            "1" if thousandths == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// The encoding of `ours` (most preferred first) the client ranks highest, above zero.
fn choose(ours: &[Encoding], headers: &HeaderMap) -> Option<Encoding> {
    let mut listed: Vec<(String, u16)> = Vec::new();
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for element in v.split(',') {
            let (token, params) = element.split_once(';').unwrap_or((element, ""));
            let token = token.trim().to_ascii_lowercase();
            if token.is_empty() {
                continue;
            }
            if let Some(q) = quality(params) {
                let token = if token == "x-gzip" {
                    "gzip".into()
                } else {
                    token
                };
                listed.push((token, q));
            }
        }
    }
    let star = listed.iter().find(|(t, _)| t == "*").map(|(_, q)| *q);
    let mut best: Option<(Encoding, u16)> = None;
    for &e in ours {
        let q = listed
            .iter()
            .find(|(t, _)| t == e.token())
            .map(|(_, q)| *q)
            .or(star)
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    best.map(|(e, _)| e)
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(e: Encoding) -> std::io::Result<Self> {
        Ok(match e {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Encoding::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                BROTLI_QUALITY,
                WINDOW_LOG,
            ))),
            Encoding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                e.window_log(WINDOW_LOG)?;
                Encoder::Zstd(e)
            }
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Ends the current block so everything written so far can be decoded.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.output()))
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

/// A body compressed as it is read.
pub struct Compressed<B> {
    inner: B,
    encoder: Option<Encoder>,
    /// A place among [`MAX_ENCODERS`], held until the body is dropped.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Input written since the last flush.
    unflushed: bool,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> Compressed<B> {
    pub fn new(
        inner: B,
        encoding: Encoding,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            inner,
            encoder: Some(Encoder::new(encoding)?),
            _slot: slot,
            unflushed: false,
            trailers: None,
            done: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("compressing the response failed: {0}")]
struct CompressError(std::io::Error);

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let fail =
            |e: std::io::Error| Poll::Ready(Some(Err(Box::new(CompressError(e)) as BoxError)));
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(encoder) = this.encoder.as_mut() else {
                this.done = true;
                continue;
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = encoder.write(&data) {
                            return fail(e);
                        }
                        this.unflushed = true;
                        if encoder.output().len() >= EMIT_AT {
                            return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: the stream is finished first.
                        this.trailers = frame.into_trailers().ok();
                        return this.finish();
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return this.finish(),
                Poll::Pending => {
                    // Nothing more ready: what came so far goes out now.
                    if this.unflushed {
                        this.unflushed = false;
                        if let Err(e) = encoder.flush() {
                            return fail(e);
                        }
                    }
                    if !encoder.output().is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(encoder.take()))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B> Compressed<B> {
    /// Ends the encoded stream; its last bytes are the next frame.
    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let Some(encoder) = self.encoder.take() else {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        match encoder.finish() {
            Ok(rest) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest))))),
            Err(e) => Poll::Ready(Some(Err(Box::new(CompressError(e))))),
        }
    }
}

#[cfg(test)]
mod tests;
