//! The server name a TLS ClientHello asks for (RFC 8446 §4.1.2, RFC 6066 §3), read from the
//! first bytes of a connection without terminating it: what TLS passthrough routes by.
//!
//! A pure parser over bytes a client sent: every length is checked against what is there,
//! nothing is trusted, and a malformed hello is [`Hello::NotTls`], never a panic. The
//! ClientHello may span several handshake records; their fragments are joined.

/// Largest ClientHello read before giving up on the connection (post-quantum key shares
/// make hellos of a few KiB; 64 KiB is far beyond any real one).
pub const MAX_HELLO: usize = 64 * 1024;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A whole ClientHello: its server name (lower-case, without a trailing dot), if it
    /// names one.
    ServerName(Option<String>),
    /// A ClientHello so far; read more.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    NotTls,
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;
/// A TLS record's payload is at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// Parses the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Hello {
    // Join the handshake fragments of the records read so far.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            break;
        }
        // A record: type, legacy version (3.x), length.
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            // A record not read whole yet.
            handshake.extend_from_slice(&rest[5..]);
            break;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if let Some(total) = handshake_len(&handshake)
            && handshake.len() >= total
        {
            break;
        }
    }
    if buf.len() < 5 {
        // Too short to tell: a first byte that cannot start a handshake record is known.
        return match buf.first() {
            Some(&b) if b != HANDSHAKE => Hello::NotTls,
            _ => Hello::Incomplete,
        };
    }
    let Some(total) = handshake_len(&handshake) else {
        return Hello::Incomplete;
    };
    if handshake[0] != CLIENT_HELLO {
        return Hello::NotTls;
    }
    if total > MAX_HELLO {
        return Hello::NotTls;
    }
    let Some(body) = handshake.get(4..total) else {
        return Hello::Incomplete;
    };
    match server_name(body) {
        Some(name) => Hello::ServerName(name),
        None => Hello::NotTls,
    }
}

/// How many bytes `buf` must hold before [`parse`] can say more than [`Hello::Incomplete`]:
/// the end of the first record not read whole, from the record headers alone (cheap, so a
/// reader calls it after every read and parses only at record boundaries).
pub fn wanted(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(header) = buf.get(at..at + 5) {
        if header[0] != HANDSHAKE || header[1] != 3 {
            // Not a handshake record: parse now, to refuse it.
            return at + 5;
        }
        let end = at + 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if end > buf.len() {
            return end;
        }
        at = end;
    }
    // At a record boundary, parse what is there; within a header, wait for all of it.
    if at == buf.len() { at } else { at + 5 }
}

/// The handshake message's whole length (header included), once its header is there.
fn handshake_len(h: &[u8]) -> Option<usize> {
    let header = h.get(..4)?;
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]);
    Some(4 + usize::try_from(len).ok()?)
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The ClientHello body's server name: `Some(None)` when it has none, `None` when the body
/// is malformed.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        // No extensions (a TLS 1.2 hello may have none).
        return Some(None);
    }
    let mut extensions = Reader(r.vec16()?);
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != SERVER_NAME {
            continue;
        }
        // One server_name extension only (RFC 8446 §4.2).
        if found.is_some() {
            return None;
        }
        let mut list = Reader(Reader(data).vec16()?);
        let mut name = None;
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let value = list.vec16()?;
            if name_type == HOST_NAME {
                // At most one host_name (RFC 6066 §3).
                if name.is_some() {
                    return None;
                }
                name = Some(host_name(value)?);
            }
        }
        found = Some(name);
    }
    Some(found.flatten())
}

/// A DNS host name as SNI carries it: ASCII letters, digits, `-` and `.`, lower-cased, the
/// trailing dot dropped (RFC 6066: no IP literals, no trailing dot). Anything else makes the
/// hello malformed: a name a backend could read differently is not routed.
fn host_name(value: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(value).ok()?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with `extensions` (each as type and data).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend(u16::try_from(data.len()).expect("small").to_be_bytes());
            ext.extend(data);
        }
        body.extend(u16::try_from(ext.len()).expect("small").to_be_bytes());
        body.extend(ext);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend(&u32::try_from(body.len()).expect("small").to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend(u16::try_from(hs.len()).expect("small").to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn sni(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend(u16::try_from(n.len()).expect("small").to_be_bytes());
            list.extend(*n);
        }
        let mut data = u16::try_from(list.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        data.extend(list);
        (SERVER_NAME, data)
    }

    #[test]
    fn reads_the_server_name_lower_cased_without_its_trailing_dot() {
        let h = hello(&[(10, vec![0, 2, 0, 29]), sni(&[(0, b"Abc.Example.COM.")])]);
        assert_eq!(parse(&h), Hello::ServerName(Some("abc.example.com".into())));
        assert_eq!(
            parse(&hello(&[(10, vec![0, 2, 0, 29])])),
            Hello::ServerName(None)
        );
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_and_split_records_are_joined() {
        let h = hello(&[sni(&[(0, b"abc.example.com")])]);
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Hello::Incomplete, "{n} bytes");
        }
        // The same handshake in two records.
        let hs = &h[5..];
        let (a, b) = hs.split_at(20);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend([HANDSHAKE, 3, 3]);
            split.extend(u16::try_from(part.len()).expect("small").to_be_bytes());
            split.extend(part);
        }
        assert_eq!(
            parse(&split),
            Hello::ServerName(Some("abc.example.com".into()))
        );
    }

    #[test]
    fn a_hello_in_many_records_is_parsed_once_each_is_whole() {
        let h = hello(&[sni(&[(0, b"abc.example.com")])]);
        // The handshake cut into 3-byte records: its 4-byte header spans two.
        let mut split = Vec::new();
        for part in h[5..].chunks(3) {
            split.extend([HANDSHAKE, 3, 3, 0, u8::try_from(part.len()).expect("small")]);
            split.extend(part);
        }
        let mut parses = 0;
        for n in 0..=split.len() {
            if n >= wanted(&split[..n]) {
                parses += 1;
                let expected = if n == split.len() {
                    Hello::ServerName(Some("abc.example.com".into()))
                } else {
                    Hello::Incomplete
                };
                assert_eq!(parse(&split[..n]), expected, "{n} bytes");
            }
        }
        // Once per record (and per boundary), not once per byte.
        assert!(parses <= 2 * split.len() / 8 + 2, "{parses} parses");
    }

    #[test]
    fn anything_else_is_not_tls_and_never_panics() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
        // Known to be refused as soon as a record header is there.
        assert_eq!(wanted(b"GET / HTTP/1.1\r\n\r\n"), 5);
        assert_eq!(parse(b"G"), Hello::NotTls);
        // Two host names, two SNI extensions, a name that is not a DNS name.
        for bad in [
            hello(&[sni(&[(0, b"a.example.com"), (0, b"b.example.com")])]),
            hello(&[sni(&[(0, b"a.example.com")]), sni(&[(0, b"b.example.com")])]),
            hello(&[sni(&[(0, b"a.example.com\0.evil")])]),
            hello(&[sni(&[(0, b"a..example.com")])]),
            hello(&[sni(&[(0, b"")])]),
        ] {
            assert_eq!(parse(&bad), Hello::NotTls);
        }
        // Lengths that point past the data, at every byte of a real hello.
        let h = hello(&[sni(&[(0, b"abc.example.com")])]);
        for i in 5..h.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = h.clone();
                m[i] = v;
                let _ = parse(&m);
            }
        }
        // A record larger than TLS allows.
        assert_eq!(parse(&[HANDSHAKE, 3, 3, 0xff, 0xff, 1]), Hello::NotTls);
    }
}
