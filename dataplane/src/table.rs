//! Builds the route tables of every socket from a set of snapshots: the one place where the
//! snapshot model becomes serving structures.

use crate::auth::{AuthEngine, AuthShared};
use crate::cache::step::{CacheEngine, CacheShared, RuleCache};
use crate::cors::CorsPolicy;
use crate::listen::tcp::{SniRoutes, StreamForward, StreamService};
use crate::metrics::{CacheSeries, CertificateSeries, Metrics, RouteSeries};
use crate::mirror::MirrorTo;
use crate::policy::Chain;
use crate::ratelimit::{RateLimitEngine, RateLimitShared};
use crate::router::{Candidate, Conditions, PathTable, SocketRouter, ValueMatch};
use crate::rule::{CompiledRule, HeaderOps, RuleFilters, RuleSession, Target, WeightedTarget};
use crate::tls::SniCertificates;
use crate::upstream::Upstreams;
use crate::upstream::session::Sealer;
use http::{HeaderName, Method};
use portico_model::auth::AuthPolicy;
use portico_model::{
    BackendTarget, Filter, KeyValueMatch, ObjectRef, PathMatch, Protocol, REGEX_SIZE_LIMIT,
    RouteKind, RouteRule, Snapshot, StreamRoute, StringMatch,
};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The serving structures for one configuration.
#[derive(Debug, Default)]
pub struct Tables {
    pub sockets: BTreeMap<SocketAddr, SocketRouter>,
    /// The sockets of TCP and TLS listeners, with the routes each serves.
    pub streams: BTreeMap<SocketAddr, StreamService>,
    /// The UDP sockets of UDP listeners, with the route each serves (a UDP port number is
    /// not a TCP one: these may share numbers with the sockets above).
    pub datagrams: BTreeMap<SocketAddr, StreamService>,
    /// TLS settings of the sockets that serve HTTPS listeners.
    pub tls: BTreeMap<SocketAddr, Arc<rustls::ServerConfig>>,
    /// How the HTTPS sockets whose port asks for client certificates judge them.
    pub client_checks: BTreeMap<SocketAddr, crate::tls::ClientCheck>,
    /// Every route label in use.
    pub routes: BTreeSet<String>,
    /// Every (gateway, listener, route) in use, for metric clean-up.
    pub route_series: BTreeSet<RouteSeries>,
    /// When each listener certificate in use expires, for the expiry metric.
    pub certificates: BTreeMap<CertificateSeries, i64>,
    /// Every auth policy in use (`namespace/name`), for metric clean-up.
    pub auth_policies: BTreeSet<String>,
    /// Every rate-limit policy in use, likewise.
    pub rate_limit_policies: BTreeSet<String>,
    /// Every (route series, cache policy) in use, likewise.
    pub cache_series: BTreeSet<CacheSeries>,
    pub backends: Vec<crate::upstream::PoolKey>,
    /// Things that were skipped, for the log.
    pub warnings: Vec<String>,
}

