//! BackendTLSPolicy: attachment to Services and their ports, conflicts, CA certificates from
//! ConfigMaps and Secrets, and the status per ancestor Gateway.

use super::{gw, run};
use crate::Output;
use crate::status::{Condition, find, reasons, types};
use portico_model::{BackendTls, ObjectRef, SubjectAltName};

/// Routes to both ports of `svc` (the base's `web` port 80 and `grpc` port 81).
const ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /web}}]
    backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{name: svc, port: 81}]
"#;

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("ca").pem()
}

fn config_map(name: &str, ca: &str) -> String {
    let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n  ca.crt: |\n{indented}"
    )
}

fn policy(name: &str, created: &str, section: Option<&str>, validation: &str) -> String {
    let section = section
        .map(|s| format!(", sectionName: {s}"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: svc{section}}}]\n  validation: {validation}\n"
    )
}

fn conditions(out: &Output, policy: &str) -> Vec<Condition> {
    let ancestors = &out
        .status
        .backend_tls_policies
        .get(&ObjectRef::new("default", policy))
        .unwrap_or_else(|| panic!("no status for {policy}"))
        .ancestors;
    assert_eq!(ancestors.len(), 1, "{policy}: {ancestors:?}");
    let a = &ancestors[0].ancestor_ref;
    assert_eq!(
        (
            a.kind.as_str(),
            ObjectRef::new(a.namespace.clone(), a.name.clone())
        ),
        ("Gateway", gw())
    );
    ancestors[0].conditions.clone()
}

fn reason(conditions: &[Condition], type_: &str) -> (bool, String) {
    let c = find(conditions, type_).expect("condition");
    (c.is_true(), c.reason.clone())
}

/// The TLS of `svc`'s port `port` in the snapshot.
fn tls_of(out: &Output, port: u16) -> Option<BackendTls> {
    out.snapshots[&gw()]
        .backends
        .iter()
        .find(|b| b.id.name == "svc" && b.id.port == port)
        .expect("backend")
        .tls
        .clone()
}

#[test]
fn the_port_policy_applies_before_the_services_and_the_younger_of_two_is_conflicted() {
    let ca = ca_pem();
    let extra = [
        ROUTES,
        &config_map("ca", &ca),
        &policy(
            "web",
            "2026-01-01T00:00:00Z",
            Some("web"),
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: web.example.com, subjectAltNames: [{type: URI, uri: \"spiffe://example.com/web\"}]}",
        ),
        &policy(
            "web-2",
            "2026-01-02T00:00:00Z",
            Some("web"),
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}], hostname: other.example.com}",
        ),
        &policy(
            "all",
            "2026-01-03T00:00:00Z",
            None,
            "{wellKnownCACertificates: System, hostname: svc.example.com}",
        ),
    ]
    .concat();
    let out = run(&extra);
    let web = conditions(&out, "web");
    assert_eq!(reason(&web, types::ACCEPTED), (true, "Accepted".into()));
    assert_eq!(
        reason(&web, types::RESOLVED_REFS),
        (true, "ResolvedRefs".into())
    );
    assert_eq!(
        reason(&conditions(&out, "web-2"), types::ACCEPTED),
        (false, reasons::CONFLICTED.into())
    );
    assert!(reason(&conditions(&out, "all"), types::ACCEPTED).0);

    let tls = tls_of(&out, 80).expect("port 80 is TLS");
    assert_eq!(tls.policy, ObjectRef::new("default", "web"));
    assert_eq!(tls.server_name, "web.example.com");
    assert!(tls.ca_pem.contains("BEGIN CERTIFICATE"));
    assert!(!tls.system_roots);
    assert_eq!(
        tls.subject_alt_names,
        [SubjectAltName::Uri("spiffe://example.com/web".into())]
    );
    assert_eq!(tls.invalid, None);
    // The other port takes the Service's policy.
    let grpc = tls_of(&out, 81).expect("port 81 is TLS");
    assert_eq!(grpc.server_name, "svc.example.com");
    assert!(grpc.system_roots);
}

