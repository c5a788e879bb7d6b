//! RateLimitPolicy: attachment (shared with the other policies, [`crate::policy`]), each
//! policy's status, and the policy compiled for the dataplane.
//!
//! ```text
//!   RateLimitPolicy ──targetRefs──▶ Gateway [listener] | HTTPRoute [rule]
//!                   ──global.redisUrl, else the Gateway's GatewayConfig redisUrl,
//!                     else Inputs::redis_url──▶ Redis
//!                   ──Claim / Consumer keys──▶ the AuthPolicy that authenticates there
//! ```
//!
//! Unlike an AuthPolicy, a RateLimitPolicy that does not compile does not attach: its
//! targets keep serving (under the next less specific policy, if any) and its status says
//! why. Refusing every request because of a typo in a limit would turn a protection into an
//! outage.

use crate::auth::AuthPolicies;
use crate::inputs::Inputs;
use crate::parameters;
use crate::policy::{Attachments, References, Target, Targets, Verdict, oldest_first};
use crate::refs::object_ref;
use crate::status::StatusReport;
use crate::values;
use portico_crds::ratelimit as crd;
use portico_model::ratelimit as model;
use portico_model::{ObjectRef, PolicyKind, Snapshot};
use std::collections::BTreeMap;

/// The rate-limit policies that apply, by target, compiled.
#[derive(Debug, Default)]
pub(crate) struct RateLimitPolicies {
    attached: Attachments,
    compiled: BTreeMap<ObjectRef, model::RateLimitPolicy>,
    redis: GatewayRedis,
}

/// The Redis of global limits whose policy names none: per Gateway (its GatewayConfig's
/// `redisUrl`), else the one the controller was started with.
#[derive(Clone, Debug, Default)]
pub(crate) struct GatewayRedis {
    by_gateway: BTreeMap<ObjectRef, String>,
    default: Option<String>,
}

impl GatewayRedis {
    /// Each Gateway's Redis: the `redisUrl` of its GatewayConfig (its own
    /// `infrastructure.parametersRef`, else its class's), else `inputs.redis_url`.
    pub(crate) fn new(inputs: &Inputs, controller_name: &str) -> Self {
        let mut by_gateway = BTreeMap::new();
        for gw in inputs.gateways_of(controller_name) {
            let Some(class) = inputs
                .gateway_classes
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(gw.spec.gateway_class_name.as_str()))
            else {
                continue;
            };
            let Ok(Some(config)) = parameters::gateway_config(gw, class) else {
                continue;
            };
            let url = inputs
                .gateway_configs
                .iter()
                .find(|c| object_ref(&c.metadata) == config)
                .and_then(|c| c.spec.redis_url.clone());
            if let Some(url) = url {
                by_gateway.insert(object_ref(&gw.metadata), url);
            }
        }
        Self {
            by_gateway,
            default: inputs.redis_url.clone(),
        }
    }

    /// Fills in a policy's empty Redis URL with `gw`'s; `None` when it has none (checked
    /// when the policy attached, [`GatewayRedis::missing_on`]).
    pub(crate) fn fill(&self, gw: &ObjectRef, url: &mut String) -> Option<()> {
        if url.is_empty() {
            *url = self.for_gateway(gw)?.to_string();
        }
        Some(())
    }

    /// Why `what` (naming no Redis of its own in `field`) has none on `target`: a Gateway
    /// the target is served through has none either.
    pub(crate) fn missing_on(
        &self,
        target: &Target,
        targets: &Targets,
        what: &str,
        field: &str,
    ) -> Option<String> {
        let without: Vec<String> = targets
            .gateways_of(target)
            .iter()
            .filter(|gw| self.for_gateway(gw).is_none())
            .map(ToString::to_string)
            .collect();
        (!without.is_empty()).then(|| {
            format!(
                "{what} needs a Redis: set {field}, the redisUrl of the GatewayConfig of Gateway {}, \
                 or start the controller (or standalone portico) with --redis-url",
                without.join(", ")
            )
        })
    }

    pub(crate) fn for_gateway(&self, gw: &ObjectRef) -> Option<&str> {
        self.by_gateway
            .get(gw)
            .map(String::as_str)
            .or(self.default.as_deref())
    }
}

