//! BackendPolicy: attachment to Services and their ports, precedence, defaults filled in,
//! and every misconfiguration reported in the policy's own status while its backends keep
//! the settings they had.

use super::{gw, policy_condition, run};
use crate::Output;
use crate::status::{Condition, reasons, types};
use portico_model::backend::{LoadBalancer, OutlierDetection, Retry};
use portico_model::{BackendSettings, PolicyKind};

/// Routes to both ports of `svc` (the base's `web` port 80 and `grpc` port 81).
const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /web}}]
    backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{name: svc, port: 81}]
"#;

const SVC: &str = r#"[{group: "", kind: Service, name: svc}]"#;
const WEB: &str = r#"[{group: "", kind: Service, name: svc, sectionName: web}]"#;
const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-02T00:00:00Z";

fn policy(name: &str, created: &str, targets: &str, body: &str) -> String {
    format!(
        "---\napiVersion: portico.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: {targets}\n{body}\n"
    )
}

fn accepted(out: &Output, policy: &str) -> Condition {
    policy_condition(out, PolicyKind::Backend, policy, 0, types::ACCEPTED)
}

/// The settings of `svc`'s port `port` in the snapshot.
fn settings(out: &Output, port: u16) -> Option<BackendSettings> {
    out.snapshots[&gw()]
        .backends
        .iter()
        .find(|b| b.id.name == "svc" && b.id.port == port)
        .expect("backend in snapshot")
        .settings
        .clone()
}

fn policy_of(out: &Output, port: u16) -> Option<String> {
    settings(out, port).map(|s| s.policy.name)
}

#[test]
fn without_a_policy_backends_carry_no_settings() {
    let out = run(ROUTES);
    assert_eq!(settings(&out, 80), None);
    assert_eq!(settings(&out, 81), None);
}

#[test]
fn a_port_policy_beats_the_service_policy_and_the_oldest_wins_a_tie() {
    let rr = "  loadBalancer: {type: RoundRobin}";
    let out = run(&format!(
        "{ROUTES}{}{}{}",
        policy("whole", T1, SVC, rr),
        policy("web", T1, WEB, "  loadBalancer: {type: Random}"),
        policy("younger", T2, WEB, rr),
    ));
    assert_eq!(policy_of(&out, 80).as_deref(), Some("web"));
    assert_eq!(policy_of(&out, 81).as_deref(), Some("whole"));
    assert_eq!(
        settings(&out, 80).map(|s| s.load_balancer),
        Some(LoadBalancer::Random)
    );
    assert_eq!(
        settings(&out, 81).map(|s| s.load_balancer),
        Some(LoadBalancer::RoundRobin)
    );
    assert!(accepted(&out, "whole").is_true());
    assert!(accepted(&out, "web").is_true());
    let c = accepted(&out, "younger");
    assert_eq!(c.reason, reasons::CONFLICTED);
    assert!(c.message.contains("default/web"), "{}", c.message);
}

#[test]
fn what_a_policy_leaves_out_keeps_the_defaults() {
    let body = r#"  outlierDetection: {consecutive5xx: 3, baseEjectionTime: 10s}
  retry: {budget: {percent: 50}}
  circuitBreaker: {maxRequests: 100}
  connection: {connectTimeout: 250ms}"#;
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    let s = settings(&out, 80).expect("settings");
    assert_eq!(s.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        s.outlier_detection,
        OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_ms: 10_000,
            ..OutlierDetection::default()
        }
    );
    assert_eq!(
        s.retry,
        Retry {
            budget_percent: 50,
            ..Retry::default()
        }
    );
    assert!(
        s.retry.on_connect_failure,
        "connect failures are retried by default"
    );
    assert_eq!(s.circuit_breaker.max_requests, Some(100));
    assert_eq!(s.circuit_breaker.max_retries, None);
    assert_eq!(s.connection.connect_timeout_ms, Some(250));
    assert_eq!(s.connection.idle_timeout_ms, None);
}

