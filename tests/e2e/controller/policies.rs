//! Policies on the real API server: attachment and status written by the controller, and the
//! CRDs' CEL rules refusing what cannot work.

use super::{class, cluster, gateway, route, service};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use portico_crds::auth::AuthPolicy;
use portico_crds::backend::BackendPolicy;
use portico_crds::policy::PolicyStatus;
use portico_crds::ratelimit::RateLimitPolicy;
use portico_tests::await_some;
use portico_tests::cluster::{create, shared_controller, test_namespace};
use serde_json::json;

const CONTROLLER: &str = super::CONTROLLER;

/// A policy kind with the shared status.
trait Policy:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
    fn policy_status(&self) -> Option<PolicyStatus>;
}

impl Policy for AuthPolicy {
    fn policy_status(&self) -> Option<PolicyStatus> {
        self.status.clone()
    }
}

impl Policy for BackendPolicy {
    fn policy_status(&self) -> Option<PolicyStatus> {
        self.status.clone()
    }
}

impl Policy for RateLimitPolicy {
    fn policy_status(&self) -> Option<PolicyStatus> {
        self.status.clone()
    }
}

/// The (status, reason) of a condition of a policy's first ancestor.
async fn policy_condition<K: Policy>(
    api: &Api<K>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let p = api.get(name).await.ok()?;
    let ancestor = p.policy_status()?.ancestors.into_iter().next()?;
    let c = ancestor.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn await_policy<K: Policy>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    await_some(
        &format!("{} {name} {type_}={status} ({reason})", K::kind(&())),
        || async {
            let (s, r, m) = policy_condition(api, name, type_).await?;
            (s == status && r == reason).then_some(m)
        },
    )
    .await
}

/// A namespace of its own with our Gateway `gw` and HTTPRoute `shop` to Service `svc`, served
/// by the shared controller.
async fn gateway_with_route(prefix: &str) -> (kube::Client, String) {
    let client = cluster().client().await;
    shared_controller();
    let ns = test_namespace(&client, prefix).await;
    class(&client, &ns, CONTROLLER).await;
    gateway(&client, &ns, &ns).await;
    service(&client, &ns, "svc").await;
    route(
        &client,
        &ns,
        "shop",
        &ns,
        json!({"name": "svc", "port": 80}),
    )
    .await;
    (client, ns)
}

