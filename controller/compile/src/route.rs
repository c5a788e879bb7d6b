//! HTTPRoutes (and GRPCRoutes, as the HTTPRoutes they mean, see [`crate::grpc`]): attachment
//! to listeners, validation and translation of rules, backend resolution, and the per-parent
//! status.

use crate::backend::{BackendIndex, BackendRefSpec, Unresolved, resolved_condition};
use crate::gateway::{GatewayState, NamespaceLabels, Owner, ParentRefParts, parent_of};
use crate::hostname;
use crate::refs::{object_ref, precedence};
use crate::status::{Condition, ParentRef, RouteParentStatus, RouteStatus, reasons, types};
use portico_crds::gateway_api::Duration;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute as HTTPRoute;
use portico_crds::gateway_api::experimental::httproutes::*;
use portico_model::{
    AttachedPolicies, Backend, BackendId, BackendRef, BackendTarget, Filter, Header,
    HeaderModifier, HttpRoute, KeyValueMatch, ObjectRef, PathMatch, PathRewrite, REGEX_SIZE_LIMIT,
    Redirect, RouteKind, RouteMatch, RouteParent, RouteRetry, RouteRule, StringMatch, Timeouts,
    UrlRewrite,
};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;

/// A route to compile: an HTTPRoute, or a GRPCRoute as the HTTPRoute it means.
pub(crate) struct RouteSource<'a> {
    pub(crate) kind: RouteKind,
    pub(crate) route: Cow<'a, HTTPRoute>,
    /// Why the route is invalid before its rules are translated (a GRPCRoute's method match).
    pub(crate) invalid: Option<String>,
}

/// Routes (of the snapshot type `R`) attached to each Gateway, in precedence order, with
/// the backends they use.
pub(crate) struct Attached<R>(
    pub(crate) BTreeMap<ObjectRef, (Vec<R>, BTreeMap<BackendId, Backend>)>,
);

impl<R> Default for Attached<R> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<R: Clone> Attached<R> {
    pub(crate) fn for_gateway(&self, gw: &ObjectRef) -> (Vec<R>, Vec<Backend>) {
        match self.0.get(gw) {
            Some((routes, backends)) => (routes.clone(), backends.values().cloned().collect()),
            None => (Vec::new(), Vec::new()),
        }
    }
}

/// HTTPRoutes and GRPCRoutes attached to each Gateway.
pub(crate) type AttachedRoutes = Attached<HttpRoute>;

pub(crate) struct RouteResults {
    pub(crate) attached: AttachedRoutes,
    pub(crate) status: BTreeMap<(RouteKind, ObjectRef), RouteStatus>,
}

/// Rules translated for the snapshot, with the backends they reference and the first
/// unresolved reference (for ResolvedRefs).
struct Translated {
    rules: Vec<RouteRule>,
    backends: Vec<Backend>,
    unresolved: Vec<Unresolved>,
}

