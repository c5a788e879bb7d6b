//! HTTPS listeners with their certificates, and GRPCRoutes.

use super::{gw, run};
use crate::status::{Condition, find, reasons, types};
use crate::{CONTROLLER_NAME, Output, compile, referenced_secrets};
use portico_model::{AppProtocol, ObjectRef, PathMatch, Protocol, RouteKind};

/// A self-signed certificate and its key for `host`, as PEM.
pub(super) fn cert(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn tls_secret(name: &str, ns: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(cert_pem),
        indent(key_pem)
    )
}

/// A Gateway `tls` in default with one HTTPS listener per (name, hostname, certificateRef).
fn https_gateway(listeners: &[(&str, &str, &str)]) -> String {
    let mut out = String::from(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls, namespace: default}\nspec:\n  gatewayClassName: portico\n  listeners:\n",
    );
    for (name, host, secret) in listeners {
        let (ns, secret) = secret.split_once('/').unwrap_or(("", secret));
        let ns = if ns.is_empty() {
            String::new()
        } else {
            format!(", namespace: {ns}")
        };
        out.push_str(&format!(
            "  - name: {name}\n    port: 443\n    protocol: HTTPS\n    hostname: {host}\n    tls: {{certificateRefs: [{{name: {secret}{ns}}}]}}\n"
        ));
    }
    out
}

fn listener_condition(out: &Output, listener: &str, type_: &str) -> Condition {
    let g = &out.status.gateways[&ObjectRef::new("default", "tls")];
    let l = g
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .expect("listener");
    find(&l.conditions, type_).expect("condition").clone()
}

#[test]
fn https_listeners_carry_their_certificates() {
    let (a_cert, a_key) = cert("a.example.com");
    let (b_cert, b_key) = cert("b.example.com");
    let extra = https_gateway(&[
        ("a", "a.example.com", "a-cert"),
        ("b", "b.example.com", "b-cert"),
    ]) + &tls_secret("a-cert", "default", &a_cert, &a_key)
        + &tls_secret("b-cert", "default", &b_cert, &b_key);
    let out = run(&extra);
    for l in ["a", "b"] {
        let c = listener_condition(&out, l, types::RESOLVED_REFS);
        assert!(c.is_true(), "{l}: {c:?}");
        assert_eq!(
            listener_condition(&out, l, types::PROGRAMMED).reason,
            reasons::PENDING
        );
    }
    let snap = &out.snapshots[&ObjectRef::new("default", "tls")];
    assert_eq!(snap.listeners.len(), 2);
    let a = &snap.listeners[0];
    assert_eq!(a.protocol, Protocol::Https);
    let certs = &a.tls.as_ref().expect("tls").certificates;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].secret, ObjectRef::new("default", "a-cert"));
    assert_eq!(certs[0].cert_pem.trim(), a_cert.trim());
    // Key material never shows in debug output.
    assert!(!format!("{snap:?}").contains("PRIVATE KEY"));
    assert_eq!(
        referenced_secrets(&super::inputs(&extra), CONTROLLER_NAME),
        [
            ObjectRef::new("default", "a-cert"),
            ObjectRef::new("default", "b-cert")
        ]
        .into()
    );
}

#[test]
fn every_invalid_certificate_reference_reason() {
    let (a_cert, a_key) = cert("a.example.com");
    let (_, other_key) = cert("a.example.com");
    let extra = https_gateway(&[
        ("missing", "m.example.com", "nope"),
        ("mismatch", "x.example.com", "mismatched"),
        ("garbage", "g.example.com", "garbage"),
        ("foreign", "f.example.com", "certs/shared"),
        ("granted", "h.example.com", "granted/shared"),
    ]) + &tls_secret("mismatched", "default", &a_cert, &other_key)
        + &tls_secret("garbage", "default", "not a certificate", &a_key)
        + &tls_secret("shared", "certs", &a_cert, &a_key)
        + &tls_secret("shared", "granted", &a_cert, &a_key)
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gateways, namespace: granted}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}]
  to: [{group: "", kind: Secret}]