#[test]
fn unusable_ca_certificates_are_reported_and_refuse_rather_than_go_plaintext() {
    let extra = [
        ROUTES,
        &config_map("not-pem", "hello"),
        &policy(
            "missing",
            "2026-01-01T00:00:00Z",
            Some("web"),
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: nope}], hostname: a.example.com}",
        ),
        &policy(
            "kind",
            "2026-01-01T00:00:00Z",
            Some("grpc"),
            "{caCertificateRefs: [{group: invalid.io, kind: InvalidKind, name: x}], hostname: a.example.com}",
        ),
    ]
    .concat();
    let out = run(&extra);
    let missing = conditions(&out, "missing");
    assert_eq!(
        reason(&missing, types::ACCEPTED),
        (false, "NoValidCACertificate".into())
    );
    assert_eq!(
        reason(&missing, types::RESOLVED_REFS),
        (false, "InvalidCACertificateRef".into())
    );
    let kind = conditions(&out, "kind");
    assert_eq!(
        reason(&kind, types::RESOLVED_REFS),
        (false, reasons::INVALID_KIND.into())
    );
    // Both backends refuse: never plaintext.
    assert!(tls_of(&out, 80).and_then(|t| t.invalid).is_some());
    assert!(tls_of(&out, 81).and_then(|t| t.invalid).is_some());

    // A ConfigMap whose ca.crt is not a certificate is as good as none.
    let bad = [
        ROUTES,
        &config_map("not-pem", "hello"),
        &policy(
            "bad",
            "2026-01-01T00:00:00Z",
            None,
            "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: not-pem}], hostname: a.example.com}",
        ),
    ]
    .concat();
    let out = run(&bad);
    assert_eq!(
        reason(&conditions(&out, "bad"), types::RESOLVED_REFS),
        (false, "InvalidCACertificateRef".into())
    );
    // The controller watches the ConfigMaps policies name, and only those.
    let inputs = super::inputs(&bad);
    assert_eq!(
        crate::referenced_config_maps(&inputs, crate::CONTROLLER_NAME),
        [ObjectRef::new("default", "not-pem")].into()
    );
}

#[test]
fn the_gateways_client_certificate_for_backends_is_resolved_and_reported() {
    let gateway = |name: &str, reference: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  gatewayClassName: portico\n  tls: {{backend: {{clientCertificateRef: {reference}}}}}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let extra = [
        gateway("missing", "{name: nope}"),
        gateway("kind", "{group: \"\", kind: ConfigMap, name: x}"),
        gateway("elsewhere", "{name: cert, namespace: blue}"),
    ]
    .concat();
    let out = run(&extra);
    let resolved = |gw: &str| {
        let s = &out.status.gateways[&ObjectRef::new("default", gw)];
        (
            reason(&s.conditions, types::RESOLVED_REFS),
            reason(&s.conditions, types::ACCEPTED).0,
        )
    };
    assert_eq!(
        resolved("missing"),
        (
            (false, reasons::INVALID_CLIENT_CERTIFICATE_REF.into()),
            true
        )
    );
    assert_eq!(
        resolved("kind"),
        (
            (false, reasons::INVALID_CLIENT_CERTIFICATE_REF.into()),
            true
        )
    );
    assert_eq!(
        resolved("elsewhere"),
        ((false, reasons::REF_NOT_PERMITTED.into()), true)
    );
    // A Gateway that names none has no ResolvedRefs condition of its own.
    assert!(find(&out.status.gateways[&gw()].conditions, types::RESOLVED_REFS).is_none());
}

