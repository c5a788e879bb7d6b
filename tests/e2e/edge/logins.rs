//! Password verification under attack: a flood of wrong passwords neither takes the gateway's
//! cores nor locks real users out, and credentials that cannot be read are wrong credentials.

use portico_tests::auth::{HOST, Setup, policy, route};
use portico_tests::raw;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

fn docs(hash: &str, anonymous: bool) -> String {
    let anon = if anonymous {
        "  allowAnonymous: true\n"
    } else {
        ""
    };
    format!(
        "{}{}{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: default}}\nstringData:\n  htpasswd: |\n    ann:{hash}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: keys, namespace: default}}\nstringData: {{ops: ops-key-5f2a9c}}\n",
        route("staff", "/staff"),
        policy(
            "staff",
            "staff",
            &format!(
                "{anon}  basic: {{secretRef: {{name: users}}, realm: staff}}\n  apiKey: {{secretRefs: [{{name: keys}}]}}"
            )
        ),
        route("open", "/"),
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

/// One request from `source` with raw header bytes; the status.
async fn from(source: IpAddr, to: SocketAddr, header: &[u8]) -> u16 {
    let Ok(sock) = TcpSocket::new_v4() else {
        return 0;
    };
    if sock.bind(SocketAddr::new(source, 0)).is_err() {
        return 0;
    }
    let Ok(mut s) = sock.connect(to).await else {
        return 0;
    };
    let mut req =
        format!("GET /staff HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n").into_bytes();
    req.extend_from_slice(header);
    req.extend_from_slice(b"\r\n\r\n");
    if s.write_all(&req).await.is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(portico_tests::DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_does_not_lock_out_real_users() {
    // A low cost keeps the debug build quick; what is tested is that the flood's cost is
    // bounded per client and the real user gets through, not how long bcrypt takes.
    let hash = bcrypt::hash("correct horse", 6).expect("hash");
    let s = Setup::start(&docs(&hash, false)).await;
    let a = s.addr();
    let attacker = portico_tests::loopback_ip();
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let header = format!("Authorization: {}", basic("ann", &format!("guess-{i}")));
            tokio::spawn(async move { from(attacker, a, header.as_bytes()).await })
        })
        .collect();
    // A real user logs in while the flood runs (retrying after a 503, as Retry-After says).
    let user = portico_tests::loopback_ip();
    let header = format!("Authorization: {}", basic("ann", "correct horse"));
    portico_tests::await_some("the real user's login", || async {
        match from(user, a, header.as_bytes()).await {
            200 => Some(()),
            503 => None,
            other => panic!("the real user got {other}"),
        }
    })
    .await;
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.expect("join"));
    }
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429 | 503)),
        "{statuses:?}"
    );
    assert!(
        // The budget (10), plus at most one verification in flight per slot.
        statuses.iter().filter(|s| **s == 401).count() <= 12,
        "at most the failure budget is verified: {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Throttled or busy answers say when to come back.
    let r = raw::send(
        a,
        &raw::get("/staff", HOST, &[("authorization", &basic("ann", "again"))]),
    )
    .await;
    assert!(matches!(r.status, 401 | 429), "{}", r.all);
}

#[tokio::test]
async fn credentials_that_cannot_be_read_are_wrong_not_missing() {
    let hash = bcrypt::hash("pw", 4).expect("hash");
    // allowAnonymous: a request without credentials passes; one with unreadable credentials
    // must not.
    let s = Setup::start(&docs(&hash, true)).await;
    let a = s.addr();
    let me = portico_tests::loopback_ip();
    assert_eq!(from(me, a, b"X-Nothing: 1").await, 200, "anonymous");
    for header in [
        &b"Authorization: Basic \xff\xfe"[..],
        b"Authorization: Basic /w==",
        b"Authorization: Basic bm9jb2xvbg==",
        b"Authorization: Basic !!!",
        b"X-Api-Key: \xffkey",
        // The scheme alone, or with a tab before wrong credentials: Basic all the same.
        b"Authorization: Basic",
        b"Authorization: basic\t",
        b"Authorization: Basic\tYW5uOndyb25n",
    ] {
        assert_eq!(
            from(me, a, header).await,
            401,
            "{}",
            String::from_utf8_lossy(header)
        );
    }
    let ok = format!("Authorization: {}", basic("ann", "pw"));
    assert_eq!(from(me, a, ok.as_bytes()).await, 200);
    // Spelled as a lenient server reads it, the right password still passes.
    let tab = basic("ann", "pw").replacen("Basic ", "bASIC\t", 1);
    assert_eq!(
        from(me, a, format!("Authorization: {tab}").as_bytes()).await,
        200
    );
}