"#;
    let out = run(&extra);
    for (listener, reason) in [
        ("missing", reasons::INVALID_CERTIFICATE_REF),
        ("mismatch", reasons::INVALID_CERTIFICATE_REF),
        ("garbage", reasons::INVALID_CERTIFICATE_REF),
        ("foreign", reasons::REF_NOT_PERMITTED),
    ] {
        let c = listener_condition(&out, listener, types::RESOLVED_REFS);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", reason));
        // Accepted, but not served without a certificate.
        assert!(listener_condition(&out, listener, types::ACCEPTED).is_true());
        assert_eq!(
            listener_condition(&out, listener, types::PROGRAMMED).reason,
            reasons::INVALID
        );
        // The message says what is wrong without quoting key material.
        assert!(!c.message.contains("PRIVATE"), "{}", c.message);
    }
    assert!(
        listener_condition(&out, "mismatch", types::RESOLVED_REFS)
            .message
            .contains("does not belong")
    );
    assert!(listener_condition(&out, "granted", types::RESOLVED_REFS).is_true());
    let snap = &out.snapshots[&ObjectRef::new("default", "tls")];
    let served: Vec<&str> = snap.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(served, ["granted"]);
    // Only Secrets the Gateway may use are watched: not certs/shared.
    let watched = referenced_secrets(&super::inputs(&extra), CONTROLLER_NAME);
    assert!(watched.contains(&ObjectRef::new("granted", "shared")));
    assert!(watched.contains(&ObjectRef::new("default", "nope")));
    assert!(!watched.contains(&ObjectRef::new("certs", "shared")));
}

#[test]
fn https_listener_needs_terminate_and_certificates() {
    let extra = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: default}
spec:
  gatewayClassName: portico
  listeners:
  - {name: bare, port: 443, protocol: HTTPS, hostname: a.example.com}
  - name: passthrough
    port: 443
    protocol: HTTPS
    hostname: b.example.com
    tls: {mode: Passthrough}
  - name: plain
    port: 80
    protocol: HTTP
    tls: {certificateRefs: [{name: x}]}
"#;
    let out = run(extra);
    for (l, reason) in [
        ("bare", reasons::INVALID),
        ("passthrough", reasons::UNSUPPORTED_PROTOCOL),
        ("plain", reasons::INVALID),
    ] {
        let c = listener_condition(&out, l, types::ACCEPTED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason),
            "{l}"
        );
    }
}

fn grpc_route(name: &str, created: &str, hostnames: &str, rules: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: "{created}"}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: {hostnames}
  rules:
{rules}
"#
    )
}

fn http_route(name: &str, hostname: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: [{hostname}]
"#
    )
}

fn grpc_condition(out: &Output, name: &str, type_: &str) -> Condition {
    let s = &out.status.grpc_routes[&ObjectRef::new("default", name)];
    find(&s.parents[0].conditions, type_)
        .expect("condition")
        .clone()
}

#[test]
fn grpc_routes_attach_as_http_routes_with_h2c_backends() {
    let extra = grpc_route(
        "echo",
        "2026-01-01T00:00:00Z",
        "[grpc.example.com]",
        r#"  - matches:
    - method: {service: pkg.Echo, method: Say}
      headers: [{name: x-tenant, value: blue}]
    backendRefs: [{name: svc, port: 80}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: svc, port: 80}, percent: 50}}]
    sessionPersistence: {sessionName: grpc-session, type: Header, idleTimeout: 10m}
  - matches: [{method: {service: pkg.Other}}]
    backendRefs: [{name: missing, port: 80}]"#,
    );
    let out = run(&extra);
    assert!(grpc_condition(&out, "echo", types::ACCEPTED).is_true());
    let resolved = grpc_condition(&out, "echo", types::RESOLVED_REFS);
    assert_eq!(resolved.reason, reasons::BACKEND_NOT_FOUND);
    let snap = &out.snapshots[&gw()];
    let r = snap
        .routes
        .iter()
        .find(|r| r.kind == RouteKind::Grpc)
        .expect("grpc route in the snapshot");
    assert_eq!(r.label(), "grpc:default/echo");
    assert_eq!(r.parents[0].hostnames, ["grpc.example.com"]);
    assert_eq!(
        r.rules[0].matches[0].path,
        PathMatch::Exact("/pkg.Echo/Say".into())
    );
    assert_eq!(r.rules[0].matches[0].headers[0].name, "x-tenant");
    // Session persistence (experimental channel) carries over like any rule field.
    let sp = r.rules[0].session_persistence.as_ref().expect("session");
    assert_eq!(
        (sp.name.as_str(), sp.idle_timeout_ms),
        ("grpc-session", Some(600_000))
    );
    assert_eq!(r.rules[1].session_persistence, None);
    // Mirrors carry over too (their backends speak HTTP/2, below).
    let m = &r.rules[0].mirrors;
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].backend.port, m[0].numerator, m[0].denominator),
        (80, 50, 100)
    );
    assert_eq!(
        r.rules[1].matches[0].path,
        PathMatch::PathPrefix("/pkg.Other".into())
    );
    // The Service port says nothing about h2c; a GRPCRoute backend speaks HTTP/2 anyway.
    assert!(snap.backends.iter().all(|b| b.protocol == AppProtocol::H2c));
    let l = &out.status.gateways[&gw()].listeners[0];
    assert_eq!(l.supported_kinds, ["GRPCRoute", "HTTPRoute"]);
}

