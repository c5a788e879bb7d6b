//! GRPCRoutes in HTTP terms.
//!
//! A gRPC call is an HTTP/2 POST to `/{service}/{method}`, so a GRPCRoute is translated into
//! the HTTPRoute it means — method matches become path matches, header matches, filters and
//! backendRefs carry over field for field — and then compiled by the same code as HTTPRoutes
//! ([`crate::route`]). What differs is kept with the source: its kind (status, ReferenceGrants,
//! the cross-kind hostname rule) and that its backends speak HTTP/2.

use portico_crds::gateway_api::experimental::grpcroutes::{
    GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType,
};
use portico_crds::gateway_api::experimental::httproutes::{
    HttpRoute as HTTPRoute, HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType,
    HttpRouteSpec,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The HTTPRoute a GRPCRoute means. Its metadata, parentRefs and hostnames are always carried
/// over (status needs them); the rules are `Err` with a message when the GRPCRoute is invalid.
pub(crate) fn as_http_route(g: &GrpcRoute) -> (HTTPRoute, Result<(), String>) {
    let mut route = HTTPRoute {
        metadata: g.metadata.clone(),
        spec: HttpRouteSpec {
            hostnames: g.spec.hostnames.clone(),
            parent_refs: g
                .spec
                .parent_refs
                .as_ref()
                .map(|refs| refs.iter().filter_map(|r| convert(r).ok()).collect()),
            rules: None,
            use_default_gateways: None,
        },
        status: None,
    };
    let rules: Result<Vec<HttpRouteRules>, String> = g
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(r).map_err(|e| match &r.name {
                Some(n) => format!("rule {n:?}: {e}"),
                None => format!("rule {i}: {e}"),
            })
        })
        .collect();
    match rules {
        Ok(rules) => {
            route.spec.rules = Some(rules);
            (route, Ok(()))
        }
        Err(e) => (route, Err(e)),
    }
}

/// Between generated types with the same schema.
fn convert<A: Serialize, B: DeserializeOwned>(a: &A) -> Result<B, String> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

fn rule(r: &GrpcRouteRules) -> Result<HttpRouteRules, String> {
    let matches = match r.matches.as_deref() {
        // No match means every gRPC request.
        None | Some([]) => None,
        Some(ms) => Some(ms.iter().map(grpc_match).collect::<Result<Vec<_>, _>>()?),
    };
    for f in r.filters.iter().flatten() {
        let kind = serde_json::to_value(&f.r#type).unwrap_or_default();
        if !matches!(
            kind.as_str(),
            Some("RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror")
        ) {
            return Err(format!("filter type {kind} is not supported yet"));
        }
    }
    Ok(HttpRouteRules {
        backend_refs: r
            .backend_refs
            .as_ref()
            .map(|b| b.iter().map(convert).collect::<Result<Vec<_>, _>>())
            .transpose()?,
        filters: r
            .filters
            .as_ref()
            .map(|f| f.iter().map(convert).collect::<Result<Vec<_>, _>>())
            .transpose()?,
        matches,
        name: r.name.clone(),
        session_persistence: r.session_persistence.as_ref().map(convert).transpose()?,
        ..Default::default()
    })
}

/// `service` as the GRPCRoute CRD validates it: dot-separated identifiers.
fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn valid_method(m: &str) -> bool {
    m.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn grpc_match(m: &GrpcRouteRulesMatches) -> Result<HttpRouteRulesMatches, String> {
    let path = match &m.method {
        None => None,
        Some(method) => {
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            let regex = method.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression);
            let (kind, value) = match (regex, service, name) {
                (_, None, None) => {
                    return Err("a method match needs a service, a method or both".into());
                }
                (false, s, m) => {
                    if let Some(s) = s.filter(|s| !valid_service(s)) {
                        return Err(format!("{s:?} is not a valid gRPC service name"));
                    }
                    if let Some(m) = m.filter(|m| !valid_method(m)) {
                        return Err(format!("{m:?} is not a valid gRPC method name"));
                    }
                    match (s, m) {
                        (Some(s), Some(m)) => {
                            (HttpRouteRulesMatchesPathType::Exact, format!("/{s}/{m}"))
                        }
                        (Some(s), None) => {
                            (HttpRouteRulesMatchesPathType::PathPrefix, format!("/{s}"))
                        }
                        (None, m) => (
                            HttpRouteRulesMatchesPathType::RegularExpression,
                            format!("/[^/]+/{}", m.unwrap_or_default()),
                        ),
                    }
                }
                (true, s, m) => (
                    HttpRouteRulesMatchesPathType::RegularExpression,
                    format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
                ),
            };
            Some(HttpRouteRulesMatchesPath {
                r#type: Some(kind),
                value: Some(value),
            })
        }
    };
    let headers = m.headers.as_ref().map(|hs| {
        hs.iter()
            .map(|h| HttpRouteRulesMatchesHeaders {
                name: h.name.clone(),
                r#type: Some(match h.r#type {
                    Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                        HttpRouteRulesMatchesHeadersType::RegularExpression
                    }
                    _ => HttpRouteRulesMatchesHeadersType::Exact,
                }),
                value: h.value.clone(),
            })
            .collect()
    });
    Ok(HttpRouteRulesMatches {
        headers,
        path,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_crds::gateway_api::experimental::grpcroutes::GrpcRouteRulesMatchesMethod;

    fn method(service: Option<&str>, method: Option<&str>, regex: bool) -> GrpcRouteRulesMatches {
        GrpcRouteRulesMatches {
            method: Some(GrpcRouteRulesMatchesMethod {
                service: service.map(str::to_string),
                method: method.map(str::to_string),
                r#type: regex.then_some(GrpcRouteRulesMatchesMethodType::RegularExpression),
            }),
            headers: None,
        }
    }

    fn path(m: &GrpcRouteRulesMatches) -> (HttpRouteRulesMatchesPathType, String) {
        let p = grpc_match(m).expect("valid").path.expect("a path");
        (p.r#type.expect("typed"), p.value.expect("a value"))
    }

    #[test]
    fn methods_become_paths() {
        use HttpRouteRulesMatchesPathType::*;
        assert_eq!(
            path(&method(Some("pkg.Echo"), Some("Say"), false)),
            (Exact, "/pkg.Echo/Say".into())
        );
        assert_eq!(
            path(&method(Some("pkg.Echo"), None, false)),
            (PathPrefix, "/pkg.Echo".into())
        );
        assert_eq!(
            path(&method(None, Some("Say"), false)),
            (RegularExpression, "/[^/]+/Say".into())
        );
        assert_eq!(
            path(&method(Some("pkg\\..*"), None, true)),
            (RegularExpression, "/(?:pkg\\..*)/(?:[^/]+)".into())
        );
    }

    #[test]
    fn invalid_methods_are_refused() {
        assert!(grpc_match(&method(None, None, false)).is_err());
        assert!(grpc_match(&method(Some("pkg/Echo"), None, false)).is_err());
        assert!(grpc_match(&method(Some("pkg.Echo"), Some("Sa y"), false)).is_err());
    }
}