/// Builds the tables. `default_bind` is used for listeners without addresses.
pub fn build(
    snapshots: &[Snapshot],
    default_bind: IpAddr,
    pools: &Upstreams,
    metrics: &Metrics,
    auth: &AuthShared,
    limits: &RateLimitShared,
    cache: &Arc<CacheShared>,
) -> Tables {
    let mut t = Tables::default();
    // Which gateway/listener owns each (socket, listener hostname) slot.
    let mut owners: BTreeMap<(SocketKey, Option<String>), (String, String)> = BTreeMap::new();
    // A socket speaks one protocol: the first listener bound to it decides.
    let mut protocols: BTreeMap<SocketKey, Protocol> = BTreeMap::new();
    let mut certificates: BTreeMap<SocketAddr, SniCertificates> = BTreeMap::new();
    let mut order = 0usize;
    for snap in snapshots {
        let gw = snap.gateway.to_string();
        let sealer = Arc::new(Sealer::new(snap.session_key.as_ref()));
        // listener name → the sockets whose slot it owns
        let mut listener_sockets: BTreeMap<&str, Vec<SocketAddr>> = BTreeMap::new();
        for l in &snap.listeners {
            let addrs: Vec<IpAddr> = if l.addresses.is_empty() {
                vec![default_bind]
            } else {
                l.addresses.iter().filter_map(|a| a.parse().ok()).collect()
            };
            for ip in addrs {
                let sa = SocketAddr::new(ip, l.port);
                let socket = (l.protocol == Protocol::Udp, sa);
                let slot = (socket, l.hostname.clone());
                let protocol = *protocols.entry(socket).or_insert(l.protocol);
                if socket_kind(protocol) != socket_kind(l.protocol) {
                    t.warnings.push(format!(
                        "listener {gw}/{} is {:?} but {sa} already serves {protocol:?}; not served",
                        l.name, l.protocol
                    ));
                    continue;
                }
                if let Some((og, ol)) = owners.get(&slot) {
                    t.warnings.push(format!(
                        "listener {gw}/{} conflicts with {og}/{ol} on {sa} for hostname {}; the first is served",
                        l.name,
                        l.hostname.as_deref().unwrap_or("(any)")
                    ));
                    continue;
                }
                let terminates = matches!(l.protocol, Protocol::Https | Protocol::TlsTerminate);
                let tls = l.tls.as_ref().filter(|_| terminates);
                // Checked before the listener takes its slot: one refused here holds no
                // hostname another could have.
                if let Some(tls) = tls
                    && !certificates
                        .entry(sa)
                        .or_default()
                        .validate_clients(tls.client_validation.as_ref())
                {
                    t.warnings.push(format!(
                        "listener {gw}/{} asks other client certificates than the listeners before it on {sa} (one handshake serves them all); not served",
                        l.name
                    ));
                    continue;
                }
                owners.insert(slot, (gw.clone(), l.name.clone()));
                if let Some(tls) = tls {
                    let socket_certs = certificates.entry(sa).or_default();
                    let added = socket_certs.add(l.hostname.as_deref(), &tls.certificates);
                    t.warnings.extend(
                        added
                            .problems
                            .into_iter()
                            .map(|p| format!("listener {gw}/{}: {p}", l.name)),
                    );
                    for (secret, expiry) in added.expiries {
                        t.certificates.insert(
                            CertificateSeries {
                                gateway: gw.clone(),
                                listener: l.name.clone(),
                                secret,
                            },
                            expiry,
                        );
                    }
                }
                match l.protocol {
                    Protocol::Http | Protocol::Https => {
                        t.sockets
                            .entry(sa)
                            .or_default()
                            .listeners
                            .entry(l.hostname.as_deref());
                    }
                    // Bound even without a route (its connections are closed at once).
                    Protocol::Tcp => {
                        t.streams.entry(sa).or_default();
                    }
                    Protocol::Udp => {
                        t.datagrams.entry(sa).or_default();
                    }
                    Protocol::TlsPassthrough | Protocol::TlsTerminate => {
                        t.streams
                            .entry(sa)
                            .or_default()
                            .sni
                            .get_or_insert_with(SniRoutes::default)
                            .listener(l.hostname.as_deref(), l.protocol == Protocol::TlsTerminate);
                    }
                }
                listener_sockets
                    .entry(l.name.as_str())
                    .or_default()
                    .push(sa);
            }
        }

        let engines: std::collections::HashMap<&ObjectRef, Arc<AuthEngine>> = snap
            .policies
            .auth
            .iter()
            .map(|p| (&p.id, Arc::new(AuthEngine::new(p, auth, metrics))))
            .collect();
        // A policy named but missing from the snapshot protects by refusing (never opens).
        let engine = |id: &Option<ObjectRef>| -> Option<Arc<AuthEngine>> {
            let id = id.as_ref()?;
            Some(engines.get(id).cloned().unwrap_or_else(|| {
                Arc::new(AuthEngine::new(
                    &AuthPolicy {
                        id: id.clone(),
                        invalid: Some("missing from the snapshot".into()),
                        ..AuthPolicy::default()
                    },
                    auth,
                    metrics,
                ))
            }))
        };
        t.auth_policies
            .extend(snap.policies.auth.iter().map(|p| p.id.to_string()));
        let limiters: std::collections::HashMap<&ObjectRef, Arc<RateLimitEngine>> = snap
            .policies
            .rate_limit
            .iter()
            .map(|p| (&p.id, Arc::new(RateLimitEngine::new(p, limits, metrics))))
            .collect();
        // Unlike auth, a rate-limit policy missing from the snapshot limits nothing.
        let limiter = |id: &Option<ObjectRef>| id.as_ref().and_then(|id| limiters.get(id).cloned());
        t.rate_limit_policies
            .extend(snap.policies.rate_limit.iter().map(|p| p.id.to_string()));
        let caches: std::collections::HashMap<&ObjectRef, Arc<CacheEngine>> = snap
            .policies
            .cache
            .iter()
            .map(|p| (&p.id, Arc::new(CacheEngine::new(p, cache))))
            .collect();
        // A cache policy missing from the snapshot caches nothing.
        let cacher = |id: &Option<ObjectRef>| id.as_ref().and_then(|id| caches.get(id).cloned());
        // Per listener, the routes with a cache there: what an unsafe request through that
        // listener may invalidate (never another listener's or Gateway's entries, whatever
        // origin its Host names).
        let mut cached_on: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for route in &snap.routes {
            let in_rules = route
                .rules
                .iter()
                .any(|r| cacher(&r.policies.cache).is_some());
            for parent in &route.parents {
                if in_rules || cacher(&parent.policies.cache).is_some() {
                    cached_on
                        .entry(parent.listener.as_str())
                        .or_default()
                        .push(crate::cache::step::route_mark(&route.label()));
                }
            }
        }
        let invalidation_scopes: BTreeMap<&str, Arc<[String]>> = cached_on
            .into_iter()
            .map(|(listener, marks)| (listener, Arc::from(marks)))
            .collect();
        for route in &snap.routes {
            order += 1;
            let rule_auth: Vec<Option<Arc<AuthEngine>>> = route
                .rules
                .iter()
                .map(|r| engine(&r.policies.auth))
                .collect();
            let rule_limits: Vec<Option<Arc<RateLimitEngine>>> = route
                .rules
                .iter()
                .map(|r| limiter(&r.policies.rate_limit))
                .collect();
            let rule_caches: Vec<Option<Arc<CacheEngine>>> = route
                .rules
                .iter()
                .map(|r| cacher(&r.policies.cache))
                .collect();
            let label: Arc<str> = route.label().into();
            let rules: Vec<Arc<CompiledRule>> = route
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let scope = RuleScope {
                        label: &label,
                        index: i,
                        sealer: &sealer,
                    };
                    Arc::new(compile_rule(r, &scope, snap, pools, metrics, &mut t))
                })
                .collect();
            let mut matches = Vec::new();
            for (ri, rule) in route.rules.iter().enumerate() {
                for (mi, m) in rule.matches.iter().enumerate() {
                    match candidate(m, rules[ri].clone(), (order, ri, mi)) {
                        Ok(c) => matches.push((m.path.clone(), c)),
                        Err(e) => t
                            .warnings
                            .push(format!("route {label}: {e}; match skipped")),
                    }
                }
            }
            for parent in &route.parents {
                let Some(listener) = snap.listeners.iter().find(|l| l.name == parent.listener)
                else {
                    continue;
                };
                let parent_auth = engine(&parent.policies.auth);
                let parent_limits = limiter(&parent.policies.rate_limit);
                let parent_cache = cacher(&parent.policies.cache);
                let series = RouteSeries::new(&gw, &listener.name, &label);
                // What its unsafe requests may invalidate.
                let reach = invalidation_scopes.get(listener.name.as_str()).cloned();
                // One chain per rule as reached through this parent, shared by its matches
                // and hosts.
                let chains: Vec<Arc<Chain>> = (0..route.rules.len())
                    .map(|ri| {
                        let rule_cache =
                            most_specific(rule_caches.get(ri), &parent_cache).map(|c| {
                                let at = CacheSeries {
                                    at: series.clone(),
                                    policy: c.policy_id().to_string(),
                                };
                                let m = metrics.cache(&at);
                                t.cache_series.insert(at);
                                RuleCache::new(c, m)
                            });
                        let chain = Chain::new(
                            most_specific(rule_auth.get(ri), &parent_auth),
                            most_specific(rule_limits.get(ri), &parent_limits),
                            rule_cache,
                        );
                        Arc::new(match &reach {
                            Some(reach) => chain.invalidating(cache, reach),
                            None => chain,
                        })
                    })
                    .collect();
                let route_metrics = Arc::new(metrics.route(&series));
                t.route_series.insert(series);
                for sa in listener_sockets
                    .get(parent.listener.as_str())
                    .into_iter()
                    .flatten()
                {
                    let routes = t
                        .sockets
                        .entry(*sa)
                        .or_default()
                        .listeners
                        .entry(listener.hostname.as_deref());
                    let hosts: Vec<Option<&str>> = if parent.hostnames.is_empty() {
                        vec![None]
                    } else {
                        parent.hostnames.iter().map(|h| Some(h.as_str())).collect()
                    };
                    for host in hosts {
                        let table = routes.hosts.entry(host);
                        for (path, (c, regex)) in &matches {
                            let mut c = c.clone();
                            if let Some(chain) = chains.get(c.order.1) {
                                c.chain = chain.clone();
                            }
                            c.metrics = route_metrics.clone();
                            add(table, path, (c, regex.clone()));
                        }
                    }
                }
            }
            t.routes.insert(label.to_string());
        }
        // TCPRoutes, TLSRoutes and UDPRoutes, oldest first: the first to name a listener
        // (TCP, UDP) or a hostname (TLS) serves it.
        for route in &snap.stream_routes {
            let forward = Arc::new(tcp_forward(route, snap, pools, metrics, &mut t));
            for parent in &route.parents {
                for sa in listener_sockets
                    .get(parent.listener.as_str())
                    .into_iter()
                    .flatten()
                {
                    let sockets = match route.kind {
                        RouteKind::Udp => &mut t.datagrams,
                        _ => &mut t.streams,
                    };
                    let Some(service) = sockets.get_mut(sa) else {
                        continue;
                    };
                    match (&mut service.sni, route.kind) {
                        (Some(sni), RouteKind::Tls | RouteKind::Tcp) => {
                            // Under its listener's hostname: a connection is matched to a
                            // listener first, then to that listener's routes. A TCPRoute
                            // (on a terminating listener only) takes any host there.
                            let listener_host = snap
                                .listeners
                                .iter()
                                .find(|l| l.name == parent.listener)
                                .and_then(|l| l.hostname.as_deref());
                            if parent.hostnames.is_empty() {
                                sni.add(listener_host, None, &forward);
                            }
                            for h in &parent.hostnames {
                                sni.add(listener_host, Some(h), &forward);
                            }
                        }
                        (None, RouteKind::Tcp | RouteKind::Udp) => {
                            service.route.get_or_insert_with(|| forward.clone());
                        }
                        _ => t.warnings.push(format!(
                            "route {}: listener {} does not take its kind; not served there",
                            route.label(),
                            parent.listener
                        )),
                    }
                }
            }
        }
    }
    for router in t.sockets.values_mut() {
        router.finish();
    }
    for (sa, certs) in certificates {
        if certs.is_empty() {
            continue;
        }
        if let Some(v) = certs.clients().filter(|_| !t.streams.contains_key(&sa)) {
            match crate::tls::ClientCheck::new(v) {
                Ok(check) => {
                    t.client_checks.insert(sa, check);
                }
                Err(e) => t.warnings.push(format!("client certificates on {sa}: {e}")),
            }
        }
        // A TLS socket's terminating listeners forward bytes, not HTTP: no ALPN.
        let config = if t.streams.contains_key(&sa) {
            certs.stream_server_config()
        } else {
            certs.server_config()
        };
        match (config, t.streams.get_mut(&sa)) {
            (Ok(config), Some(service)) => service.terminate = Some(config),
            (Ok(config), None) => {
                t.tls.insert(sa, config);
            }
            (Err(e), _) => t.warnings.push(format!("TLS on {sa}: {e}")),
        }
    }
    // An HTTPS socket without a usable certificate would serve plain HTTP: leave it unbound.
    let tls_sockets: BTreeSet<SocketAddr> = t.tls.keys().copied().collect();
    t.sockets.retain(|sa, _| {
        let https = protocols.get(&(false, *sa)) == Some(&Protocol::Https);
        !https || tls_sockets.contains(sa)
    });
    t
}

