//! Authentication and authorization as the dataplane enforces it: an `AuthPolicy` with its
//! Secrets resolved by compile. Credentials that must stay secret are [`Sensitive`] (never
//! printed); API keys arrive only as SHA-256 hashes.

use crate::object::ObjectRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The header that tells a backend who a request authenticated as, unless a policy names
/// another. Whatever a client sends in it is removed first.
pub const DEFAULT_CONSUMER_HEADER: &str = "x-portico-consumer";

/// The highest bcrypt cost an htpasswd Secret may use: cost 12 is about 250 ms of one core
/// per verification, and each step doubles it, so a higher cost hands every client a way to
/// keep the gateway's cores busy.
pub const MAX_BCRYPT_COST: u32 = 12;

/// A string that must not appear in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicy {
    pub id: ObjectRef,
    /// Set when the policy could not be compiled: its targets answer 500 rather than serve
    /// unprotected (fail closed). The reason is the policy's status message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
    /// Lower-case header name.
    pub consumer_header: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<Basic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
    /// Authentication by the client certificate the listener verified: the consumer is
    /// this name of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<CertificateName>,
    /// `None`: no authorization step. `Some`: deny unless a rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<AuthzRule>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Jwt {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// JWS `alg` names (`RS256`, `ES256`, `EdDSA`, ...). Never `none`.
    pub algorithms: Vec<String>,
    pub keys: JwtKeys,
    pub leeway_seconds: u32,
    /// In order; the first source present in a request is the token.
    pub sources: Vec<TokenSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimHeader>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_token: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JwtKeys {
    /// Fetched by the dataplane.
    #[serde(rename_all = "camelCase")]
    Remote { uri: String, refresh_seconds: u32 },
    /// A JSON Web Key Set (inline, or read from a Secret by compile).
    Set(Sensitive),
    /// The raw HMAC key, base64 (standard alphabet).
    Hmac(Sensitive),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenSource {
    /// Header name lower-case; the prefix (such as `Bearer `) is compared case-insensitively.
    Header {
        name: String,
        prefix: String,
    },
    Cookie(String),
    Query(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHeader {
    pub claim: String,
    /// Lower-case.
    pub header: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeys {
    /// Lower-case header name the key is read from (when `query` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Sorted by consumer.
    pub keys: Vec<ApiKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub consumer: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
}

/// A name a client certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertificateName {
    /// The subject's CommonName.
    CommonName,
    /// The first DNS subjectAltName.
    #[serde(rename = "DNSName")]
    DnsName,
    /// The first URI subjectAltName (a SPIFFE ID).
    #[serde(rename = "URI")]
    Uri,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Basic {
    pub realm: String,
    pub cache_seconds: u32,
    /// Sorted by user.
    pub users: Vec<BasicUser>,
    /// Keep `Authorization` on the request to the backend (otherwise removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_credentials: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicUser {
    pub user: String,
    /// A bcrypt hash.
    pub hash: Sensitive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct External {
    pub url: String,
    /// Lower-case header names.
    pub headers_to_send: Vec<String>,
    pub headers_to_backend: Vec<String>,
    pub headers_to_client: Vec<String>,
    pub timeout_ms: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: Sensitive,
    pub cache_seconds: u32,
    pub timeout_ms: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimRequirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Upper-case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Segment-wise prefixes without a trailing slash (except `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Parsed and canonical (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequirement {
    pub name: String,
    pub values: Vec<String>,
}
