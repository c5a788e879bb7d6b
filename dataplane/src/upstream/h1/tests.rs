//! The HTTP/1.1 codec: encoding, the response grammar (an adversarial suite: every way a
//! backend could frame a response two ways is refused), and exchanges over real sockets
//! with scripted backends on 127.0.0.1.

use super::*;
use crate::codec::{MAX_CHUNK_EXTENSION, MAX_TRAILER_BYTES};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

fn request<B>(method: Method, uri: &str, body: B) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().expect("uri");
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("app.example"));
    req
}

fn head_text<B: Body>(out: &Outgoing<B>) -> &str {
    std::str::from_utf8(&out.head).expect("ascii head")
}

#[test]
fn requests_are_framed_by_their_body() {
    let get = Outgoing::new(request(Method::GET, "/a?b=c", Empty::<Bytes>::new()));
    assert_eq!(
        head_text(&get),
        "GET /a?b=c HTTP/1.1\r\nhost: app.example\r\n\r\n"
    );
    assert!(get.resendable && get.body.is_none());

    let post = Outgoing::new(request(Method::POST, "/", Empty::<Bytes>::new()));
    assert!(head_text(&post).ends_with("content-length: 0\r\n\r\n"));
    assert!(!post.resendable, "POST is not idempotent");

    // A client's own framing headers are replaced by the body's.
    let mut req = request(Method::PUT, "/", Full::new(Bytes::from_static(b"hello")));
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    req.headers_mut().insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let put = Outgoing::new(req);
    let text = head_text(&put);
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(
        !text.contains("999") && !text.contains("transfer-encoding"),
        "{text}"
    );
    assert!(!put.resendable, "a body cannot be sent twice");

    let stream = StreamBody::new(futures::stream::iter(vec![Ok::<_, Infallible>(
        Frame::data(Bytes::from_static(b"x")),
    )]));
    let chunked = Outgoing::new(request(Method::POST, "/", stream));
    assert!(head_text(&chunked).contains("transfer-encoding: chunked\r\n"));

    // A GET whose body has no length is sent without it.
    let stream = StreamBody::new(futures::stream::iter(vec![Ok::<_, Infallible>(
        Frame::data(Bytes::from_static(b"x")),
    )]));
    let get = Outgoing::new(request(Method::GET, "/", stream));
    assert!(get.body.is_none() && !head_text(&get).contains("transfer-encoding"));

    let head = Outgoing::new(request(Method::HEAD, "/", Empty::<Bytes>::new()));
    assert!(head.head_request);
}

fn parse(text: &[u8], head_request: bool) -> Result<Parsed, H1Error> {
    let mut buf = BytesMut::from(text);
    parse_head(&mut buf, head_request)
}

fn final_head(text: &[u8]) -> Head {
    match parse(text, false) {
        Ok(Parsed::Final(h)) => h,
        Ok(_) => panic!("not a final head: {:?}", String::from_utf8_lossy(text)),
        Err(e) => panic!("refused {:?}: {e}", String::from_utf8_lossy(text)),
    }
}

fn refused(text: &[u8]) -> &'static str {
    match parse(text, false) {
        Err(H1Error::Invalid(why)) => why,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(text)),
    }
}

#[test]
fn response_heads_give_framing_and_reuse() {
    let h = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n");
    assert_eq!(h.parts.status, StatusCode::OK);
    assert_eq!(h.framing, ResponseFraming::Length(5));
    assert!(h.keep_alive);
    assert_eq!(h.parts.headers["x-a"], "1");

    let h = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.framing, ResponseFraming::Chunked);

    let h = final_head(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(!h.keep_alive, "Connection: close");

    let h = final_head(b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(h.framing, ResponseFraming::Close);
    assert!(!h.keep_alive, "a close-delimited body ends the connection");

    let h = final_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
    assert!(!h.keep_alive, "HTTP/1.0 connections are not reused");
    assert_eq!(h.parts.version, Version::HTTP_10);

    // Repeated identical lengths are one length (RFC 9110 §8.6).
    let h = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(h.framing, ResponseFraming::Length(3));

    // No body, whatever the headers say.
    for text in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(final_head(text).framing, ResponseFraming::Empty);
    }
    match parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true) {
        Ok(Parsed::Final(h)) => assert_eq!(h.framing, ResponseFraming::Empty),
        _ => panic!("a HEAD response has no body"),
    }

    // 101 is final (the proxy refuses it); the connection is no longer HTTP.
    let h = final_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(h.parts.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(!h.keep_alive);
}