#[test]
fn targets_that_do_not_resolve_are_reported() {
    let body = "  loadBalancer: {type: RoundRobin}";
    let out = run(&format!(
        "{ROUTES}{}{}{}",
        policy(
            "no-svc",
            T1,
            r#"[{group: "", kind: Service, name: nope}]"#,
            body
        ),
        policy(
            "no-port",
            T1,
            r#"[{group: "", kind: Service, name: svc, sectionName: admin}]"#,
            body
        ),
        policy(
            "gateway",
            T1,
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
            body
        ),
    ));
    let c = accepted(&out, "no-svc");
    assert_eq!(c.reason, reasons::TARGET_NOT_FOUND);
    assert!(c.message.contains("default/nope"), "{}", c.message);
    let c = accepted(&out, "no-port");
    assert_eq!(c.reason, reasons::TARGET_NOT_FOUND);
    assert!(c.message.contains("\"admin\""), "{}", c.message);
    let c = accepted(&out, "gateway");
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("target the Service"), "{}", c.message);
    assert_eq!(settings(&out, 80), None);
}

#[test]
fn an_invalid_policy_does_not_attach_and_says_what_to_fix() {
    for (body, says) in [
        (
            "  outlierDetection: {baseEjectionTime: 10m, maxEjectionTime: 1m}",
            "must not exceed maxEjectionTime",
        ),
        (
            "  outlierDetection: {baseEjectionTime: 10x}",
            "outlierDetection.baseEjectionTime",
        ),
        (
            "  outlierDetection: {maxEjectedPercent: 150}",
            "at most 100",
        ),
        ("  circuitBreaker: {maxRequests: 0}", "refuse every request"),
        (
            "  circuitBreaker: {maxConnections: 0}",
            "refuse every request",
        ),
        (
            "  circuitBreaker: {maxPendingRequests: 10}",
            "applies only with circuitBreaker.maxConnections",
        ),
        ("  connection: {idleTimeout: 2h}", "between 1s and 1h"),
        (
            "  compression: {contentTypes: [\"text html\"]}",
            "is not a media type",
        ),
        (
            "  compression: {encodings: [gzip, gzip]}",
            "lists gzip twice",
        ),
        ("  healthCheck: {type: HTTP}", "needs http.path"),
        (
            "  healthCheck: {type: TCP, grpc: {service: x}}",
            "grpc only to GRPC",
        ),
        (
            "  healthCheck: {type: HTTP, http: {path: /h, expectedStatuses: [{start: 300, end: 200}]}}",
            "not a range of statuses",
        ),
        (
            "  healthCheck: {type: HTTP, http: {path: /h, hostname: \"a\\r\\nX-Injected: 1\"}}",
            "is not a host name",
        ),
        (
            "  healthCheck: {type: HTTP, http: {path: \"/h x\"}}",
            "visible ASCII",
        ),
        (
            "  loadBalancer: {type: ConsistentHash}",
            "consistentHash is required",
        ),
        (
            "  loadBalancer: {type: ConsistentHash, consistentHash: {type: Header}}",
            "needs a name",
        ),
        (
            "  loadBalancer: {type: RoundRobin, consistentHash: {type: SourceIP}}",
            "applies only to the ConsistentHash type",
        ),
        (
            "  sessionPersistence: {type: Header, sessionName: x-forwarded-for}",
            "a header the gateway reads or sets itself",
        ),
        (
            "  sessionPersistence: {sessionName: \"a b\"}",
            "sessionPersistence.sessionName",
        ),
        (
            "  sessionPersistence: {type: Header, cookieConfig: {lifetimeType: Session}}",
            "applies only to the Cookie type",
        ),
        (
            "  sessionPersistence: {idleTimeout: 500ms}",
            "sessionPersistence.idleTimeout",
        ),
        (
            "  retry: {attempts: 3}",
            "need retry.statuses or retry.onReset",
        ),
        ("  retry: {statuses: [302]}", "between 400 and 599"),
        ("  retry: {onReset: true, attempts: 20}", "between 1 and 10"),
        ("  retry: {perTryTimeout: 1ms}", "retry.perTryTimeout"),
        (
            "  loadBalancer: {type: ConsistentHash, consistentHash: {type: SourceIP}, slowStart: {window: 30s}}",
            "slowStart does not apply to ConsistentHash",
        ),
        (
            "  loadBalancer: {slowStart: {window: 30s, minWeightPercent: 0}}",
            "minWeightPercent is 0",
        ),
        (
            "  connection: {tcpKeepAlive: {probes: 50}}",
            "tcpKeepAlive.probes is 50",
        ),
        (
            "  connection: {http2: {keepAliveInterval: 10ms}}",
            "connection.http2.keepAliveInterval",
        ),
    ] {
        let out = run(&format!(
            "{ROUTES}{}{}",
            policy("older", T1, SVC, "  loadBalancer: {type: Random}"),
            policy("bad", T2, WEB, body),
        ));
        let c = accepted(&out, "bad");
        assert_eq!(c.reason, reasons::INVALID, "{body}");
        assert!(c.message.contains(says), "{body}: {}", c.message);
        // The port keeps the Service's policy.
        assert_eq!(policy_of(&out, 80).as_deref(), Some("older"), "{body}");
    }
}

