//! `AuthPolicy`: who may send requests through a Gateway, a listener, an HTTPRoute or one of
//! its rules, and how they prove it.
//!
//! Mechanisms are alternatives: a request is authenticated when any configured mechanism
//! accepts the credentials it carries. Credentials that are present but wrong are rejected even
//! when `allowAnonymous` is set. Authorization rules, when present, are checked after
//! authentication and deny by default.

// KubeSchema's derive copies each struct into a private module to build its schema; the
// copies are what this lint sees.
#![allow(unreachable_pub)]

// Unsigned fields carry `format: int64` in the schema: Kubernetes knows int32 and int64, and
// warns about schemars' `uint32`.

use crate::policy::{PolicyStatus, PolicyTargetRef, SecretKeyRef};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Authentication and authorization for the requests of the targets.
///
/// Precedence when several policies cover one request: a policy on an HTTPRoute rule beats one
/// on the HTTPRoute, which beats one on the listener, which beats one on the Gateway; the most
/// specific policy applies whole (fields are not merged). Two policies on the same target: the
/// older (creationTimestamp, then namespace/name) applies and the other reports
/// `Accepted=False` with reason `Conflicted`.
// The printcolumn attributes repeat `type_ = "string"`, which this lint takes for a mistake.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "portico.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "authpol",
    category = "portico",
    doc = "AuthPolicy authenticates and authorizes the requests of a Gateway, a listener, an HTTPRoute or one of its rules (Gateway API policy attachment).",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRefs[0].name",
        description = "The first target"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.ancestors[0].conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the policy applies to its first target"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.ancestors[0].conditions[?(@.type==\"Accepted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwt) || has(self.apiKey) || has(self.basic) || has(self.external) || has(self.introspection) || has(self.mtls) || has(self.authorization)").message("configure at least one of jwt, apiKey, basic, external, introspection, mtls or authorization"))]
#[x_kube(validation = Rule::new("!self.allowAnonymous || has(self.jwt) || has(self.apiKey) || has(self.basic) || has(self.introspection) || has(self.mtls) || has(self.authorization)").message("allowAnonymous without an authentication mechanism or authorization rules would allow everything"))]
// Compatibility across releases: a controller fails closed on an AuthPolicy whose spec holds a
// field or value it does not know (its targets answer 500; portico_compile::unreadable), since
// ignoring it could enforce less than the user wrote. So a field added here must not carry a
// schema default (`#[serde(default)]` writes one): the API server would put it into every
// existing AuthPolicy, and the previous release's controller, still running during an upgrade,
// would refuse every protected route. Add new fields as optional, without a default.
pub struct AuthPolicySpec {
    /// The Gateways (or listeners, with `sectionName`) and HTTPRoutes (or rules) this policy
    /// protects, in the policy's namespace.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,

    /// Let requests that carry no credentials at all through as anonymous (authorization rules
    /// still apply to them). Credentials that are present but invalid are always rejected.
    #[serde(default)]
    pub allow_anonymous: bool,

    /// Header that tells the backend who the request authenticated as: the API key's consumer,
    /// the basic-auth user, or the token's `sub`. Any value the client sent in it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub consumer_header: Option<String>,

    /// JSON Web Tokens (RFC 7519) verified against keys from a JWKS URL, inline, or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,

    /// Static API keys held in Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,

    /// HTTP Basic authentication (RFC 7617) against an htpasswd file with bcrypt hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,

    /// Ask an HTTP service whether each request may pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalAuth>,

    /// OAuth2 token introspection (RFC 7662) of bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionAuth>,

    /// Client certificates the listener verified (the Gateway's `spec.tls.frontend`): the
    /// consumer is a name the certificate carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsAuth>,

    /// Rules that decide, after authentication, which requests are allowed. When present, a
    /// request that matches no rule is denied (401 without credentials, 403 with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// JWT signature algorithms. `none` does not exist here; HS* need `hmacSecretRef`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.jwksUri), has(self.jwks), has(self.jwksSecretRef), has(self.hmacSecretRef)].filter(x, x).size() == 1").message("set exactly one of jwksUri, jwks, jwksSecretRef and hmacSecretRef"))]
#[x_kube(validation = Rule::new("has(self.hmacSecretRef) == self.algorithms.all(a, a.startsWith('HS'))").message("HS256/HS384/HS512 need hmacSecretRef, and hmacSecretRef allows only HS algorithms"))]
pub struct JwtAuth {
    /// The required `iss` claim.
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,

    /// Accepted `aud` values; a token must name at least one. Empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub audiences: Vec<String>,

    /// The algorithms a token may be signed with. A token's `alg` outside this list is
    /// rejected before any key is looked at.
    #[schemars(length(min = 1, max = 12))]
    pub algorithms: Vec<JwtAlgorithm>,

    /// An http(s) URL serving a JSON Web Key Set. Fetched by the dataplane, cached, refreshed
    /// every `jwksRefreshSeconds` and (at most every 10 s) when a token names an unknown
    /// `kid`; keys stay in use while the URL fails. Keys are never fetched from a URL a token
    /// names (`jku`, `x5u`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("jwksUri must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub jwks_uri: Option<String>,

    /// A JSON Web Key Set, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub jwks: Option<String>,

    /// A Secret key holding a JSON Web Key Set (key defaults to `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_secret_ref: Option<SecretKeyRef>,

    /// A Secret key holding the raw HMAC key for HS256/HS384/HS512 (key defaults to `key`;
    /// at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_ref: Option<SecretKeyRef>,

    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    #[schemars(extend("format" = "int64"))]
    pub leeway_seconds: Option<u32>,

