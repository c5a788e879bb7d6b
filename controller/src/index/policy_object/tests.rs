//! The AuthPolicy watch against what a real watch delivers: objects decoded from JSON, some
//! with a value a newer CRD admits (JWT algorithm `ES512`) that this controller's types
//! reject, through the same guard and store as the watch loop.

use super::*;
use crate::index::guard::watch::Watch;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;
use portico_compile::AuthPolicyRead;
use serde_json::json;

/// An AuthPolicy as the API server sends it, protecting HTTPRoute `shop`; with `algorithm`
/// `ES512` this controller cannot read it.
fn policy(name: &str, algorithm: &str) -> DeserializeGuard<AuthPolicyObject> {
    serde_json::from_value(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": name, "namespace": "team", "resourceVersion": "1",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                 "name": "shop"}],
                 "jwt": {"issuer": "https://idp", "algorithms": [algorithm],
                         "jwksUri": "https://idp/jwks"}}
    }))
    .expect("a guard decodes whatever the object holds")
}

/// The AuthPolicy watch, as the watch loop runs it.
fn watch() -> Watch<AuthPolicyObject> {
    Watch::new("AuthPolicy", AuthPolicyObject::unreadable)
}

impl Watch<AuthPolicyObject> {
    /// Compile's two inputs, as [`crate::index::Index::inputs`] makes them: the names of the
    /// readable and of the unreadable policies.
    fn inputs(&self) -> (Vec<String>, Vec<String>) {
        let state = self.store.state();
        let (readable, unreadable) = split(state.iter().map(|p| &**p));
        let names = |m: Vec<&ObjectMeta>| {
            let mut n: Vec<String> = m.iter().filter_map(|m| m.name.clone()).collect();
            n.sort();
            n
        };
        (
            names(readable.iter().map(|p| &p.metadata).collect()),
            names(unreadable.iter().map(|p| &p.metadata).collect()),
        )
    }
}

#[test]
fn a_policy_this_controller_cannot_read_decodes_with_its_targets_and_the_error() {
    let o = policy("strict", "ES512")
        .0
        .expect("kept, not an invalid object");
    let AuthPolicyRead::Unreadable(u) = &o.0 else {
        panic!("ES512 is not an algorithm here")
    };
    assert_eq!(u.target_refs[0].name, "shop");
    assert!(u.error.contains("ES512"), "{}", u.error);
    assert_eq!(o.unreadable(), Some(u.error.as_str()));
    assert_eq!(o.meta().name.as_deref(), Some("strict"));
    let ok = policy("ok", "ES256").0.expect("readable");
    assert!(matches!(ok.0, AuthPolicyRead::Readable(_)));
    // Without a name there is nothing to attach it to or report it under: the guard skips it.
    let nameless: DeserializeGuard<AuthPolicyObject> = serde_json::from_value(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"namespace": "team"}, "spec": {"targetRefs": 7}}))
    .expect("guarded");
    assert!(nameless.0.is_err());
}

#[test]
fn an_unreadable_policy_stays_in_the_store_for_compile_and_is_counted() {
    let mut w = watch();
    w.feed(Event::Init);
    w.feed(Event::InitApply(policy("ok", "ES256")));
    // Kept (a skipped one would leave `shop` open), but counted and logged as unreadable.
    assert!(matches!(
        w.feed(Event::InitApply(policy("strict", "ES512"))),
        Some(Event::InitApply(_))
    ));
    w.feed(Event::InitDone);
    assert_eq!(w.inputs(), (vec!["ok".into()], vec!["strict".into()]));
    assert_eq!(w.unreadable(), 1);
}

#[test]
fn a_policy_updated_into_one_this_controller_cannot_read_is_replaced_not_removed() {
    let mut w = watch();
    w.feed(Event::Init);
    w.feed(Event::InitApply(policy("guard", "ES256")));
    w.feed(Event::InitDone);
    assert_eq!(w.inputs(), (vec!["guard".into()], vec![]));
    // Another kind's object would leave the store here; this one must keep protecting.
    assert!(matches!(
        w.feed(Event::Apply(policy("guard", "ES512"))),
        Some(Event::Apply(_))
    ));
    assert_eq!(w.inputs(), (vec![], vec!["guard".into()]));
    assert_eq!(w.unreadable(), 1);
    // Fixed: readable again and no longer counted.
    w.feed(Event::Apply(policy("guard", "ES384")));
    assert_eq!(w.inputs(), (vec!["guard".into()], vec![]));
    assert_eq!(w.unreadable(), 0);
    // Deleted while unreadable: gone from the store and the count.
    w.feed(Event::Apply(policy("guard", "ES512")));
    assert!(matches!(
        w.feed(Event::Delete(policy("guard", "ES512"))),
        Some(Event::Delete(_))
    ));
    assert_eq!(w.inputs(), (vec![], vec![]));
    assert_eq!(w.unreadable(), 0);
}

#[test]
fn a_relist_forgets_policies_fixed_while_the_watch_was_away() {
    let mut w = watch();
    w.feed(Event::Init);
    w.feed(Event::InitApply(policy("a", "ES512")));
    w.feed(Event::InitDone);
    assert_eq!(w.unreadable(), 1);
    w.feed(Event::Init);
    w.feed(Event::InitApply(policy("a", "RS256")));
    w.feed(Event::InitDone);
    assert_eq!(w.inputs(), (vec!["a".into()], vec![]));
    assert_eq!(w.unreadable(), 0);
}

#[test]
fn a_backend_tls_policy_this_controller_cannot_read_is_kept_with_its_targets() {
    let object = |san_type: &str| -> DeserializeGuard<BackendTlsPolicyObject> {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "tls", "namespace": "team", "resourceVersion": "1"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "db",
                                     "sectionName": "pg"}],
                     "validation": {"hostname": "db.team", "wellKnownCACertificates": "System",
                                    "subjectAltNames": [{"type": san_type, "hostname": "db"}]}},
            "status": {"ancestors": [{
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                "namespace": "team", "name": "gw"},
                "controllerName": "portico.dev/gateway-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "applied",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}
        }))
        .expect("a guard decodes whatever the object holds")
    };
    let ok = object("Hostname").0.expect("readable");
    assert_eq!(ok.unreadable(), None);
    assert_eq!(ok.status().map(|s| s.ancestors.len()), Some(1));
    // A subjectAltName type of a newer release.
    let newer = object("IPAddress").0.expect("kept, not skipped");
    let portico_compile::BackendTlsPolicyRead::Unreadable(u) = &newer.0 else {
        panic!("IPAddress is not a type here")
    };
    assert_eq!(u.target_refs[0].name, "db");
    assert_eq!(u.target_refs[0].section_name.as_deref(), Some("pg"));
    assert!(u.error.contains("IPAddress"), "{}", u.error);
    // Its status is still read, so the writer keeps other controllers' entries.
    assert_eq!(newer.status().map(|s| s.ancestors.len()), Some(1));
    assert_eq!(newer.meta().name.as_deref(), Some("tls"));
}
