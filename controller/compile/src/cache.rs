//! CachePolicy: attachment (shared with the other policies, [`crate::policy`]), each
//! policy's status, and the policy compiled for the dataplane.
//!
//! ```text
//!   CachePolicy ──targetRefs──▶ Gateway [listener] | HTTPRoute [rule]
//!               ──key.consumer──▶ the AuthPolicy that authenticates there
//! ```
//!
//! Like a RateLimitPolicy, a CachePolicy that does not compile does not attach: its targets
//! are served uncached (or under the next less specific policy) and its status says why.

use crate::auth::AuthPolicies;
use crate::inputs::Inputs;
use crate::policy::{Attachments, References, Target, Verdict, oldest_first};
use crate::ratelimit::{GatewayRedis, Identity, missing_identity};
use crate::refs::object_ref;
use crate::status::StatusReport;
use crate::values;
use portico_crds::cache as crd;
use portico_model::cache as model;
use portico_model::{ObjectRef, PolicyKind, Snapshot};
use std::collections::BTreeMap;

/// The cache policies that apply, by target, compiled; and the purges of the
/// CacheInvalidations, by the Gateway whose replicas apply them.
#[derive(Debug, Default)]
pub(crate) struct CachePolicies {
    attached: Attachments,
    compiled: BTreeMap<ObjectRef, model::CachePolicy>,
    purges: BTreeMap<ObjectRef, Vec<model::Purge>>,
    redis: GatewayRedis,
}

/// Compiles every CachePolicy, decides attachment and writes each one's status.
pub(crate) fn resolve(
    inputs: &Inputs,
    targets: &crate::policy::Targets,
    auth: &AuthPolicies,
    redis: &GatewayRedis,
    status: &mut StatusReport,
) -> CachePolicies {
    let mut out = CachePolicies {
        redis: redis.clone(),
        ..CachePolicies::default()
    };
    for policy in oldest_first(&inputs.cache_policies, |p| &p.metadata) {
        let id = object_ref(&policy.metadata);
        let compiled = compile_policy(&id, &policy.spec);
        let by_consumer = compiled.as_ref().is_ok_and(|p| p.key.consumer);
        let needs_redis = compiled
            .as_ref()
            .is_ok_and(|p| p.shared.as_ref().is_some_and(|s| s.redis_url.is_empty()));
        let verdict = |target: &Target| {
            if let Err(reason) = &compiled {
                return Verdict::Rejected(reason.clone());
            }
            let no_redis = needs_redis
                .then(|| redis.missing_on(target, targets, "a shared tier", "shared.redisUrl"))
                .flatten();
            let no_consumer = by_consumer
                .then(|| missing_identity(Identity::Consumer, target, targets, auth))
                .flatten()
                .map(|r| r.replace("a Consumer key needs", "key.consumer needs"));
            match no_redis.or(no_consumer) {
                Some(why) => Verdict::Rejected(why),
                None => Verdict::Applies,
            }
        };
        let s = out.attached.claim(
            PolicyKind::Cache,
            &policy.metadata,
            &policy.spec.target_refs,
            targets,
            verdict,
            &References::Read { unresolved: &[] },
        );
        status.policies.insert((PolicyKind::Cache, id.clone()), s);
        if let Ok(c) = compiled {
            out.compiled.insert(id, c);
        }
    }
    resolve_invalidations(inputs, targets, status, &mut out);
    out
}

