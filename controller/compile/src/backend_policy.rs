//! BackendPolicy: attachment to Services and Service ports (shared with the other policies,
//! [`crate::policy`]), each policy's status, and the settings compiled into the snapshot's
//! `backends[]`.
//!
//! ```text
//!   BackendPolicy ──targetRefs──▶ Service [port name]
//!   snapshot.backends[] (a Service port) ◀── the port's policy, else the Service's
//! ```
//!
//! Like a RateLimitPolicy, one that does not compile does not attach: its backends keep the
//! settings they had without it (the defaults, or a less specific policy) and its status
//! says why. A typo in a timeout must not take a backend down.

use crate::inputs::Inputs;
use crate::policy::{Attachments, References, Target, Targets, Verdict, oldest_first};
use crate::refs::object_ref;
use crate::status::StatusReport;
use crate::values::{HOUR, SECOND, http_token, human, millis};
use portico_crds::backend as crd;
use portico_crds::policy::PolicyTargetRef;
use portico_model::backend as model;
use portico_model::{ObjectRef, PolicyKind, RouteRetry, Snapshot};
use std::collections::BTreeMap;

/// The backend policies that apply, by target, compiled.
#[derive(Debug, Default)]
pub(crate) struct BackendPolicies {
    attached: Attachments,
    compiled: BTreeMap<ObjectRef, model::BackendSettings>,
}

/// Compiles every BackendPolicy, decides attachment and writes each one's status.
pub(crate) fn resolve(
    inputs: &Inputs,
    targets: &Targets,
    status: &mut StatusReport,
) -> BackendPolicies {
    let mut out = BackendPolicies::default();
    for policy in oldest_first(&inputs.backend_policies, |p| &p.metadata) {
        let id = object_ref(&policy.metadata);
        let compiled = compile_policy(&id, &policy.spec);
        let verdict = |_: &Target| match &compiled {
            Err(reason) => Verdict::Rejected(reason.clone()),
            Ok(_) => Verdict::Applies,
        };
        let target_refs: Vec<PolicyTargetRef> =
            policy.spec.target_refs.iter().map(Into::into).collect();
        let s = out.attached.claim(
            PolicyKind::Backend,
            &policy.metadata,
            &target_refs,
            targets,
            verdict,
            &References::Read { unresolved: &[] },
        );
        status.policies.insert((PolicyKind::Backend, id.clone()), s);
        if let Ok(c) = compiled {
            out.compiled.insert(id, c);
        }
    }
    out
}

impl BackendPolicies {
    /// Sets each backend's settings in `snapshot`: its port's policy, else its Service's.
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        for b in &mut snapshot.backends {
            let svc = ObjectRef::new(b.id.namespace.clone(), b.id.name.clone());
            let port = b
                .port_name
                .as_ref()
                .and_then(|p| {
                    self.attached
                        .get(&Target::Service(svc.clone(), Some(p.clone())))
                })
                .or_else(|| self.attached.get(&Target::Service(svc, None)));
            b.settings = port.and_then(|id| self.compiled.get(id).cloned());
        }
    }
}

