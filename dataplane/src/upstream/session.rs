//! Session persistence without state: a client's token (a cookie or a header) names the
//! backend and the endpoint its session is pinned to, sealed (ChaCha20-Poly1305) with the
//! Gateway's key, so every replica opens it, and a client can neither read the endpoint's
//! address out of it nor make up one that names an endpoint of its choosing.
//!
//! ```text
//!  token = base64url( nonce(12) ‖ seal( v1 ‖ backend(8) ‖ started(4) ‖ seen(4) ‖ port(2) ‖ ip(4|16) ) ‖ tag(16) )
//!  bound by the AEAD's associated data to the rule (scope) and the session's name
//! ```
//!
//! `started` and `seen` (Unix seconds) carry the absolute and idle timeouts: an idle session
//! is refreshed (a new token with a new `seen`) once a tenth of its idle timeout has passed.

use super::maglev::{FNV_BASIS, fnv1a};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portico_model::BackendId;
use portico_model::auth::Sensitive;
use portico_model::backend::{SessionKind, SessionPersistence};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

const VERSION: u8 = 1;
/// The longest token read (an IPv6 pin is 84 characters): anything longer is not ours.
const MAX_TOKEN: usize = 128;
/// How far a token's times may be ahead of this replica's clock (another replica's clock).
const SKEW_SECS: u64 = 300;

/// Seals and opens the tokens of one Gateway.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// With the snapshot's key; without one (or an unusable one), with this process's own
    /// random key, whose sessions hold on this replica only.
    pub fn new(key: Option<&Sensitive>) -> Self {
        let key = key
            .and_then(|k| STANDARD.decode(k.0.as_bytes()).ok())
            .filter(|k| k.len() == 32)
            .unwrap_or_else(|| process_key().to_vec());
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .or_else(|_| UnboundKey::new(&CHACHA20_POLY1305, process_key()))
            .map(LessSafeKey::new);
        Self {
            // A 32-byte key is what ChaCha20 takes; the second try cannot fail either.
            key: key.unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key")),
            rng: SystemRandom::new(),
        }
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    fn open(&self, aad: &[u8], token: &[u8]) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// This process's key for snapshots without one.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // Linux's generator does not fail; if it did, sessions would only be predictable
        // to someone who also knows the other inputs, and the seal still checks integrity.
        let _ = SystemRandom::new().fill(&mut k);
        k
    })
}

/// A session as its token says: which backend and endpoint, since when, last seen when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// [`backend_tag`] of the backend.
    pub backend: u64,
    pub addr: SocketAddr,
    /// Unix seconds.
    pub started: u32,
    pub seen: u32,
}

impl Pin {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(35);
        b.push(VERSION);
        b.extend_from_slice(&self.backend.to_be_bytes());
        b.extend_from_slice(&self.started.to_be_bytes());
        b.extend_from_slice(&self.seen.to_be_bytes());
        b.extend_from_slice(&self.addr.port().to_be_bytes());
        match self.addr.ip() {
            IpAddr::V4(ip) => b.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => b.extend_from_slice(&ip.octets()),
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (&version, rest) = b.split_first()?;
        if version != VERSION || rest.len() < 18 {
            return None;
        }
        let (head, ip) = rest.split_at(18);
        let backend = u64::from_be_bytes(head[0..8].try_into().ok()?);
        let started = u32::from_be_bytes(head[8..12].try_into().ok()?);
        let seen = u32::from_be_bytes(head[12..16].try_into().ok()?);
        let port = u16::from_be_bytes(head[16..18].try_into().ok()?);
        let ip = match ip.len() {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?)),
            16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)),
            _ => return None,
        };
        Some(Self {
            backend,
            addr: SocketAddr::new(ip, port),
            started,
            seen,
        })
    }
}

/// What names a backend inside a token.
pub fn backend_tag(id: &BackendId) -> u64 {
    let h = fnv1a(id.namespace.as_bytes(), FNV_BASIS);
    let h = fnv1a(b"/", h);
    let h = fnv1a(id.name.as_bytes(), h);
    fnv1a(&id.port.to_be_bytes(), h)
}

/// A short stable tag of a rule's scope: a BackendPolicy's cookie is named
/// `<sessionName>-<tag>` so that each rule keeps a session of its own (as GEP-1619 asks)
/// without the rules' cookies overwriting each other.
pub fn scope_tag(scope: &str) -> String {
    format!("{:08x}", fnv1a(scope.as_bytes(), FNV_BASIS) as u32)
}

/// Now, in Unix seconds (until 2106).
pub fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Seconds, rounded up, at least one.
fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The associated data binding a token to one rule's session of one name.
fn aad(scope: &str, name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(24 + scope.len() + name.len());
    a.extend_from_slice(b"portico-session-v1\0");
    a.extend_from_slice(scope.as_bytes());
    a.push(0);
    a.extend_from_slice(name.as_bytes());
    a
}

