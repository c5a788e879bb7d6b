//! Matching precedence, built through the same path as production: snapshot → table::build.

use crate::metrics::Metrics;
use crate::router::SocketRouter;
use crate::table;
use crate::upstream::Upstreams;
use http::{HeaderMap, HeaderValue, Method};
use portico_model::fixtures::{path_match as m, route};
use portico_model::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn rule(matches: Vec<RouteMatch>) -> RouteRule {
    RouteRule {
        matches,
        ..RouteRule::default()
    }
}

fn listener(name: &str, hostname: Option<&str>) -> Listener {
    Listener {
        name: name.into(),
        addresses: vec![],
        port: 80,
        protocol: Protocol::Http,
        hostname: hostname.map(str::to_string),
        tls: None,
    }
}

fn build(listeners: Vec<Listener>, routes: Vec<HttpRoute>) -> SocketRouter {
    let snap = Snapshot {
        listeners,
        routes,
        ..Snapshot::test("gw")
    };
    let mut t = table::build(
        &[snap],
        IP,
        &Upstreams::default(),
        &Metrics::default(),
        &crate::auth::AuthShared::default(),
        &crate::ratelimit::RateLimitShared::default(),
        &crate::cache::step::CacheShared::new(0, &Metrics::default()),
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    t.sockets.remove(&SocketAddr::new(IP, 80)).expect("socket")
}

struct Req<'a> {
    host: &'a str,
    path: &'a str,
    method: Method,
    headers: HeaderMap,
    query: Option<&'a str>,
}

fn req<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req {
        host,
        path,
        method: Method::GET,
        headers: HeaderMap::new(),
        query: None,
    }
}

/// `route-name#rule-index` of the match, or `none`.
fn hit(r: &SocketRouter, q: &Req<'_>) -> String {
    match r.route(q.host, q.path, &q.method, &q.headers, q.query) {
        Some(m) => format!(
            "{}#{}",
            m.candidate.rule.route.trim_start_matches("test/"),
            m.candidate.order.1
        ),
        None => "none".into(),
    }
}

#[test]
fn exact_beats_regex_beats_longest_prefix() {
    let r = build(
        vec![listener("l", None)],
        vec![route(
            "r",
            "l",
            &[],
            vec![
                rule(vec![m(PathMatch::PathPrefix("/".into()))]),
                rule(vec![m(PathMatch::PathPrefix("/a".into()))]),
                rule(vec![m(PathMatch::PathPrefix("/a/b".into()))]),
                rule(vec![m(PathMatch::Exact("/a/b/c".into()))]),
                rule(vec![m(PathMatch::RegularExpression("/a/[0-9]+".into()))]),
            ],
        )],
    );
    assert_eq!(hit(&r, &req("x", "/a/b/c")), "r#3");
    assert_eq!(hit(&r, &req("x", "/a/b/c/d")), "r#2");
    assert_eq!(hit(&r, &req("x", "/a/b")), "r#2");
    assert_eq!(hit(&r, &req("x", "/a/b/")), "r#2");
    assert_eq!(hit(&r, &req("x", "/a/42")), "r#4", "regex over prefix /a");
    assert_eq!(
        hit(&r, &req("x", "/a/42/x")),
        "r#1",
        "regex is a full match"
    );
    assert_eq!(
        hit(&r, &req("x", "/ab")),
        "r#0",
        "prefixes match whole segments"
    );
    assert_eq!(hit(&r, &req("x", "/")), "r#0");
}

#[test]
fn method_then_headers_then_query_then_route_age() {
    let with = |method: Option<&str>, headers: usize, query: usize| RouteMatch {
        path: PathMatch::PathPrefix("/p".into()),
        method: method.map(str::to_string),
        headers: (0..headers)
            .map(|i| KeyValueMatch {
                name: format!("h{i}"),
                value: StringMatch::Exact("1".into()),
            })
            .collect(),
        query_params: (0..query)
            .map(|i| KeyValueMatch {
                name: format!("q{i}"),
                value: StringMatch::RegularExpression("[0-9]+".into()),
            })
            .collect(),
    };
    let r = build(
        vec![listener("l", None)],
        vec![
            route(
                "old",
                "l",
                &[],
                vec![rule(vec![with(None, 0, 0)]), rule(vec![with(None, 0, 1)])],
            ),
            route(
                "new",
                "l",
                &[],
                vec![
                    rule(vec![with(None, 2, 0)]),
                    rule(vec![with(Some("POST"), 0, 0)]),
                    rule(vec![with(None, 0, 0)]),
                ],
            ),
        ],
    );
    let mut q = req("x", "/p");
    assert_eq!(hit(&r, &q), "old#0", "a tie goes to the older route");
    q.query = Some("q0=12");
    assert_eq!(hit(&r, &q), "old#1", "query params count");
    q.headers.insert("h0", HeaderValue::from_static("1"));
    q.headers.insert("h1", HeaderValue::from_static("1"));
    assert_eq!(hit(&r, &q), "new#0", "headers beat query params");
    q.method = Method::POST;
    assert_eq!(hit(&r, &q), "new#1", "method beats headers");
    q.query = Some("q0=abc");
    q.method = Method::GET;
    q.headers.clear();
    assert_eq!(hit(&r, &q), "old#0", "regex query value must match fully");
}

