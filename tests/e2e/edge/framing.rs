//! HTTP/1.1 framing: what a client frames badly is answered 400 as the client's fault, never
//! forwarded as something else, and never splits into a second request.

use portico_tests::auth::{HOST, Setup, route, service_route};
use portico_tests::raw;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A POST that asks to close the connection after its answer.
fn post(extra_headers: &str, body: &str) -> Vec<u8> {
    post_keep_alive(&format!("{extra_headers}Connection: close\r\n"), body)
}

fn post_keep_alive(extra_headers: &str, body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\n{extra_headers}\r\n{body}").into_bytes()
}

async fn echo_requests(s: &Setup) -> u64 {
    s.echo.requests().await
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_fault() {
    let s = Setup::start(&route("all", "/")).await;
    let a = s.addr();
    let te = "Transfer-Encoding: chunked\r\n";
    for (what, body) in [
        ("a size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "a size that overflows",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("a negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("no CRLF after the data", "5\r\nhelloXX0\r\n\r\n"),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
    ] {
        let r = raw::send(a, &post(te, body)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.all);
        assert_eq!(
            r.header("connection").as_deref(),
            Some("close"),
            "{what}: the connection is not reused"
        );
        assert!(r.responses() <= 1, "{what}: {}", r.all);
    }
    // Bare LF line ends: refused, or read as the same body (hyper re-frames what it forwards,
    // so the backend can never see other framing than the gateway's).
    let r = raw::send(a, &post(te, "5\nhello\n0\n\n")).await;
    match r.status {
        400 => {}
        200 => assert_eq!(r.json()["bodyLength"], 5),
        other => panic!("bare LF: {other}"),
    }
    // A body shorter than its Content-Length, then the client stops sending.
    let mut c = tokio::net::TcpStream::connect(a).await.expect("connect");
    c.write_all(&post("Content-Length: 10\r\n", "hello"))
        .await
        .expect("write");
    c.shutdown().await.expect("half close");
    let r = raw::read_all(&mut c, std::time::Duration::from_secs(5)).await;
    assert!(matches!(r.status, 0 | 400), "truncated body: {}", r.all);
    // Counted as the client's, and the next request is served on a fresh upstream
    // connection.
    let r = raw::send(a, &post("Content-Length: 5\r\n", "hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"], 5);
    let metrics = s.portico.metrics().await;
    assert!(
        metrics.contains("portico_downstream_errors_total{reason=\"body_framing\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn transfer_codings_and_lengths_that_could_be_read_two_ways_are_refused() {
    let s = Setup::start(&route("all", "/")).await;
    let a = s.addr();
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ] {
        let r = raw::send(a, &post(te, chunked)).await;
        assert_eq!(r.status, 400, "{te:?}: {}", r.all);
    }
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        let r = raw::send(a, &post(cl, "hello")).await;
        assert_eq!(r.status, 400, "{cl:?}: {}", r.all);
    }
    // HTTP/1.0 has no chunked coding.
    let r = raw::send(
        a,
        format!("POST /x HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}")
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    // Header syntax that parsers disagree on.
    for head in [
        "X-Folded: a\r\n b\r\n",
        "Content-Length : 5\r\n",
        "X-Null: a\0b\r\n",
    ] {
        let r = raw::send(a, &post(&format!("{head}Content-Length: 5\r\n"), "hello")).await;
        assert_eq!(r.status, 400, "{head:?}: {}", r.all);
    }
    // The backend saw none of these.
    assert_eq!(echo_requests(&s).await, 0);
}

#[tokio::test]
async fn nothing_smuggles_a_second_request() {
    let s = Setup::start(&route("all", "/")).await;
    let a = s.addr();
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // CL.TE: a front end reading Content-Length would forward the smuggled request as body;
    // one reading chunked would see it as a second request.
    let body = format!("0\r\n\r\n{smuggled}");
    let both = format!(
        "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
        body.len()
    );
    let r = raw::send(a, &post_keep_alive(&both, &body)).await;
    assert!(r.responses() <= 1, "one request, one answer: {}", r.all);
    assert!(!r.all.contains("/smuggled"), "{}", r.all);
    // TE.CL the other way round.
    let both = "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n";
    let r = raw::send(a, &post_keep_alive(both, &body)).await;
    assert!(r.responses() <= 1, "{}", r.all);
    assert!(!r.all.contains("/smuggled"), "{}", r.all);
    assert!(echo_requests(&s).await <= 2);

    // Honest pipelining still works, in order.
    let two = format!(
        "GET /one HTTP/1.1\r\nHost: {HOST}\r\n\r\nGET /two HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let r = raw::send(a, two.as_bytes()).await;
    assert_eq!(r.responses(), 2, "{}", r.all);
    let one = r.all.find("\"/one\"").expect("first answer");
    let second = r.all.find("\"/two\"").expect("second answer");
    assert!(one < second);
}

#[tokio::test]
async fn a_101_nobody_asked_for_is_a_bad_gateway() {
    let backend = raw::scripted_backend(vec![(
        Duration::ZERO,
        b"HTTP/1.1 101 Switching Protocols
Upgrade: evil
Connection: upgrade

raw bytes",
    )])
    .await;
    let docs = service_route("switcher", "switch.test", backend);
    let s = Setup::start(&docs).await;
    let r = raw::send(
        s.addr(),
        &raw::get(
            "/",
            "switch.test",
            &[("upgrade", "websocket"), ("connection", "upgrade")],
        ),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.all);
    assert!(!r.all.contains("raw bytes"));
    let r = raw::send(s.addr(), &raw::get("/", "switch.test", &[])).await;
    assert_eq!(r.status, 502, "{}", r.all);
}