/// The live session a request carries for `sp` in `scope` (`None`: none, not ours, forged,
/// or ended), at `now`.
pub fn read(
    sealer: &Sealer,
    scope: &str,
    sp: &SessionPersistence,
    name: &str,
    headers: &http::HeaderMap,
    now: u32,
) -> Option<Pin> {
    let aad = aad(scope, name);
    let open = |token: &[u8]| {
        let pin = Pin::decode(&sealer.open(&aad, token)?)?;
        live(sp, &pin, now).then_some(pin)
    };
    match sp.kind {
        // Several cookies of the name (set on different paths): the first that opens.
        SessionKind::Cookie => crate::util::cookie_values(headers, name).find_map(open),
        SessionKind::Header => headers
            .get_all(name)
            .iter()
            .find_map(|v| open(v.as_bytes())),
    }
}

/// Whether a session has not timed out at `now`.
fn live(sp: &SessionPersistence, pin: &Pin, now: u32) -> bool {
    let now = u64::from(now);
    let (started, seen) = (u64::from(pin.started), u64::from(pin.seen));
    if started > now + SKEW_SECS || seen > now + SKEW_SECS || seen < started {
        return false;
    }
    let absolute = sp
        .absolute_timeout_ms
        .is_none_or(|ms| now.saturating_sub(started) < secs(ms));
    let idle = sp
        .idle_timeout_ms
        .is_none_or(|ms| now.saturating_sub(seen) < secs(ms));
    absolute && idle
}

/// The token to send back after a request with `held` (its live session, if any) went to
/// `addr` of backend `backend`: a new session when there was none or it moved, a refreshed
/// one when its idle clock needs it, else `None` (the client's token stands).
pub fn renew(
    sp: &SessionPersistence,
    held: Option<Pin>,
    backend: u64,
    addr: SocketAddr,
    now: u32,
) -> Option<Pin> {
    match held {
        Some(p) if p.backend == backend && p.addr == addr => {
            let refresh = sp
                .idle_timeout_ms
                .is_some_and(|ms| u64::from(now.saturating_sub(p.seen)) * 10 >= secs(ms));
            refresh.then_some(Pin { seen: now, ..p })
        }
        _ => Some(Pin {
            backend,
            addr,
            started: now,
            seen: now,
        }),
    }
}