#[test]
fn invalid_grpc_route_is_rejected_alone() {
    let extra = grpc_route(
        "bad",
        "2026-01-01T00:00:00Z",
        "[]",
        "  - matches: [{method: {service: \"pkg/Echo\"}}]",
    ) + &grpc_route(
        "mirror",
        "2026-01-01T00:00:00Z",
        "[]",
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: svc, port: 80}, percent: 101}}]",
    );
    let out = run(&extra);
    for name in ["bad", "mirror"] {
        let c = grpc_condition(&out, name, types::ACCEPTED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::UNSUPPORTED_VALUE),
            "{name}"
        );
    }
}

#[test]
fn http_and_grpc_routes_sharing_a_host_the_oldest_wins() {
    let extra = grpc_route(
        "old-grpc",
        "2026-01-01T00:00:00Z",
        "[shared.example.com]",
        "  - backendRefs: [{name: svc, port: 80}]",
    ) + &http_route("new-http", "\"*.example.com\"")
        + &http_route("other-host", "other.test");
    let out = run(&extra);
    assert!(grpc_condition(&out, "old-grpc", types::ACCEPTED).is_true());
    let status = &out.status.http_routes[&ObjectRef::new("default", "new-http")];
    let c = find(&status.parents[0].conditions, types::ACCEPTED).expect("accepted");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::HOSTNAME_CONFLICT)
    );
    assert!(
        c.message.contains("GRPCRoute default/old-grpc"),
        "{}",
        c.message
    );
    let status = &out.status.http_routes[&ObjectRef::new("default", "other-host")];
    assert!(find(&status.parents[0].conditions, types::ACCEPTED).is_some_and(Condition::is_true));
}

#[test]
fn a_secret_the_controller_may_not_read_is_reported_with_what_would_allow_it() {
    let extra = https_gateway(&[("locked", "l.example.com", "locked")]);
    let mut inputs = super::inputs(&extra);
    inputs.unreadable_secrets.insert(
        ObjectRef::new("default", "locked"),
        "the controller has no RBAC grant for Secrets in namespace default".into(),
    );
    let out = compile(&inputs, CONTROLLER_NAME);
    let c = listener_condition(&out, "locked", types::RESOLVED_REFS);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::INVALID_CERTIFICATE_REF)
    );
    assert_eq!(
        c.message,
        "Secret default/locked cannot be read: the controller has no RBAC grant for Secrets in namespace default"
    );
    // Without that knowledge it is plainly missing.
    let c = listener_condition(&run(&extra), "locked", types::RESOLVED_REFS);
    assert_eq!(c.message, "Secret default/locked not found");
}

#[test]
fn dataplane_names_are_dns_labels_unique_per_gateway() {
    use crate::dataplane_name;
    assert!(dataplane_name("team-a", "web").starts_with("portico-team-a-web-"));
    let long = "x".repeat(253);
    for (ns, gw) in [
        ("a", "b"),
        ("team-a", "web.example.com"),
        ("n".repeat(63).as_str(), long.as_str()),
        ("ns", "Trailing-"),
    ] {
        let name = dataplane_name(ns, gw);
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
    }
    // Names that read the same once joined stay apart.
    assert_ne!(dataplane_name("a-b", "c"), dataplane_name("a", "b-c"));
    assert_ne!(
        dataplane_name("ns", &long),
        dataplane_name("ns", &format!("{long}y"))
    );
    assert_eq!(dataplane_name("a", "b"), dataplane_name("a", "b"));
}

