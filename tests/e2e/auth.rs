//! AuthPolicy enforced by a real dataplane (standalone mode) in front of a real echo backend,
//! with a real identity process (`portico-authd`: JWKS, introspection, external auth), all on
//! their own 127.0.0.x addresses.

use portico_tests::auth::{AuthD, Issuer, Setup, bearer, claims, now, policy, route};
use portico_tests::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn jwt_from_a_jwks_server_and_the_attack_catalogue() {
    let issuer = Issuer::new();
    let idp = AuthD::start(&issuer.jwks());
    let docs = format!(
        "{}{}",
        route("api", "/"),
        policy(
            "jwt",
            "api",
            &format!(
                r#"  jwt:
    issuer: https://idp.test
    audiences: [api]
    algorithms: [RS256, ES256]
    jwksUri: {}
    jwksRefreshSeconds: 10
    claimsToHeaders: [{{claim: sub, header: x-user}}]
    stripToken: true"#,
                idp.url("/jwks")
            )
        )
    );
    let s = Setup::start(&docs).await;

    // Good tokens, both algorithms; the claim is forwarded, the token is not.
    let rs = issuer.rs256(
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}),
        &claims("alice"),
    );
    let es = issuer.es256(json!({"alg": "ES256", "kid": "ec-1"}), &claims("bob"));
    let r = s.get("/orders", &[("authorization", &bearer(&rs))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-user").as_deref(), Some("alice"));
    assert_eq!(r.seen_header("authorization"), None, "token stripped");
    let r = s.get("/orders", &[("authorization", &bearer(&es))]).await;
    assert_eq!(r.seen_header("x-user").as_deref(), Some("bob"));
    // A client cannot set the identity headers itself.
    let r = s
        .get(
            "/orders",
            &[("authorization", &bearer(&es)), ("x-user", "root")],
        )
        .await;
    assert_eq!(r.seen_header("x-user").as_deref(), Some("bob"));

    // No token: 401 with a Bearer challenge.
    let r = s.get("/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );

    // The catalogue: every one is refused with invalid_token and never reaches the backend.
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims("mallory");
        c[k] = v;
        c
    };
    let mut no_exp = claims("mallory");
    no_exp.as_object_mut().expect("object").remove("exp");
    // Another identity provider: its EC key is its own (the RSA key is the shared test key,
    // so RSA tokens are not used to play the attacker).
    let attacker = Issuer::new();
    let mut attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.",
                Issuer::unsigned(&json!({"alg": "none", "kid": "rsa-1"}), &claims("mallory"))
            ),
        ),
        (
            "HS256 signed with the RSA public key",
            Issuer::hs256(
                &issuer.rsa_public_bytes(),
                json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims("mallory"),
            ),
        ),
        (
            "expired",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "rsa-1"}),
                &with("exp", json!(now() - 120)),
            ),
        ),
        (
            "not yet valid",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "rsa-1"}),
                &with("nbf", json!(now() + 600)),
            ),
        ),
        (
            "missing exp",
            issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &no_exp),
        ),
        (
            "wrong iss",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "rsa-1"}),
                &with("iss", json!("https://evil.test")),
            ),
        ),
        (
            "wrong aud",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "rsa-1"}),
                &with("aud", json!("other")),
            ),
        ),
        (
            "unknown kid",
            attacker.es256(json!({"alg": "ES256", "kid": "ec-2"}), &claims("mallory")),
        ),
        (
            "signed by another key",
            attacker.es256(json!({"alg": "ES256", "kid": "ec-1"}), &claims("mallory")),
        ),
        (
            "kid with a path",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "../../../dev/null"}),
                &claims("mallory"),
            ),
        ),
        (
            "kid with SQL",
            issuer.rs256(
                json!({"alg": "RS256", "kid": "x' UNION SELECT 'key"}),
                &claims("mallory"),
            ),
        ),
        (
            "embedded jwk",
            attacker.es256(
                json!({"alg": "ES256", "kid": "ec-1", "jwk": attacker.jwks()["keys"][1]}),
                &claims("mallory"),
            ),
        ),
        (
            "jku pointing at the attacker",
            attacker.es256(
                json!({"alg": "ES256", "kid": "ec-1", "jku": idp.url("/jwks")}),
                &claims("mallory"),
            ),
        ),
        (
            "x5u",
            attacker.es256(
                json!({"alg": "ES256", "kid": "ec-1", "x5u": "http://127.0.0.1/cert"}),
                &claims("mallory"),
            ),
        ),
    ];
    let good = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &claims("mallory"));
    let (head, sig) = good.rsplit_once('.').expect("three parts");
    let mut sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
        .expect("b64");
    sig[7] ^= 0x20;
    attacks.push(("tampered signature", format!("{head}.{}", auth::b64(&sig))));
    let (_, rest) = good.split_once('.').expect("parts");
    let forged = Issuer::unsigned(
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &with("sub", json!("admin")),
    );
    attacks.push((
        "tampered payload",
        format!("{}.{}", forged, rest.split_once('.').expect("sig").1),
    ));

    let before = s.echo.requests().await;
    for (what, token) in &attacks {
        let r = s.get("/orders", &[("authorization", &bearer(token))]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico\", error=\"invalid_token\""),
            "{what}"
        );
    }
    // A 100 KB token: refused before it is read (the header limit answers 431).
    let huge = format!("{}.{}.{}", "a".repeat(50_000), "b".repeat(50_000), "c");
    let r = s.get("/orders", &[("authorization", &bearer(&huge))]).await;
    assert!(r.status == 401 || r.status == 431, "{}", r.status);
    assert_eq!(
        s.echo.requests().await,
        before,
        "no attack reached the backend"
    );

    // The JWKS endpoint failing in every way keeps the cached keys working.
    for mode in ["500", "timeout", "garbage"] {
        idp.jwks_mode(mode).await;
        let fetches = idp.stat("jwksFetches").await;
        await_some(&format!("a JWKS fetch while it answers {mode}"), || async {
            // An unknown kid asks for a fetch (rate-limited); the refresher comes anyway.
            let probe = attacker.rs256(json!({"alg": "RS256", "kid": "rsa-9"}), &claims("x"));
            let _ = s
                .get("/orders", &[("authorization", &bearer(&probe))])
                .await;
            (idp.stat("jwksFetches").await > fetches).then_some(())
        })
        .await;
        let fresh = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &claims(mode));
        let r = s
            .get("/orders", &[("authorization", &bearer(&fresh))])
            .await;
        assert_eq!(r.status, 200, "keys kept while the JWKS answers {mode}");
    }
    // After the timeout has run out too, the dataplane is still fine.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let fresh = issuer.es256(json!({"alg": "ES256", "kid": "ec-1"}), &claims("late"));
    let r = s
        .get("/orders", &[("authorization", &bearer(&fresh))])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        s.portico.metrics().await.contains("portico_"),
        "admin still answers"
    );

    let mut secrets: Vec<&str> = attacks.iter().map(|(_, t)| t.as_str()).collect();
    secrets.extend([rs.as_str(), es.as_str(), fresh.as_str()]);
    s.assert_not_logged(&secrets);
    // The access log says why each was refused.
    for reason in [
        "auth=expired_token",
        "auth=wrong_audience",
        "auth=bad_signature",
    ] {
        s.portico.await_logged(reason).await;
    }
}