/// A policy's settings, with the defaults where it says nothing, or why it cannot apply.
fn compile_policy(
    id: &ObjectRef,
    spec: &crd::BackendPolicySpec,
) -> Result<model::BackendSettings, String> {
    let load_balancer = match spec.load_balancer.as_ref().map(|l| l.type_) {
        None | Some(crd::LoadBalancerType::LeastRequest) => model::LoadBalancer::LeastRequest,
        Some(crd::LoadBalancerType::RoundRobin) => model::LoadBalancer::RoundRobin,
        Some(crd::LoadBalancerType::Random) => model::LoadBalancer::Random,
        Some(crd::LoadBalancerType::ConsistentHash) => model::LoadBalancer::ConsistentHash,
    };
    let hash = spec
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref());
    let hash_on = match (load_balancer, hash) {
        (model::LoadBalancer::ConsistentHash, Some(h)) => Some(hash_on(h)?),
        (model::LoadBalancer::ConsistentHash, None) => {
            return Err(
                "loadBalancer.consistentHash is required for the ConsistentHash type".into(),
            );
        }
        (_, Some(_)) => {
            return Err(
                "loadBalancer.consistentHash applies only to the ConsistentHash type".into(),
            );
        }
        (_, None) => None,
    };
    let slow_start = match spec
        .load_balancer
        .as_ref()
        .and_then(|l| l.slow_start.as_ref())
    {
        None => None,
        Some(_) if load_balancer == model::LoadBalancer::ConsistentHash => {
            return Err(
                "loadBalancer.slowStart does not apply to ConsistentHash: its keys must not move"
                    .into(),
            );
        }
        Some(s) => Some(model::SlowStart {
            window_ms: millis("loadBalancer.slowStart.window", &s.window, SECOND, HOUR)?,
            min_weight_percent: match s.min_weight_percent {
                None => model::SlowStart::DEFAULT_MIN_WEIGHT_PERCENT,
                Some(p @ 1..=100) => p,
                Some(p) => {
                    return Err(format!(
                        "loadBalancer.slowStart.minWeightPercent is {p}; between 1 and 100"
                    ));
                }
            },
        }),
    };
    Ok(model::BackendSettings {
        policy: id.clone(),
        load_balancer,
        hash_on,
        slow_start,
        outlier_detection: outlier(spec.outlier_detection.as_ref())?,
        health_check: spec.health_check.as_ref().map(health_check).transpose()?,
        retry: retry(spec.retry.as_ref())?,
        circuit_breaker: circuit_breaker(spec.circuit_breaker.as_ref())?,
        connection: connection(spec.connection.as_ref())?,
        session_persistence: spec
            .session_persistence
            .as_ref()
            .map(|sp| crate::session::compile(sp, &format!("BackendPolicy/{id}")))
            .transpose()?,
        compression: spec.compression.as_ref().map(compression).transpose()?,
    })
}

fn compression(c: &crd::Compression) -> Result<model::Compression, String> {
    let mut encodings = Vec::new();
    for e in &c.encodings {
        let e = match e {
            crd::Encoding::Zstd => model::Encoding::Zstd,
            crd::Encoding::Brotli => model::Encoding::Brotli,
            crd::Encoding::Gzip => model::Encoding::Gzip,
        };
        if encodings.contains(&e) {
            return Err(format!("compression.encodings lists {} twice", e.token()));
        }
        encodings.push(e);
    }
    if encodings.is_empty() {
        encodings = model::Compression::DEFAULT_ENCODINGS.to_vec();
    }
    let mut content_types = Vec::new();
    for t in &c.content_types {
        let t = &t.0;
        let lower = t.to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
        };
        let valid = match lower.split_once('/') {
            Some((ty, sub)) => {
                let sub_ok = match sub.strip_prefix("*+") {
                    Some(suffix) => token(suffix) && !suffix.contains('+'),
                    None => sub == "*" || token(sub),
                };
                token(ty) && sub_ok
            }
            None => false,
        };
        if !valid {
            return Err(format!(
                "compression.contentTypes: {t:?} is not a media type such as text/html, text/* or application/*+json"
            ));
        }
        content_types.push(lower);
    }
    if content_types.is_empty() {
        content_types = model::Compression::DEFAULT_CONTENT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect();
    }
    Ok(model::Compression {
        encodings,
        min_size: c
            .min_size
            .map_or(model::Compression::DEFAULT_MIN_SIZE, u64::from),
        content_types,
        credentialed: c.credentialed.unwrap_or(false),
    })
}