/// Why the global limits of `p` have no Redis on `target`: the policy names none and a
/// Gateway the target is served through has none either.
fn missing_redis(
    p: &model::RateLimitPolicy,
    target: &Target,
    targets: &Targets,
    redis: &GatewayRedis,
) -> Option<String> {
    let g = p.global.as_ref()?;
    if !g.redis_url.is_empty() {
        return None;
    }
    redis.missing_on(target, targets, "a Global limit", "global.redisUrl")
}

/// Compiles every RateLimitPolicy, decides attachment and writes each one's status. `auth`
/// says which targets authenticate requests (for `Claim` and `Consumer` keys).
pub(crate) fn resolve(
    inputs: &Inputs,
    targets: &Targets,
    auth: &AuthPolicies,
    redis: &GatewayRedis,
    status: &mut StatusReport,
) -> RateLimitPolicies {
    let mut out = RateLimitPolicies {
        redis: redis.clone(),
        ..RateLimitPolicies::default()
    };
    for policy in oldest_first(&inputs.rate_limit_policies, |p| &p.metadata) {
        let id = object_ref(&policy.metadata);
        let compiled = compile_policy(&id, &policy.spec);
        let needs = needs_identity(&policy.spec);
        let verdict = |target: &Target| match &compiled {
            Err(reason) => Verdict::Rejected(reason.clone()),
            Ok(p) => match needs.and_then(|n| missing_identity(n, target, targets, auth)) {
                Some(reason) => Verdict::Rejected(reason),
                None => match missing_redis(p, target, targets, redis) {
                    Some(reason) => Verdict::Rejected(reason),
                    None => Verdict::Applies,
                },
            },
        };
        let s = out.attached.claim(
            PolicyKind::RateLimit,
            &policy.metadata,
            &policy.spec.target_refs,
            targets,
            verdict,
            &References::Read { unresolved: &[] },
        );
        status
            .policies
            .insert((PolicyKind::RateLimit, id.clone()), s);
        if let Ok(c) = compiled {
            out.compiled.insert(id, c);
        }
    }
    out
}

impl RateLimitPolicies {
    /// Names each route rule's and route parent's policy in `snapshot` and adds the policies
    /// it uses.
    pub(crate) fn attach(&self, snapshot: &mut Snapshot) {
        let used = self.attached.name_in(snapshot, PolicyKind::RateLimit);
        let gw = &snapshot.gateway;
        snapshot.policies.rate_limit = used
            .iter()
            .filter_map(|id| self.compiled.get(id).cloned())
            .filter_map(|mut p| {
                if let Some(g) = &mut p.global {
                    self.redis.fill(gw, &mut g.redis_url)?;
                }
                Some(p)
            })
            .collect();
    }
}

/// What a policy's keys need an AuthPolicy for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A `Claim` key: a verified token (JWT or introspection).
    Claims,
    /// A `Consumer` key (and no `Claim` key): any authentication mechanism.
    Consumer,
}

fn needs_identity(spec: &crd::RateLimitPolicySpec) -> Option<Identity> {
    let kinds = || {
        spec.limits
            .iter()
            .flat_map(|l| l.key.iter().map(|k| k.type_))
    };
    if kinds().any(|k| k == crd::KeyType::Claim) {
        Some(Identity::Claims)
    } else if kinds().any(|k| k == crd::KeyType::Consumer) {
        Some(Identity::Consumer)
    } else {
        None
    }
}

