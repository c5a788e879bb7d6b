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

/// Keep-alive clients sending `GET /` to `addr` in a loop until stopped, counting requests,
/// what each failed one got, and the answers of the echo named `watched`.
struct Load {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    by_watched: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<Option<String>>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize, watched: Option<&'static str>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (total, by_watched) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|_| {
                let (stop, total, by_watched, failures) = (
                    stop.clone(),
                    total.clone(),
                    by_watched.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client.try_get(addr, HOST, "/", &[]).await;
                        total.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Some(r) if r.status == 200 => {
                                if watched.is_some_and(|w| r.json()["name"] == w) {
                                    by_watched.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            other => failures
                                .lock()
                                .push(other.map(|r| format!("{} {}", r.status, r.text()))),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            total,
            by_watched,
            failures,
            clients,
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn by_watched(&self) -> u64 {
        self.by_watched.load(Ordering::Relaxed)
    }

    /// Stops the clients: the requests sent, and what each failed one got.
    async fn stop(self) -> (u64, Vec<Option<String>>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.expect("client");
        }
        let failures = std::mem::take(&mut *self.failures.lock());
        (self.total.load(Ordering::Relaxed), failures)
    }
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

    let load = Load::start(addr, 8, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.total();
    echoes[1].proc.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (total, failures) = load.stop().await;
    assert!(
        before > 100 && total > before + 200,
        "load ran: {before}, {total}"
    );
    assert_eq!(failures.len(), 0, "of {total}: {failures:?}");
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

/// With active health checks: one of three endpoints killed under load costs no failed
/// request, is taken out by its failed probes (and by passive detection), and once a
/// process listens on its address again it passes its probes and is back in balancing,
/// with its passive ejection ended, well before that ejection would have run out.
#[tokio::test]
async fn a_killed_endpoint_comes_back_after_its_health_checks_pass() {
    let mut echoes = [Echo::start("a"), Echo::start("b"), Echo::start("c")];
    let ip = loopback_ip();
    let port = free_port(ip);
    let addrs: Vec<_> = echoes.iter().map(|e| e.addr).collect();
    let policy = r#"
---
apiVersion: portico.dev/v1alpha1
kind: BackendPolicy
metadata: {name: echo, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  loadBalancer: {type: RoundRobin}
  outlierDetection: {baseEjectionTime: 10m, maxEjectionTime: 1h, maxEjectedPercent: 34}
  healthCheck:
    type: HTTP
    http: {path: /healthz}
    interval: 500ms
    timeout: 400ms
    unhealthyThreshold: 2
    healthyThreshold: 2
"#;
    let text = config_with_endpoints(port, &addrs, &format!("{}{policy}", route("all", "/")));
    let portico = Portico::start_on(ip, &[("config.yaml", &text)], &[]).await;
    let addr = portico.addr(port);

    let load = Load::start(addr, 4, Some("b"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes[1].proc.kill();
    // Out by its probes (two failures 200 ms apart), and by passive detection.
    portico
        .await_logged("endpoint out of balancing: it failed its active health checks")
        .await;
    let during = load.by_watched();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load.by_watched(), during, "nothing reaches a dead endpoint");
    // A process listens on its address again: it passes two probes and takes its share,
    // though its passive ejection had ten minutes to run.
    echoes[1] = Echo::start_at("b", addrs[1]);
    await_some("the endpoint to be back", || async {
        (load.by_watched() > during + 20).then_some(())
    })
    .await;
    let (total, failures) = load.stop().await;
    assert_eq!(failures.len(), 0, "of {total}: {failures:?}");
    portico
        .await_logged("endpoint back in balancing: it passed its active health checks")
        .await;
    let metrics = portico.metrics().await;
    assert_eq!(
        series(&metrics, "portico_upstream_endpoints_unhealthy"),
        0,
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "portico_upstream_endpoints_ejected"),
        0,
        "{metrics}"
    );
}
