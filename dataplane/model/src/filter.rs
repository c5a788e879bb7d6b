//! HTTPRoute filters: what a rule (or one of its backendRefs) does to a request or a
//! response besides forwarding it.

use serde::{Deserialize, Serialize};

/// One filter, as the Gateway API names its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    /// Edits the request's headers before it is forwarded.
    RequestHeaderModifier(HeaderModifier),
    /// Edits the response's headers before it is returned.
    ResponseHeaderModifier(HeaderModifier),
    /// Answers with a redirect instead of forwarding.
    RequestRedirect(Redirect),
    /// Rewrites the Host and/or path before forwarding.
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    /// Cross-origin resource sharing: preflights answered by the gateway, the actual
    /// requests' responses given the CORS headers.
    #[serde(rename = "CORS")]
    Cors(Cors),
}

/// The CORS filter, checked by compile: origins lower-case with the scheme's default port
/// left out, methods as written, header names lower-case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// `*` (any origin), `scheme://host[:port]`, or `scheme://*.suffix[:port]` (any number
    /// of labels left of the suffix), or `scheme://*` (any host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    /// Method names, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Header names, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Header names, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age` of preflight answers.
    pub max_age_seconds: u32,
}

impl Cors {
    /// The spec's default `maxAge`.
    pub const DEFAULT_MAX_AGE_SECONDS: u32 = 5;
}

/// Header names are lower-case; `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers to set, replacing any value they had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Headers to append to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Header names to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name (lower-case) and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Lower-case.
    pub name: String,
    /// As written in the route.
    pub value: String,
}

/// The redirect a `RequestRedirect` filter answers with; unset parts keep the request's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The Location's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The Location's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// The Location's port; `None` follows the Gateway API's rules for the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status_code: u16,
}

/// What a `URLRewrite` filter changes before the request is forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// The Host the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path the backend sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathRewrite {
    /// Replaces the whole path.
    ReplaceFullPath(String),
    /// Replaces the part of the path that the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}
