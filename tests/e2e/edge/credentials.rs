//! Credentials a backend could read differently from the gateway. With `allowAnonymous`, a
//! request the gateway takes for "no credentials" passes, credentials and all: if the backend
//! then reads a token the gateway never checked (a scheme it spells differently, the other
//! copy of a repeated cookie, header or query parameter), the policy is bypassed. Every such
//! request must be checked as presented, and fail when it is not one credential.

use portico_tests::auth::{HOST, Issuer, Setup, claims, policy, route};
use portico_tests::raw;
use serde_json::json;
use std::net::SocketAddr;

/// A GET of `target` with `headers` (repeated names stay repeated), over a new connection.
async fn fetch(a: SocketAddr, target: &str, headers: Vec<(&str, String)>) -> raw::RawResp {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    raw::send(a, &raw::get(target, HOST, &h)).await
}

#[tokio::test]
async fn credentials_a_backend_would_read_differently_are_refused_not_passed_as_anonymous() {
    let issuer = Issuer::new();
    let jwks = issuer.jwks().to_string();
    let docs = format!(
        "{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData: {{ops: ops-key-5f2a9c}}\n{}{}",
        route("api", "/api"),
        policy(
            "api",
            "api",
            &format!(
                "  allowAnonymous: true\n  jwt:\n    issuer: https://idp.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: '{jwks}'\n    tokenSources: [{{header: authorization, prefix: 'Bearer '}}, {{header: x-token}}, {{cookie: session}}, {{query: access_token}}]\n    claimsToHeaders: [{{claim: sub, header: x-user}}]"
            )
        ),
        route("keys", "/keys"),
        policy(
            "keys",
            "keys",
            "  allowAnonymous: true\n  apiKey: {secretRefs: [{name: keys}]}"
        ),
    );
    let s = Setup::start(&docs).await;
    let a = s.addr();
    let good = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &claims("sam"));
    // What a forger sends: admin's claims under sam's signature.
    let forged = {
        let admin = issuer.rs256(json!({"alg": "RS256", "kid": "rsa-1"}), &claims("admin"));
        let parts: Vec<&str> = good.split('.').collect();
        let admin_parts: Vec<&str> = admin.split('.').collect();
        format!("{}.{}.{}", parts[0], admin_parts[1], parts[2])
    };

    // The baseline: nothing is anonymous, the real token is the user.
    let r = fetch(a, "/api", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.all);
    let r = fetch(a, "/api", vec![("authorization", format!("Bearer {good}"))]).await;
    assert_eq!(r.status, 200, "{}", r.all);
    assert_eq!(r.json()["headers"]["x-user"], json!(["sam"]));

    // Spellings of the scheme a lenient backend takes for Bearer: checked, so the forgery
    // fails and the real token still works.
    for spelling in ["bearer ", "BEARER ", "Bearer\t", "Bearer   ", " Bearer "] {
        let r = fetch(
            a,
            "/api",
            vec![("authorization", format!("{spelling}{forged}"))],
        )
        .await;
        assert_eq!(r.status, 401, "{spelling:?}: {}", r.all);
        let r = fetch(
            a,
            "/api",
            vec![("authorization", format!("{spelling}{good}"))],
        )
        .await;
        assert_eq!(r.status, 200, "{spelling:?}: {}", r.all);
        assert_eq!(
            r.json()["headers"]["x-user"],
            json!(["sam"]),
            "{spelling:?}"
        );
    }
    // The scheme alone is a credential presented, and not a valid one.
    for bare in ["Bearer", "Bearer ", "bearer\t"] {
        let r = fetch(a, "/api", vec![("authorization", bare.to_string())]).await;
        assert_eq!(r.status, 401, "{bare:?}: {}", r.all);
    }

    // A cookie or query parameter given twice: which one the backend reads is its parser's
    // choice, so neither is taken.
    for cookies in [
        vec![("cookie", format!("session={good}; session={forged}"))],
        vec![("cookie", format!("session={forged}; session={good}"))],
        vec![
            ("cookie", format!("session={good}")),
            ("cookie", format!("session={forged}")),
        ],
        vec![("cookie", format!("theme=dark; session ={forged}"))],
    ] {
        let r = fetch(a, "/api", cookies.clone()).await;
        assert_eq!(r.status, 401, "{cookies:?}: {}", r.all);
    }
    let r = fetch(
        a,
        "/api",
        vec![("cookie", format!("theme=dark; session={good}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.all);
    for query in [
        format!("/api?access_token={good}&access_token={forged}"),
        format!("/api?access_token={forged}&access%5Ftoken={good}"),
    ] {
        let r = fetch(a, &query, vec![]).await;
        assert_eq!(r.status, 401, "{query}: {}", r.all);
    }
    let r = fetch(a, &format!("/api?access_token={good}"), vec![]).await;
    assert_eq!(r.status, 200, "{}", r.all);

    // A token header given twice.
    let r = fetch(
        a,
        "/api",
        vec![("x-token", good.clone()), ("x-token", forged.clone())],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.all);
    let r = fetch(a, "/api", vec![("x-token", good.clone())]).await;
    assert_eq!(r.status, 200, "{}", r.all);

    // An API key header given twice, or a key that is not text.
    let r = raw::send(
        a,
        &raw::get(
            "/keys",
            HOST,
            &[("x-api-key", "wrong"), ("x-api-key", "ops-key-5f2a9c")],
        ),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.all);
    let r = fetch(a, "/keys", vec![("x-api-key", "ops-key-5f2a9c".into())]).await;
    assert_eq!(r.status, 200, "{}", r.all);
    assert_eq!(r.json()["headers"]["x-portico-consumer"], json!(["ops"]));
}
