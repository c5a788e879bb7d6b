//! The HTTP/1.1 server: the request grammar (an adversarial suite: every way a client could
//! frame a request two ways is refused), the response framing, and whole connections over
//! real sockets on 127.0.0.1.

use super::*;
use crate::body::{BackendBody, BodyOutcome, BoxError, ConnBody, Upstream};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LIMITS: H1Limits = H1Limits {
    max_head_bytes: 8 * 1024,
    max_headers: 20,
    header_read_timeout: Duration::from_secs(5),
};

fn parse(head: &str) -> Result<Option<Head>, Refused> {
    parse_head(&mut BytesMut::from(head.as_bytes()), &LIMITS)
}

fn parsed(head: &str) -> Head {
    match parse(head) {
        Ok(Some(h)) => h,
        other => panic!("{head:?}: {other:?}"),
    }
}

fn status_of(head: &str) -> StatusCode {
    match parse(head) {
        Err(r) => r.status,
        other => panic!("{head:?} was not refused: {other:?}"),
    }
}

#[test]
fn a_head_is_read_with_its_framing_and_connection_wishes() {
    let h = parsed("GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\n");
    assert_eq!(h.parts.method, Method::GET);
    assert_eq!(h.parts.uri, "/a?b=c");
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.parts.headers["x-one"], "1");
    assert_eq!(h.framing, BodyFraming::None);
    assert!(h.keep_alive);
    assert!(!h.expect_continue && !h.trailers);

    let h = parsed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Length(5));
    let h = parsed("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Chunked);
    let h = parsed("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::None);

    assert!(!parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!parsed("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    let h = parsed("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nTE: trailers\r\n\r\n");
    assert!(h.expect_continue && h.trailers);
    assert!(!parsed("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    let h = parsed("GET http://example.test:8080/p HTTP/1.1\r\n\r\n");
    assert_eq!(
        h.parts.uri.authority().map(|a| a.as_str()),
        Some("example.test:8080")
    );
    assert_eq!(parsed("OPTIONS * HTTP/1.1\r\n\r\n").parts.uri, "*");
}

#[test]
fn pipelined_heads_are_read_one_at_a_time_and_a_partial_one_waits() {
    let mut buf = BytesMut::from(&b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HT"[..]);
    let one = parse_head(&mut buf, &LIMITS)
        .expect("valid")
        .expect("whole");
    assert_eq!(one.parts.uri, "/1");
    let two = parse_head(&mut buf, &LIMITS)
        .expect("valid")
        .expect("whole");
    assert_eq!(two.parts.uri, "/2");
    assert!(parse_head(&mut buf, &LIMITS).expect("valid").is_none());
    assert_eq!(&buf[..], b"GET /3 HT");
}

#[test]
fn requests_that_could_be_framed_two_ways_are_refused() {
    for te in [
        "identity, chunked",
        "gzip, chunked",
        "chunked, chunked",
        "chunked, identity",
        "xchunked",
        "chunked\r\nTransfer-Encoding: identity",
        "gzip\r\nTransfer-Encoding: chunked",
    ] {
        let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(status_of(&head), StatusCode::BAD_REQUEST, "{te:?}");
    }
    for cl in [
        "5\r\nContent-Length: 6",
        "+5",
        "-5",
        "0x5",
        "5 5",
        "5, 6",
        "",
        "99999999999999999999999",
    ] {
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(status_of(&head), StatusCode::BAD_REQUEST, "{cl:?}");
    }
    for head in [
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Null: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\n: empty\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "G\0T / HTTP/1.1\r\n\r\n",
        "GET /\x7f HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status_of(head), StatusCode::BAD_REQUEST, "{head:?}");
    }
    assert_eq!(
        status_of("GET / HTTP/2.0\r\n\r\n"),
        StatusCode::HTTP_VERSION_NOT_SUPPORTED
    );
}

#[test]
fn heads_over_the_limits_are_431() {
    let many: String = (0..21).map(|i| format!("x-{i}: v\r\n")).collect();
    assert_eq!(
        status_of(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let long = "a".repeat(LIMITS.max_head_bytes);
    // Unfinished and already over the limit: refused without waiting for the rest.
    assert_eq!(
        status_of(&format!("GET / HTTP/1.1\r\nx-long: {long}")),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(
        status_of(&format!("GET / HTTP/1.1\r\nx-long: {long}\r\n\r\n")),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

fn encode(resp: &Response<ProxyBody>, ex: Exchange) -> (String, Framing, bool) {
    let mut out = Vec::new();
    let (framing, keep) = encode_head(resp, &ex, &mut out);
    (String::from_utf8(out).expect("ascii"), framing, keep)
}

const GET11: Exchange = Exchange {
    head_request: false,
    version: Version::HTTP_11,
    trailers: false,
    keep_alive: true,
};

/// A response body that arrives through a channel, of unknown length.
struct Streamed(mpsc::Receiver<Frame<Bytes>>);

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl ConnBody for Streamed {}

fn streamed() -> (mpsc::Sender<Frame<Bytes>>, ProxyBody) {
    let (tx, rx) = mpsc::channel(8);
    let body = BackendBody::new(
        Upstream::Conn(Box::new(Streamed(rx))),
        None,
        Arc::new(BodyOutcome::default()),
        Duration::from_secs(5),
    );
    (tx, ProxyBody::Streamed(body))
}

fn local(status: u16, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

#[test]
fn answers_are_framed_by_what_their_body_knows() {
    let (head, framing, keep) = encode(&local(200, "hello"), GET11);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-length: 5\r\n") && head.contains("date: "),
        "{head}"
    );
    assert!(!head.contains("connection"), "{head}");
    assert_eq!((framing, keep), (Framing::Length(5), true));

    // A length the proxy set is replaced by the body's own; a Date is kept, not doubled.
    let mut r = local(200, "hello");
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
    r.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("yesterday"));
    r.headers_mut().insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let (head, _, _) = encode(&r, GET11);
    assert!(
        head.contains("content-length: 5\r\n") && !head.contains(": 9"),
        "{head}"
    );
    assert_eq!(head.matches("date:").count(), 1, "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    let (_, body) = streamed();
    let (head, framing, keep) = encode(&Response::new(body), GET11);
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!((framing, keep), (Framing::Chunked, true));
    // HTTP/1.0 has no chunked coding: the close delimits the body.
    let (_, body) = streamed();
    let ten = Exchange {
        version: Version::HTTP_10,
        ..GET11
    };
    let (head, framing, keep) = encode(&Response::new(body), ten);
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!((framing, keep), (Framing::Close, false));
    let (head, _, keep) = encode(&local(200, "x"), ten);
    assert!(
        head.contains("connection: keep-alive\r\n") && keep,
        "{head}"
    );

    // HEAD and 304 keep the length a GET would get; 204 has none.
    let mut r = local(200, "");
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    let head_req = Exchange {
        head_request: true,
        ..GET11
    };
    let (head, framing, _) = encode(&r, head_req);
    assert!(head.contains("content-length: 42\r\n"), "{head}");
    assert_eq!(framing, Framing::None);
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    let (head, framing, _) = encode(&r, GET11);
    assert!(
        head.contains("content-length: 42\r\n") && framing == Framing::None,
        "{head}"
    );
    *r.status_mut() = StatusCode::NO_CONTENT;
    let (head, framing, _) = encode(&r, GET11);
    assert!(
        !head.contains("content-length") && framing == Framing::None,
        "{head}"
    );

    // The proxy's `Connection: close` ends the connection after the answer.
    let mut r = local(400, "bad");
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let (head, _, keep) = encode(&r, GET11);
    assert_eq!(head.matches("connection: close").count(), 1, "{head}");
    assert!(!keep);
}

/// A server on 127.0.0.1 answering each request with its method, path and body.
async fn server(limits: H1Limits) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_connection(
                Box::new(s),
                limits,
                std::future::pending(),
                || false,
                |req: Request<RequestBody>| async move {
                    let (parts, body) = req.into_parts();
                    if parts.uri.path() == "/refuse" {
                        return local(401, "no");
                    }
                    if parts.uri.path() == "/stream" {
                        let (tx, body) = streamed();
                        tokio::spawn(async move {
                            let _ = tx.send(Frame::data(Bytes::from_static(b"one,"))).await;
                            let mut t = HeaderMap::new();
                            t.insert("x-sum", HeaderValue::from_static("7"));
                            let _ = tx.send(Frame::trailers(t)).await;
                        });
                        return Response::new(body);
                    }
                    let body = body.collect().await.map(|b| b.to_bytes());
                    let text = match body {
                        Ok(b) => format!(
                            "{} {} {}",
                            parts.method,
                            parts.uri,
                            String::from_utf8_lossy(&b)
                        ),
                        Err(e) => format!("body error: {e}"),
                    };
                    Response::new(ProxyBody::Local(Full::new(Bytes::from(text))))
                },
            ));
        }
    });
    addr
}

/// Sends `input`, half-closes, and reads everything until the server closes.
async fn exchange(addr: std::net::SocketAddr, input: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(input).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the server closes")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_connection_serves_pipelined_requests_in_order_with_their_bodies() {
    let addr = server(LIMITS).await;
    let out = exchange(
        addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1;ext=1\r\nf\r\n0\r\nx-t: 1\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = out.find("POST /a abc").expect(&out);
    let b = out.find("POST /b def").expect(&out);
    let c = out.find("GET /c ").expect(&out);
    assert!(a < b && b < c, "{out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert!(out.ends_with("GET /c "), "closed after the last: {out}");
}

#[tokio::test]
async fn an_unread_small_body_is_drained_and_a_large_one_closes_after_the_answer() {
    let addr = server(LIMITS).await;
    let out = exchange(
        addr,
        b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(out.contains("GET /next"), "the connection was kept: {out}");

    let mut big = b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200_000));
    big.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut c = TcpStream::connect(addr).await.expect("connect");
    // The client keeps sending while the answer comes: it still reads the answer.
    let _ = c.write_all(&big).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(!out.contains("smuggled"), "{out}");
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_wanted_and_not_before() {
    let addr = server(LIMITS).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(
        b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"ok").await.expect("write");
    let mut text = String::new();
    while !text.ends_with("PUT /up ok") {
        let n = c.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Refused before the body is wanted: no 100, and the connection is not kept waiting
    // for a body the client will not send.
    let out = exchange(
        addr,
        b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");
    // The client was not told to send its body, so it may send its next request instead:
    // the connection is not kept (its next bytes could not be told from a body).
    assert!(out.contains("connection: close"), "{out}");
}

#[tokio::test]
async fn an_unread_body_the_client_stops_sending_closes_at_the_deadline() {
    let limits = H1Limits {
        header_read_timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let addr = server(limits).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly ten..")
        .await
        .expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(matches!(read, Ok(Ok(_))), "closed: {read:?} {out}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
}

#[tokio::test]
async fn a_streamed_answer_is_chunked_with_trailers_only_for_clients_that_take_them() {
    let addr = server(LIMITS).await;
    let out = exchange(
        addr,
        b"GET /stream HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("transfer-encoding: chunked"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n4\r\none,\r\n0\r\nx-sum: 7\r\n\r\n"),
        "{out:?}"
    );
    let out = exchange(
        addr,
        b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("\r\n\r\n4\r\none,\r\n0\r\n\r\n"), "{out:?}");
    // An HTTP/1.0 client gets the body delimited by the close.
    let out = exchange(addr, b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(
        out.contains("connection: close") && out.ends_with("\r\n\r\none,"),
        "{out:?}"
    );
}

#[tokio::test]
async fn bad_heads_are_answered_and_closed_and_slow_heads_time_out() {
    let limits = H1Limits {
        header_read_timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let addr = server(limits).await;
    let out = exchange(
        addr,
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\nGET /two HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.contains("connection: close") && !out.contains("/two"),
        "{out}"
    );
    // A head that never finishes: closed without an answer.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed: {read:?} {out:?}");
}