/// Each CacheInvalidation's purges, sent to the Gateways its targets are served through;
/// its status (`Accepted`, and `Purged` pending until the controller hears from the
/// replicas).
fn resolve_invalidations(
    inputs: &Inputs,
    targets: &crate::policy::Targets,
    status: &mut StatusReport,
    out: &mut CachePolicies,
) {
    use crate::status::{
        AncestorRef, Condition, PolicyAncestorStatus, PolicyStatus, reasons, types,
    };
    for inv in &inputs.cache_invalidations {
        let id = object_ref(&inv.metadata);
        let generation = inv.metadata.generation;
        let purges = compile_purges(&id, inv);
        let mut ancestors = Vec::new();
        let mut gateways = std::collections::BTreeSet::new();
        for t in &inv.spec.target_refs {
            let resolved = targets.resolve_for(PolicyKind::Invalidation, t, &id.namespace);
            let (accepted, reason, message) = match (&purges, resolved) {
                (Err(e), _) => (false, reasons::INVALID, e.clone()),
                (_, Err((reason, message))) => (false, reason, message),
                (Ok(p), Ok(target)) => {
                    let served = targets.gateways_of(&target);
                    // A route's invalidation purges that route's entries only.
                    let routes = match &target {
                        Target::Route(route, _) => vec![route.to_string()],
                        _ => Vec::new(),
                    };
                    for gw in &served {
                        out.purges
                            .entry(gw.clone())
                            .or_default()
                            .extend(p.iter().map(|p| model::Purge {
                                routes: routes.clone(),
                                ..p.clone()
                            }));
                        gateways.insert(gw.clone());
                    }
                    if served.is_empty() {
                        (
                            false,
                            reasons::TARGET_NOT_FOUND,
                            format!("{target} is served through no Gateway of ours"),
                        )
                    } else {
                        (
                            true,
                            reasons::ACCEPTED,
                            "sent to the dataplanes".to_string(),
                        )
                    }
                }
            };
            let purged = if accepted {
                Condition::new(
                    types::PURGED,
                    false,
                    reasons::PENDING,
                    "waiting for the dataplanes",
                    generation,
                )
            } else {
                Condition::new(types::PURGED, false, reason, "not sent", generation)
            };
            ancestors.push(PolicyAncestorStatus {
                ancestor_ref: AncestorRef {
                    group: t.group.clone(),
                    kind: t.kind.clone(),
                    namespace: id.namespace.clone(),
                    name: t.name.clone(),
                    section_name: t.section_name.clone(),
                },
                conditions: vec![
                    Condition::new(types::ACCEPTED, accepted, reason, message, generation),
                    purged,
                ],
            });
        }
        status.policies.insert(
            (PolicyKind::Invalidation, id.clone()),
            PolicyStatus { ancestors },
        );
        status.purges.insert(id, gateways);
    }
    for list in out.purges.values_mut() {
        list.sort();
        list.dedup();
    }
}

/// An invalidation's purges, each URL written as cache keys hold it, under an id that
/// changes when its spec does (a replica applies each id once).
fn compile_purges(
    id: &ObjectRef,
    inv: &crd::CacheInvalidation,
) -> Result<Vec<model::Purge>, String> {
    // FNV-1a: the same id from every controller version and replica.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes.iter().chain(&[0xff]) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(inv.metadata.uid.as_deref().unwrap_or("").as_bytes());
    let mut out = Vec::with_capacity(inv.spec.purges.len());
    for (i, p) in inv.spec.purges.iter().enumerate() {
        let (kind, value) = match p.type_ {
            crd::PurgeType::Url => (model::PurgeKind::Url, model::canonical_url(&p.value)),
            crd::PurgeType::Prefix => (model::PurgeKind::Prefix, model::canonical_url(&p.value)),
            crd::PurgeType::Tag => (
                model::PurgeKind::Tag,
                if p.value.is_empty()
                    || p.value.len() > 128
                    || p.value.bytes().any(|b| b <= b' ' || b == b',' || b == 0x7f)
                {
                    Err(format!(
                        "{:?} is not a tag (1 to 128 visible characters, no comma)",
                        p.value
                    ))
                } else {
                    Ok(p.value.clone())
                },
            ),
        };
        let value = value.map_err(|e| format!("purges[{i}]: {e}"))?;
        feed(format!("{kind:?}").as_bytes());
        feed(value.as_bytes());
        out.push(model::Purge {
            id: String::new(),
            kind,
            value,
            routes: Vec::new(),
            created: inv
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| u64::try_from(t.0.as_second()).ok())
                .unwrap_or(0),
        });
    }
    if out.is_empty() {
        return Err("purges names nothing to purge".into());
    }
    let revision = format!("{id}#{hash:016x}");
    for p in &mut out {
        p.id.clone_from(&revision);
    }
    Ok(out)
}

impl CachePolicies {
    /// The purges for `snapshot`'s Gateway.
    pub(crate) fn attach_purges(&self, snapshot: &mut Snapshot) {
        snapshot.purges = self
            .purges
            .get(&snapshot.gateway)
            .cloned()
            .unwrap_or_default();
    }

    /// Names each route rule's and route parent's policy in `snapshot` and adds the policies
    /// it uses.
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        let used = self.attached.name_in(snapshot, PolicyKind::Cache);
        let gw = &snapshot.gateway;
        snapshot.policies.cache = used
            .iter()
            .filter_map(|id| self.compiled.get(id).cloned())
            .filter_map(|mut p| {
                if let Some(s) = &mut p.shared {
                    self.redis.fill(gw, &mut s.redis_url)?;
                }
                Some(p)
            })
            .collect();
    }
}