/// The response header that hands `pin` to the client: `Set-Cookie` (with `path`, when the
/// session belongs to a route rule) or the session's own header.
#[allow(clippy::too_many_arguments)]
pub fn issue(
    sealer: &Sealer,
    scope: &str,
    sp: &SessionPersistence,
    name: &str,
    pin: &Pin,
    path: Option<&str>,
    secure: bool,
) -> Option<(http::HeaderName, http::HeaderValue)> {
    let token = sealer.seal(&aad(scope, name), &pin.encode())?;
    match sp.kind {
        SessionKind::Header => Some((
            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
            http::HeaderValue::from_str(&token).ok()?,
        )),
        SessionKind::Cookie => {
            let mut c = format!("{name}={token}");
            // A cookie path is visible ASCII without ';' (it came from a route's path match,
            // which may hold other characters): otherwise the cookie goes without one.
            if let Some(p) = path.filter(|p| p.bytes().all(|b| b.is_ascii_graphic() && b != b';')) {
                c.push_str("; Path=");
                c.push_str(p);
            }
            if let (true, Some(ms)) = (sp.permanent, sp.absolute_timeout_ms) {
                let left = secs(ms).saturating_sub(u64::from(pin.seen.saturating_sub(pin.started)));
                c.push_str(&format!("; Max-Age={left}"));
            }
            // Lax, not Strict: a link from another site must still reach the pinned pod.
            c.push_str("; HttpOnly; SameSite=Lax");
            if secure {
                c.push_str("; Secure");
            }
            Some((
                http::header::SET_COOKIE,
                http::HeaderValue::from_str(&c).ok()?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn sp(kind: SessionKind) -> SessionPersistence {
        SessionPersistence {
            kind,
            name: "pin".into(),
            absolute_timeout_ms: Some(3_600_000),
            idle_timeout_ms: Some(60_000),
            permanent: false,
        }
    }

    fn key(b: u8) -> Sensitive {
        Sensitive(STANDARD.encode([b; 32]))
    }

    fn pin(addr: &str, now: u32) -> Pin {
        Pin {
            backend: 7,
            addr: addr.parse().unwrap_or_else(|_| unreachable!()),
            started: now,
            seen: now,
        }
    }

    fn cookie_of(v: &http::HeaderValue) -> String {
        let s = v.to_str().unwrap_or_default();
        s.split(';').next().unwrap_or_default().to_string()
    }

    fn with_cookie(c: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            c.parse().unwrap_or_else(|_| unreachable!()),
        );
        h
    }

    #[test]
    fn a_sealed_pin_opens_on_every_replica_with_the_key_and_nowhere_else() {
        let now = 1_800_000_000;
        let s = sp(SessionKind::Cookie);
        let (a, b) = (Sealer::new(Some(&key(1))), Sealer::new(Some(&key(1))));
        for addr in ["10.0.0.7:8080", "[fd00::7]:8080"] {
            let p = pin(addr, now);
            let (name, v) = issue(&a, "rule", &s, &s.name, &p, Some("/api"), true)
                .unwrap_or_else(|| unreachable!());
            assert_eq!(name, http::header::SET_COOKIE);
            let text = v.to_str().unwrap_or_default();
            assert!(
                text.contains("; Path=/api")
                    && text.contains("HttpOnly")
                    && text.ends_with("; Secure"),
                "{text}"
            );
            assert!(!text.contains("Max-Age"), "a session cookie: {text}");
            // The address is not readable in the token.
            assert!(
                !text.contains("10.0.0.7") && !text.contains("fd00"),
                "{text}"
            );
            let h = with_cookie(&format!("other=1; {}", cookie_of(&v)));
            assert_eq!(
                read(&b, "rule", &s, &s.name, &h, now + 5),
                Some(p),
                "another replica"
            );
            // Another Gateway's key, another rule, another session name: nothing.
            assert_eq!(
                read(&Sealer::new(Some(&key(2))), "rule", &s, &s.name, &h, now),
                None
            );
            assert_eq!(read(&b, "other rule", &s, &s.name, &h, now), None);
            let renamed = SessionPersistence {
                name: "other".into(),
                ..s.clone()
            };
            assert_eq!(read(&b, "rule", &renamed, &renamed.name, &h, now), None);
        }
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_pick_nothing() {
        let now = 1_800_000_000;
        let s = sp(SessionKind::Header);
        let sealer = Sealer::new(Some(&key(1)));
        let (_, v) = issue(
            &sealer,
            "r",
            &s,
            &s.name,
            &pin("10.0.0.7:80", now),
            None,
            false,
        )
        .unwrap_or_else(|| unreachable!());
        let good = v.to_str().unwrap_or_default().to_string();
        let header = |t: &str| {
            let mut h = HeaderMap::new();
            if let Ok(v) = t.parse() {
                h.insert("pin", v);
            }
            h
        };
        assert!(read(&sealer, "r", &s, &s.name, &header(&good), now).is_some());
        // Every single-character change of the token is refused.
        for i in 0..good.len() {
            let mut t = good.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap_or_default();
            assert_eq!(
                read(&sealer, "r", &s, &s.name, &header(&t), now),
                None,
                "changed at {i}"
            );
        }
        // A token made without the key, in the plain encoding, truncated, too long, garbage.
        let plain = URL_SAFE_NO_PAD.encode(
            [
                [0u8; 12].as_slice(),
                &pin("10.0.0.9:80", now).encode(),
                &[0u8; 16],
            ]
            .concat(),
        );
        for t in [
            plain.as_str(),
            &good[..good.len() - 1],
            &good[..10],
            "",
            "%%%",
            &"A".repeat(4096),
        ] {
            assert_eq!(
                read(&sealer, "r", &s, &s.name, &header(t), now),
                None,
                "{t}"
            );
        }
    }

    #[test]
    fn sessions_end_at_their_timeouts_and_idle_ones_are_refreshed() {
        let now = 1_800_000_000;
        let s = sp(SessionKind::Cookie); // absolute 1 h, idle 60 s
        let p = pin("10.0.0.7:80", now);
        assert!(live(&s, &p, now + 59));
        assert!(!live(&s, &p, now + 60), "idle");
        let busy = Pin {
            seen: now + 3_590,
            ..p
        };
        assert!(live(&s, &busy, now + 3_599));
        assert!(!live(&s, &busy, now + 3_600), "absolute");
        assert!(
            !live(
                &s,
                &Pin {
                    started: now + 1_000,
                    seen: now + 1_000,
                    ..p
                },
                now
            ),
            "from the future"
        );
        // Same endpoint: nothing to send until a tenth of the idle timeout has passed.
        assert_eq!(renew(&s, Some(p), 7, p.addr, now + 5), None);
        assert_eq!(
            renew(&s, Some(p), 7, p.addr, now + 6),
            Some(Pin { seen: now + 6, ..p })
        );
        // Moved (endpoint gone, or another backend): a new session.
        let moved = renew(
            &s,
            Some(p),
            7,
            "10.0.0.8:80".parse().unwrap_or(p.addr),
            now + 1,
        );
        assert_eq!(
            moved.map(|m| (m.started, m.addr.port())),
            Some((now + 1, 80))
        );
        assert_eq!(
            renew(&s, Some(p), 8, p.addr, now).map(|m| m.backend),
            Some(8)
        );
        // A permanent cookie carries what is left of the absolute timeout.
        let perm = SessionPersistence {
            permanent: true,
            ..s
        };
        let (_, v) = issue(
            &Sealer::new(None),
            "r",
            &perm,
            &perm.name,
            &Pin {
                seen: now + 600,
                ..p
            },
            None,
            false,
        )
        .unwrap_or_else(|| unreachable!());
        let text = v.to_str().unwrap_or_default();
        assert!(
            text.contains("; Max-Age=3000;") && !text.contains("Path="),
            "{text}"
        );
    }
}