fn hash_on(h: &crd::ConsistentHash) -> Result<model::HashOn, String> {
    let name = || {
        h.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
            format!(
                "loadBalancer.consistentHash: a {:?} key needs a name",
                h.type_
            )
        })
    };
    Ok(match h.type_ {
        crd::HashType::Header => {
            let n = name()?;
            if http_token(&n) {
                model::HashOn::Header(n.to_ascii_lowercase())
            } else {
                return Err(format!(
                    "loadBalancer.consistentHash.name {n:?} is not a header name"
                ));
            }
        }
        crd::HashType::Cookie => model::HashOn::Cookie(name()?),
        crd::HashType::QueryParameter => model::HashOn::QueryParameter(name()?),
        crd::HashType::SourceIp => {
            if h.name.is_some() {
                return Err("loadBalancer.consistentHash: a SourceIP key takes no name".into());
            }
            model::HashOn::SourceIp
        }
    })
}

/// A host name or address with an optional port: what a probe's Host header may say.
fn valid_probe_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

fn at_most(field: &str, value: Option<u32>, max: u32) -> Result<Option<u32>, String> {
    match value {
        Some(v) if v > max => Err(format!("{field} is {v}; at most {max}")),
        v => Ok(v),
    }
}

fn outlier(o: Option<&crd::OutlierDetection>) -> Result<model::OutlierDetection, String> {
    let mut out = model::OutlierDetection::default();
    let Some(o) = o else { return Ok(out) };
    if let Some(n) = at_most("outlierDetection.consecutive5xx", o.consecutive_5xx, 1000)? {
        out.consecutive_5xx = n;
    }
    if let Some(n) = at_most(
        "outlierDetection.consecutiveGatewayErrors",
        o.consecutive_gateway_errors,
        1000,
    )? {
        out.consecutive_gateway_errors = n;
    }
    if let Some(v) = &o.base_ejection_time {
        out.base_ejection_ms = millis("outlierDetection.baseEjectionTime", v, SECOND, HOUR)?;
    }
    if let Some(v) = &o.max_ejection_time {
        out.max_ejection_ms = millis("outlierDetection.maxEjectionTime", v, SECOND, 24 * HOUR)?;
    }
    if out.base_ejection_ms > out.max_ejection_ms {
        return Err(format!(
            "outlierDetection.baseEjectionTime ({}) must not exceed maxEjectionTime ({}, 300s by default)",
            human(out.base_ejection_ms),
            human(out.max_ejection_ms)
        ));
    }
    if let Some(p) = at_most(
        "outlierDetection.maxEjectedPercent",
        o.max_ejected_percent,
        100,
    )? {
        out.max_ejected_percent = p;
    }
    if let Some(p) = at_most(
        "outlierDetection.panicThresholdPercent",
        o.panic_threshold_percent,
        100,
    )? {
        out.panic_threshold_percent = p;
    }
    Ok(out)
}