pub(crate) fn compile_routes(
    routes: &[RouteSource<'_>],
    gateways: &mut [GatewayState],
    namespaces: &NamespaceLabels,
    backends: &BackendIndex<'_>,
) -> RouteResults {
    // Precedence across routes (and between HTTPRoutes and GRPCRoutes that share hostnames):
    // oldest first, then namespace/name.
    let mut ordered: Vec<&RouteSource<'_>> = routes.iter().collect();
    ordered.sort_by(|a, b| {
        precedence(&a.route.metadata, &b.route.metadata).then_with(|| a.kind.cmp(&b.kind))
    });

    let mut attached = AttachedRoutes::default();
    let mut status = BTreeMap::new();
    for source in ordered {
        let (kind, route) = (source.kind, source.route.as_ref());
        let id = object_ref(&route.metadata);
        let generation = route.metadata.generation;
        let translated = match &source.invalid {
            Some(message) => Err(message.clone()),
            None => translate(route, kind, &id.namespace, backends),
        };
        let mut parents_status = Vec::new();
        for p in route.spec.parent_refs.iter().flatten() {
            let parts = ParentRefParts {
                group: p.group.as_deref(),
                kind: p.kind.as_deref(),
                namespace: p.namespace.as_deref(),
                name: &p.name,
                section_name: p.section_name.as_deref(),
                port: p.port,
            };
            let Some((parent, owner, gw)) = parent_of(&parts, &id.namespace, gateways) else {
                continue;
            };
            let gw_id = gw.id.clone();
            let outcome = translated
                .as_ref()
                .map_err(|message| (reasons::UNSUPPORTED_VALUE, message.clone()))
                .and_then(|t| {
                    attach(route, kind, &id.namespace, &parent, &owner, gw, namespaces)
                        .map(|p| (p, t))
                });
            let conditions = match outcome {
                Err((reason, message)) => vec![
                    Condition::new(types::ACCEPTED, false, reason, message, generation),
                    resolved_condition(
                        translated.as_ref().ok().map(|t| t.unresolved.as_slice()),
                        generation,
                    ),
                ],
                Ok((parents, t)) => {
                    let entry = attached.0.entry(gw_id.clone()).or_default();
                    // Routes arrive one at a time: a second parentRef of this route to the same
                    // Gateway can only find it last.
                    match entry.0.last_mut().filter(|r| r.id == id && r.kind == kind) {
                        Some(existing) => existing.parents.extend(parents),
                        None => entry.0.push(HttpRoute {
                            kind,
                            id: id.clone(),
                            parents,
                            rules: t.rules.clone(),
                        }),
                    }
                    for b in &t.backends {
                        entry.1.insert(b.id.clone(), b.clone());
                    }
                    vec![
                        Condition::new(
                            types::ACCEPTED,
                            true,
                            reasons::ACCEPTED,
                            "attached",
                            generation,
                        ),
                        resolved_condition(Some(&t.unresolved), generation),
                    ]
                }
            };
            parents_status.push(RouteParentStatus {
                gateway: gw_id,
                parent_ref: parent,
                conditions,
            });
        }
        // By parent, so that statuses compiled Gateway by Gateway assemble to the same list.
        parents_status.sort_by(|a, b| a.parent_ref.cmp(&b.parent_ref));
        if !parents_status.is_empty() {
            status.insert(
                (kind, id),
                RouteStatus {
                    parents: parents_status,
                },
            );
        }
    }
    // A route attached twice to one listener (two parentRefs) is listed once.
    for (routes, _) in attached.0.values_mut() {
        for r in routes {
            r.parents.sort_by(|a, b| a.listener.cmp(&b.listener));
            r.parents.dedup_by(|a, b| a.listener == b.listener);
        }
    }
    RouteResults { attached, status }
}

/// Attaches the route to the listeners of `owner` (the Gateway `gw` or one of its
/// ListenerSets) that its parentRef selects, or says why not. A parentRef reaches only its
/// own parent's listeners: a Gateway's never include its ListenerSets'.
fn attach(
    route: &HTTPRoute,
    kind: RouteKind,
    route_ns: &str,
    parent: &ParentRef,
    owner: &Owner,
    gw: &mut GatewayState,
    namespaces: &NamespaceLabels,
) -> Result<Vec<RouteParent>, (&'static str, String)> {
    // What the parentRef names, for messages; an error when that parent takes no route.
    let target = gw.attach_target(owner, parent)?;
    let route_hosts: Vec<String> = route.spec.hostnames.clone().unwrap_or_default();
    if let Some(bad) = route_hosts.iter().find_map(|h| hostname::validate(h).err()) {
        return Err((reasons::UNSUPPORTED_VALUE, bad));
    }
    let mut selected = 0;
    let mut allowed = 0;
    let mut clash = None;
    let mut out = Vec::new();
    for l in gw.listeners.iter_mut().filter(|l| l.owner == *owner) {
        if parent.section_name.as_ref().is_some_and(|s| *s != l.name)
            || parent.port.is_some_and(|p| p != l.port)
        {
            continue;
        }
        selected += 1;
        if !l.usable() || !l.allows_kind(kind.as_str()) || !l.allows_namespace(route_ns, namespaces)
        {
            continue;
        }
        allowed += 1;
        if let Some(hostnames) = hostname::intersect(l.hostname.as_deref(), &route_hosts) {
            // An HTTPRoute and a GRPCRoute may not share a host on one listener: the older
            // one (attached first) keeps it.
            let other_kind = match kind {
                RouteKind::Http => RouteKind::Grpc,
                RouteKind::Grpc | RouteKind::Tcp | RouteKind::Tls | RouteKind::Udp => {
                    RouteKind::Http
                }
            };
            if let Some((other, _)) = l
                .hosts_of(other_kind)
                .iter()
                .find(|(_, h)| hostname::overlap(h, &hostnames))
            {
                clash.get_or_insert(format!(
                    "its hostnames on listener {:?} overlap those of the older {} {other}",
                    l.name,
                    other_kind.as_str()
                ));
                continue;
            }
            l.hosts_of_mut(kind)
                .push((object_ref(&route.metadata), hostnames.clone()));
            l.attached_routes += 1;
            out.push(RouteParent {
                listener: l.key(),
                hostnames,
                policies: AttachedPolicies::default(),
            });
        }
    }
    match (selected, allowed, out.is_empty()) {
        (0, _, _) => Err((
            reasons::NO_MATCHING_PARENT,
            format!("no listener matches {target}"),
        )),
        (_, 0, _) => Err((
            reasons::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "{target} does not allow {}s from namespace {route_ns}",
                kind.as_str()
            ),
        )),
        (_, _, true) if clash.is_some() => {
            Err((reasons::HOSTNAME_CONFLICT, clash.unwrap_or_default()))
        }
        (_, _, true) => Err((
            reasons::NO_MATCHING_LISTENER_HOSTNAME,
            format!("none of the route's hostnames intersect the hostnames of {target}"),
        )),
        _ => Ok(out),
    }
}

