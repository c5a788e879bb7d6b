use super::*;
use http_body_util::{BodyExt, Full, StreamBody};
use std::io::Read as _;

fn policy() -> CompressionPolicy {
    CompressionPolicy::new(&Compression {
        encodings: Compression::DEFAULT_ENCODINGS.to_vec(),
        min_size: 100,
        content_types: Compression::DEFAULT_CONTENT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect(),
        credentialed: false,
    })
}

fn accepting(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_str(v).expect("value"),
    );
    h
}

#[test]
fn the_client_s_highest_q_wins_then_our_order() {
    let p = policy();
    let chosen = |v: &str| p.negotiate(&accepting(v), false).encoding;
    assert_eq!(chosen("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
    assert_eq!(chosen("gzip;q=1.0, br;q=0.8"), Some(Encoding::Gzip));
    assert_eq!(chosen("br;q=0.5, gzip;q=0.5"), Some(Encoding::Brotli));
    assert_eq!(chosen("x-gzip"), Some(Encoding::Gzip));
    assert_eq!(chosen("*"), Some(Encoding::Zstd));
    assert_eq!(chosen("*;q=0.1, zstd;q=0"), Some(Encoding::Brotli));
    assert_eq!(chosen("gzip;q=0"), None);
    assert_eq!(chosen("identity"), None);
    assert_eq!(chosen("deflate"), None);
    // Malformed q-values are ignored, not read as 1.
    assert_eq!(chosen("gzip;q=2, br;q=0.1234"), None);
    assert_eq!(chosen("GZIP;Q=0.5"), Some(Encoding::Gzip));
    assert_eq!(p.negotiate(&HeaderMap::new(), false).encoding, None);
}

fn response(ct: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(ct).expect("value"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5000"));
    h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h
}

#[test]
fn only_eligible_responses_are_compressed_and_all_of_them_vary() {
    let p = policy();
    let gzip = p.negotiate(&accepting("gzip"), false);
    let ok = StatusCode::OK;
    let mut h = response("text/html; charset=utf-8");
    assert_eq!(
        p.on_response(&gzip, false, ok, &mut h, Some(5000)),
        Some(Encoding::Gzip)
    );
    assert_eq!(
        h.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(h.get(header::CONTENT_LENGTH).is_none());
    assert!(h.get(header::ACCEPT_RANGES).is_none());
    assert_eq!(
        h.get(header::ETAG).map(|v| v.as_bytes()),
        Some(&b"W/\"v1\""[..])
    );
    assert_eq!(
        h.get(header::VARY).map(|v| v.as_bytes()),
        Some(&b"accept-encoding"[..])
    );
    for ct in [
        "application/json",
        "application/ld+json",
        "application/atom+xml",
        "image/svg+xml",
    ] {
        assert!(
            p.on_response(&gzip, false, ok, &mut response(ct), None)
                .is_some(),
            "{ct}"
        );
    }
    // Not eligible: no Vary added, nothing changed.
    let no =
        |mut h: HeaderMap, n: &Negotiated, head: bool, status: StatusCode, len: Option<u64>| {
            let before = h.clone();
            assert_eq!(p.on_response(n, head, status, &mut h, len), None);
            assert_eq!(h, before);
        };
    no(response("image/png"), &gzip, false, ok, None);
    no(response("text/html"), &gzip, false, ok, Some(99));
    no(response("application/grpc"), &gzip, false, ok, None);
    // HEAD: the headers a GET would get, no body to compress.
    let mut h = response("text/html");
    assert_eq!(p.on_response(&gzip, true, ok, &mut h, Some(5000)), None);
    assert_eq!(
        h.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(h.get(header::CONTENT_LENGTH).is_none());
    // 304: Vary and the weak ETag of the compressed representation.
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    assert_eq!(
        p.on_response(&gzip, false, StatusCode::NOT_MODIFIED, &mut h, None),
        None
    );
    assert_eq!(
        h.get(header::ETAG).map(|v| v.as_bytes()),
        Some(&b"W/\"v1\""[..])
    );
    assert_eq!(
        h.get(header::VARY).map(|v| v.as_bytes()),
        Some(&b"accept-encoding"[..])
    );
    assert!(h.get(header::CONTENT_ENCODING).is_none());
    no(
        response("text/html"),
        &gzip,
        false,
        StatusCode::NO_CONTENT,
        None,
    );
    no(
        response("text/html"),
        &gzip,
        false,
        StatusCode::PARTIAL_CONTENT,
        None,
    );
    let mut encoded = response("text/html");
    encoded.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    no(encoded, &gzip, false, ok, None);
    let mut keep = response("text/html");
    keep.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-transform"),
    );
    no(keep, &gzip, false, ok, None);
    let mut range = response("text/html");
    range.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_static("bytes 0-99/5000"),
    );
    no(range, &gzip, false, ok, None);
    // BREACH: a cookie set, or credentials in the request, keep it off.
    let mut cookie = response("text/html");
    cookie.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
    no(cookie, &gzip, false, ok, None);
    no(
        response("text/html"),
        &p.negotiate(&accepting("gzip"), true),
        false,
        ok,
        None,
    );
    // Eligible but the client accepts none of ours: only Vary.
    let mut h = response("text/html");
    assert_eq!(
        p.on_response(
            &p.negotiate(&accepting("deflate"), false),
            false,
            ok,
            &mut h,
            None
        ),
        None
    );
    assert_eq!(
        h.get(header::VARY).map(|v| v.as_bytes()),
        Some(&b"accept-encoding"[..])
    );
    assert!(h.get(header::CONTENT_LENGTH).is_some());
}

fn decode(e: Encoding, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match e {
        Encoding::Gzip => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        Encoding::Brotli => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .expect("br");
        }
        Encoding::Zstd => out = zstd::decode_all(bytes).expect("zstd"),
    }
    out
}

#[tokio::test]
async fn each_encoding_round_trips_with_trailers_kept() {
    let text: Vec<u8> = (0..200_000).map(|i| b"portico "[i % 8]).collect();
    for e in Compression::DEFAULT_ENCODINGS {
        let body = Compressed::new(Full::new(Bytes::from(text.clone())), e, None).expect("encoder");
        let out = body.collect().await.expect("body").to_bytes();
        assert!(out.len() < text.len() / 20, "{e:?}: {} bytes", out.len());
        assert_eq!(decode(e, &out), text, "{e:?}");
    }
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers(HeaderMap::new())),
    ];
    let body = Compressed::new(
        StreamBody::new(futures::stream::iter(frames)),
        Encoding::Gzip,
        None,
    )
    .expect("encoder");
    let collected = body.collect().await.expect("body");
    assert!(collected.trailers().is_some());
    assert_eq!(
        decode(Encoding::Gzip, &collected.to_bytes()),
        b"hello world"
    );
}

/// What a truncated stream decodes to so far.
fn decode_partial(e: Encoding, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = match e {
        Encoding::Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out),
        Encoding::Brotli => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out),
        Encoding::Zstd => {
            zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
        }
    };
    out
}

/// A stream's first event can be read before the stream ends.
#[tokio::test]
async fn output_is_flushed_when_the_backend_pauses() {
    for e in Compression::DEFAULT_ENCODINGS {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = Compressed::new(StreamBody::new(stream), e, None).expect("encoder");
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
            .await
            .expect("send");
        let first = body.frame().await.expect("a frame").expect("ok");
        let first = first.into_data().expect("data");
        assert_eq!(decode_partial(e, &first), b"data: one\n\n", "{e:?}");
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
            .await
            .expect("send");
        drop(tx);
        let mut all = first.to_vec();
        while let Some(f) = body.frame().await {
            all.extend_from_slice(&f.expect("ok").into_data().expect("data"));
        }
        assert_eq!(decode(e, &all), b"data: one\n\ndata: two\n\n", "{e:?}");
    }
}