fn health_check(h: &crd::HealthCheck) -> Result<model::HealthCheck, String> {
    let probe = match (h.type_, &h.http, &h.grpc) {
        (crd::HealthCheckType::Http, Some(http), None) => {
            if !http.path.starts_with('/') || !http.path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "healthCheck.http.path {:?} must start with / and be visible ASCII (no spaces)",
                    http.path
                ));
            }
            if let Some(h) = &http.hostname
                && !valid_probe_host(h)
            {
                return Err(format!(
                    "healthCheck.http.hostname {h:?} is not a host name (with an optional port)"
                ));
            }
            let method = http.method.clone().unwrap_or_else(|| "GET".into());
            if method != "GET" && method != "HEAD" {
                return Err(format!(
                    "healthCheck.http.method {method:?} is not GET or HEAD"
                ));
            }
            let mut expected = Vec::new();
            for e in &http.expected_statuses {
                let end = e.end.unwrap_or(e.start);
                if !(100..=599).contains(&e.start) || !(e.start..=599).contains(&end) {
                    return Err(format!(
                        "healthCheck.http.expectedStatuses: {}-{end} is not a range of statuses",
                        e.start
                    ));
                }
                expected.push((e.start, end));
            }
            if expected.is_empty() {
                expected.push((200, 200));
            }
            model::Probe::Http {
                method,
                path: http.path.clone(),
                host: http.hostname.clone(),
                expected,
            }
        }
        (crd::HealthCheckType::Http, None, _) => {
            return Err("an HTTP health check needs http.path".into());
        }
        (crd::HealthCheckType::Tcp, None, None) => model::Probe::Tcp,
        (crd::HealthCheckType::Grpc, None, grpc) => model::Probe::Grpc {
            service: grpc
                .as_ref()
                .and_then(|g| g.service.clone())
                .unwrap_or_default(),
        },
        _ => {
            return Err(
                "healthCheck: http applies only to the HTTP type, grpc only to GRPC".into(),
            );
        }
    };
    let interval_ms = match &h.interval {
        Some(v) => millis("healthCheck.interval", v, 100, HOUR)?,
        None => model::HealthCheck::DEFAULT_INTERVAL_MS,
    };
    let timeout_ms = match &h.timeout {
        Some(v) => millis("healthCheck.timeout", v, 10, 60 * SECOND)?,
        None => model::HealthCheck::DEFAULT_TIMEOUT_MS,
    };
    let threshold = |field: &str, v: Option<u32>, default: u32| match v {
        None => Ok(default),
        Some(n @ 1..=100) => Ok(n),
        Some(n) => Err(format!("healthCheck.{field} is {n}; between 1 and 100")),
    };
    Ok(model::HealthCheck {
        probe,
        interval_ms,
        timeout_ms,
        unhealthy_threshold: threshold(
            "unhealthyThreshold",
            h.unhealthy_threshold,
            model::HealthCheck::DEFAULT_UNHEALTHY_THRESHOLD,
        )?,
        healthy_threshold: threshold(
            "healthyThreshold",
            h.healthy_threshold,
            model::HealthCheck::DEFAULT_HEALTHY_THRESHOLD,
        )?,
    })
}

fn retry(r: Option<&crd::Retry>) -> Result<model::Retry, String> {
    let mut out = model::Retry::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(on) = r.on_connect_failure {
        out.on_connect_failure = on;
    }
    if let Some(on) = r.non_idempotent {
        out.non_idempotent = on;
    }
    if let Some(b) = &r.budget {
        if let Some(p) = at_most("retry.budget.percent", b.percent, 100)? {
            out.budget_percent = p;
        }
        if let Some(n) = at_most("retry.budget.minPerSecond", b.min_per_second, 100_000)? {
            out.budget_min_per_second = n;
        }
    }
    let mut codes = Vec::new();
    for s in &r.statuses {
        if !(400..=599).contains(&s.0) {
            return Err(format!(
                "retry.statuses: {} is not a status between 400 and 599",
                s.0
            ));
        }
        codes.push(s.0);
    }
    codes.sort_unstable();
    codes.dedup();
    let attempts = match r.attempts {
        None => RouteRetry::DEFAULT_ATTEMPTS,
        Some(n @ 1..=RouteRetry::MAX_ATTEMPTS) => n,
        Some(n) => {
            return Err(format!(
                "retry.attempts is {n}; between 1 and {}",
                RouteRetry::MAX_ATTEMPTS
            ));
        }
    };
    let backoff_ms = r
        .backoff
        .as_deref()
        .map(|v| millis("retry.backoff", v, 1, RouteRetry::MAX_BACKOFF_MS))
        .transpose()?
        .unwrap_or(RouteRetry::DEFAULT_BACKOFF_MS);
    let on = !codes.is_empty() || r.on_reset == Some(true);
    if !on && (r.attempts.is_some() || r.backoff.is_some()) {
        return Err(
            "retry.attempts and retry.backoff need retry.statuses or retry.onReset: true".into(),
        );
    }
    out.rules = on.then_some(RouteRetry {
        codes,
        attempts,
        backoff_ms,
    });
    out.per_try_timeout_ms = r
        .per_try_timeout
        .as_deref()
        .map(|v| millis("retry.perTryTimeout", v, 10, HOUR))
        .transpose()?;
    Ok(out)
}

