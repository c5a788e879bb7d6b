//! backendRefs: kind and namespace checks, ReferenceGrants, Services and their endpoints.

use crate::grants::{GroupKind, ReferenceGrants};
use crate::inputs::Inputs;
use crate::refs::namespace_of;
use crate::status::{Condition, reasons, types};
use portico_crds::GATEWAY_GROUP;
use portico_crds::endpointslice::{SERVICE_NAME_LABEL, endpoints_from_slices};
use portico_crds::k8s_openapi::api::core::v1::{Service, ServicePort};
use portico_crds::k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_crds::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_model::{AppProtocol, Backend, BackendId, Endpoint, RouteKind};
use std::collections::BTreeMap;

/// Standalone shorthand: a Service annotation listing endpoints as `ip[:port]` items separated
/// by commas or white space, used when no EndpointSlice names the Service. A bare `ip` takes
/// the Service port's numeric `targetPort` (or the port itself).
pub const ENDPOINTS_ANNOTATION: &str = "portico.dev/endpoints";

/// Why a backendRef could not be resolved, as a ResolvedRefs reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unresolved {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// A route's ResolvedRefs condition for one parent: False with the first unresolved
/// reference's reason and every one's message, True when all resolved. `None`: the route
/// was not translated (it is rejected whole), so nothing is unresolved.
pub(crate) fn resolved_condition(
    unresolved: Option<&[Unresolved]>,
    generation: Option<i64>,
) -> Condition {
    match unresolved.and_then(|u| Some((u.first()?, u))) {
        Some((first, all)) => {
            let all: Vec<&str> = all.iter().map(|u| u.message.as_str()).collect();
            Condition::new(
                types::RESOLVED_REFS,
                false,
                first.reason,
                all.join("; "),
                generation,
            )
        }
        None => Condition::new(
            types::RESOLVED_REFS,
            true,
            reasons::RESOLVED_REFS,
            "all references resolved",
            generation,
        ),
    }
}

/// What a backendRef names, with the defaults of the Gateway API applied by the caller's view.
pub(crate) struct BackendRefSpec<'a> {
    pub(crate) group: Option<&'a str>,
    pub(crate) kind: Option<&'a str>,
    pub(crate) name: &'a str,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) port: Option<i32>,
}

impl BackendRefSpec<'_> {
    /// A reference to a Service must name its port.
    pub(crate) fn check_port(&self) -> Result<(), String> {
        let service =
            self.kind.unwrap_or("Service") == "Service" && self.group.unwrap_or("").is_empty();
        if service && self.port.is_none() {
            return Err(format!(
                "backendRef {}: port is required for a Service",
                self.name
            ));
        }
        Ok(())
    }
}

pub(crate) struct BackendIndex<'a> {
    services: BTreeMap<(String, String), &'a Service>,
    slices: BTreeMap<(String, String), Vec<&'a EndpointSlice>>,
    grants: ReferenceGrants<'a>,
}

impl<'a> BackendIndex<'a> {
    pub(crate) fn new(inputs: &'a Inputs) -> Self {
        let mut services = BTreeMap::new();
        for s in &inputs.services {
            services.insert(
                (
                    namespace_of(&s.metadata),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                s,
            );
        }
        let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in &inputs.endpoint_slices {
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                slices
                    .entry((namespace_of(&s.metadata), svc.clone()))
                    .or_default()
                    .push(s);
            }
        }
        let grants = ReferenceGrants::new(&inputs.reference_grants);
        Self {
            services,
            slices,
            grants,
        }
    }