#[tokio::test]
async fn auth_policies_report_attachment_and_are_validated_by_cel() {
    let (client, ns) = gateway_with_route("authpol").await;
    create::<Secret>(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
               "stringData": {"alice": "alice-key-0001"}}),
    )
    .await;
    let policy = |name: &str, kind: &str, target: &str, section: Option<&str>, secret: &str| {
        let mut target_ref =
            json!({"group": "gateway.networking.k8s.io", "kind": kind, "name": target});
        if let Some(s) = section {
            target_ref["sectionName"] = json!(s);
        }
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "AuthPolicy",
               "metadata": {"name": name},
               "spec": {"targetRefs": [target_ref], "apiKey": {"secretRefs": [{"name": secret}]}}})
    };
    let api: Api<AuthPolicy> = Api::namespaced(client.clone(), &ns);
    // `first` is older (and first by name, should both land in the same second).
    create::<AuthPolicy>(
        &client,
        &ns,
        policy("first", "HTTPRoute", "shop", None, "keys"),
    )
    .await;
    await_policy(&api, "first", "Accepted", "True", "Accepted").await;
    create::<AuthPolicy>(
        &client,
        &ns,
        policy("second", "HTTPRoute", "shop", None, "keys"),
    )
    .await;
    create::<AuthPolicy>(
        &client,
        &ns,
        policy("lost", "HTTPRoute", "nope", None, "keys"),
    )
    .await;
    create::<AuthPolicy>(
        &client,
        &ns,
        policy("no-listener", "Gateway", "gw", Some("nope"), "keys"),
    )
    .await;
    create::<AuthPolicy>(
        &client,
        &ns,
        policy("late-secret", "Gateway", "gw", Some("http"), "gone"),
    )
    .await;

    let m = await_policy(&api, "second", "Accepted", "False", "Conflicted").await;
    assert!(m.contains(&format!("{ns}/first")), "{m}");
    await_policy(&api, "lost", "Accepted", "False", "TargetNotFound").await;
    await_policy(&api, "no-listener", "Accepted", "False", "TargetNotFound").await;
    await_policy(&api, "first", "ResolvedRefs", "True", "ResolvedRefs").await;
    // A missing Secret: still applies (nobody gets in through it), and says why.
    await_policy(&api, "late-secret", "Accepted", "True", "Accepted").await;
    let m = await_policy(&api, "late-secret", "ResolvedRefs", "False", "InvalidRef").await;
    assert!(m.contains("gone"), "{m}");
    // The controller watches Secrets that policies name: creating it resolves the policy.
    create::<Secret>(
        &client,
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gone"},
               "stringData": {"bob": "bob-key-0002"}}),
    )
    .await;
    await_policy(&api, "late-secret", "ResolvedRefs", "True", "ResolvedRefs").await;
    // The ancestor is the target, written under our controller name.
    let p = api.get("no-listener").await.expect("policy");
    let a = &p.status.expect("status").ancestors[0];
    assert_eq!(a.controller_name, CONTROLLER);
    assert_eq!(
        (
            a.ancestor_ref.kind.as_str(),
            a.ancestor_ref.section_name.as_deref()
        ),
        ("Gateway", Some("nope"))
    );

    // The API server's CEL rules refuse impossible combinations with the message we wrote.
    let refused = |spec| refused::<AuthPolicy>(&client, &ns, spec);
    let target =
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "shop"}]);
    let m = refused(json!({"targetRefs": target,
        "jwt": {"issuer": "x", "algorithms": ["RS256"], "jwks": "{}", "jwksUri": "https://idp/jwks"}})).await;
    assert!(m.contains("exactly one of jwksUri"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "jwt": {"issuer": "x", "algorithms": ["HS256"], "jwksUri": "https://idp/jwks"}}))
    .await;
    assert!(m.contains("hmacSecretRef"), "{m}");
    let m = refused(json!({"targetRefs": target})).await;
    assert!(m.contains("at least one of"), "{m}");
    let m = refused(json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Service", "name": "svc"}],
        "apiKey": {"secretRefs": [{"name": "keys"}]}})).await;
    assert!(m.contains("Gateway, ListenerSet or HTTPRoute"), "{m}");
    let m = refused(json!({"targetRefs": target, "jwt": {"issuer": "x", "algorithms": ["none"], "jwksUri": "https://idp/jwks"}})).await;
    assert!(m.contains("none"), "{m}");
}

/// Creates a policy of kind `K` with `spec` and returns the API server's refusal. Untyped, so
/// that values the Rust types cannot hold (`alg: none`) reach the API server.
async fn refused<K: Policy>(client: &kube::Client, ns: &str, spec: serde_json::Value) -> String {
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::core::ApiResource::erase::<K>(&()),
    );
    let obj: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": K::kind(&()),
        "metadata": {"name": "bad"}, "spec": spec}))
    .expect("object");
    match api.create(&Default::default(), &obj).await {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("accepted: {other:?}"),
    }
}