#[test]
fn informational_responses_are_read_past() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
    );
    assert!(matches!(
        parse_head(&mut buf, false),
        Ok(Parsed::Informational)
    ));
    assert!(matches!(
        parse_head(&mut buf, false),
        Ok(Parsed::Informational)
    ));
    match parse_head(&mut buf, false) {
        Ok(Parsed::Final(h)) => assert_eq!(h.parts.status, StatusCode::OK),
        _ => panic!("the final response"),
    }
    assert!(buf.is_empty());
}

#[test]
fn partial_heads_wait_for_more_until_the_limit() {
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nContent-Le", false),
        Ok(Parsed::Partial)
    ));
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() <= MAX_HEAD_BYTES {
        big.extend_from_slice(b"x-filler: 0123456789abcdef0123456789abcdef\r\n");
    }
    assert!(matches!(parse(&big, false), Err(H1Error::Invalid(_))));
}

/// Every response a backend could frame two ways, or that HTTP/1.1 does not allow.
#[test]
fn ambiguous_or_malformed_responses_are_refused() {
    let cases: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        // A status line or fields httparse does not accept.
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\n\r\n",
    ];
    for case in cases {
        let why = refused(case);
        assert!(!why.is_empty());
    }
    // Too many fields.
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(refused(&many), "too many response header fields");
}

/// A decoded chunked body: its data, its trailers, the bytes left after it.
type Dechunked = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Decodes `wire` (a chunked body) fed one byte at a time.
fn dechunk_bytewise(wire: &[u8]) -> Result<Dechunked, H1Error> {
    let mut decoder = Decoder::chunked();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf).map_err(H1Error::Invalid)? {
            Decoded::Data(d) => data.extend_from_slice(&d),
            Decoded::Trailers(t) => {
                trailers = Some(t);
                break;
            }
            Decoded::End => break,
            Decoded::More => {
                let Some(b) = wire.get(fed) else {
                    return Err(H1Error::Truncated);
                };
                buf.extend_from_slice(&[*b]);
                fed += 1;
            }
        }
    }
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&wire[fed..]);
    Ok((data, trailers, rest))
}

#[test]
fn chunked_bodies_decode_across_any_split() {
    let (data, trailers, rest) =
        dechunk_bytewise(b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\nNEXT").expect("valid");
    assert_eq!(data, b"hello world");
    assert!(trailers.is_none());
    assert_eq!(rest, b"NEXT", "nothing past the body is consumed");

    let (data, trailers, _) =
        dechunk_bytewise(b"A \t\r\n0123456789\r\n0\r\nGrpc-Status: 0\r\nX-T: 1\r\n\r\n")
            .expect("valid");
    assert_eq!(data, b"0123456789");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-t"], "1");
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    let cases: &[&[u8]] = &[
        // Bare LF where CRLF belongs.
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5;ext\nhello\r\n0\r\n\r\n",
        // Data longer than its size.
        b"5\r\nhelloX\r\n0\r\n\r\n",
        // No size, a sign, a non-hex digit.
        b"\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5g\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        // Overflow.
        b"fffffffffffffffff\r\n",
        b"00000000000000001\r\n",
        // Whitespace then a digit.
        b"5 5\r\nhello\r\n0\r\n\r\n",
        // A malformed trailer.
        b"0\r\nbad trailer\r\n\r\n",
    ];
    for case in cases {
        assert!(
            matches!(dechunk_bytewise(case), Err(H1Error::Invalid(_))),
            "accepted {:?}",
            String::from_utf8_lossy(case)
        );
    }
    let mut long_ext = b"1;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXTENSION + 1));
    long_ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert!(matches!(
        dechunk_bytewise(&long_ext),
        Err(H1Error::Invalid(_))
    ));
    let mut long_trailer = b"0\r\nx-big: ".to_vec();
    long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES + 1));
    long_trailer.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        dechunk_bytewise(&long_trailer),
        Err(H1Error::Invalid(_))
    ));
}