#[test]
fn gateway_addresses_come_from_its_dataplane_service() {
    let addresses = |extra: &str| -> Vec<(String, String)> {
        let mut inputs = super::inputs(extra);
        inputs.placement = crate::Placement::one_namespace("portico-system");
        compile(&inputs, CONTROLLER_NAME).status.gateways[&gw()]
            .addresses
            .iter()
            .map(|a| (a.type_.clone(), a.value.clone()))
            .collect()
    };
    // No dataplane Service: nothing is bound yet (the base Gateway requests no address).
    assert!(addresses("").is_empty());
    let name = crate::dataplane_name("default", "gw");
    let service = |ns: &str, status: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{type: LoadBalancer, clusterIP: 10.0.0.7, clusterIPs: [10.0.0.7], ports: [{{port: 80}}]}}\n{status}"
        )
    };
    // The dataplane namespace's, not a same-named Service next to the Gateway.
    assert!(addresses(&service("default", "")).is_empty());
    assert_eq!(
        addresses(&service("portico-system", "")),
        [("IPAddress".to_string(), "10.0.0.7".to_string())]
    );
    assert_eq!(
        addresses(&service(
            "portico-system",
            "status: {loadBalancer: {ingress: [{ip: 203.0.113.9}, {hostname: lb.example.com}]}}\n"
        )),
        [
            ("IPAddress".to_string(), "203.0.113.9".to_string()),
            ("Hostname".to_string(), "lb.example.com".to_string())
        ]
    );
    // A namespace whose dataplanes run beside their Gateways: the Service next to it.
    let beside = |extra: &str| -> Vec<String> {
        let mut inputs = super::inputs(extra);
        inputs.placement = crate::Placement {
            namespace: "portico-system".into(),
            beside: ["default".to_string()].into(),
            beside_account: "portico-dataplane".into(),
        };
        compile(&inputs, CONTROLLER_NAME).status.gateways[&gw()]
            .addresses
            .iter()
            .map(|a| a.value.clone())
            .collect()
    };
    assert_eq!(beside(&service("default", "")), ["10.0.0.7"]);
    assert!(beside(&service("portico-system", "")).is_empty());
}

#[test]
fn requested_addresses_are_bound_standalone_and_asked_of_the_service_in_a_cluster() {
    let name = crate::dataplane_name("default", "fixed");
    let gateway = |addresses: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: fixed, namespace: default}}\nspec:\n  gatewayClassName: portico\n  addresses: {addresses}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let service = |ingress: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: portico-system}}\nspec: {{type: LoadBalancer, clusterIP: 10.0.0.8, ports: [{{port: 80}}]}}\nstatus: {{loadBalancer: {{ingress: [{ingress}]}}}}\n"
        )
    };
    let id = ObjectRef::new("default", "fixed");
    let run = |extra: &str, mode: crate::Addresses| {
        let mut inputs = super::inputs(extra);
        inputs.placement = crate::Placement::one_namespace("portico-system");
        inputs.addresses = mode;
        compile(&inputs, CONTROLLER_NAME)
    };
    let programmed = |out: &crate::Output| {
        find(&out.status.gateways[&id].conditions, types::PROGRAMMED)
            .expect("programmed")
            .clone()
    };
    let one = gateway("[{type: IPAddress, value: 198.51.100.7}]");

    // Standalone: the listeners bind it, and it is the Gateway's address.
    let out = run(&one, crate::Addresses::Bind);
    assert_eq!(out.snapshots[&id].listeners[0].addresses, ["198.51.100.7"]);
    assert_eq!(programmed(&out).reason, reasons::PENDING);

    // A cluster: the dataplane binds its default; Programmed waits for the Service to have it.
    let out = run(&one, crate::Addresses::Service);
    assert!(out.snapshots[&id].listeners[0].addresses.is_empty());
    let p = programmed(&out);
    assert_eq!(p.reason, reasons::ADDRESS_NOT_USABLE);
    assert!(p.message.contains("does not exist yet"), "{p:?}");
    assert!(
        out.status.gateways[&id].addresses.is_empty(),
        "not an address it has"
    );

    let out = run(
        &format!("{one}{}", service("{ip: 198.19.255.3}")),
        crate::Addresses::Service,
    );
    let p = programmed(&out);
    assert_eq!(p.reason, reasons::ADDRESS_NOT_USABLE);
    assert!(
        p.message.contains("198.51.100.7") && p.message.contains("198.19.255.3"),
        "{p:?}"
    );

    let out = run(
        &format!("{one}{}", service("{ip: 198.51.100.7}")),
        crate::Addresses::Service,
    );
    assert_eq!(
        programmed(&out).reason,
        reasons::PENDING,
        "the dataplane's ack decides"
    );
    let addresses: Vec<&str> = out.status.gateways[&id]
        .addresses
        .iter()
        .map(|a| a.value.as_str())
        .collect();
    assert_eq!(addresses, ["198.51.100.7"]);

    // Only a LoadBalancer Service is given an address: another type says so.
    let out = run(
        &format!(
            "{one}{}",
            service("{ip: 198.51.100.7}").replace("type: LoadBalancer", "type: NodePort")
        ),
        crate::Addresses::Service,
    );
    let p = programmed(&out);
    assert_eq!(p.reason, reasons::ADDRESS_NOT_USABLE);
    assert!(p.message.contains("of type NodePort"), "{p:?}");

    // Two cannot be asked of one Service; an empty value asks for none in particular.
    let two = gateway("[{value: 198.51.100.7}, {value: 198.51.100.8}]");
    let p = programmed(&run(&two, crate::Addresses::Service));
    assert_eq!(p.reason, reasons::ADDRESS_NOT_USABLE);
    assert!(p.message.contains("2 addresses"), "{p:?}");
    let any = gateway("[{type: IPAddress}]");
    assert_eq!(
        programmed(&run(&any, crate::Addresses::Service)).reason,
        reasons::PENDING
    );
}