#[test]
fn auth_and_rate_limit_policies_still_refuse_a_service() {
    let out = run(&format!(
        "{ROUTES}---\napiVersion: portico.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: rl, namespace: default}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: svc}}]\n  limits: [{{requests: 1, interval: 1s}}]\n"
    ));
    let c = policy_condition(&out, PolicyKind::RateLimit, "rl", 0, types::ACCEPTED);
    assert_eq!(c.reason, reasons::INVALID);
    assert!(c.message.contains("cannot target Service"), "{}", c.message);
}

#[test]
fn policy_retries_get_the_route_retry_defaults() {
    let body = "  retry: {statuses: [503, 502, 503], perTryTimeout: 2s}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    let retry = settings(&out, 80).map(|s| s.retry).expect("settings");
    assert_eq!(
        retry.rules,
        Some(portico_model::RouteRetry {
            codes: vec![502, 503],
            attempts: portico_model::RouteRetry::DEFAULT_ATTEMPTS,
            backoff_ms: portico_model::RouteRetry::DEFAULT_BACKOFF_MS,
        })
    );
    assert_eq!(retry.per_try_timeout_ms, Some(2_000));
    let body = "  retry: {onReset: true, attempts: 4, backoff: 10ms}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    let rules = settings(&out, 80)
        .and_then(|s| s.retry.rules)
        .expect("rules");
    assert_eq!(
        (rules.codes.len(), rules.attempts, rules.backoff_ms),
        (0, 4, 10)
    );
}

#[test]
fn slow_start_gets_its_default_weight() {
    let body = "  loadBalancer: {slowStart: {window: 2m}}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    assert_eq!(
        settings(&out, 80).and_then(|s| s.slow_start),
        Some(portico_model::backend::SlowStart {
            window_ms: 120_000,
            min_weight_percent: 10,
        })
    );
}

#[test]
fn compression_gets_its_defaults_and_keeps_the_order_given() {
    let out = run(&format!(
        "{ROUTES}{}",
        policy("p", T1, SVC, "  compression: {}")
    ));
    assert!(accepted(&out, "p").is_true());
    let c = settings(&out, 80)
        .and_then(|s| s.compression)
        .expect("compression");
    assert_eq!(c.encodings, portico_model::Compression::DEFAULT_ENCODINGS);
    assert_eq!(c.min_size, 1024);
    assert_eq!(c.content_types.len(), 9);
    assert!(!c.credentialed);
    let body = "  compression: {encodings: [gzip, br], minSize: 0, contentTypes: [Text/HTML, application/*+json], credentialed: true}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    let c = settings(&out, 80)
        .and_then(|s| s.compression)
        .expect("compression");
    use portico_model::Encoding::{Brotli, Gzip};
    assert_eq!(c.encodings, [Gzip, Brotli]);
    assert_eq!(c.min_size, 0);
    assert_eq!(c.content_types, ["text/html", "application/*+json"]);
    assert!(c.credentialed);
}