/// A backend on 127.0.0.1 that answers each connection's requests with the scripted
/// replies in turn (one reply per request head it reads), then does what `after` says.
struct Script {
    replies: Vec<&'static [u8]>,
    /// Close the connection after the replies (else keep it open, reading).
    close_after: bool,
}

/// Starts a backend serving every accepted connection with `script`; returns its address
/// and a channel of the requests (raw) it read.
async fn backend(script: Script) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for reply in &script.replies {
                    // Read one request head (and a content-length body, if any).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(buf.drain(..end + len).collect());
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
                if !script.close_after {
                    let mut sink = [0u8; 1024];
                    while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(addr: SocketAddr) -> Box<H1Conn> {
    let io = tokio::net::TcpStream::connect(addr).await.expect("connect");
    Box::new(H1Conn::new(super::UpstreamIo::Plain(io), None))
}

/// One exchange and its whole body on `conn`, returned to `pool` when reusable.
async fn fetch(
    mut conn: Box<H1Conn>,
    pool: &Arc<H1Pool>,
    method: Method,
) -> Result<(StatusCode, Bytes, Option<HeaderMap>), H1Error> {
    let mut out = Outgoing::new(request(method, "/x", Empty::<Bytes>::new()));
    let (head, whole) = exchange(&mut conn, &mut out).await?;
    let status = head.parts.status;
    let body = H1Body::new(conn, &head, whole, pool.clone(), 8, ());
    let collected = body.collect().await.map_err(|_| H1Error::Truncated)?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn a_connection_is_reused_only_after_a_clean_exchange() {
    let (addr, mut seen) = backend(Script {
        replies: vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
        ],
        close_after: false,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    let idle = Duration::from_secs(60);
    let (status, body, _) = fetch(connect(addr).await, &pool, Method::GET)
        .await
        .expect("first");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let conn = pool.checkout(idle).expect("kept after a clean exchange");
    let (_, body, trailers) = fetch(conn, &pool, Method::GET).await.expect("second");
    assert_eq!(&body[..], b"hi");
    assert_eq!(trailers.expect("trailers")["x-t"], "1");
    let conn = pool.checkout(idle).expect("kept after a chunked exchange");
    let (_, body, _) = fetch(conn, &pool, Method::GET).await.expect("third");
    assert_eq!(&body[..], b"bye");
    assert!(
        pool.checkout(idle).is_none(),
        "Connection: close is not reused"
    );
    let first = seen.recv().await.expect("a request");
    assert!(first.starts_with(b"GET /x HTTP/1.1\r\nhost: app.example\r\n\r\n"));
}

#[tokio::test]
async fn a_backend_that_says_more_than_its_response_is_not_reused() {
    let (addr, _seen) = backend(Script {
        replies: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged"],
        close_after: false,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    let (_, body, _) = fetch(connect(addr).await, &pool, Method::GET)
        .await
        .expect("answer");
    assert_eq!(&body[..], b"ok");
    assert!(
        pool.checkout(Duration::from_secs(60)).is_none(),
        "bytes past the response: the connection is closed, never read as the next answer"
    );
}

#[tokio::test]
async fn head_responses_have_no_body_and_close_delimited_ones_end_with_the_connection() {
    let (addr, _seen) = backend(Script {
        replies: vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        ],
        close_after: true,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    let (_, body, _) = fetch(connect(addr).await, &pool, Method::HEAD)
        .await
        .expect("head");
    assert!(body.is_empty());
    let conn = pool
        .checkout(Duration::from_secs(60))
        .expect("HEAD keeps the connection");
    let (_, body, _) = fetch(conn, &pool, Method::GET)
        .await
        .expect("close-delimited");
    assert_eq!(&body[..], b"until the end");
    assert!(pool.checkout(Duration::from_secs(60)).is_none());
}

#[tokio::test]
async fn a_truncated_body_is_an_error_and_the_connection_is_dropped() {
    let (addr, _seen) = backend(Script {
        replies: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
        close_after: true,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    assert!(
        fetch(connect(addr).await, &pool, Method::GET)
            .await
            .is_err()
    );
    assert!(pool.checkout(Duration::from_secs(60)).is_none());
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_not_checked_out() {
    let (addr, _seen) = backend(Script {
        replies: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
        close_after: true,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    fetch(connect(addr).await, &pool, Method::GET)
        .await
        .expect("answer");
    // The backend closes after its one reply: the idle connection is seen closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        {
            let mut idle = pool.idle.lock();
            if let Some((conn, _)) = idle.last_mut()
                && !conn.is_usable()
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the close was never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pool.checkout(Duration::from_secs(60)).is_none());
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_says_nothing_was_received() {
    let (addr, _seen) = backend(Script {
        replies: vec![],
        close_after: true,
    })
    .await;
    let mut conn = connect(addr).await;
    let mut out = Outgoing::new(request(Method::GET, "/", Empty::<Bytes>::new()));
    let e = exchange(&mut conn, &mut out)
        .await
        .err()
        .expect("no answer");
    assert!(e.nothing_received(), "{e}");
}

#[tokio::test]
async fn request_bodies_are_sent_with_their_framing() {
    let (addr, mut seen) = backend(Script {
        replies: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
        close_after: false,
    })
    .await;
    let pool = Arc::new(H1Pool::default());
    let mut conn = connect(addr).await;
    let req = request(
        Method::POST,
        "/up",
        Full::new(Bytes::from_static(b"payload")),
    );
    let mut out = Outgoing::new(req);
    let (head, whole) = exchange(&mut conn, &mut out).await.expect("answer");
    assert!(whole);
    drop(H1Body::new(conn, &head, whole, pool.clone(), 8, ()));
    assert!(pool.checkout(Duration::from_secs(60)).is_some());
    let sent = seen.recv().await.expect("request");
    assert!(
        sent.ends_with(b"content-length: 7\r\n\r\npayload"),
        "{:?}",
        String::from_utf8_lossy(&sent)
    );
}

#[tokio::test]
async fn chunked_request_bodies_carry_their_trailers() {
    // A backend that reads the whole chunked upload before answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        while !got.ends_with(b"x-sum: 9\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        sock.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("write");
        got
    });
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"defghi"))),
        Ok(Frame::trailers({
            let mut t = HeaderMap::new();
            t.insert("x-sum", HeaderValue::from_static("9"));
            t
        })),
    ];
    let mut conn = connect(addr).await;
    let mut out = Outgoing::new(request(
        Method::POST,
        "/",
        StreamBody::new(futures::stream::iter(frames)),
    ));
    let (head, whole) = exchange(&mut conn, &mut out).await.expect("answer");
    assert_eq!(head.parts.status, StatusCode::NO_CONTENT);
    assert!(whole);
    let got = server.await.expect("server");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.ends_with(
            "transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n6\r\ndefghi\r\n0\r\nx-sum: 9\r\n\r\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_closes_the_connection_after_it() {
    // A backend that answers 413 at once, without reading the body.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut chunk = [0u8; 64];
        let _ = sock.read(&mut chunk).await;
        let _ = sock
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            .await;
        // Keep the socket open without reading more.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    // A body that never ends.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream(rx));
    let pool = Arc::new(H1Pool::default());
    let mut conn = connect(addr).await;
    let mut out = Outgoing::new(request(Method::POST, "/", body));
    let (head, whole) = exchange(&mut conn, &mut out).await.expect("answer");
    assert_eq!(head.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!whole);
    drop(H1Body::new(conn, &head, whole, pool.clone(), 8, ()));
    assert!(
        pool.checkout(Duration::from_secs(60)).is_none(),
        "the upload was cut: not reusable"
    );
}

/// A stream of what `rx` receives.
fn tokio_stream<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Paused time: an idle connection ages without real time passing.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_past_the_idle_timeout_is_not_reused() {
    let (addr, _seen) = backend(Script {
        replies: vec![],
        close_after: false,
    })
    .await;
    let pool = H1Pool::default();
    pool.checkin(connect(addr).await, 8);
    tokio::time::advance(Duration::from_secs(59)).await;
    let conn = pool.checkout(Duration::from_secs(60)).expect("still fresh");
    pool.checkin(conn, 8);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(pool.checkout(Duration::from_secs(60)).is_none(), "too old");
    assert!(pool.idle.lock().is_empty(), "closed on the way");
}