    /// How often the JWKS URL is fetched again, in seconds. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    #[schemars(extend("format" = "int64"))]
    pub jwks_refresh_seconds: Option<u32>,

    /// Where the token is read from, first match wins. Default: the `Authorization` header
    /// with the `Bearer` scheme.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub token_sources: Vec<TokenSource>,

    /// Claims copied into request headers for the backend. Client-sent values of these
    /// headers are always removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub claims_to_headers: Vec<ClaimToHeader>,

    /// Remove the token from the request before it is forwarded.
    #[serde(default)]
    pub strip_token: bool,
}

/// Exactly one of `header`, `cookie` and `query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.header), has(self.cookie), has(self.query)].filter(x, x).size() == 1").message("a token source is exactly one of header, cookie and query"))]
#[x_kube(validation = Rule::new("!has(self.prefix) || has(self.header)").message("prefix applies only to a header"))]
pub struct TokenSource {
    /// A request header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// Text before the token in the header, such as `Bearer ` (compared case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// A cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub cookie: Option<String>,
    /// A query parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub query: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// A claim name; dots reach into objects (`realm_access.roles`).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// The request header to set. Arrays are joined with commas.
    #[schemars(length(min = 1, max = 128))]
    pub header: String,
}

/// Every entry of the named Secrets' `data` is one consumer: the entry's key is the consumer's
/// name, its value the API key. Keys are kept only as SHA-256 hashes in the dataplane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.header) && has(self.query))").message("read the API key from a header or a query parameter, not both"))]
pub struct ApiKeyAuth {
    /// Secrets in the policy's namespace.
    #[schemars(length(min = 1, max = 16))]
    pub secret_refs: Vec<SecretKeyRef>,
    /// The request header carrying the key. Default `x-api-key` unless `query` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// The query parameter carrying the key (it is removed before forwarding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub query: Option<String>,
}

/// Authentication by the client certificate the listener verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsAuth {
    /// Which name of the certificate is the consumer: the subject's `CommonName` (when
    /// unset), its first `DNSName` or its first `URI` subjectAltName (a SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_from: Option<CertificateName>,
}

/// A name a client certificate carries.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum CertificateName {
    CommonName,
    #[serde(rename = "DNSName")]
    DnsName,
    #[serde(rename = "URI")]
    Uri,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// A Secret key holding an htpasswd file (key defaults to `htpasswd`); bcrypt hashes
    /// (`$2y$`, `$2b$`, `$2a$`) only.
    pub secret_ref: SecretKeyRef,
    /// The realm in the `WWW-Authenticate` challenge. Default `portico`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('\"') && !self.contains('\\\\')").message("realm may not contain quotes or backslashes"))]
    #[schemars(length(min = 1, max = 128))]
    pub realm: Option<String>,
    /// How long a verified user/password pair is remembered, in seconds (bcrypt is slow on
    /// purpose; this keeps it to one hash per pair per period). Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    #[schemars(extend("format" = "int64"))]
    pub cache_seconds: Option<u32>,
    /// Forward the `Authorization` header (the password) to the backend after checking it.
    /// Default false: the backend gets the user in the consumer header, never the password.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_credentials: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuth {
    /// The http(s) URL asked about each request: the request's method and the URL's path
    /// followed by the request's path are sent, with `headersToSend`, and no body. A 2xx answer
    /// allows the request; any other status is returned to the client.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must be an http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Request headers sent to the service. Default `authorization` and `cookie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers_to_send: Vec<String>,
    /// Headers of an allowing answer set on the request to the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers_to_backend: Vec<String>,
    /// Headers of a denying answer returned to the client. Default `www-authenticate`,
    /// `location` and `set-cookie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers_to_client: Vec<String>,
    /// How long to wait for the answer, in milliseconds. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    #[schemars(extend("format" = "int64"))]
    pub timeout_ms: Option<u32>,
    /// When the service cannot be reached, times out or answers 5xx: deny with 503 (the
    /// default, fail closed) or let the request through (`true`).
    #[serde(default)]
    pub fail_open: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionAuth {
    /// The authorization server's introspection endpoint.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url must be an http:// or https:// URL"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// A Secret with keys `clientId` and `clientSecret`, sent with HTTP Basic.
    pub client_secret_ref: SecretKeyRef,
    /// Upper bound on how long an answer is cached, in seconds; an active token is never
    /// cached past its `exp`. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    #[schemars(extend("format" = "int64"))]
    pub cache_seconds: Option<u32>,
    /// How long to wait for the answer, in milliseconds. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    #[schemars(extend("format" = "int64"))]
    pub timeout_ms: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// A request is allowed when any rule matches; every condition of a rule must hold.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Claims the token must carry: each names a claim and the values accepted (a list claim
    /// needs one of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimRequirement>,
    /// OAuth2 scopes the token must all have (`scope` or `scp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub scopes: Vec<String>,
    /// Consumers (API key consumer, basic-auth user, token `sub`), any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub consumers: Vec<String>,
    /// Upper-case HTTP methods, any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub methods: Vec<String>,
    /// Path prefixes (segment-wise, on the normalised path), any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("paths must start with /"))]
    pub paths: Vec<String>,
    /// Client address ranges (`10.0.0.0/8`, `::1/128`), any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub client_cidrs: Vec<String>,
    /// Allow requests without credentials when the other conditions hold (needs
    /// `allowAnonymous`). Otherwise a rule only matches authenticated requests.
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequirement {
    /// A claim name; dots reach into objects.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub values: Vec<String>,
}