/// Validates and translates every rule. An error is the message of `Accepted=False
/// UnsupportedValue`: the whole route is rejected and serves nothing.
fn translate(
    route: &HTTPRoute,
    kind: RouteKind,
    ns: &str,
    index: &BackendIndex<'_>,
) -> Result<Translated, String> {
    let mut out = Translated {
        rules: Vec::new(),
        backends: Vec::new(),
        unresolved: Vec::new(),
    };
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = |e: String| match &rule.name {
            Some(n) => format!("rule {n:?}: {e}"),
            None => format!("rule {i}: {e}"),
        };
        let matches = translate_matches(rule.matches.as_deref().unwrap_or_default()).map_err(at)?;
        let all = rule.filters.as_deref().unwrap_or_default();
        let is_mirror = |f: &HttpRouteRulesFilters| {
            matches!(f.r#type, HttpRouteRulesFiltersType::RequestMirror)
        };
        let plain: Vec<HttpRouteRulesFilters> =
            all.iter().filter(|f| !is_mirror(f)).cloned().collect();
        let filters = translate_filters(&plain, &matches).map_err(at)?;
        let mut mirrors = Vec::new();
        for f in all.iter().filter(|f| is_mirror(f)) {
            match crate::mirror::translate(f, kind, ns, index).map_err(at)? {
                Ok((mirror, backend)) => {
                    out.backends.push(backend);
                    mirrors.push(mirror);
                }
                // The rule serves without this copy; ResolvedRefs says why.
                Err(u) => out.unresolved.push(u),
            }
        }
        let redirects = filters
            .iter()
            .any(|f| matches!(f, Filter::RequestRedirect(_)));
        if redirects && filters.iter().any(|f| matches!(f, Filter::UrlRewrite(_))) {
            return Err(at(
                "RequestRedirect and URLRewrite cannot be used together".into()
            ));
        }
        let refs = rule.backend_refs.as_deref().unwrap_or_default();
        if redirects && !refs.is_empty() {
            return Err(at(
                "RequestRedirect cannot be used together with backendRefs".into(),
            ));
        }
        let mut backend_refs = Vec::new();
        for r in refs {
            let weight = u32::try_from(r.weight.unwrap_or(1))
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| {
                    at(format!(
                        "backendRef {}: weight must be 0 to 1000000",
                        r.name
                    ))
                })?;
            let ref_filters =
                backend_filters(r.filters.as_deref().unwrap_or_default(), &matches).map_err(at)?;
            let spec = BackendRefSpec {
                group: r.group.as_deref(),
                kind: r.kind.as_deref(),
                name: &r.name,
                namespace: r.namespace.as_deref(),
                port: r.port,
            };
            spec.check_port().map_err(at)?;
            let target = match index.resolve_for(kind, ns, &spec) {
                Ok(backend) => {
                    let id = backend.id.clone();
                    out.backends.push(backend);
                    BackendTarget::Service(id)
                }
                Err(u) => {
                    let reason = u.reason.to_string();
                    out.unresolved.push(u);
                    BackendTarget::Unresolved { reason }
                }
            };
            backend_refs.push(BackendRef {
                target,
                weight,
                filters: ref_filters,
            });
        }
        let timeouts = translate_timeouts(rule.timeouts.as_ref()).map_err(at)?;
        let retry = rule
            .retry
            .as_ref()
            .map(translate_retry)
            .transpose()
            .map_err(at)?;
        let session_persistence = rule
            .session_persistence
            .as_ref()
            .map(|sp| {
                let name = route.metadata.name.as_deref().unwrap_or_default();
                let scope = match &rule.name {
                    Some(r) => format!("{kind:?}/{ns}/{name}/{r}"),
                    None => format!("{kind:?}/{ns}/{name}/{i}"),
                };
                crate::session::from_route(sp, &scope)
            })
            .transpose()
            .map_err(at)?;
        out.rules.push(RouteRule {
            name: rule.name.clone(),
            matches,
            filters,
            backend_refs,
            mirrors,
            timeouts,
            retry,
            session_persistence,
            policies: AttachedPolicies::default(),
        });
    }
    Ok(out)
}