#[tokio::test]
async fn rate_limit_policies_report_attachment_and_misconfiguration_and_are_validated_by_cel() {
    let (client, ns) = gateway_with_route("rlpol").await;
    let target =
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "shop"}]);
    let policy = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "RateLimitPolicy",
               "metadata": {"name": name}, "spec": spec})
    };
    let api: Api<RateLimitPolicy> = Api::namespaced(client.clone(), &ns);
    create::<RateLimitPolicy>(
        &client,
        &ns,
        policy(
            "local",
            json!({"targetRefs": target,
            "limits": [{"requests": 10, "interval": "1s", "key": [{"type": "ClientIP"}]}]}),
        ),
    )
    .await;
    await_policy(&api, "local", "Accepted", "True", "Accepted").await;
    // The API server filled in the defaults the schema declares.
    let p = api.get("local").await.expect("policy");
    assert_eq!(
        p.spec.limits[0].algorithm,
        portico_crds::ratelimit::Algorithm::TokenBucket
    );
    assert!(p.spec.response_headers);

    create::<RateLimitPolicy>(
        &client,
        &ns,
        policy(
            "younger",
            json!({"targetRefs": target,
            "limits": [{"requests": 5, "interval": "1m"}]}),
        ),
    )
    .await;
    let m = await_policy(&api, "younger", "Accepted", "False", "Conflicted").await;
    assert!(m.contains(&format!("{ns}/local")), "{m}");

    // A global limit without a Redis (this controller has no --redis-url): Invalid, with
    // what to do about it. With its own Redis URL it is accepted.
    let gw = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]);
    create::<RateLimitPolicy>(
        &client,
        &ns,
        policy(
            "no-redis",
            json!({"targetRefs": gw,
            "limits": [{"requests": 5, "interval": "1m", "scope": "Global"}]}),
        ),
    )
    .await;
    let m = await_policy(&api, "no-redis", "Accepted", "False", "Invalid").await;
    assert!(m.contains("redisUrl") && m.contains("--redis-url"), "{m}");
    let listener = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "sectionName": "http"}]);
    create::<RateLimitPolicy>(
        &client,
        &ns,
        policy(
            "with-redis",
            json!({"targetRefs": listener,
            "global": {"redisUrl": "redis://redis.infra:6379"},
            "limits": [{"requests": 5, "interval": "1m", "scope": "Global"}]}),
        ),
    )
    .await;
    await_policy(&api, "with-redis", "Accepted", "True", "Accepted").await;
    // A Claim key with no AuthPolicy that verifies tokens: the claim has no source. (On the
    // whole Gateway, which `no-redis` does not hold: a policy that does not apply claims no
    // target.)
    create::<RateLimitPolicy>(
        &client,
        &ns,
        policy("by-claim", json!({"targetRefs": gw,
            "limits": [{"requests": 5, "interval": "1m", "key": [{"type": "Claim", "name": "sub"}]}]})),
    )
    .await;
    let m = await_policy(&api, "by-claim", "Accepted", "False", "Invalid").await;
    assert!(m.contains("jwt or introspection"), "{m}");

    let refused = |spec| refused::<RateLimitPolicy>(&client, &ns, spec);
    let m = refused(json!({"targetRefs": target,
        "limits": [{"requests": 5, "interval": "1m", "algorithm": "FixedWindow", "burst": 3}]}))
    .await;
    assert!(m.contains("burst applies only"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "limits": [{"requests": 5, "interval": "a while"}]}))
    .await;
    assert!(m.contains("duration"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "limits": [{"requests": 5, "interval": "48h"}]}))
    .await;
    assert!(m.contains("between 1ms and 24h"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "limits": [{"requests": 5, "interval": "1m", "key": [{"type": "Header"}]}]}))
    .await;
    assert!(m.contains("name is required"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "limits": [{"requests": 0, "interval": "1m"}]}))
    .await;
    assert!(m.contains("requests"), "{m}");
    let m = refused(
        json!({"targetRefs": target, "global": {"redisUrl": "http://redis:6379"},
        "limits": [{"requests": 5, "interval": "1m", "scope": "Global"}]}),
    )
    .await;
    assert!(m.contains("redis://"), "{m}");
    let m = refused(json!({"targetRefs": target,
        "limits": [{"name": "a", "requests": 5, "interval": "1m"}, {"name": "a", "requests": 1, "interval": "1s"}]})).await;
    assert!(m.contains("unique"), "{m}");
}