#[tokio::test]
async fn api_keys_basic_auth_and_invalid_policies() {
    let hash = bcrypt::hash("open sesame", 4).expect("bcrypt");
    let keys_secret = |with_bob: bool| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData:\n  alice: alice-key-2d1c6f0e9b\n{}",
            if with_bob {
                "  bob: bob-key-77aa01f3c4\n"
            } else {
                ""
            }
        )
    };
    let docs = |with_bob: bool| {
        [
            route("keys", "/keys"),
            route("querykeys", "/q"),
            route("basic", "/basic"),
            route("basicfwd", "/fwd"),
            route("broken", "/broken"),
            route("open", "/open"),
            keys_secret(with_bob),
            policy("keys", "keys", "  apiKey: {secretRefs: [{name: keys}]}"),
            policy(
                "querykeys",
                "querykeys",
                "  apiKey: {secretRefs: [{name: keys}], query: api_key}\n  consumerHeader: x-consumer",
            ),
            policy(
                "basic",
                "basic",
                "  basic: {secretRef: {name: users}, realm: staff}",
            ),
            policy(
                "basicfwd",
                "basicfwd",
                "  basic: {secretRef: {name: users}, realm: staff, forwardCredentials: true}",
            ),
            policy(
                "broken",
                "broken",
                "  jwt: {issuer: x, algorithms: [RS256], jwks: 'not json'}",
            ),
            format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: default}}\nstringData:\n  htpasswd: |\n    ann:{hash}\n"
            ),
        ]
        .concat()
    };
    let s = Setup::start(&docs(true)).await;

    let r = s
        .get(
            "/keys/a",
            &[
                ("x-api-key", "alice-key-2d1c6f0e9b"),
                ("x-portico-consumer", "root"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.seen_header("x-portico-consumer").as_deref(),
        Some("alice")
    );
    assert_eq!(r.seen_header("x-api-key"), None, "the key is not forwarded");
    await_some("the consumer in the access log", || async {
        s.portico
            .proc
            .logs()
            .lines()
            .any(|l| l.contains("path=/keys/a") && l.contains("consumer=\"alice\""))
            .then_some(())
    })
    .await;
    let r = s
        .get("/keys/a", &[("x-api-key", "alice-key-2d1c6f0e9c")])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"portico\"")
    );
    let r = s.get("/keys/a", &[]).await;
    assert_eq!(r.status, 401);

    let r = s
        .get(
            "/q/x?api_key=bob-key-77aa01f3c4&page=2",
            &[("x-portico-consumer", "root")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("x-consumer").as_deref(), Some("bob"));
    assert_eq!(
        r.seen_header("x-portico-consumer"),
        None,
        "the default consumer header is never the client's, even where a policy uses another"
    );
    assert_eq!(
        r.json()["query"],
        "page=2",
        "the key is taken out of the query"
    );
    let r = s.get("/q/x?page=3&api%5Fkey=bob-key-77aa01f3c4", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["query"],
        "page=3",
        "an encoded name is the same parameter"
    );

    let basic = |user: &str, pw: &str| {
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{pw}")
            )
        )
    };
    let good = basic("ann", "open sesame");
    let r = s.get("/basic", &[("authorization", &good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("x-portico-consumer").as_deref(), Some("ann"));
    assert_eq!(
        r.seen_header("authorization"),
        None,
        "the password stays with the gateway"
    );
    let r = s.get("/fwd", &[("authorization", &good)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen_header("authorization").as_deref(),
        Some(good.as_str()),
        "forwardCredentials keeps it"
    );
    let r = s
        .get(
            "/basic",
            &[("authorization", &basic("ann", "open sesame!"))],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    let r = s
        .get(
            "/basic",
            &[("authorization", &basic("nobody", "open sesame"))],
        )
        .await;
    assert_eq!(r.status, 401);

    // Decisions are counted per policy.
    let metrics = s.portico.metrics().await;
    for series in [
        r#"portico_auth_decisions_total{policy="default/keys",decision="allowed"}"#,
        r#"portico_auth_decisions_total{policy="default/keys",decision="unauthenticated"}"#,
        r#"portico_auth_decisions_total{policy="default/basic",decision="allowed"}"#,
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{series} missing"));
        assert!(!line.ends_with(" 0"), "{line}");
    }

    // An invalid policy refuses its route (500) and leaves the others alone.
    let r = s.get("/broken", &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(s.get("/open", &[]).await.status, 200);

    // A key removed from the Secret stops working with the next snapshot.
    s.rewrite(&docs(false));
    await_some("bob's key to stop working", || async {
        let r = s.get("/q/x?api_key=bob-key-77aa01f3c4", &[]).await;
        (r.status == 401).then_some(())
    })
    .await;
    let r = s
        .get("/keys/a", &[("x-api-key", "alice-key-2d1c6f0e9b")])
        .await;
    assert_eq!(r.status, 200, "alice's key still works");

    s.assert_not_logged(&[
        "alice-key-2d1c6f0e9b",
        "bob-key-77aa01f3c4",
        "open sesame",
        &good[6..],
        &hash,
    ]);
}

#[tokio::test]
async fn external_auth_and_token_introspection() {
    let idp = AuthD::start(&json!({"keys": []}));
    let ext = |name: &str, extra: &str| {
        policy(
            name,
            name,
            &format!(
                "  external:\n    url: {}\n    headersToSend: [x-ext-token]\n    headersToBackend: [x-auth-user]\n    timeoutMs: 1000\n{extra}",
                idp.url("/ext")
            ),
        )
    };
    let docs = format!(
        "{}{}{}{}{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: idp-client, namespace: default}}\nstringData: {{clientId: portico, clientSecret: portico-secret}}\n{}",
        route("ext", "/ext"),
        route("extopen", "/extopen"),
        route("intro", "/intro"),
        ext("ext", ""),
        ext("extopen", "    failOpen: true"),
        policy(
            "intro",
            "intro",
            &format!(
                "  introspection: {{url: {}, clientSecretRef: {{name: idp-client}}, cacheSeconds: 60}}",
                idp.url("/introspect")
            )
        ),
        "",
    );
    let s = Setup::start(&docs).await;

    let r = s.get("/ext/a?x=1", &[("x-ext-token", "good")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-auth-user").as_deref(), Some("ext-alice"));
    assert_eq!(r.seen_header("x-not-copied"), None);
    // The service's word alone: a client's own copy of a header the service hands the
    // backend never reaches it, whether the answer sets it or not (failing open).
    let r = s
        .get(
            "/ext/a",
            &[("x-ext-token", "good"), ("x-auth-user", "admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-auth-user"], json!(["ext-alice"]));
    let r = s
        .get(
            "/extopen/a",
            &[("x-ext-token", "broken"), ("x-auth-user", "admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-auth-user"), None);
    // The service's denial goes to the client as it gave it.
    let before = s.echo.requests().await;
    let r = s.get("/ext/a", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Ext realm=\"ext\""));
    assert_eq!(r.text(), "ext says no\n");
    // Slow (past the timeout) or broken: fail closed with 503...
    assert_eq!(
        s.get("/ext/a", &[("x-ext-token", "slow")]).await.status,
        503
    );
    assert_eq!(
        s.get("/ext/a", &[("x-ext-token", "broken")]).await.status,
        503
    );
    assert_eq!(
        s.echo.requests().await,
        before,
        "nothing denied reached the backend"
    );
    // ...unless the policy fails open.
    assert_eq!(
        s.get("/extopen/a", &[("x-ext-token", "broken")])
            .await
            .status,
        200
    );

    // Introspection: active tokens pass with their subject; answers are cached.
    let r = s
        .get("/intro", &[("authorization", "Bearer active-carol")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.seen_header("x-portico-consumer").as_deref(),
        Some("carol")
    );
    let calls = idp.stat("introspections").await;
    for _ in 0..5 {
        assert_eq!(
            s.get("/intro", &[("authorization", "Bearer active-carol")])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        idp.stat("introspections").await,
        calls,
        "served from the cache"
    );
    let r = s
        .get("/intro", &[("authorization", "Bearer revoked-token")])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"invalid_token\"")
    );
    s.assert_not_logged(&["active-carol", "revoked-token", "portico-secret"]);
}

#[tokio::test]
async fn authorization_rules_anonymous_and_401_versus_403() {
    let issuer = Issuer::new();
    let jwks = issuer.jwks().to_string();
    let body = format!(
        r#"  allowAnonymous: true
  jwt: {{issuer: https://idp.test, audiences: [api], algorithms: [RS256], jwks: '{jwks}'}}
  authorization:
    rules:
    - {{anonymous: true, methods: [GET], paths: [/docs]}}
    - {{scopes: [read], methods: [GET]}}
    - {{claims: [{{name: roles, values: [admin]}}]}}
    - {{consumers: [ops], clientCidrs: [127.0.0.0/8]}}"#
    );
    let docs = format!("{}{}", route("api", "/"), policy("rules", "api", &body));
    let s = Setup::start(&docs).await;
    let token = |extra: serde_json::Value, sub: &str| {
        let mut c = claims(sub);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        bearer(&issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &c))
    };
    // Anonymous: only GET /docs.
    assert_eq!(s.get("/docs/intro", &[]).await.status, 200);
    let r = s.send("POST", "/docs/intro", &[]).await;
    assert_eq!(r.status, 401, "anonymous and not allowed: authenticate");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(s.get("/orders", &[]).await.status, 401);
    // Authenticated: scope read may GET; writing needs the admin role.
    let reader = token(json!({"scope": "read"}), "rita");
    assert_eq!(
        s.get("/orders", &[("authorization", &reader)]).await.status,
        200
    );
    let r = s
        .send("DELETE", "/orders/1", &[("authorization", &reader)])
        .await;
    assert_eq!(r.status, 403, "authenticated but not allowed: forbidden");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"insufficient_scope\"")
    );
    // A token without the scope a matching rule asks for: the 403 names it (RFC 6750 §3).
    let nobody = token(json!({}), "nobody");
    let r = s.get("/orders", &[("authorization", &nobody)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"insufficient_scope\", scope=\"read\"")
    );
    let admin = token(json!({"roles": ["user", "admin"]}), "adam");
    assert_eq!(
        s.send("DELETE", "/orders/1", &[("authorization", &admin)])
            .await
            .status,
        200
    );
    // A consumer rule with a client range (the tests run on 127.0.0.0/8).
    let ops = token(json!({}), "ops");
    assert_eq!(
        s.send("PUT", "/x", &[("authorization", &ops)]).await.status,
        200
    );
    // A bad token is refused even though anonymous access is allowed.
    assert_eq!(
        s.get("/docs/intro", &[("authorization", "Bearer not.a.token")])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn tokens_from_a_cookie_a_query_or_another_header_and_keys_over_https() {
    // The JWKS is served over HTTPS; the dataplane trusts the test CA through SSL_CERT_FILE,
    // the way a container trusts its CA bundle.
    let issuer = Issuer::new();
    let (idp, ca_pem) = AuthD::start_https(&issuer.jwks());
    let ca = TempDir::new("ca");
    ca.write("ca.pem", &ca_pem);
    let ca_file = ca.path().join("ca.pem");
    let docs = format!(
        "{}{}",
        route("api", "/"),
        policy(
            "sources",
            "api",
            &format!(
                r#"  jwt:
    issuer: https://idp.test
    audiences: [api]
    algorithms: [RS256]
    jwksUri: {}
    tokenSources: [{{cookie: session}}, {{query: access_token}}, {{header: x-token}}]
    stripToken: true"#,
                idp.url("/jwks").replace("http://", "https://")
            )
        )
    );
    let s = Setup::start_with_env(&docs, &[("SSL_CERT_FILE", &ca_file)]).await;
    let token = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &claims("sam"));

    let r = s
        .get(
            "/a",
            &[("cookie", &format!("theme=dark; session={token}; lang=en"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen_header("x-portico-consumer").as_deref(), Some("sam"));
    assert_eq!(
        r.seen_header("cookie").as_deref(),
        Some("theme=dark; lang=en"),
        "only the token's cookie is stripped"
    );
    let r = s.get(&format!("/a?page=1&access_token={token}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "page=1");
    let r = s.get("/a", &[("x-token", &token)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen_header("x-token"), None);
    // The Authorization header is not a source of this policy.
    assert_eq!(
        s.get("/a", &[("authorization", &bearer(&token))])
            .await
            .status,
        401
    );
    // The keys could only have come from the https JWKS: the policy has no other source.
}

#[tokio::test]
async fn introspection_answers_are_cached_no_longer_than_the_token_lives() {
    let idp = AuthD::start(&json!({"keys": []}));
    let docs = format!(
        "{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: idp-client, namespace: default}}\nstringData: {{clientId: portico, clientSecret: portico-secret}}\n",
        route("intro", "/"),
        policy(
            "intro",
            "intro",
            &format!(
                "  introspection: {{url: {}, clientSecretRef: {{name: idp-client}}, cacheSeconds: 600}}",
                idp.url("/introspect")
            )
        ),
    );
    let s = Setup::start(&docs).await;
    // `short-` tokens expire two seconds after each introspection.
    let auth = [("authorization", "Bearer short-dana")];
    assert_eq!(s.get("/", &auth).await.status, 200);
    let first = idp.stat("introspections").await;
    assert_eq!(s.get("/", &auth).await.status, 200);
    assert_eq!(
        idp.stat("introspections").await,
        first,
        "cached while the token lives"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.get("/", &auth).await.status, 200);
    assert_eq!(
        idp.stat("introspections").await,
        first + 1,
        "asked again once the token's exp passed, although cacheSeconds is 600"
    );
}

/// Standalone mode and an AuthPolicy it cannot read (a JWT algorithm of a newer release,
/// `ES512`): already fail-closed, because a manifest that does not decode fails the whole
/// load. A running gateway keeps its last good configuration, so the route stays protected by
/// the policy's previous version and is never served open; a gateway cannot start on it. Under
/// `--unknown-fields warn`, a spec field this version does not know refuses the route (500)
/// rather than being dropped from the policy.
#[tokio::test]
async fn a_policy_standalone_mode_cannot_read_never_opens_its_route() {
    const KEY: &str = "ops-key-5f2a9c";
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData: {{ops: {KEY}}}\n"
    );
    let api_key = "  apiKey: {secretRefs: [{name: keys}]}";
    let docs = |body: &str| {
        format!(
            "{}{secret}{}",
            route("api", "/"),
            policy("guard", "api", body)
        )
    };
    let s = Setup::start(&docs(api_key)).await;
    assert_eq!(s.get("/", &[]).await.status, 401);
    assert_eq!(s.get("/", &[("x-api-key", KEY)]).await.status, 200);

    let es512 = docs(&format!(
        "{api_key}\n  jwt: {{issuer: 'https://idp.test', algorithms: [ES512], jwksUri: 'https://idp.test/jwks'}}"
    ));
    s.rewrite(&es512);
    s.portico.await_logged("configuration rejected").await;
    let logs = s.portico.proc.logs();
    assert!(
        logs.contains("AuthPolicy guard") && logs.contains("ES512"),
        "{logs}"
    );
    for _ in 0..10 {
        assert_eq!(s.get("/", &[]).await.status, 401, "still protected");
        assert_eq!(s.get("/", &[("x-api-key", KEY)]).await.status, 200);
    }

    // Nothing starts on it.
    let dir = TempDir::new("unreadable-policy");
    dir.write(
        "config.yaml",
        &portico_tests::auth::config(s.port, s.echo.addr, &es512),
    );
    let stderr = Portico::refused_start(dir.path());
    assert!(
        stderr.contains("AuthPolicy guard") && stderr.contains("ES512"),
        "{stderr}"
    );

    // A mechanism it does not know, allowed to load: the route refuses rather than going
    // without it.
    let mtls = docs(&format!("{api_key}\n  mtls: {{caSecretRef: {{name: ca}}}}"));
    let w = Setup::start_with_args(&mtls, &["--unknown-fields", "warn"]).await;
    assert_eq!(w.get("/", &[]).await.status, 500);
    assert_eq!(w.get("/", &[("x-api-key", KEY)]).await.status, 500);
    let logs = w.portico.proc.logs();
    assert!(
        logs.contains("spec.mtls") && logs.contains("Unreadable"),
        "{logs}"
    );
}