fn translate_matches(matches: &[HttpRouteRulesMatches]) -> Result<Vec<RouteMatch>, String> {
    if matches.is_empty() {
        return Ok(vec![RouteMatch {
            path: PathMatch::PathPrefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }]);
    }
    matches
        .iter()
        .map(|m| {
            let path = match &m.path {
                None => PathMatch::PathPrefix("/".into()),
                Some(p) => {
                    let value = p.value.clone().unwrap_or_else(|| "/".into());
                    match p
                        .r#type
                        .as_ref()
                        .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
                    {
                        HttpRouteRulesMatchesPathType::Exact => {
                            validate_path(&value)?;
                            PathMatch::Exact(value)
                        }
                        HttpRouteRulesMatchesPathType::PathPrefix => {
                            validate_path(&value)?;
                            let trimmed = value.trim_end_matches('/');
                            PathMatch::PathPrefix(if trimmed.is_empty() {
                                "/".into()
                            } else {
                                trimmed.into()
                            })
                        }
                        HttpRouteRulesMatchesPathType::RegularExpression => {
                            validate_regex("path", &value)?;
                            PathMatch::RegularExpression(value)
                        }
                    }
                }
            };
            let method = m.method.as_ref().map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            });
            let mut headers: Vec<KeyValueMatch> = Vec::new();
            for h in m.headers.iter().flatten() {
                validate_header_name(&h.name)?;
                let name = h.name.to_ascii_lowercase();
                // The first of several entries with one name wins, as the spec says.
                if headers.iter().any(|x| x.name == name) {
                    continue;
                }
                let regex = h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression);
                let value = string_match("header", regex, &h.value)?;
                headers.push(KeyValueMatch { name, value });
            }
            let mut query_params: Vec<KeyValueMatch> = Vec::new();
            for q in m.query_params.iter().flatten() {
                if q.name.is_empty() {
                    return Err("query parameter match needs a name".into());
                }
                if query_params.iter().any(|x| x.name == q.name) {
                    continue;
                }
                let regex =
                    q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression);
                let value = string_match("query parameter", regex, &q.value)?;
                query_params.push(KeyValueMatch {
                    name: q.name.clone(),
                    value,
                });
            }
            Ok(RouteMatch {
                path,
                method,
                headers,
                query_params,
            })
        })
        .collect()
}

/// The path rules of the HTTPRoute CRD's CEL validations.
fn validate_path(p: &str) -> Result<(), String> {
    let bad = !p.starts_with('/')
        || p.contains("//")
        || p.contains("/./")
        || p.contains("/../")
        || p.ends_with("/.")
        || p.ends_with("/..")
        || p.contains('?')
        || p.contains('#')
        || p.to_ascii_lowercase().contains("%2f")
        || p.chars().any(|c| c.is_control() || c == ' ');
    if bad {
        Err(format!(
            "path {p:?} must be an absolute path without '//', '/./', '/../', '%2f', '?', '#' or spaces"
        ))
    } else {
        Ok(())
    }
}