/// Why requests of `target` cannot carry the identity `need`: no AuthPolicy with a fitting
/// mechanism applies to the target, to what contains it, or to what it contains.
pub(crate) fn missing_identity(
    need: Identity,
    target: &Target,
    targets: &Targets,
    auth: &AuthPolicies,
) -> Option<String> {
    let fits = |id: &ObjectRef| {
        auth.policy(id).is_some_and(|p| match need {
            Identity::Claims => p.jwt.is_some() || p.introspection.is_some(),
            Identity::Consumer => {
                p.jwt.is_some()
                    || p.introspection.is_some()
                    || p.api_keys.is_some()
                    || p.basic.is_some()
            }
        })
    };
    let covered = match target {
        Target::Gateway(gw, _) => auth.attached.any_on_gateway(gw, targets, &fits),
        // The set itself, what contains it (the whole Gateway: a policy on one of its own
        // listeners never reaches a set's), what it contains (its routes).
        Target::ListenerSet(ls, _) => {
            auth.attached.any_on_listener_set(ls, &fits)
                || targets
                    .gateways_of(target)
                    .iter()
                    .any(|gw| auth.attached.any_on_whole_gateway(gw, &fits))
                || targets
                    .routes_on(ls)
                    .any(|r| auth.attached.any_on_route(r, &fits))
        }
        Target::Route(route, _) => {
            auth.attached.any_on_route(route, &fits)
                || targets
                    .parents_of(route)
                    .iter()
                    .any(|gw| auth.attached.any_gateway_level(gw, &fits))
                || targets
                    .sets_of(route)
                    .iter()
                    .any(|ls| auth.attached.any_on_listener_set(ls, &fits))
        }
        // Reached through the Gateways of the routes that send to it.
        Target::Service(..) => targets
            .gateways_of(target)
            .iter()
            .any(|gw| auth.attached.any_on_gateway(gw, targets, &fits)),
    };
    if covered {
        return None;
    }
    let what = match need {
        Identity::Claims => "a Claim key needs an AuthPolicy with jwt or introspection",
        Identity::Consumer => "a Consumer key needs an AuthPolicy that authenticates requests",
    };
    Some(format!(
        "{what} on {target} (or on what it is part of), and none applies"
    ))
}

/// The policy as the dataplane enforces it, or why it cannot be.
fn compile_policy(
    id: &ObjectRef,
    spec: &crd::RateLimitPolicySpec,
) -> Result<model::RateLimitPolicy, String> {
    let mut limits = Vec::with_capacity(spec.limits.len());
    for (i, l) in spec.limits.iter().enumerate() {
        let name = l.name.clone().unwrap_or_else(|| format!("limit-{i}"));
        let at = |e: String| format!("limit {name:?}: {e}");
        limits.push(compile_limit(name.clone(), l).map_err(at)?);
    }
    let mut names: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two limits are named {:?}", w[0]));
    }
    let any_global = limits.iter().any(|l| l.scope == model::Scope::Global);
    let global = match (any_global, &spec.global) {
        (false, _) => None,
        (true, settings) => {
            // Empty: the Gateway's (filled in per snapshot).
            let url = settings
                .as_ref()
                .and_then(|g| g.redis_url.clone())
                .unwrap_or_default();
            if !url.is_empty() {
                model::RedisAddress::parse(&url).map_err(|e| format!("global.redisUrl: {e}"))?;
            }
            Some(model::Global {
                redis_url: url,
                fail_closed: settings
                    .as_ref()
                    .is_some_and(|g| g.failure_mode == crd::FailureMode::FailClosed),
                timeout_ms: settings
                    .as_ref()
                    .and_then(|g| g.timeout_milliseconds)
                    .unwrap_or(model::DEFAULT_REDIS_TIMEOUT_MS)
                    .clamp(1, 5000),
            })
        }
    };
    let trusted_hops = spec.client_ip.as_ref().map_or(0, |c| c.trusted_hops);
    if trusted_hops > 16 {
        return Err("clientIP.trustedHops is at most 16".into());
    }
    let ipv6_prefix_length = match spec.client_ip.as_ref().and_then(|c| c.ipv6_prefix_length) {
        None => model::DEFAULT_IPV6_PREFIX,
        Some(n @ 1..=128) => u8::try_from(n).unwrap_or(model::DEFAULT_IPV6_PREFIX),
        Some(_) => return Err("clientIP.ipv6PrefixLength is between 1 and 128".into()),
    };
    Ok(model::RateLimitPolicy {
        id: id.clone(),
        limits,
        trusted_hops,
        ipv6_prefix_length,
        response_headers: spec.response_headers,
        global,
    })
}

