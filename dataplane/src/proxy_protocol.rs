//! The PROXY protocol header (HAProxy's specification, versions 1 and 2) a stream route's
//! connection starts with towards a backend that asks for it: who the client is and which
//! address of the gateway it connected to, which the backend otherwise cannot know. The
//! gateway's own connections (health probes) say `LOCAL` (v2) or `UNKNOWN` (v1) instead,
//! as the specification asks of them.

use bytes::{BufMut, Bytes, BytesMut};
use portico_model::backend::ProxyProtocol;
use std::net::{IpAddr, SocketAddr};

/// Version 2's signature.
const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// The header for a connection from `client` to the gateway's `local` address (`None`: not
/// known, then the header says so). An IPv4 address a dual-stack socket saw as IPv4-mapped
/// IPv6 is given as IPv4; addresses of two families both as IPv6, as the specification
/// allows.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: Option<SocketAddr>) -> Bytes {
    let Some(local) = local else {
        return unknown(version);
    };
    let (src, dst) = match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), IpAddr::V4(b)),
        (a, b) => (IpAddr::V6(v6(a)), IpAddr::V6(v6(b))),
    };
    match version {
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            Bytes::from(format!(
                "PROXY {family} {src} {dst} {} {}\r\n",
                client.port(),
                local.port()
            ))
        }
        ProxyProtocol::V2 => {
            let mut out = BytesMut::with_capacity(16 + 36);
            out.put_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            out.put_u8(0x21);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 12 bytes of addresses.
                    out.put_u8(0x11);
                    out.put_u16(12);
                    out.put_slice(&s.octets());
                    out.put_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM; 36 bytes of addresses.
                    out.put_u8(0x21);
                    out.put_u16(36);
                    out.put_slice(&v6(s).octets());
                    out.put_slice(&v6(d).octets());
                }
            }
            out.put_u16(client.port());
            out.put_u16(local.port());
            out.freeze()
        }
    }
}

/// The header of a connection that carries no client: v1 `UNKNOWN`, v2 `LOCAL`.
pub fn unknown(version: ProxyProtocol) -> Bytes {
    match version {
        ProxyProtocol::V1 => Bytes::from_static(b"PROXY UNKNOWN\r\n"),
        ProxyProtocol::V2 => {
            let mut out = BytesMut::with_capacity(16);
            out.put_slice(&V2_SIGNATURE);
            // Version 2, command LOCAL; AF_UNSPEC; no addresses.
            out.put_slice(&[0x20, 0x00, 0x00, 0x00]);
            out.freeze()
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_one_line_of_text() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.7:51234".parse().expect("addr"),
            Some("198.51.100.1:5432".parse().expect("addr")),
        );
        assert_eq!(&h[..], b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 5432\r\n");
        // A dual-stack socket's view of an IPv4 client is IPv4 again.
        let mapped = header(
            ProxyProtocol::V1,
            "[::ffff:192.0.2.7]:51234".parse().expect("addr"),
            Some("[::ffff:198.51.100.1]:5432".parse().expect("addr")),
        );
        assert_eq!(mapped, h);
        let mixed = header(
            ProxyProtocol::V1,
            "[2001:db8::1]:40000".parse().expect("addr"),
            Some("198.51.100.1:443".parse().expect("addr")),
        );
        assert_eq!(
            &mixed[..],
            b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.1 40000 443\r\n"
        );
    }

    #[test]
    fn version_2_is_the_signature_then_the_addresses() {
        let h = header(
            ProxyProtocol::V2,
            "192.0.2.7:51234".parse().expect("addr"),
            Some("198.51.100.1:5432".parse().expect("addr")),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        want.extend_from_slice(&51234u16.to_be_bytes());
        want.extend_from_slice(&5432u16.to_be_bytes());
        assert_eq!(&h[..], &want[..]);
        let v6 = header(
            ProxyProtocol::V2,
            "[2001:db8::1]:1".parse().expect("addr"),
            Some("[2001:db8::2]:2".parse().expect("addr")),
        );
        assert_eq!(v6.len(), 16 + 36);
        assert_eq!(&v6[12..16], &[0x21, 0x21, 0x00, 0x24]);
        // Unknown local address, and the gateway's own connections: LOCAL.
        let local = header(
            ProxyProtocol::V2,
            "192.0.2.7:1".parse().expect("addr"),
            None,
        );
        assert_eq!(&local[..12], &V2_SIGNATURE);
        assert_eq!(&local[12..], &[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(&unknown(ProxyProtocol::V1)[..], b"PROXY UNKNOWN\r\n");
    }
}