/// A hostname a request is sent to: valid and not a wildcard.
fn exact_hostname(what: &str, h: &str) -> Result<(), String> {
    hostname::validate(h)?;
    if h.starts_with('*') {
        return Err(format!("{what} hostname {h:?} cannot be a wildcard"));
    }
    Ok(())
}

fn string_match(what: &str, regex: bool, value: &str) -> Result<StringMatch, String> {
    if regex {
        validate_regex(what, value)?;
        Ok(StringMatch::RegularExpression(value.to_string()))
    } else {
        Ok(StringMatch::Exact(value.to_string()))
    }
}

fn validate_regex(what: &str, pattern: &str) -> Result<(), String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| format!("invalid {what} regular expression {pattern:?}: {e}"))
}

fn validate_header_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

fn translate_header_modifier(
    set: impl Iterator<Item = (String, String)>,
    add: impl Iterator<Item = (String, String)>,
    remove: &[String],
) -> Result<HeaderModifier, String> {
    let header = |(name, value): (String, String)| {
        validate_header_name(&name)?;
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("header {name:?} has a value with a line break"));
        }
        Ok(Header {
            name: name.to_ascii_lowercase(),
            value,
        })
    };
    let remove = remove
        .iter()
        .map(|n| validate_header_name(n).map(|()| n.to_ascii_lowercase()))
        .collect::<Result<_, _>>()?;
    Ok(HeaderModifier {
        set: set.map(header).collect::<Result<_, _>>()?,
        add: add.map(header).collect::<Result<_, _>>()?,
        remove,
    })
}

/// ReplacePrefixMatch only makes sense when every match of the rule is a path prefix.
fn translate_path_rewrite(
    full: Option<&String>,
    prefix: Option<&String>,
    replace_prefix: bool,
    matches: &[RouteMatch],
) -> Result<PathRewrite, String> {
    if replace_prefix {
        if !matches
            .iter()
            .all(|m| matches!(m.path, PathMatch::PathPrefix(_)))
        {
            return Err(
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into(),
            );
        }
        let v = prefix.ok_or("ReplacePrefixMatch needs replacePrefixMatch")?;
        validate_path(v)?;
        Ok(PathRewrite::ReplacePrefixMatch(v.clone()))
    } else {
        let v = full.ok_or("ReplaceFullPath needs replaceFullPath")?;
        validate_path(v)?;
        Ok(PathRewrite::ReplaceFullPath(v.clone()))
    }
}

fn translate_filters(
    filters: &[HttpRouteRulesFilters],
    matches: &[RouteMatch],
) -> Result<Vec<Filter>, String> {
    let mut out: Vec<Filter> = Vec::new();
    for f in filters {
        let missing = |field: &str| format!("filter {:?} needs its {field} field", f.r#type);
        let filter = match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier
            | HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let request = f.r#type == HttpRouteRulesFiltersType::RequestHeaderModifier;
                // The two modifier types are generated separately but share their fields.
                macro_rules! modifier {
                    ($m:expr) => {
                        $m.as_ref().map(|m| {
                            translate_header_modifier(
                                m.set
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone())),
                                m.add
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone())),
                                m.remove.as_deref().unwrap_or_default(),
                            )
                        })
                    };
                }
                let m = if request {
                    modifier!(f.request_header_modifier)
                } else {
                    modifier!(f.response_header_modifier)
                };
                let m = m.ok_or_else(|| {
                    missing(if request {
                        "requestHeaderModifier"
                    } else {
                        "responseHeaderModifier"
                    })
                })??;
                if request {
                    Filter::RequestHeaderModifier(m)
                } else {
                    Filter::ResponseHeaderModifier(m)
                }
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?;
                let scheme = r.scheme.as_ref().map(|s| match s {
                    HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                    HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                });
                if let Some(h) = &r.hostname {
                    exact_hostname("redirect", h)?;
                }
                let status_code = match r.status_code.unwrap_or(302) {
                    c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                    c => {
                        return Err(format!(
                            "redirect statusCode {c} is not one of 301, 302, 303, 307, 308"
                        ));
                    }
                };
                let port = r
                    .port
                    .map(|p| {
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or(format!("redirect port {p} is out of range"))
                    })
                    .transpose()?;
                let path = r
                    .path
                    .as_ref()
                    .map(|p| {
                        translate_path_rewrite(
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                            p.r#type
                                == HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch,
                            matches,
                        )
                    })
                    .transpose()?;
                Filter::RequestRedirect(Redirect {
                    scheme,
                    hostname: r.hostname.clone(),
                    path,
                    port,
                    status_code,
                })
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?;
                if let Some(h) = &r.hostname {
                    exact_hostname("rewrite", h)?;
                }
                let path = r
                    .path
                    .as_ref()
                    .map(|p| {
                        translate_path_rewrite(
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                            p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch,
                            matches,
                        )
                    })
                    .transpose()?;
                Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path,
                })
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = f.cors.as_ref().ok_or_else(|| missing("cors"))?;
                Filter::Cors(crate::cors::translate(c)?)
            }
            ref other => return Err(format!("filter type {other:?} is not supported yet")),
        };
        if out
            .iter()
            .any(|f| std::mem::discriminant(f) == std::mem::discriminant(&filter))
        {
            return Err(format!("filter {:?} is given twice", f.r#type));
        }
        out.push(filter);
    }
    Ok(out)
}

