//! The JWT attack catalogue at the unit level: every case is refused for the right reason.
//! (`tests/e2e/auth.rs` sends the same tokens through a real dataplane.)

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn rsa() -> RsaKeyPair {
    RsaKeyPair::from_pkcs8(include_bytes!("../testdata/rsa-2048.pk8")).expect("test RSA key")
}

fn rsa_jwk(kid: &str) -> Value {
    let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa().public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn rs256(header: Value, claims: &Value) -> String {
    let msg = unsigned(&header, claims);
    let kp = rsa();
    let mut sig = vec![0; kp.public().modulus_len()];
    kp.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    format!("{msg}.{}", b64(&sig))
}

fn hs256(key: &[u8], header: Value, claims: &Value) -> String {
    let msg = unsigned(&header, claims);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        msg.as_bytes(),
    );
    format!("{msg}.{}", b64(tag.as_ref()))
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": NOW + 300, "iat": NOW - 10})
}

fn rules(algs: &[Alg]) -> Rules {
    Rules {
        algorithms: algs.to_vec(),
        issuer: "https://idp.test".into(),
        audiences: vec!["api".into()],
        leeway: 30,
    }
}

fn rsa_keys() -> KeySet {
    let jwks = json!({"keys": [rsa_jwk("k1")]});
    KeySet::from_jwks(jwks.to_string().as_bytes())
        .expect("jwks")
        .0
}

fn check(token: &str, keys: &KeySet, rules: &Rules) -> Result<Claims, JwtError> {
    parse(token, rules)?.verify(keys, rules, NOW)
}

#[test]
fn a_good_rs256_token_verifies() {
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
        &claims(),
    );
    let c = check(&t, &rsa_keys(), &rules(&[Alg::Rs256])).expect("valid");
    assert_eq!(c["sub"], "alice");
    // Without a kid every key of the right type is tried.
    let t = rs256(json!({"alg": "RS256"}), &claims());
    assert!(check(&t, &rsa_keys(), &rules(&[Alg::Rs256])).is_ok());
}

#[test]
fn es256_and_eddsa_verify() {
    let rng = SystemRandom::new();
    let pk8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("ec key");
    let kp = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pk8.as_ref(),
        &rng,
    )
    .expect("ec key");
    let p = kp.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e1", "x": b64(&p[1..33]), "y": b64(&p[33..65])}]});
    let keys = KeySet::from_jwks(jwks.to_string().as_bytes())
        .expect("jwks")
        .0;
    let msg = unsigned(&json!({"alg": "ES256", "kid": "e1"}), &claims());
    let sig = kp.sign(&rng, msg.as_bytes()).expect("sign");
    let t = format!("{msg}.{}", b64(sig.as_ref()));
    assert!(check(&t, &keys, &rules(&[Alg::Es256])).is_ok());

    let pk8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed key");
    let kp = signature::Ed25519KeyPair::from_pkcs8(pk8.as_ref()).expect("ed key");
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": b64(kp.public_key().as_ref())}]});
    let keys = KeySet::from_jwks(jwks.to_string().as_bytes())
        .expect("jwks")
        .0;
    let msg = unsigned(&json!({"alg": "EdDSA", "kid": "d1"}), &claims());
    let t = format!("{msg}.{}", b64(kp.sign(msg.as_bytes()).as_ref()));
    assert!(check(&t, &keys, &rules(&[Alg::EdDsa])).is_ok());
}

