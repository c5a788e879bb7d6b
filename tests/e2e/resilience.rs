//! Backends that fail, end to end: a real `portico` process in front of real echo processes,
//! one of them SIGKILLed under load.

use portico_tests::auth::{HOST, config_with_endpoints, route};
use portico_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The value of the series of `name` for the echo backend, from a metrics text.
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains("backend=\"default/echo:80\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}

/// Steady load from eight keep-alive clients; one of three endpoints is killed (its
/// EndpointSlice, here the Service's endpoint list, still names it): not one request fails,
/// since a connection that cannot be made is retried on another endpoint, and the dead
/// endpoint is ejected after five refusals in a row.
#[tokio::test]
async fn an_endpoint_killed_under_load_costs_no_failed_request() {
    let mut echoes = [Echo::start("a"), Echo::start("b"), Echo::start("c")];
    let ip = loopback_ip();
    let port = free_port(ip);
    let addrs: Vec<_> = echoes.iter().map(|e| e.addr).collect();
    let text = config_with_endpoints(port, &addrs, &route("all", "/"));
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);

    let stop = Arc::new(AtomicBool::new(false));
    let (total, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, total, failed, failures) = (
            stop.clone(),
            total.clone(),
            failed.clone(),
            failures.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = HttpClient::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.try_get(addr, HOST, "/", &[]).await;
                total.fetch_add(1, Ordering::Relaxed);
                match r {
                    Some(r) if r.status == 200 => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .push(other.map(|r| format!("{} {}", r.status, r.text())));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = total.load(Ordering::Relaxed);
    echoes[1].proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let total = total.load(Ordering::Relaxed);
    assert!(
        before > 100 && total > before + 200,
        "load ran: {before}, {total}"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {total}: {:?}",
        failures.lock()
    );
    let metrics = portico.metrics().await;
    assert_eq!(
        series(&metrics, "portico_upstream_endpoint_ejections_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "portico_upstream_endpoints_ejected"),
        1,
        "{metrics}"
    );
    assert!(series(&metrics, "portico_upstream_retries_total") >= 1);
    portico
        .await_logged("endpoint ejected by passive health checks")
        .await;
}