/// backendRef filters have their own generated types with the same schema as rule filters;
/// convert through JSON rather than repeat the translation.
fn backend_filters(
    filters: &[HttpRouteRulesBackendRefsFilters],
    matches: &[RouteMatch],
) -> Result<Vec<Filter>, String> {
    let as_rule: Vec<HttpRouteRulesFilters> = filters
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("backendRef filter: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let out = translate_filters(&as_rule, matches)?;
    if out.iter().any(|f| {
        !matches!(
            f,
            Filter::RequestHeaderModifier(_) | Filter::ResponseHeaderModifier(_)
        )
    }) {
        return Err(
            "backendRef filters may only be RequestHeaderModifier or ResponseHeaderModifier".into(),
        );
    }
    Ok(out)
}

/// HTTPRoute `retry`, with Portico's defaults where it says nothing.
fn translate_retry(r: &HttpRouteRulesRetry) -> Result<RouteRetry, String> {
    let mut codes = Vec::new();
    for c in r.codes.iter().flatten() {
        match u16::try_from(*c) {
            Ok(c @ 400..=599) => codes.push(c),
            _ => {
                return Err(format!(
                    "retry.codes: {c} is not a status between 400 and 599"
                ));
            }
        }
    }
    codes.sort_unstable();
    codes.dedup();
    let attempts = match r.attempts {
        None => RouteRetry::DEFAULT_ATTEMPTS,
        Some(n) if n < 1 => return Err(format!("retry.attempts is {n}; at least 1")),
        Some(n) => u32::try_from(n)
            .unwrap_or(u32::MAX)
            .min(RouteRetry::MAX_ATTEMPTS),
    };
    let backoff_ms = match &r.backoff {
        None => RouteRetry::DEFAULT_BACKOFF_MS,
        Some(v) => {
            let d = Duration::from_str(v).map_err(|e| format!("retry.backoff {v:?}: {e}"))?;
            u64::try_from(d.as_millis())
                .unwrap_or(u64::MAX)
                .min(RouteRetry::MAX_BACKOFF_MS)
        }
    };
    Ok(RouteRetry {
        codes,
        attempts,
        backoff_ms,
    })
}

fn translate_timeouts(t: Option<&HttpRouteRulesTimeouts>) -> Result<Timeouts, String> {
    let parse = |what: &str, v: Option<&String>| -> Result<Option<u64>, String> {
        let Some(v) = v else { return Ok(None) };
        let d = Duration::from_str(v).map_err(|e| format!("timeouts.{what} {v:?}: {e}"))?;
        // Zero disables the timeout.
        Ok((!d.is_zero()).then(|| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)))
    };
    let Some(t) = t else {
        return Ok(Timeouts::default());
    };
    let out = Timeouts {
        request_ms: parse("request", t.request.as_ref())?,
        backend_request_ms: parse("backendRequest", t.backend_request.as_ref())?,
    };
    if let (Some(r), Some(b)) = (out.request_ms, out.backend_request_ms)
        && b > r
    {
        return Err("timeouts.backendRequest must not be longer than timeouts.request".into());
    }
    Ok(out)
}