/// A socket: whether it is UDP, and its address (a UDP port is not the TCP port of the same
/// number).
type SocketKey = (bool, SocketAddr);

/// The rule's policy if it has one, else its parent's: the most specific applies whole.
fn most_specific<T>(rule: Option<&Option<Arc<T>>>, parent: &Option<Arc<T>>) -> Option<Arc<T>> {
    rule.cloned().flatten().or_else(|| parent.clone())
}

fn add(table: &mut PathTable, path: &PathMatch, c: (Candidate, Option<Regex>)) {
    let (c, regex) = c;
    match (path, regex) {
        (PathMatch::Exact(p), _) => table.add_exact(p, c),
        (PathMatch::PathPrefix(p), _) => table.add_prefix(p, c),
        (PathMatch::RegularExpression(_), Some(r)) => table.add_regex(r, c),
        (PathMatch::RegularExpression(_), None) => {}
    }
}

/// Patterns match the whole value, as in Envoy and RE2's full match.
fn full_match(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("regular expression {pattern:?}: {e}"))
}

fn value_match(v: &StringMatch) -> Result<ValueMatch, String> {
    Ok(match v {
        StringMatch::Exact(s) => ValueMatch::Exact(s.as_str().into()),
        StringMatch::RegularExpression(p) => ValueMatch::Regex(full_match(p)?),
    })
}