#[test]
fn client_certificate_validation_applies_per_port_and_a_ca_that_does_not_resolve_refuses_the_listener()
 {
    // Port 443 takes the default (CA `ca`), 8443 its own entry (ConfigMap `missing`), 9443
    // an entry without validation; 7443 falls back insecurely with CA `ca`.
    let (a_cert, a_key) = cert("a.example.com");
    let (ca_pem, _) = cert("ca.example.com");
    let https = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    port: {port}\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: a-cert}}]}}\n"
        )
    };
    let indented: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let extra = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: tls, namespace: default}}\nspec:\n  gatewayClassName: portico\n  tls:\n    frontend:\n      default:\n        validation:\n          caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: ca}}]\n      perPort:\n      - port: 8443\n        tls:\n          validation:\n            caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: missing}}]\n      - port: 9443\n        tls: {{}}\n      - port: 7443\n        tls:\n          validation:\n            mode: AllowInsecureFallback\n            caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: ca}}]\n      - port: 6443\n        tls:\n          validation:\n            caCertificateRefs: [{{group: \"\", kind: Service, name: svc}}]\n  listeners:\n{}{}{}{}{}  - {{name: plain, port: 80, protocol: HTTP}}\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: default}}\ndata:\n  ca.crt: |\n{indented}",
        https("default-port", 443),
        https("own-entry", 8443),
        https("opted-out", 9443),
        https("fallback", 7443),
        https("wrong-kind", 6443),
        tls_secret("a-cert", "default", &a_cert, &a_key)
    );
    let out = run(&extra);
    let refused = |name: &str, resolved_reason: &str| {
        let c = listener_condition(&out, name, types::ACCEPTED);
        assert!(!c.is_true(), "{name}: {c:?}");
        assert_eq!(c.reason, reasons::NO_VALID_CA_CERTIFICATE, "{name}");
        assert!(c.message.contains("client certificate validation"), "{c:?}");
        let r = listener_condition(&out, name, types::RESOLVED_REFS);
        assert_eq!(r.reason, resolved_reason, "{name}");
        assert!(!listener_condition(&out, name, types::PROGRAMMED).is_true());
    };
    refused("own-entry", reasons::INVALID_CA_CERTIFICATE_REF);
    refused("wrong-kind", reasons::INVALID_CA_CERTIFICATE_KIND);
    for served in ["default-port", "opted-out", "fallback", "plain"] {
        let c = listener_condition(&out, served, types::ACCEPTED);
        assert!(c.is_true(), "{served}: {c:?}");
    }
    let snap = &out.snapshots[&ObjectRef::new("default", "tls")];
    let validation: Vec<(&str, Option<bool>)> = snap
        .listeners
        .iter()
        .map(|l| {
            let v = l.tls.as_ref().and_then(|t| t.client_validation.as_ref());
            (l.name.as_str(), v.map(|v| v.insecure_fallback))
        })
        .collect();
    assert_eq!(
        validation,
        [
            ("default-port", Some(false)),
            ("opted-out", None),
            ("fallback", Some(true)),
            ("plain", None)
        ]
    );
    // The Gateway says some port lets clients in without a valid certificate.
    let g = &out.status.gateways[&ObjectRef::new("default", "tls")];
    let insecure =
        find(&g.conditions, types::INSECURE_FRONTEND_VALIDATION_MODE).expect("condition");
    assert!(insecure.is_true());
    assert_eq!(insecure.reason, reasons::CONFIGURATION_CHANGED);
    assert!(insecure.message.contains("7443"), "{insecure:?}");
    // The controller watches the ConfigMap the Gateway names.
    let inputs = super::inputs(&extra);
    assert!(
        crate::referenced_config_maps(&inputs, crate::CONTROLLER_NAME)
            .contains(&ObjectRef::new("default", "ca"))
    );
}
