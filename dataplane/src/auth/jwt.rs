//! JSON Web Token verification (RFC 7515, 7518, 7519), strict by construction:
//!
//! - the header's `alg` must be on the policy's allow-list; `none` is not an algorithm here;
//! - a key is only ever used with the algorithm family of its type (an RSA public key can never
//!   serve as an HMAC secret), and HMAC keys only come from a Secret;
//! - tokens naming their own keys (`jwk`, `jku`, `x5u`, `x5c`) or critical extensions (`crit`)
//!   are refused: keys come from configuration only;
//! - `exp` is required; `nbf` and `iat` are checked when present; `iss` always, `aud` when the
//!   policy lists audiences; all with the policy's leeway;
//! - tokens over [`MAX_TOKEN_BYTES`] are refused before any decoding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Longer tokens are refused unread (real ones are well under 4 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            _ => return None,
        })
    }

    fn is_hmac(self) -> bool {
        matches!(self, Self::Hs256 | Self::Hs384 | Self::Hs512)
    }
}

/// Why a token was refused. The text goes to debug logs and never contains the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("token names its own keys ({0}); keys come from configuration only")]
    EmbeddedKey(&'static str),
    #[error("token has critical extensions")]
    Critical,
    #[error("invalid key id")]
    BadKid,
    #[error("no key for this token")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token has no exp")]
    NoExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
}

impl JwtError {
    /// A short code for the access log (`auth=expired_token`).
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed(_) => "malformed_token",
            JwtError::Algorithm => "algorithm_not_allowed",
            JwtError::EmbeddedKey(_) => "embedded_key",
            JwtError::Critical => "critical_extension",
            JwtError::BadKid => "bad_kid",
            JwtError::UnknownKey => "unknown_key",
            JwtError::Signature => "bad_signature",
            JwtError::NoExpiry => "no_expiry",
            JwtError::Expired => "expired_token",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::Issuer => "wrong_issuer",
            JwtError::Audience => "wrong_audience",
        }
    }
}

/// A public key (or HMAC secret) and what it may verify.
#[derive(Clone)]
pub enum VerifyKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
    Hmac(Arc<[u8]>),
}

impl std::fmt::Debug for VerifyKey {
    // The HMAC secret is never printed; public keys are not worth the noise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyKey::Rsa { .. } => "Rsa",
            VerifyKey::P256(_) => "P256",
            VerifyKey::P384(_) => "P384",
            VerifyKey::Ed25519(_) => "Ed25519",
            VerifyKey::Hmac(_) => "Hmac(<redacted>)",
        })
    }
}

