//! Configuration propagation on the real test control plane: the time from the API server
//! accepting a new HTTPRoute to the first 200 through a dataplane, with routes already
//! present (`PORTICO_BENCH_SIZES`, default 10,100,1000) over `PORTICO_BENCH_CHANGES`
//! (default 20) new routes; and the failed requests of a steady load during
//! `PORTICO_BENCH_CHURN` (default 100) route changes. The controller and the dataplane are the debug or release binaries that
//! `PORTICO_BIN_DIR` names (see `make bench`).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use portico_tests::cluster::create;
use portico_tests::scenario::Setup;
use portico_tests::{HttpClient, TempDir, await_some};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn route(name: &str, host: &str) -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name},
           "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One case: `present` routes, then `changes` new ones timed from the API server accepting
/// each to its first 200 through the dataplane. With `churn`, also `churn` route changes
/// under a steady load on a route that stays, counting the load's failures.
async fn case(present: usize, changes: usize, churn: usize) -> (Vec<Duration>, Option<(u64, u64)>) {
    let s = Setup::new("propagation").await;
    let _controller = s.controller();
    let token = s.token(&s.dataplane_account()).await;
    let net = portico_tests::netns::backend_net();
    let backend = net.echo("backend");
    let slices: Api<EndpointSlice> = Api::namespaced(s.client.clone(), &s.ns);
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svc-1", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": backend.addr.port()}],
        "endpoints": [{"addresses": [backend.addr.ip().to_string()]}]});
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice).expect("slice"),
        )
        .await
        .expect("create slice");
    for i in 0..present {
        create::<HttpRoute>(
            &s.client,
            &s.ns,
            route(&format!("r{i}"), &format!("r{i}.example.com")),
        )
        .await;
    }
    let state = TempDir::new("state");
    let dp = s.dataplane("replica", &token, state.path());
    s.await_programmed().await;
    let http = HttpClient::new();
    let addr = SocketAddr::new(dp.ip, s.port);
    let last = format!("r{}.example.com", present.saturating_sub(1));
    await_some("the present routes to serve", || async {
        (http.try_get(addr, &last, "/", &[]).await?.status == 200).then_some(())
    })
    .await;

    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let host = format!("new{i}.example.com");
        create::<HttpRoute>(&s.client, &s.ns, route(&format!("new{i}"), &host)).await;
        let accepted = Instant::now();
        loop {
            if http
                .try_get(addr, &host, "/", &[])
                .await
                .is_some_and(|r| r.status == 200)
            {
                break;
            }
            assert!(
                accepted.elapsed() < Duration::from_secs(30),
                "route {host} never served"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(accepted.elapsed());
    }

    let churned = if churn > 0 {
        // Steady load on r0 from 4 clients while routes are created, changed and deleted.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (stop, http) = (stop.clone(), HttpClient::new());
            load.push(tokio::spawn(async move {
                let (mut total, mut failed) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    total += 1;
                    let ok = http
                        .try_get(addr, "r0.example.com", "/", &[])
                        .await
                        .is_some_and(|r| r.status == 200);
                    if !ok {
                        failed += 1;
                    }
                }
                (total, failed)
            }));
        }
        let routes: Api<HttpRoute> = Api::namespaced(s.client.clone(), &s.ns);
        for i in 0..churn {
            let name = format!("churn{}", i % 10);
            match i / 10 % 3 {
                0 => {
                    let _ = routes
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(route(&name, &format!("{name}.example.com")))
                                .expect("route"),
                        )
                        .await;
                }
                1 => {
                    let _ = routes
                        .patch(
                            &name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(json!({"spec": {"hostnames": [format!("{name}.changed.example.com")]}})),
                        )
                        .await;
                }
                _ => {
                    let _ = routes.delete(&name, &Default::default()).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sum = (0, 0);
        for l in load {
            let (t, f) = l.await.expect("load task");
            sum.0 += t;
            sum.1 += f;
        }
        Some(sum)
    } else {
        None
    };
    (samples, churned)
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("PORTICO_BENCH_SIZES")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let changes = env("PORTICO_BENCH_CHANGES", 20);
    let churn = env("PORTICO_BENCH_CHURN", 100);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut md = format!(
        "## Configuration propagation on the test control plane\n\n\
         Real kube-apiserver + etcd, a real controller and dataplane (release builds): the time \
         from the API server accepting a new HTTPRoute to the first 200 through the dataplane, \
         over {changes} new routes with the given number already present.\n\n\
         | routes present | changes | p50 ms | p99 ms | max ms |\n| ---: | ---: | ---: | ---: | ---: |\n"
    );
    let mut churn_line = String::new();
    for (i, &present) in sizes.iter().enumerate() {
        // Route churn under load once, in the middle-sized case.
        let churn_here = if i == sizes.len() / 2 { churn } else { 0 };
        let (mut samples, churned) = case(present, changes, churn_here).await;
        samples.sort();
        md.push_str(&format!(
            "| {present} | {changes} | {:.1} | {:.1} | {:.1} |\n",
            ms(percentile(&samples, 50.0)),
            ms(percentile(&samples, 99.0)),
            ms(samples[samples.len() - 1]),
        ));
        if let Some((total, failed)) = churned {
            churn_line = format!(
                "\nErrors during {churn} route changes (creates, updates, deletes of other routes, \
                 20 ms apart) with {present} routes present, under steady load from 4 keep-alive \
                 clients on a route that stays: **{failed} failed of {total} requests**.\n"
            );
        }
    }
    md.push_str(&churn_line);
    println!("{md}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report");
    std::fs::create_dir_all(&dir).expect("report dir");
    std::fs::write(dir.join("30-propagation.md"), md).expect("write report");
}
