//! The guard against what a real watch delivers: HTTPRoutes decoded from JSON, one of them
//! with a filter type of a later Gateway API release (`FutureFilter`) the Rust type does not
//! know.

use super::watch::Watch;
use super::*;
use portico_crds::gateway_api::experimental::httproutes::HttpRoute;
use serde_json::json;

/// An HTTPRoute as the API server sends it; `external_auth` adds a filter of a type a newer
/// CRD would admit and the Rust type rejects.
fn route(name: &str, external_auth: bool) -> DeserializeGuard<HttpRoute> {
    let filters = if external_auth {
        json!([{"type": "FutureFilter"}])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "team", "resourceVersion": "1"},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"filters": filters, "backendRefs": [{"name": "svc", "port": 80}]}]}
    }))
    .expect("a guard decodes whatever the object holds")
}

/// The HTTPRoute watch: every route that decodes is read whole.
fn watch() -> Watch<HttpRoute> {
    Watch::new("HTTPRoute", |_| None)
}

#[test]
fn the_rust_type_rejects_what_a_newer_crd_admits_and_the_guard_keeps_its_name() {
    let guarded = route("external", true);
    let invalid = guarded
        .0
        .expect_err("FutureFilter is not a filter type of the Rust type");
    assert_eq!(invalid.metadata.name.as_deref(), Some("external"));
    assert_eq!(invalid.metadata.namespace.as_deref(), Some("team"));
    assert!(invalid.error.contains("FutureFilter"), "{}", invalid.error);
    assert!(route("web", false).0.is_ok());
}

#[test]
fn one_object_that_does_not_decode_is_skipped_and_the_list_completes() {
    let mut w = watch();
    assert_eq!(w.counts.counts(), [("HTTPRoute".to_string(), 0)]);
    assert!(matches!(w.feed(Event::Init), Some(Event::Init)));
    assert!(w.feed(Event::InitApply(route("web", false))).is_some());
    assert!(w.feed(Event::InitApply(route("external", true))).is_none());
    assert!(w.feed(Event::InitApply(route("api", false))).is_some());
    assert!(matches!(w.feed(Event::InitDone), Some(Event::InitDone)));
    assert_eq!(w.names(), ["api", "web"]);
    assert_eq!(w.unreadable(), 1);
}

#[test]
fn an_object_updated_into_one_that_does_not_decode_leaves_the_store_until_fixed() {
    let mut w = watch();
    w.feed(Event::Init);
    w.feed(Event::InitApply(route("web", false)));
    w.feed(Event::InitDone);
    // The cluster no longer holds a version compile can read: the old one must not stay.
    let seen = w.feed(Event::Apply(route("web", true)));
    assert!(
        matches!(&seen, Some(Event::Delete(r)) if r.metadata.name.as_deref() == Some("web")),
        "{seen:?}"
    );
    assert!(w.names().is_empty());
    assert_eq!(w.unreadable(), 1);
    // Another write of the same unreadable object changes nothing.
    assert!(w.feed(Event::Apply(route("web", true))).is_none());
    assert_eq!(w.unreadable(), 1);
    // Fixed: back in the store, no longer counted.
    assert!(matches!(
        w.feed(Event::Apply(route("web", false))),
        Some(Event::Apply(_))
    ));
    assert_eq!(w.names(), ["web"]);
    assert_eq!(w.unreadable(), 0);
}

#[test]
fn deleting_or_relisting_forgets_objects_that_could_not_be_read() {
    let mut w = watch();
    w.feed(Event::Init);
    w.feed(Event::InitApply(route("a", true)));
    w.feed(Event::InitApply(route("b", true)));
    w.feed(Event::InitDone);
    assert_eq!(w.unreadable(), 2);
    // Deleted while unreadable: nothing in the store to remove, and no longer counted.
    assert!(w.feed(Event::Delete(route("a", true))).is_none());
    assert_eq!(w.unreadable(), 1);
    // Fixed while the watch was away: the re-list finds it readable.
    w.feed(Event::Init);
    w.feed(Event::InitApply(route("b", false)));
    w.feed(Event::InitDone);
    assert_eq!(w.names(), ["b"]);
    assert_eq!(w.unreadable(), 0);
}
