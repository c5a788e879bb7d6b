//! How Portico reads an EndpointSlice: the endpoints of one Service port, with the conditions
//! Kubernetes gives them. The dataplane's discovery reads the cluster's slices with it, and
//! compile reads with it the slices standalone mode finds in YAML, so a slice means the same
//! traffic in both. It lives here, with the Kubernetes types, because it is Kubernetes
//! semantics (kube-proxy's port matching, the endpoint conditions) that both sides share, and
//! the dataplane must not depend on compile for it.

use crate::k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_model::Endpoint;

/// The label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of one Service port from its EndpointSlices, with ports matched by name as
/// kube-proxy does, and `ready`/`serving`/`terminating` as the slice says (unset `ready` is
/// ready, unset `serving` follows `ready`). Non-IP address types are skipped. Sorted.
pub fn endpoints_from_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: Option<&str>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<std::net::IpAddr>() {
                    out.push(Endpoint {
                        address: ip.to_string(),
                        port: target,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("EndpointSlice")
    }

    fn endpoint(
        address: &str,
        port: u16,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> Endpoint {
        Endpoint {
            address: address.into(),
            port,
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn conditions_default_as_kubernetes_says_and_ports_match_by_name() {
        let v4 = slice(json!({
            "metadata": {"name": "web-a", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [
                // Unset `ready` is ready; unset `serving` follows `ready`.
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                // Listed twice across slices: kept once.
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["not-an-ip"]}
            ]
        }));
        let v6 = slice(json!({
            "metadata": {"name": "web-b"},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8081}],
            "endpoints": [{"addresses": ["fd00::0001"]}]
        }));
        let fqdn = slice(json!({
            "metadata": {"name": "web-c"},
            "addressType": "FQDN",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["web.example.com"]}]
        }));
        assert_eq!(
            endpoints_from_slices([&v4, &v6, &fqdn], Some("http")),
            [
                endpoint("10.0.0.1", 8080, false, false, false),
                endpoint("10.0.0.2", 8080, true, true, false),
                endpoint("10.0.0.3", 8080, false, true, true),
                endpoint("fd00::1", 8081, true, true, false),
            ]
        );
        assert_eq!(
            endpoints_from_slices([&v4], Some("admin"))
                .iter()
                .map(|e| e.port)
                .collect::<Vec<_>>(),
            [9090, 9090, 9090]
        );
        // An unnamed Service port matches only an unnamed slice port.
        assert!(endpoints_from_slices([&v4], None).is_empty());
    }
}