#[test]
fn connection_settings_get_their_defaults() {
    use portico_model::backend::{Http2, TcpKeepalive};
    let body = "  connection: {tcpKeepAlive: {idle: 30s}, http2: {maxConcurrentStreams: 100, keepAliveInterval: 30s}}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    let c = settings(&out, 80).map(|s| s.connection).expect("settings");
    assert_eq!(
        c.tcp_keepalive,
        Some(TcpKeepalive {
            idle_ms: 30_000,
            ..TcpKeepalive::default()
        })
    );
    assert_eq!(
        c.http2,
        Some(Http2 {
            max_concurrent_streams: Some(100),
            keepalive_interval_ms: Some(30_000),
            keepalive_timeout_ms: None,
        })
    );
}

#[test]
fn session_persistence_gets_a_name_of_the_policy() {
    use portico_model::backend::{SessionKind, SessionPersistence};
    let body = "  sessionPersistence: {absoluteTimeout: 1h}";
    let out = run(&format!(
        "{ROUTES}{}{}",
        policy("p", T1, WEB, body),
        policy("q", T1, SVC, body)
    ));
    assert!(accepted(&out, "p").is_true());
    let sp = |port| settings(&out, port).and_then(|s| s.session_persistence);
    let web = sp(80).expect("a session");
    assert_eq!(
        web,
        SessionPersistence {
            kind: SessionKind::Cookie,
            name: web.name.clone(),
            absolute_timeout_ms: Some(3_600_000),
            idle_timeout_ms: None,
            permanent: false,
        }
    );
    assert!(web.name.starts_with("portico-session-"), "{}", web.name);
    // Another policy, another cookie.
    assert_ne!(sp(81).map(|s| s.name), Some(web.name));
}

#[test]
fn health_checks_get_their_defaults() {
    use portico_model::backend::{HealthCheck, Probe};
    let body = "  healthCheck: {type: HTTP, http: {path: /healthz}, interval: 2s}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    assert_eq!(
        settings(&out, 80).and_then(|s| s.health_check),
        Some(HealthCheck {
            probe: Probe::Http {
                method: "GET".into(),
                path: "/healthz".into(),
                host: None,
                expected: vec![(200, 200)],
            },
            interval_ms: 2_000,
            timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
            unhealthy_threshold: HealthCheck::DEFAULT_UNHEALTHY_THRESHOLD,
            healthy_threshold: HealthCheck::DEFAULT_HEALTHY_THRESHOLD,
        })
    );
    let body = "  healthCheck: {type: GRPC}";
    let out = run(&format!("{ROUTES}{}", policy("g", T1, SVC, body)));
    assert_eq!(
        settings(&out, 81)
            .and_then(|s| s.health_check)
            .map(|h| h.probe),
        Some(Probe::Grpc {
            service: String::new()
        })
    );
}

#[test]
fn consistent_hash_keys_are_compiled() {
    use portico_model::backend::HashOn;
    let body =
        "  loadBalancer: {type: ConsistentHash, consistentHash: {type: Header, name: X-User}}";
    let out = run(&format!("{ROUTES}{}", policy("p", T1, SVC, body)));
    assert!(accepted(&out, "p").is_true());
    let s = settings(&out, 80).expect("settings");
    assert_eq!(s.load_balancer, LoadBalancer::ConsistentHash);
    assert_eq!(s.hash_on, Some(HashOn::Header("x-user".into())));
}