fn candidate(
    m: &portico_model::RouteMatch,
    rule: Arc<CompiledRule>,
    order: (usize, usize, usize),
) -> Result<(Candidate, Option<Regex>), String> {
    let method = m
        .method
        .as_deref()
        .map(|s| Method::from_bytes(s.as_bytes()).map_err(|e| format!("method {s:?}: {e}")))
        .transpose()?;
    let headers = m
        .headers
        .iter()
        .map(|KeyValueMatch { name, value }| {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header {name:?}: {e}"))?;
            Ok((n, value_match(value)?))
        })
        .collect::<Result<_, String>>()?;
    let query = m
        .query_params
        .iter()
        .map(|KeyValueMatch { name, value }| Ok((name.as_str().into(), value_match(value)?)))
        .collect::<Result<_, String>>()?;
    let (prefix, regex) = match &m.path {
        PathMatch::PathPrefix(p) => (Some(Arc::from(p.as_str())), None),
        PathMatch::RegularExpression(p) => (None, Some(full_match(p)?)),
        PathMatch::Exact(_) => (None, None),
    };
    Ok((
        Candidate {
            conditions: Arc::new(Conditions {
                method,
                headers,
                query,
            }),
            rule,
            order,
            prefix,
            chain: Arc::default(),
            metrics: Arc::default(),
        },
        regex,
    ))
}