fn compile_limit(name: String, l: &crd::Limit) -> Result<model::Limit, String> {
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_name {
        return Err("a limit name is lower-case letters, digits and '-'".into());
    }
    if l.requests == 0 {
        return Err("requests must be at least 1".into());
    }
    let interval_ms = values::millis("interval", &l.interval, 1, 24 * values::HOUR)?;
    let algorithm = match l.algorithm {
        crd::Algorithm::TokenBucket => model::Algorithm::TokenBucket,
        crd::Algorithm::SlidingWindow => model::Algorithm::SlidingWindow,
        crd::Algorithm::FixedWindow => model::Algorithm::FixedWindow,
    };
    let burst = match (algorithm, l.burst) {
        (_, Some(0)) => return Err("burst must be at least 1".into()),
        (model::Algorithm::TokenBucket, b) => b.unwrap_or(l.requests),
        (_, Some(_)) => return Err("burst applies only to the TokenBucket algorithm".into()),
        (_, None) => l.requests,
    };
    let mut key = Vec::with_capacity(l.key.len());
    for k in &l.key {
        let named = |what: &str| {
            k.name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("a {what} key needs a name"))
        };
        key.push(match k.type_ {
            crd::KeyType::ClientIp => model::KeyPart::ClientIp,
            crd::KeyType::Header => {
                let n = named("Header")?.to_ascii_lowercase();
                http_token(&n).map_err(|e| format!("header {n:?}: {e}"))?;
                model::KeyPart::Header(n)
            }
            crd::KeyType::Claim => {
                let n = named("Claim")?;
                let path: Vec<String> = n.split('.').map(str::to_string).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!("claim {n:?} has an empty part"));
                }
                model::KeyPart::Claim(path)
            }
            crd::KeyType::Consumer => model::KeyPart::Consumer,
            crd::KeyType::Route => model::KeyPart::Route,
            crd::KeyType::Path => model::KeyPart::Path,
        });
        if k.name.is_some() && !matches!(k.type_, crd::KeyType::Header | crd::KeyType::Claim) {
            return Err("name applies only to Header and Claim keys".into());
        }
    }
    let match_ = match &l.match_ {
        None => None,
        Some(m) => {
            let mut methods = Vec::with_capacity(m.methods.len());
            for method in &m.methods {
                http_token(method).map_err(|e| format!("method {method:?}: {e}"))?;
                methods.push(method.to_ascii_uppercase());
            }
            let path = match &m.path {
                None => None,
                Some(p) if !p.value.starts_with('/') => {
                    return Err(format!("match path {:?} must start with '/'", p.value));
                }
                Some(p) => Some(match p.type_ {
                    crd::PathMatchType::Exact => model::PathMatch::Exact(p.value.clone()),
                    crd::PathMatchType::PathPrefix => model::PathMatch::Prefix(p.value.clone()),
                }),
            };
            let mut headers = Vec::with_capacity(m.headers.len());
            for h in &m.headers {
                let n = h.name.to_ascii_lowercase();
                http_token(&n).map_err(|e| format!("match header {n:?}: {e}"))?;
                headers.push((n, h.value.clone()));
            }
            Some(model::LimitMatch {
                methods,
                path,
                headers,
            })
        }
    };
    Ok(model::Limit {
        name,
        requests: l.requests,
        interval_ms,
        algorithm,
        burst,
        scope: match l.scope {
            crd::Scope::Local => model::Scope::Local,
            crd::Scope::Global => model::Scope::Global,
        },
        key,
        match_,
    })
}

/// An RFC 9110 token (header names and methods), or why not.
fn http_token(s: &str) -> Result<(), String> {
    if values::http_token(s) {
        Ok(())
    } else {
        Err("not a valid token".into())
    }
}