impl VerifyKey {
    fn fits(&self, alg: Alg) -> bool {
        use Alg::*;
        matches!(
            (self, alg),
            (
                VerifyKey::Rsa { .. },
                Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512
            ) | (VerifyKey::P256(_), Es256)
                | (VerifyKey::P384(_), Es384)
                | (VerifyKey::Ed25519(_), EdDsa)
                | (VerifyKey::Hmac(_), Hs256 | Hs384 | Hs512)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        use Alg::*;
        if !self.fits(alg) {
            return false;
        }
        match self {
            VerifyKey::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            VerifyKey::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            VerifyKey::P384(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            VerifyKey::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            VerifyKey::Hmac(secret) => {
                let algorithm = match alg {
                    Hs256 => ring::hmac::HMAC_SHA256,
                    Hs384 => ring::hmac::HMAC_SHA384,
                    _ => ring::hmac::HMAC_SHA512,
                };
                // Constant time (ring compares the tags without branching on them).
                !secret.is_empty()
                    && ring::hmac::verify(&ring::hmac::Key::new(algorithm, secret), message, sig)
                        .is_ok()
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Jwk {
    pub kid: Option<String>,
    /// When the key names its algorithm, only that one.
    pub alg: Option<Alg>,
    pub key: VerifyKey,
}

/// Keys by `kid`, and all of them for tokens without one.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Vec<Jwk>>,
    all: Vec<Jwk>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn hmac(secret: Vec<u8>) -> Self {
        let mut set = Self::default();
        if !secret.is_empty() {
            set.all.push(Jwk {
                kid: None,
                alg: None,
                key: VerifyKey::Hmac(secret.into()),
            });
        }
        set
    }

    /// Parses a JSON Web Key Set. Keys that are not for signatures, of an unknown type or
    /// malformed are skipped (and counted in the second value).
    pub fn from_jwks(text: &[u8]) -> Result<(Self, usize), String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut set = Self::default();
        let mut skipped = 0;
        for k in keys {
            match parse_jwk(k) {
                Some(jwk) => {
                    if let Some(kid) = &jwk.kid {
                        set.by_kid.entry(kid.clone()).or_default().push(jwk.clone());
                    }
                    set.all.push(jwk);
                }
                None => skipped += 1,
            }
        }
        Ok((set, skipped))
    }

    /// The keys that may verify a token with this `kid` and `alg`.
    fn candidates(&self, kid: Option<&str>, alg: Alg) -> impl Iterator<Item = &Jwk> {
        let keys: &[Jwk] = match kid {
            Some(k) => self.by_kid.get(k).map(Vec::as_slice).unwrap_or_default(),
            None => &self.all,
        };
        keys.iter()
            .filter(move |j| j.key.fits(alg) && j.alg.is_none_or(|a| a == alg))
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

fn b64(v: &Value, field: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v.get(field)?.as_str()?.trim_end_matches('='))
        .ok()
}

fn parse_jwk(k: &Value) -> Option<Jwk> {
    if k.get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let alg = match k.get("alg").and_then(Value::as_str) {
        Some(a) => Some(Alg::parse(a)?),
        None => None,
    };
    let key = match k.get("kty")?.as_str()? {
        "RSA" => {
            let n = b64(k, "n")?;
            let e = b64(k, "e")?;
            // ring refuses keys under 2048 bits at verification; refuse them here too.
            if n.len() < 256 {
                return None;
            }
            VerifyKey::Rsa { n, e }
        }
        "EC" => {
            let (x, y) = (b64(k, "x")?, b64(k, "y")?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            match (k.get("crv")?.as_str()?, x.len(), y.len()) {
                ("P-256", 32, 32) => VerifyKey::P256(point),
                ("P-384", 48, 48) => VerifyKey::P384(point),
                _ => return None,
            }
        }
        "OKP" => match (k.get("crv")?.as_str()?, b64(k, "x")?) {
            ("Ed25519", x) if x.len() == 32 => VerifyKey::Ed25519(x),
            _ => return None,
        },
        // Symmetric keys never come from a key set: HS keys only from a Secret.
        _ => return None,
    };
    let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
    if alg.is_some_and(|a| !key.fits(a)) {
        return None;
    }
    Some(Jwk { kid, alg, key })
}

/// What a policy checks besides the signature.
#[derive(Clone, Debug)]
pub struct Rules {
    pub algorithms: Vec<Alg>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub leeway: u64,
}

/// The parts of a token read before any key is chosen.
#[derive(Debug)]
pub struct Parsed<'t> {
    pub alg: Alg,
    pub kid: Option<String>,
    signed: &'t str,
    payload: &'t str,
    signature: Vec<u8>,
}

/// Reads and checks a token's header.
pub fn parse<'t>(token: &'t str, rules: &Rules) -> Result<Parsed<'t>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_json)
        .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    for field in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(field) {
            let name = match field {
                "jwk" => "jwk",
                "jku" => "jku",
                "x5u" => "x5u",
                _ => "x5c",
            };
            return Err(JwtError::EmbeddedKey(name));
        }
    }
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .filter(|a| rules.algorithms.contains(a))
        .ok_or(JwtError::Algorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if valid_kid(k) => Some(k.clone()),
        Some(_) => return Err(JwtError::BadKid),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signed = &token[..header_b64.len() + 1 + payload.len()];
    Ok(Parsed {
        alg,
        kid,
        signed,
        payload,
        signature,
    })
}

/// Key ids are opaque, but only ever looked up in a map: anything that is not a plain
/// printable identifier (path separators, quotes, `..`, SQL or shell metacharacters, control
/// characters) is refused rather than passed on.
fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 256
        && !kid.contains("..")
        && kid.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b':' | b'@')
        })
}

impl Parsed<'_> {
    /// Verifies the signature with `keys` and then the claims; `now` in Unix seconds.
    pub fn verify(&self, keys: &KeySet, rules: &Rules, now: u64) -> Result<Claims, JwtError> {
        let mut tried = false;
        let mut ok = false;
        for k in keys.candidates(
            if self.alg.is_hmac() {
                None
            } else {
                self.kid.as_deref()
            },
            self.alg,
        ) {
            tried = true;
            if k.key
                .verify(self.alg, self.signed.as_bytes(), &self.signature)
            {
                ok = true;
                break;
            }
        }
        if !tried {
            return Err(JwtError::UnknownKey);
        }
        if !ok {
            return Err(JwtError::Signature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
        check_claims(&claims, rules, now)?;
        Ok(claims)
    }
}

fn seconds(v: Option<&Value>) -> Result<Option<u64>, JwtError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(JwtError::Malformed(
                "time claim is not a non-negative number",
            )),
        Some(_) => Err(JwtError::Malformed("time claim is not a number")),
    }
}

/// The time-based and identity claims.
pub fn check_claims(claims: &Claims, rules: &Rules, now: u64) -> Result<(), JwtError> {
    let exp = seconds(claims.get("exp"))?.ok_or(JwtError::NoExpiry)?;
    if now > exp.saturating_add(rules.leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = seconds(claims.get("nbf"))?
        && now.saturating_add(rules.leeway) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = seconds(claims.get("iat"))?
        && iat > now.saturating_add(rules.leeway)
    {
        return Err(JwtError::IssuedInFuture);
    }
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer.as_str()) {
        return Err(JwtError::Issuer);
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audiences.iter().any(|w| w == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    Ok(())
}

/// The `exp` of verified claims (present: verification requires it).
pub fn expiry(claims: &Claims) -> u64 {
    seconds(claims.get("exp")).ok().flatten().unwrap_or(0)
}

#[cfg(test)]
mod tests;
