//! The router over a route table of every match kind: any host, path, method, headers and
//! query either match a rule or not, never panic.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portico_compile::manifests::ManifestSet;
use portico_dataplane::router::SocketRouter;
use std::sync::LazyLock;

const CONFIG: &str = include_str!("../seeds/router-config.yaml");

static ROUTERS: LazyLock<Vec<SocketRouter>> = LazyLock::new(|| {
    let mut set = ManifestSet::default();
    set.add_file("config.yaml", CONFIG);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let out = portico_compile::compile(&set.inputs, portico_compile::CONTROLLER_NAME);
    let snapshots: Vec<_> = out.snapshots.into_values().collect();
    let tables = portico_dataplane::table::build(
        &snapshots,
        "127.0.0.1".parse().expect("ip"),
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &Default::default(),
    );
    tables.sockets.into_values().collect()
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let host = parts.next().unwrap_or_default().to_ascii_lowercase();
    let path = parts.next().unwrap_or("/");
    let method =
        Method::from_bytes(parts.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let query = parts.next();
    let mut headers = HeaderMap::new();
    for l in parts.take(16) {
        if let Some((k, v)) = l.split_once(':')
            && let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            )
        {
            headers.append(k, v);
        }
    }
    let Ok(n) = portico_dataplane::path::normalize(path) else {
        return;
    };
    for r in ROUTERS.iter() {
        let _ = r.route(&host, &n.matching, &method, &headers, query);
    }
});