fn circuit_breaker(c: Option<&crd::CircuitBreaker>) -> Result<model::CircuitBreaker, String> {
    let Some(c) = c else {
        return Ok(model::CircuitBreaker::default());
    };
    if c.max_requests == Some(0) {
        return Err(
            "circuitBreaker.maxRequests is 0, which would refuse every request; leave it out for no limit"
                .into(),
        );
    }
    if c.max_connections == Some(0) {
        return Err(
            "circuitBreaker.maxConnections is 0, which would refuse every request; leave it out for no limit"
                .into(),
        );
    }
    if c.max_pending_requests.is_some() && c.max_connections.is_none() {
        return Err(
            "circuitBreaker.maxPendingRequests applies only with circuitBreaker.maxConnections"
                .into(),
        );
    }
    Ok(model::CircuitBreaker {
        max_requests: at_most("circuitBreaker.maxRequests", c.max_requests, 1_000_000)?,
        max_retries: at_most("circuitBreaker.maxRetries", c.max_retries, 1_000_000)?,
        max_connections: at_most(
            "circuitBreaker.maxConnections",
            c.max_connections,
            1_000_000,
        )?,
        max_pending_requests: at_most(
            "circuitBreaker.maxPendingRequests",
            c.max_pending_requests,
            1_000_000,
        )?,
    })
}

fn connection(c: Option<&crd::Connection>) -> Result<model::Connection, String> {
    let Some(c) = c else {
        return Ok(model::Connection::default());
    };
    Ok(model::Connection {
        connect_timeout_ms: c
            .connect_timeout
            .as_deref()
            .map(|v| millis("connection.connectTimeout", v, 1, 300 * SECOND))
            .transpose()?,
        idle_timeout_ms: c
            .idle_timeout
            .as_deref()
            .map(|v| millis("connection.idleTimeout", v, SECOND, HOUR))
            .transpose()?,
        tcp_keepalive: c.tcp_keep_alive.as_ref().map(tcp_keepalive).transpose()?,
        http2: c.http2.as_ref().map(http2).transpose()?,
        proxy_protocol: c.proxy_protocol.map(|v| match v {
            crd::ProxyProtocol::V1 => model::ProxyProtocol::V1,
            crd::ProxyProtocol::V2 => model::ProxyProtocol::V2,
        }),
    })
}

fn tcp_keepalive(k: &crd::TcpKeepAlive) -> Result<model::TcpKeepalive, String> {
    let d = model::TcpKeepalive::default();
    let at = |field: &str, v: Option<&String>, max: u64, default: u64| {
        v.map(|v| millis(&format!("connection.tcpKeepAlive.{field}"), v, SECOND, max))
            .transpose()
            .map(|ms| ms.unwrap_or(default))
    };
    Ok(model::TcpKeepalive {
        idle_ms: at("idle", k.idle.as_ref(), 2 * HOUR, d.idle_ms)?,
        interval_ms: at("interval", k.interval.as_ref(), 600 * SECOND, d.interval_ms)?,
        probes: match k.probes {
            None => d.probes,
            Some(n @ 1..=20) => n,
            Some(n) => {
                return Err(format!(
                    "connection.tcpKeepAlive.probes is {n}; between 1 and 20"
                ));
            }
        },
    })
}

fn http2(h: &crd::Http2) -> Result<model::Http2, String> {
    if let Some(n) = h
        .max_concurrent_streams
        .filter(|n| !(1..=10_000).contains(n))
    {
        return Err(format!(
            "connection.http2.maxConcurrentStreams is {n}; between 1 and 10000"
        ));
    }
    Ok(model::Http2 {
        max_concurrent_streams: h.max_concurrent_streams,
        keepalive_interval_ms: h
            .keep_alive_interval
            .as_deref()
            .map(|v| millis("connection.http2.keepAliveInterval", v, SECOND, HOUR))
            .transpose()?,
        keepalive_timeout_ms: h
            .keep_alive_timeout
            .as_deref()
            .map(|v| millis("connection.http2.keepAliveTimeout", v, 100, 300 * SECOND))
            .transpose()?,
    })
}