#[tokio::test]
async fn backend_policies_report_attachment_and_misconfiguration_and_are_validated_by_cel() {
    let (client, ns) = gateway_with_route("bepol").await;
    let policy = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "BackendPolicy",
               "metadata": {"name": name}, "spec": spec})
    };
    let svc = json!([{"group": "", "kind": "Service", "name": "svc"}]);
    let port = json!([{"group": "", "kind": "Service", "name": "svc", "sectionName": "http"}]);
    let api: Api<BackendPolicy> = Api::namespaced(client.clone(), &ns);
    create::<BackendPolicy>(
        &client,
        &ns,
        policy(
            "whole",
            json!({"targetRefs": svc, "loadBalancer": {"type": "RoundRobin"},
                   "circuitBreaker": {"maxRequests": 100},
                   "sessionPersistence": {"type": "Header", "sessionName": "x-session",
                                          "idleTimeout": "30m"}}),
        ),
    )
    .await;
    await_policy(&api, "whole", "Accepted", "True", "Accepted").await;
    create::<BackendPolicy>(&client, &ns, policy("port", json!({"targetRefs": port}))).await;
    await_policy(&api, "port", "Accepted", "True", "Accepted").await;
    create::<BackendPolicy>(
        &client,
        &ns,
        policy(
            "younger",
            json!({"targetRefs": svc, "retry": {"onConnectFailure": false,
                   "statuses": [503], "attempts": 3, "perTryTimeout": "2s"}}),
        ),
    )
    .await;
    let m = await_policy(&api, "younger", "Accepted", "False", "Conflicted").await;
    assert!(m.contains(&format!("{ns}/whole")), "{m}");
    create::<BackendPolicy>(
        &client,
        &ns,
        policy(
            "no-port",
            json!({"targetRefs": [{"group": "", "kind": "Service", "name": "svc", "sectionName": "admin"}]}),
        ),
    )
    .await;
    let m = await_policy(&api, "no-port", "Accepted", "False", "TargetNotFound").await;
    assert!(m.contains("no port named"), "{m}");

    let refused = |spec| refused::<BackendPolicy>(&client, &ns, spec);
    let m = refused(json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]})).await;
    assert!(m.contains("core Services"), "{m}");
    let m = refused(json!({"targetRefs": svc,
        "outlierDetection": {"baseEjectionTime": "10m", "maxEjectionTime": "1m"}}))
    .await;
    assert!(m.contains("must not exceed maxEjectionTime"), "{m}");
    let m = refused(json!({"targetRefs": svc, "connection": {"connectTimeout": "soon"}})).await;
    assert!(m.contains("connectTimeout is a duration"), "{m}");
    let m = refused(json!({"targetRefs": svc, "loadBalancer": {"type": "Fastest"}})).await;
    assert!(m.contains("Unsupported value"), "{m}");
    let m = refused(json!({"targetRefs": svc,
        "sessionPersistence": {"cookieConfig": {"lifetimeType": "Permanent"}}}))
    .await;
    assert!(m.contains("Permanent cookie needs absoluteTimeout"), "{m}");
    let m = refused(json!({"targetRefs": svc,
        "sessionPersistence": {"type": "Header", "sessionName": "X-Forwarded-Host"}}))
    .await;
    assert!(
        m.contains("a header the gateway reads or sets itself"),
        "{m}"
    );
    let m = refused(json!({"targetRefs": svc, "sessionPersistence": {"sessionName": "a;b"}})).await;
    assert!(m.contains("sessionName is a cookie or header name"), "{m}");
    let m = refused(
        json!({"targetRefs": svc, "loadBalancer": {"type": "ConsistentHash",
        "consistentHash": {"type": "SourceIP"}, "slowStart": {"window": "30s"}}}),
    )
    .await;
    assert!(
        m.contains("slowStart does not apply to ConsistentHash"),
        "{m}"
    );
    let m = refused(json!({"targetRefs": svc, "circuitBreaker": {"maxPendingRequests": 5}})).await;
    assert!(
        m.contains("maxPendingRequests applies only with maxConnections"),
        "{m}"
    );
    let m = refused(json!({"targetRefs": svc, "retry": {"attempts": 3}})).await;
    assert!(m.contains("need retry.statuses or retry.onReset"), "{m}");
    let m = refused(json!({"targetRefs": svc, "retry": {"statuses": [200]}})).await;
    assert!(m.contains("400"), "{m}");
    let m = refused(json!({"targetRefs": svc,
        "compression": {"contentTypes": ["text/html", "html"]}}))
    .await;
    assert!(
        m.contains("contentTypes[1]") && m.contains("should match"),
        "{m}"
    );
    let m =
        refused(json!({"targetRefs": svc, "compression": {"encodings": ["gzip", "gzip"]}})).await;
    assert!(m.contains("Duplicate value"), "{m}");
    let m = refused(json!({"targetRefs": svc, "compression": {"encodings": ["deflate"]}})).await;
    assert!(m.contains("Unsupported value"), "{m}");
    create::<BackendPolicy>(
        &client,
        &ns,
        policy(
            "compress",
            json!({"targetRefs": svc, "compression": {"encodings": ["br", "gzip"],
                "contentTypes": ["text/*", "application/*+json"], "minSize": 512}}),
        ),
    )
    .await;
}
