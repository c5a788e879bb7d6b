//! `RequestMirror` filters: the backend each names, resolved like a backendRef (kind,
//! namespace, ReferenceGrant, Service port), and the share of requests it gets.

use crate::backend::{BackendIndex, BackendRefSpec, Unresolved};
use portico_crds::gateway_api::experimental::httproutes::HttpRouteRulesFilters;
use portico_model::{Backend, Mirror, RouteKind};

/// A mirror filter resolved: `Ok(Ok(_))` the mirror and its backend; `Ok(Err(_))` a backend
/// that does not resolve (the route is accepted, its ResolvedRefs says why, and the mirror
/// is left out); `Err`: the filter itself is invalid.
pub(crate) fn translate(
    f: &HttpRouteRulesFilters,
    kind: RouteKind,
    ns: &str,
    index: &BackendIndex<'_>,
) -> Result<Result<(Mirror, Backend), Unresolved>, String> {
    let m = f
        .request_mirror
        .as_ref()
        .ok_or("filter RequestMirror needs its requestMirror field")?;
    let (numerator, denominator) = match (m.percent, m.fraction.as_ref()) {
        (Some(_), Some(_)) => {
            return Err("RequestMirror: give percent or fraction, not both".into());
        }
        (Some(p), None) => (p, 100),
        (None, Some(fr)) => (fr.numerator, fr.denominator.unwrap_or(100)),
        (None, None) => (100, 100),
    };
    let share = u32::try_from(numerator)
        .ok()
        .zip(u32::try_from(denominator).ok())
        .filter(|(n, d)| *d > 0 && n <= d);
    let Some((numerator, denominator)) = share else {
        return Err(format!(
            "RequestMirror: the share {numerator}/{denominator} must be between 0 and 1 (a percent of 0 to 100, or a fraction with 0 <= numerator <= denominator and denominator > 0)"
        ));
    };
    let r = &m.backend_ref;
    let spec = BackendRefSpec {
        group: r.group.as_deref(),
        kind: r.kind.as_deref(),
        name: &r.name,
        namespace: r.namespace.as_deref(),
        port: r.port,
    };
    spec.check_port()
        .map_err(|e| format!("RequestMirror {e}"))?;
    Ok(index.resolve_for(kind, ns, &spec).map(|backend| {
        let mirror = Mirror {
            backend: backend.id.clone(),
            numerator,
            denominator,
        };
        (mirror, backend)
    }))
}