#[test]
fn the_attack_catalogue_is_refused() {
    let keys = rsa_keys();
    let r = rules(&[Alg::Rs256]);
    let good = || claims();
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims();
        c.as_object_mut().expect("object").remove(k);
        c
    };
    // alg none, and none in other spellings.
    for alg in ["none", "None", "NONE", ""] {
        let t = format!("{}.", unsigned(&json!({"alg": alg, "kid": "k1"}), &good()));
        assert_eq!(
            check(&t, &keys, &r).err(),
            Some(JwtError::Algorithm),
            "{alg}"
        );
    }
    // HS256 signed with the RSA public key's bytes (the classic key confusion).
    let public_n = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa().public()).n;
    let t = hs256(&public_n, json!({"alg": "HS256", "kid": "k1"}), &good());
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Algorithm));
    // Even with HS256 allowed, an RSA key is never an HMAC secret.
    let both = rules(&[Alg::Rs256, Alg::Hs256]);
    assert_eq!(check(&t, &keys, &both).err(), Some(JwtError::UnknownKey));
    // Time.
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("exp", json!(NOW - 31)),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Expired));
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("exp", json!(NOW - 29)),
    );
    assert!(check(&t, &keys, &r).is_ok(), "within the leeway");
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("nbf", json!(NOW + 60)),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::NotYetValid));
    let t = rs256(json!({"alg": "RS256", "kid": "k1"}), &without("exp"));
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::NoExpiry));
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("exp", json!("tomorrow")),
    );
    assert!(matches!(check(&t, &keys, &r), Err(JwtError::Malformed(_))));
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("iat", json!(NOW + 3600)),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::IssuedInFuture));
    // Identity.
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("iss", json!("https://evil.test")),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Issuer));
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1"}),
        &with("aud", json!(["other"])),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Audience));
    let t = rs256(json!({"alg": "RS256", "kid": "k1"}), &without("aud"));
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Audience));
    // Keys.
    let t = rs256(json!({"alg": "RS256", "kid": "k2"}), &good());
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::UnknownKey));
    for kid in [
        "../../etc/passwd",
        "k1' OR '1'='1",
        "k1;drop table keys",
        "/dev/null",
        "a b",
        "k1\"",
        "",
    ] {
        let t = rs256(json!({"alg": "RS256", "kid": kid}), &good());
        assert_eq!(
            check(&t, &keys, &r).err(),
            Some(JwtError::BadKid),
            "{kid:?}"
        );
    }
    let t = rs256(json!({"alg": "RS256", "kid": 7}), &good());
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::BadKid));
    // Embedded keys and key URLs.
    for (field, value) in [
        ("jwk", rsa_jwk("k1")),
        ("jku", json!("https://evil.test/jwks.json")),
        ("x5u", json!("https://evil.test/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut h = json!({"alg": "RS256", "kid": "k1"});
        h[field] = value;
        let t = rs256(h, &good());
        assert!(
            matches!(check(&t, &keys, &r), Err(JwtError::EmbeddedKey(_))),
            "{field}"
        );
    }
    let t = rs256(
        json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        &good(),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Critical));
    // Tampering: the payload changed after signing, or the signature.
    let t = rs256(json!({"alg": "RS256", "kid": "k1"}), &good());
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let forged = with("sub", json!("admin"));
    parts[1] = b64(forged.to_string().as_bytes());
    assert_eq!(
        check(&parts.join("."), &keys, &r).err(),
        Some(JwtError::Signature)
    );
    let mut sig = URL_SAFE_NO_PAD
        .decode(t.rsplit('.').next().expect("sig"))
        .expect("b64");
    sig[10] ^= 1;
    let (head, _) = t.rsplit_once('.').expect("dots");
    assert_eq!(
        check(&format!("{head}.{}", b64(&sig)), &keys, &r).err(),
        Some(JwtError::Signature)
    );
    // Size and shape.
    let big = format!("{}.{}.{}", "a".repeat(50_000), "b".repeat(50_000), "c");
    assert_eq!(check(&big, &keys, &r).err(), Some(JwtError::TooLarge));
    for junk in ["", "a", "a.b", "a.b.c.d", "a.b.c.d.e", "!!.??.**"] {
        assert!(check(junk, &keys, &r).is_err(), "{junk}");
    }
}

#[test]
fn hmac_keys_only_from_configuration() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let keys = KeySet::hmac(secret.clone());
    let r = rules(&[Alg::Hs256]);
    let t = hs256(&secret, json!({"alg": "HS256"}), &claims());
    assert!(check(&t, &keys, &r).is_ok());
    let t = hs256(
        b"another key that is long enough!",
        json!({"alg": "HS256"}),
        &claims(),
    );
    assert_eq!(check(&t, &keys, &r).err(), Some(JwtError::Signature));
    // An empty (unresolved) key verifies nothing.
    let t = hs256(b"", json!({"alg": "HS256"}), &claims());
    assert!(check(&t, &KeySet::hmac(Vec::new()), &r).is_err());
    // A JWKS never supplies symmetric keys.
    let jwks = json!({"keys": [{"kty": "oct", "k": b64(&secret), "kid": "s"}]});
    let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes()).expect("jwks");
    assert!(set.is_empty());
    assert_eq!(skipped, 1);
}

#[test]
fn key_sets_skip_what_they_cannot_use() {
    let jwks = json!({"keys": [
        rsa_jwk("ok"),
        {"kty": "RSA", "kid": "short", "n": b64(&[1; 128]), "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_jwk("x")["n"], "e": "AQAB"},
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": rsa_jwk("x")["n"], "e": "AQAB"},
        "garbage"
    ]});
    let (set, skipped) = KeySet::from_jwks(jwks.to_string().as_bytes()).expect("jwks");
    assert_eq!((set.len(), skipped), (1, 5));
    assert!(KeySet::from_jwks(b"<html>").is_err());
    assert!(KeySet::from_jwks(b"{\"keys\": 3}").is_err());
}
