//! Snapshot builders for tests (the `fixtures` feature): one vocabulary for the dataplane's
//! in-process tests and benchmarks.
//!
//! ```ignore
//! let snap = Snapshot::test("gw")
//!     .with_listener(http_listener("http", port))
//!     .with_backend(backend("echo", 80, &[echo_addr]))
//!     .with_route(route("web", "http", &["web.test"], vec![rule(vec![prefix("/")], vec![to("echo", 80)])]));
//! ```

use crate::*;
use std::net::SocketAddr;

/// The namespace every fixture lives in.
pub const NS: &str = "test";

impl Snapshot {
    /// An empty snapshot of Gateway `test/<gateway>`, version 1.
    pub fn test(gateway: &str) -> Self {
        Snapshot {
            version: 1,
            gateway: ObjectRef::new(NS, gateway),
            listeners: vec![],
            routes: vec![],
            stream_routes: vec![],
            backends: vec![],
            policies: PolicySet::default(),
            session_key: None,
            purges: vec![],
        }
    }

    pub fn with_listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }

    /// Routes keep the order they are added in (their precedence).
    pub fn with_route(mut self, r: HttpRoute) -> Self {
        self.routes.push(r);
        self
    }

    /// Backends stay sorted by id, as compile leaves them.
    pub fn with_backend(mut self, b: Backend) -> Self {
        self.backends.push(b);
        self.backends.sort_by(|a, b| a.id.cmp(&b.id));
        self
    }
}

/// A plain-HTTP listener on 127.0.0.1 (through the dataplane's default bind).
pub fn http_listener(name: &str, port: u16) -> Listener {
    Listener {
        name: name.into(),
        addresses: vec![],
        port,
        protocol: Protocol::Http,
        hostname: None,
        tls: None,
    }
}

pub fn backend_id(name: &str, port: u16) -> BackendId {
    BackendId {
        namespace: NS.into(),
        name: name.into(),
        port,
        udp: false,
    }
}

/// Service `test/<name>` port `port`, HTTP/1.1, with these ready endpoints.
pub fn backend(name: &str, port: u16, endpoints: &[SocketAddr]) -> Backend {
    let mut endpoints: Vec<Endpoint> = endpoints
        .iter()
        .map(|a| Endpoint {
            address: a.ip().to_string(),
            port: a.port(),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    endpoints.sort();
    Backend {
        id: backend_id(name, port),
        protocol: AppProtocol::Http1,
        port_name: None,
        endpoints,
        settings: None,
        tls: None,
    }
}

/// A backendRef of weight 1 to Service `test/<name>` port `port`.
pub fn to(name: &str, port: u16) -> BackendRef {
    BackendRef {
        target: BackendTarget::Service(backend_id(name, port)),
        weight: 1,
        filters: vec![],
    }
}

/// A backendRef compile could not resolve (its traffic gets 500).
pub fn unresolved(reason: &str) -> BackendRef {
    BackendRef {
        target: BackendTarget::Unresolved {
            reason: reason.into(),
        },
        weight: 1,
        filters: vec![],
    }
}

pub fn path_match(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        method: None,
        headers: vec![],
        query_params: vec![],
    }
}

pub fn prefix(p: &str) -> RouteMatch {
    path_match(PathMatch::PathPrefix(p.into()))
}

pub fn exact(p: &str) -> RouteMatch {
    path_match(PathMatch::Exact(p.into()))
}

pub fn rule(matches: Vec<RouteMatch>, backend_refs: Vec<BackendRef>) -> RouteRule {
    RouteRule {
        matches,
        backend_refs,
        ..RouteRule::default()
    }
}

/// HTTPRoute `test/<name>` attached to `listener` with these hostnames (none: every host).
pub fn route(name: &str, listener: &str, hostnames: &[&str], rules: Vec<RouteRule>) -> HttpRoute {
    HttpRoute {
        kind: RouteKind::Http,
        id: ObjectRef::new(NS, name),
        parents: vec![RouteParent {
            listener: listener.into(),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            policies: AttachedPolicies::default(),
        }],
        rules,
    }
}