#[test]
fn hostnames_exact_over_wildcard_and_listener_first() {
    let r = build(
        vec![
            listener("any", None),
            listener("wild", Some("*.example.com")),
            listener("foo", Some("foo.example.com")),
        ],
        vec![
            route(
                "catchall",
                "any",
                &[],
                vec![rule(vec![m(PathMatch::PathPrefix("/".into()))])],
            ),
            route(
                "wildcard",
                "wild",
                &["*.example.com"],
                vec![rule(vec![m(PathMatch::PathPrefix("/".into()))])],
            ),
            route(
                "deep",
                "wild",
                &["*.a.example.com"],
                vec![rule(vec![m(PathMatch::Exact("/only".into()))])],
            ),
            route(
                "foo",
                "foo",
                &["foo.example.com"],
                vec![rule(vec![m(PathMatch::Exact("/foo".into()))])],
            ),
        ],
    );
    assert_eq!(hit(&r, &req("bar.example.com", "/x")), "wildcard#0");
    assert_eq!(
        hit(&r, &req("x.a.example.com", "/only")),
        "deep#0",
        "longer wildcard first"
    );
    assert_eq!(
        hit(&r, &req("x.a.example.com", "/other")),
        "wildcard#0",
        "falls back to a shorter wildcard"
    );
    assert_eq!(
        hit(&r, &req("example.com", "/x")),
        "catchall#0",
        "a wildcard never matches its bare suffix"
    );
    assert_eq!(hit(&r, &req("foo.example.com", "/foo")), "foo#0");
    assert_eq!(
        hit(&r, &req("foo.example.com", "/bar")),
        "none",
        "a request matches one listener only: the most specific"
    );
    assert_eq!(hit(&r, &req("other.net", "/")), "catchall#0");
}

#[test]
fn header_regex_and_exact_values() {
    let mm = RouteMatch {
        path: PathMatch::PathPrefix("/".into()),
        method: None,
        headers: vec![
            KeyValueMatch {
                name: "x-env".into(),
                value: StringMatch::RegularExpression("canary|beta".into()),
            },
            KeyValueMatch {
                name: "x-team".into(),
                value: StringMatch::Exact("blue".into()),
            },
        ],
        query_params: vec![],
    };
    let r = build(
        vec![listener("l", None)],
        vec![route("r", "l", &[], vec![rule(vec![mm])])],
    );
    let mut q = req("x", "/");
    q.headers.insert("x-env", HeaderValue::from_static("beta"));
    q.headers.insert("x-team", HeaderValue::from_static("blue"));
    assert_eq!(hit(&r, &q), "r#0");
    q.headers
        .insert("x-env", HeaderValue::from_static("betamax"));
    assert_eq!(hit(&r, &q), "none");
    q.headers
        .insert("x-env", HeaderValue::from_static("canary"));
    q.headers.insert("x-team", HeaderValue::from_static("Blue"));
    assert_eq!(hit(&r, &q), "none", "exact values are case-sensitive");
}

#[test]
fn ten_thousand_routes_match_the_right_one() {
    let routes: Vec<HttpRoute> = (0..10_000)
        .map(|i| {
            route(
                &format!("r{i:05}"),
                "l",
                &[&format!("svc{}.example.com", i % 100)],
                vec![rule(vec![m(PathMatch::PathPrefix(format!(
                    "/api/v{}/items{i}",
                    i % 7
                )))])],
            )
        })
        .collect();
    let r = build(vec![listener("l", None)], routes);
    assert_eq!(
        hit(&r, &req("svc42.example.com", "/api/v2/items9942/x")),
        "r09942#0"
    );
    assert_eq!(
        hit(&r, &req("svc42.example.com", "/api/v2/items9942x")),
        "none"
    );
}