/// A duration field in whole seconds (at least 1 s, at most a year).
fn secs(field: &str, value: Option<&String>) -> Result<Option<u64>, String> {
    value
        .map(|v| {
            values::millis(field, v, values::SECOND, 365 * 24 * values::HOUR).map(|ms| ms / 1000)
        })
        .transpose()
}

/// The policy as the dataplane applies it, or why it cannot be.
fn compile_policy(
    id: &ObjectRef,
    spec: &crd::CachePolicySpec,
) -> Result<model::CachePolicy, String> {
    if spec.default_ttl.is_some() && spec.forced_ttl.is_some() {
        return Err(
            "defaultTTL and forcedTTL exclude each other: forcedTTL applies to every response"
                .into(),
        );
    }
    let default_ttl = secs("defaultTTL", spec.default_ttl.as_ref())?;
    let forced_ttl = secs("forcedTTL", spec.forced_ttl.as_ref())?;
    let max_ttl = secs("maxTTL", spec.max_ttl.as_ref())?.unwrap_or(model::DEFAULT_MAX_TTL_SECS);
    for (field, v) in [("defaultTTL", default_ttl), ("forcedTTL", forced_ttl)] {
        if v.is_some_and(|v| v > max_ttl) {
            return Err(format!("{field} is longer than maxTTL ({max_ttl}s)"));
        }
    }
    let stale_while_revalidate =
        secs("staleWhileRevalidate", spec.stale_while_revalidate.as_ref())?;
    let stale_if_error = secs("staleIfError", spec.stale_if_error.as_ref())?;
    let coalesce_timeout_ms = match &spec.coalesce_timeout {
        None => model::DEFAULT_COALESCE_TIMEOUT_MS,
        Some(v) => values::millis("coalesceTimeout", v, 0, 60 * values::SECOND)?,
    };
    let mut statuses = spec.statuses.clone();
    if let Some(s) = statuses.iter().find(|s| !(200..=599).contains(*s)) {
        return Err(format!("statuses: {s} is not a final status (200 to 599)"));
    }
    if let Some(s) = statuses.iter().find(|s| matches!(s, 206 | 304)) {
        return Err(format!(
            "statuses: {s} is never stored (a partial response, or a validation that only refreshes a stored one)"
        ));
    }
    statuses.sort_unstable();
    statuses.dedup();
    let max_object_bytes = spec
        .max_object_bytes
        .unwrap_or(model::DEFAULT_MAX_OBJECT_BYTES);
    if max_object_bytes == 0 || max_object_bytes > 64 << 20 {
        return Err("maxObjectBytes is between 1 and 67108864 (64 MiB)".into());
    }
    let key = match &spec.key {
        None => model::CacheKey::default(),
        Some(k) => compile_key(k)?,
    };
    let shared = match &spec.shared {
        None => None,
        Some(t) => {
            let url = t.redis_url.clone().unwrap_or_default();
            if !url.is_empty() {
                portico_model::ratelimit::RedisAddress::parse(&url)
                    .map_err(|e| format!("shared.redisUrl: {e}"))?;
            }
            Some(model::SharedTier {
                redis_url: url,
                timeout_ms: t
                    .timeout_milliseconds
                    .unwrap_or(model::DEFAULT_SHARED_TIMEOUT_MS)
                    .clamp(1, 1000),
            })
        }
    };
    Ok(model::CachePolicy {
        shared,
        id: id.clone(),
        default_ttl,
        forced_ttl,
        max_ttl,
        heuristic: spec.heuristic,
        stale_while_revalidate,
        stale_if_error,
        key,
        statuses,
        max_object_bytes,
        store_set_cookie: spec.store_set_cookie,
        coalesce_timeout_ms,
    })
}