fn header_ops(
    m: &portico_model::HeaderModifier,
    label: &str,
    warnings: &mut Vec<String>,
) -> Option<HeaderOps> {
    HeaderOps::new(m)
        .map_err(|e| warnings.push(format!("route {label}: {e}; header filter skipped")))
        .ok()
}

/// Where a rule sits: its route, its place, and its Gateway's session sealer.
struct RuleScope<'a> {
    label: &'a Arc<str>,
    index: usize,
    sealer: &'a Arc<Sealer>,
}

fn compile_rule(
    r: &RouteRule,
    scope: &RuleScope<'_>,
    snap: &Snapshot,
    pools: &Upstreams,
    metrics: &Metrics,
    t: &mut Tables,
) -> CompiledRule {
    let label = scope.label;
    let w = &mut t.warnings;
    let mut filters = RuleFilters::default();
    for f in &r.filters {
        match f {
            Filter::RequestHeaderModifier(m) => filters.request_headers = header_ops(m, label, w),
            Filter::ResponseHeaderModifier(m) => filters.response_headers = header_ops(m, label, w),
            Filter::RequestRedirect(rd) => filters.redirect = Some(rd.clone()),
            Filter::UrlRewrite(rw) => filters.rewrite = Some(rw.clone()),
            Filter::Cors(c) => match CorsPolicy::new(c) {
                Ok(p) => filters.cors = Some(Arc::new(p)),
                Err(e) => w.push(format!("route {label}: {e}; CORS filter skipped")),
            },
        }
    }
    for m in &r.mirrors {
        match snap.backend(&m.backend) {
            Some(backend) => {
                t.backends.push(crate::upstream::pool_key(backend));
                filters.mirrors.push(MirrorTo {
                    pool: pools.get(backend, metrics),
                    numerator: m.numerator,
                    denominator: m.denominator,
                });
            }
            None => t.warnings.push(format!(
                "route {label}: mirror backend {} is missing from the snapshot",
                m.backend
            )),
        }
    }
    let mut targets = Vec::new();
    let mut upto = 0u32;
    for b in r.backend_refs.iter().filter(|b| b.weight > 0) {
        upto = upto.saturating_add(b.weight);
        let target = match &b.target {
            BackendTarget::Service(id) => match snap.backend(id) {
                Some(backend) => {
                    let mut ref_filters = RuleFilters::default();
                    for f in &b.filters {
                        match f {
                            Filter::RequestHeaderModifier(m) => {
                                ref_filters.request_headers = header_ops(m, label, &mut t.warnings)
                            }
                            Filter::ResponseHeaderModifier(m) => {
                                ref_filters.response_headers = header_ops(m, label, &mut t.warnings)
                            }
                            _ => {}
                        }
                    }
                    t.backends.push(crate::upstream::pool_key(backend));
                    Target::Pool {
                        pool: pools.get(backend, metrics),
                        filters: ref_filters.boxed(),
                    }
                }
                None => {
                    t.warnings.push(format!(
                        "route {label}: backend {id} is missing from the snapshot"
                    ));
                    Target::Unresolved
                }
            },
            BackendTarget::Unresolved { .. } => Target::Unresolved,
        };
        targets.push(WeightedTarget { upto, target });
    }
    targets.shrink_to_fit();
    let (request_timeout, backend_timeout) = CompiledRule::timeouts(&r.timeouts);
    let policy_sessions = r.backend_refs.iter().any(|b| match &b.target {
        BackendTarget::Service(id) => snap
            .backend(id)
            .and_then(|b| b.settings.as_ref())
            .is_some_and(|s| s.session_persistence.is_some()),
        BackendTarget::Unresolved { .. } => false,
    });
    let session = (r.session_persistence.is_some() || policy_sessions).then(|| {
        // The rule's name if it has one (it survives reordering), else its place.
        let rule_scope = match &r.name {
            Some(n) => format!("{label}#name:{n}"),
            None => format!("{label}#index:{}", scope.index),
        };
        Box::new(RuleSession {
            own: r.session_persistence.clone(),
            sealer: scope.sealer.clone(),
            tag: crate::upstream::session::scope_tag(&rule_scope).into(),
            scope: rule_scope.into(),
        })
    });
    CompiledRule {
        route: label.clone(),
        filters: filters.boxed(),
        targets,
        request_timeout,
        backend_timeout,
        retry: r.retry.clone().map(Box::new),
        session,
    }
}

