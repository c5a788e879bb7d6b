//! h2spec (the HTTP/2 conformance tester, built from its Go module by `make h2spec`) against
//! the h2c and the TLS listener of a real `portico`.

use portico_tests::tls::gateway_with_cert;
use portico_tests::{Echo, Portico, free_port, loopback_ip};
use std::path::PathBuf;
use std::process::Command;

fn h2spec() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/h2spec");
    assert!(p.exists(), "{} is missing: run `make h2spec`", p.display());
    p
}

/// Runs h2spec; returns its summary line and the descriptions of the failed tests.
fn run(args: &[&str]) -> (String, Vec<String>) {
    let out = Command::new(h2spec())
        .args(args)
        .args(["--timeout", "5"])
        .output()
        .expect("run h2spec");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .find(|l| l.contains(" tests, ") && l.contains(" passed"))
        .unwrap_or_else(|| panic!("no summary in h2spec's output:\n{text}"))
        .trim()
        .to_string();
    let failures = text
        .split("Failures:")
        .nth(1)
        .map(|f| {
            f.lines()
                .filter_map(|l| l.trim().strip_prefix("× "))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    eprintln!("h2spec {}: {summary}", args.join(" "));
    (summary, failures)
}

#[tokio::test]
async fn h2spec_passes_on_the_tls_and_h2c_listeners() {
    let echo = Echo::start("echo");
    let ip = loopback_ip();
    let (port, tls_port) = (free_port(ip), free_port(ip));
    let (text, _) = gateway_with_cert(
        &[
            format!("{{name: http, port: {port}, protocol: HTTP}}"),
            format!(
                "{{name: https, port: {tls_port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}"
            ),
        ],
        echo.addr,
        &["h2spec.test"],
    );
    let p = Portico::start_on(ip, &[("gw.yaml", &text)], &[]).await;
    let host = ip.to_string();
    let (tls_port, port) = (tls_port.to_string(), port.to_string());
    // The backend holds each answer for 50 ms: cases that send frames on a stream after its
    // request (6.9.1/3: a WINDOW_UPDATE past 2^31-1) need the stream still open when they
    // arrive, and an answer already sent (the stream reset with NO_ERROR) made them flaky.
    let path = "/?delay_ms=50";
    let tls = tokio::task::spawn_blocking({
        let host = host.clone();
        move || run(&["-h", &host, "-p", &tls_port, "-P", path, "-t", "-k"])
    })
    .await
    .expect("join");
    assert!(tls.1.is_empty(), "h2spec over TLS: {}: {:?}", tls.0, tls.1);
    let h2c = tokio::task::spawn_blocking(move || run(&["-h", &host, "-p", &port, "-P", path]))
        .await
        .expect("join");
    // The plaintext port speaks HTTP/1.1 and HTTP/2 with prior knowledge: bytes that are not
    // the HTTP/2 preface are read as HTTP/1.1 and an invalid request line is answered 400
    // there, where h2spec expects a silent close. Over TLS, ALPN says h2 and it is closed.
    assert!(
        h2c.1
            .iter()
            .all(|f| f == "2: Sends invalid connection preface"),
        "h2spec over h2c: {}: {:?}",
        h2c.0,
        h2c.1
    );
    drop(p);
}