fn compile_key(k: &crd::CacheKey) -> Result<model::CacheKey, String> {
    let names = |field: &str, list: &[String]| -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(list.len());
        for n in list {
            if n.is_empty()
                || n.len() > 256
                || n.bytes().any(|b| b == b'&' || b == b'=' || b <= b' ')
            {
                return Err(format!("{field}: {n:?} is not a query parameter name"));
            }
            out.push(n.clone());
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    };
    let query = match (k.ignore_query, &k.include_query, &k.exclude_query) {
        (_, Some(_), Some(_)) => {
            return Err("includeQuery and excludeQuery exclude each other".into());
        }
        (true, Some(_), _) | (true, _, Some(_)) => {
            return Err(
                "ignoreQuery leaves every parameter out: it excludes includeQuery and excludeQuery"
                    .into(),
            );
        }
        (true, None, None) => model::QueryKey::None,
        (false, Some(i), None) => model::QueryKey::Include(names("includeQuery", i)?),
        (false, None, Some(e)) => model::QueryKey::Exclude(names("excludeQuery", e)?),
        (false, None, None) => model::QueryKey::All,
    };
    let mut headers = Vec::with_capacity(k.headers.len());
    for h in &k.headers {
        let n = h.to_ascii_lowercase();
        if !values::http_token(&n) {
            return Err(format!("key.headers: {h:?} is not a header name"));
        }
        if matches!(
            n.as_str(),
            "authorization" | "proxy-authorization" | "cookie"
        ) {
            return Err(format!(
                "key.headers: {h:?} holds credentials; key by the consumer an AuthPolicy authenticated instead (key.consumer)"
            ));
        }
        headers.push(n);
    }
    headers.sort_unstable();
    headers.dedup();
    Ok(model::CacheKey {
        query,
        headers,
        consumer: k.consumer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> crd::CachePolicySpec {
        let text = format!(
            "targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}}]\n{yaml}"
        );
        serde_yaml::from_str(&text).expect("spec")
    }

    fn compile(yaml: &str) -> Result<model::CachePolicy, String> {
        compile_policy(&ObjectRef::new("default", "p"), &spec(yaml))
    }

    #[test]
    fn defaults_are_filled_in() {
        let p = compile("").expect("compiles");
        assert_eq!(p.max_ttl, model::DEFAULT_MAX_TTL_SECS);
        assert_eq!(p.max_object_bytes, model::DEFAULT_MAX_OBJECT_BYTES);
        assert_eq!(p.coalesce_timeout_ms, model::DEFAULT_COALESCE_TIMEOUT_MS);
        assert_eq!(p.key, model::CacheKey::default());
        assert_eq!((p.default_ttl, p.forced_ttl), (None, None));
    }

    #[test]
    fn fields_compile_to_seconds_and_canonical_keys() {
        let p = compile(
            "defaultTTL: 5m\nmaxTTL: 1h\nstaleWhileRevalidate: 30s\nstaleIfError: 1h\n\
             statuses: [404, 200, 200]\ncoalesceTimeout: 0s\n\
             key: {excludeQuery: [utm_source, fbclid], headers: [Accept-Language, X-Tenant], consumer: false}",
        )
        .expect("compiles");
        assert_eq!(p.default_ttl, Some(300));
        assert_eq!(p.max_ttl, 3600);
        assert_eq!(p.stale_while_revalidate, Some(30));
        assert_eq!(p.stale_if_error, Some(3600));
        assert_eq!(p.statuses, vec![200, 404]);
        assert_eq!(p.coalesce_timeout_ms, 0);
        assert_eq!(
            p.key.query,
            model::QueryKey::Exclude(vec!["fbclid".into(), "utm_source".into()])
        );
        assert_eq!(p.key.headers, vec!["accept-language", "x-tenant"]);
    }

    #[test]
    fn each_mistake_is_named() {
        for (yaml, expected) in [
            ("defaultTTL: 1m\nforcedTTL: 1m", "exclude each other"),
            ("defaultTTL: 2h\nmaxTTL: 1h", "longer than maxTTL"),
            ("forcedTTL: 10x", "forcedTTL"),
            ("defaultTTL: 500ms", "between 1s"),
            ("statuses: [206]", "never stored"),
            ("statuses: [100]", "not a final status"),
            ("maxObjectBytes: 0", "maxObjectBytes"),
            ("key: {headers: [Authorization]}", "credentials"),
            ("key: {headers: ['bad header']}", "not a header name"),
            ("key: {ignoreQuery: true, includeQuery: [a]}", "ignoreQuery"),
            (
                "key: {includeQuery: [a], excludeQuery: [b]}",
                "exclude each other",
            ),
            ("key: {includeQuery: ['a=b']}", "not a query parameter name"),
            ("coalesceTimeout: 2m", "coalesceTimeout"),
        ] {
            let e = compile(yaml).expect_err(yaml);
            assert!(e.contains(expected), "{yaml}: {e}");
        }
    }
}