/// A TCPRoute's weighted backends, each a pool (shared with any HTTP route that uses the
/// same Service port: endpoints and their health are the Service's).
fn tcp_forward(
    route: &StreamRoute,
    snap: &Snapshot,
    pools: &Upstreams,
    metrics: &Metrics,
    t: &mut Tables,
) -> StreamForward {
    let label: Arc<str> = route.label().into();
    let mut targets = Vec::new();
    let mut upto = 0u32;
    for b in route.backend_refs.iter().filter(|b| b.weight > 0) {
        upto = upto.saturating_add(b.weight);
        let pool = match &b.target {
            BackendTarget::Service(id) => match snap.backend(id) {
                Some(backend) => {
                    t.backends.push(crate::upstream::pool_key(backend));
                    Some(pools.get(backend, metrics))
                }
                None => {
                    t.warnings.push(format!(
                        "route {label}: backend {id} is missing from the snapshot"
                    ));
                    None
                }
            },
            BackendTarget::Unresolved { .. } => None,
        };
        targets.push((upto, pool));
    }
    StreamForward { label, targets }
}

/// What a socket serves, by listener protocol: HTTP, HTTPS, TCP, or TLS (both modes share a
/// socket: the SNI picks the listener), or UDP.
fn socket_kind(p: Protocol) -> u8 {
    match p {
        Protocol::Http => 0,
        Protocol::Https => 1,
        Protocol::Tcp => 2,
        Protocol::TlsPassthrough | Protocol::TlsTerminate => 3,
        Protocol::Udp => 4,
    }
}