    /// Resolves a backendRef written in an object of `from_kind` in `from_ns`.
    pub(crate) fn resolve(
        &self,
        from_kind: &str,
        from_ns: &str,
        r: &BackendRefSpec<'_>,
    ) -> Result<Backend, Unresolved> {
        let group = r.group.unwrap_or("");
        let kind = r.kind.unwrap_or("Service");
        if !(group.is_empty() || group == "core") || kind != "Service" {
            return Err(Unresolved {
                reason: reasons::INVALID_KIND,
                message: format!(
                    "backendRef {}: kind {kind:?} in group {group:?} is not supported; use a core Service",
                    r.name
                ),
            });
        }
        let ns = r.namespace.unwrap_or(from_ns);
        let from = GroupKind {
            group: GATEWAY_GROUP,
            kind: from_kind,
        };
        let service = GroupKind {
            group: "",
            kind: "Service",
        };
        if !self.grants.allows(from, from_ns, service, ns, r.name) {
            return Err(Unresolved {
                reason: reasons::REF_NOT_PERMITTED,
                message: format!(
                    "backendRef to Service {ns}/{} is not permitted: no ReferenceGrant in namespace {ns} allows {from_kind}s from {from_ns}",
                    r.name
                ),
            });
        }
        let Some(service) = self.services.get(&(ns.to_string(), r.name.to_string())) else {
            return Err(Unresolved {
                reason: reasons::BACKEND_NOT_FOUND,
                message: format!("Service {ns}/{} not found", r.name),
            });
        };
        let port = r.port.unwrap_or_default();
        // A UDPRoute's datagrams go to the Service's UDP port of that number, every other
        // route's bytes to its TCP port (DNS has both on 53).
        let transport = if from_kind == "UDPRoute" {
            "UDP"
        } else {
            "TCP"
        };
        let spec_port = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.port == port && p.protocol.as_deref().unwrap_or("TCP") == transport)
            });
        let (Some(spec_port), Ok(port_u16)) = (spec_port, u16::try_from(port)) else {
            return Err(Unresolved {
                reason: reasons::BACKEND_NOT_FOUND,
                message: format!("Service {ns}/{} has no {transport} port {port}", r.name),
            });
        };
        let protocol = match spec_port.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => AppProtocol::H2c,
            _ => AppProtocol::Http1,
        };
        let mut endpoints = self.endpoints(ns, r.name, spec_port);
        if endpoints.is_empty()
            && !self
                .slices
                .contains_key(&(ns.to_string(), r.name.to_string()))
        {
            endpoints = annotated_endpoints(service, spec_port);
        }
        endpoints.sort();
        endpoints.dedup();
        Ok(Backend {
            id: BackendId {
                namespace: ns.to_string(),
                name: r.name.to_string(),
                port: port_u16,
                udp: transport == "UDP",
            },
            protocol,
            port_name: spec_port.name.clone(),
            endpoints,
            settings: None,
            tls: None,
        })
    }

    /// Endpoints from the Service's EndpointSlices for one Service port, matched by port name
    /// as kube-proxy does.
    /// [`Self::resolve`] for a route of `kind`: a GRPCRoute's backends speak HTTP/2 (h2c)
    /// end to end, whatever the Service port declares.
    pub(crate) fn resolve_for(
        &self,
        kind: RouteKind,
        from_ns: &str,
        r: &BackendRefSpec<'_>,
    ) -> Result<Backend, Unresolved> {
        let mut backend = self.resolve(kind.as_str(), from_ns, r)?;
        if kind == RouteKind::Grpc {
            backend.protocol = AppProtocol::H2c;
        }
        Ok(backend)
    }

    fn endpoints(&self, ns: &str, name: &str, port: &ServicePort) -> Vec<Endpoint> {
        let slices = self.slices.get(&(ns.to_string(), name.to_string()));
        endpoints_from_slices(slices.into_iter().flatten().copied(), port.name.as_deref())
    }
}

/// The items of the endpoints annotation, if the Service has one.
fn annotation_items(service: &Service) -> impl Iterator<Item = &str> {
    service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINTS_ANNOTATION))
        .into_iter()
        .flat_map(|list| list.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
}

fn annotated_endpoints(service: &Service, port: &ServicePort) -> Vec<Endpoint> {
    let default_port = match &port.target_port {
        Some(IntOrString::Int(p)) => *p,
        _ => port.port,
    };
    annotation_items(service)
        .filter_map(|item| parse_endpoint(item, default_port))
        .collect()
}

/// `ip`, `ip:port`, `[v6]` or `[v6]:port`.
fn parse_endpoint(item: &str, default_port: i32) -> Option<Endpoint> {
    let (ip, port) = if let Ok(sa) = item.parse::<std::net::SocketAddr>() {
        (sa.ip(), i32::from(sa.port()))
    } else {
        let bare = item.trim_start_matches('[').trim_end_matches(']');
        (bare.parse::<std::net::IpAddr>().ok()?, default_port)
    };
    Some(Endpoint {
        address: ip.to_string(),
        port: u16::try_from(port).ok()?,
        ready: true,
        serving: true,
        terminating: false,
    })
}

/// Checks the shorthand annotation of every Service so a typo is reported, not ignored.
pub(crate) fn annotation_errors(service: &Service) -> Vec<String> {
    annotation_items(service)
        .filter(|item| parse_endpoint(item, 1).is_none())
        .map(|item| format!("{ENDPOINTS_ANNOTATION}: {item:?} is not an `ip` or `ip:port`"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_shorthand_parses_v4_v6_and_default_ports() {
        let e = parse_endpoint("127.0.0.2:9000", 80).expect("v4 with port");
        assert_eq!((e.address.as_str(), e.port), ("127.0.0.2", 9000));
        let e = parse_endpoint("127.0.0.3", 8080).expect("bare v4");
        assert_eq!(e.port, 8080);
        let e = parse_endpoint("[::1]:9001", 80).expect("v6 with port");
        assert_eq!((e.address.as_str(), e.port), ("::1", 9001));
        let e = parse_endpoint("[::1]", 81).expect("bare v6");
        assert_eq!(e.port, 81);
        assert!(parse_endpoint("localhost:80", 80).is_none());
        assert!(parse_endpoint("1.2.3.4:99999", 80).is_none());
    }
}