#[test]
fn a_conflicted_policy_still_secures_the_targets_no_other_policy_takes() {
    let extra = [
        ROUTES,
        "
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec:
  ports: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-other, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules: [{backendRefs: [{name: other, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: older, namespace: default, creationTimestamp: \"2026-01-01T00:00:00Z\"}
spec:
  targetRefs: [{group: \"\", kind: Service, name: svc}]
  validation: {wellKnownCACertificates: System, hostname: svc.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: younger, namespace: default, creationTimestamp: \"2026-01-02T00:00:00Z\"}
spec:
  targetRefs: [{group: \"\", kind: Service, name: svc}, {group: \"\", kind: Service, name: other}]
  validation: {wellKnownCACertificates: System, hostname: other.example.com}
",
    ]
    .concat();
    let out = run(&extra);
    assert_eq!(
        reason(&conditions(&out, "younger"), types::ACCEPTED),
        (false, reasons::CONFLICTED.into())
    );
    // svc keeps the older policy; `other`, which only the younger names, is not left in
    // plaintext.
    assert_eq!(
        tls_of(&out, 80).map(|t| t.server_name),
        Some("svc.example.com".into())
    );
    let other = out.snapshots[&gw()]
        .backends
        .iter()
        .find(|b| b.id.name == "other")
        .and_then(|b| b.tls.clone())
        .map(|t| t.server_name);
    assert_eq!(other, Some("other.example.com".into()));
}

#[test]
fn a_policy_this_version_cannot_read_still_refuses_its_port_and_says_why() {
    // A subjectAltName type of a newer release: enforced without it, the policy would check
    // less than it says; skipped, the port would be reached in plaintext.
    let read = crate::read_policy::<portico_crds::gateway_api::backendtlspolicies::BackendTlsPolicy>(
        &serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "newer", "namespace": "default", "generation": 4,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "svc", "sectionName": "web"}],
                "validation": {"hostname": "a.example.com", "wellKnownCACertificates": "System",
                               "subjectAltNames": [{"type": "IPAddress", "ipAddress": "10.0.0.1"}]}}
        }),
    );
    let crate::BackendTlsPolicyRead::Unreadable(newer) = read else {
        panic!("IPAddress is not a subjectAltName type of this version")
    };
    let mut inputs = super::inputs(ROUTES);
    inputs.unreadable_backend_tls_policies = vec![*newer];
    let out = crate::compile(&inputs, crate::CONTROLLER_NAME);
    let c = conditions(&out, "newer");
    assert_eq!(reason(&c, types::ACCEPTED), (false, "Unreadable".into()));
    let accepted = find(&c, types::ACCEPTED).expect("Accepted");
    assert!(
        accepted.message.contains("IPAddress") && accepted.message.contains("answered 500"),
        "{}",
        accepted.message
    );
    assert_eq!(accepted.observed_generation, Some(4));
    // Its references are unknown: no ResolvedRefs claim either way.
    assert!(find(&c, types::RESOLVED_REFS).is_none());
    // The port it names refuses; the other port is not its business.
    let refusal = tls_of(&out, 80).and_then(|t| t.invalid).expect("refuses");
    assert!(refusal.contains("cannot read"), "{refusal}");
    assert_eq!(tls_of(&out, 81), None);

    // In a manifest, a field this version does not know is an error by default; allowed
    // (`--unknown-fields warn`), the policy loads as unreadable and refuses the same way.
    use crate::manifests::{ManifestSet, UnknownFields};
    let unknown = policy(
        "newer",
        "2026-01-01T00:00:00Z",
        Some("web"),
        "{wellKnownCACertificates: System, hostname: a.example.com, pinnedKeys: [abc]}",
    );
    let mut set = ManifestSet::default();
    set.add_file("policy.yaml", &unknown);
    assert!(
        set.errors
            .first()
            .is_some_and(|e| e.message.contains("spec.validation.pinnedKeys")),
        "{:?}",
        set.errors
    );
    let mut set = ManifestSet {
        unknown_fields: UnknownFields::Warn,
        ..ManifestSet::default()
    };
    set.add_file("base.yaml", super::BASE);
    set.add_file("routes.yaml", ROUTES);
    set.add_file("policy.yaml", &unknown);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.message.contains("pinnedKeys") && w.message.contains("targets are refused")),
        "{:?}",
        set.warnings
    );
    assert!(set.inputs.backend_tls_policies.is_empty());
    let out = crate::compile(&set.inputs, crate::CONTROLLER_NAME);
    assert_eq!(
        reason(&conditions(&out, "newer"), types::ACCEPTED),
        (false, "Unreadable".into())
    );
    assert!(tls_of(&out, 80).and_then(|t| t.invalid).is_some());
}

#[test]
fn a_tcp_routes_gateway_is_an_ancestor_and_its_backend_carries_the_policy() {
    let extra = [
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: default}
spec:
  gatewayClassName: portico
  listeners: [{name: db, port: 5432, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: db, namespace: default}
spec:
  parentRefs: [{name: l4}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
"#,
        &policy(
            "tls",
            "2026-01-01T00:00:00Z",
            None,
            "{wellKnownCACertificates: System, hostname: db.internal}",
        ),
    ]
    .concat();
    let out = run(&extra);
    let ancestors = &out.status.backend_tls_policies[&ObjectRef::new("default", "tls")].ancestors;
    let names: Vec<&str> = ancestors
        .iter()
        .map(|a| a.ancestor_ref.name.as_str())
        .collect();
    assert_eq!(names, ["l4"], "the TCPRoute's Gateway");
    assert_eq!(
        reason(&ancestors[0].conditions, types::ACCEPTED),
        (true, "Accepted".into())
    );
    let l4 = ObjectRef::new("default", "l4");
    let tls = out.snapshots[&l4]
        .backends
        .iter()
        .find(|b| b.id.name == "svc")
        .and_then(|b| b.tls.clone())
        .expect("the stream backend carries the policy");
    assert_eq!(tls.server_name, "db.internal");
    assert!(tls.system_roots && tls.invalid.is_none());
}
