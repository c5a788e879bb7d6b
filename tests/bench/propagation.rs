//! Configuration propagation on the real test control plane: the time from the API server
//! accepting a new HTTPRoute to the first 200 through a dataplane, with routes already
//! present (`PORTICO_BENCH_ROUTES`, default 100) over `PORTICO_BENCH_CHANGES` (default 20)
//! new routes. The controller and the dataplane are the debug or release binaries that
//! `PORTICO_BIN_DIR` names (see `make bench`).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use portico_crds::gateway_api::httproutes::HttpRoute;
use portico_tests::cluster::create;
use portico_tests::scenario::Setup;
use portico_tests::{HttpClient, TempDir, await_some};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

#[tokio::main]
async fn main() {
    let present = env("PORTICO_BENCH_ROUTES", 100);
    let changes = env("PORTICO_BENCH_CHANGES", 20);
    let s = Setup::new("propagation").await;
    let _controller = s.controller();
    let token = s.token("portico-gw").await;
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
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("routes present | changes | p50 ms | p99 ms | max ms");
    println!("---: | ---: | ---: | ---: | ---:");
    println!(
        "{present} | {changes} | {:.1} | {:.1} | {:.1}",
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples[samples.len() - 1]),
    );
}
