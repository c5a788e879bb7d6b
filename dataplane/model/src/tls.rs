//! How the PEM certificate pairs of a snapshot's HTTPS listeners are read: compile checks each
//! pair with [`certified_key`] before it puts it in a snapshot (a bad one is reported on its
//! listener), and the dataplane loads it with the same function, so what compile accepted is
//! what the dataplane can serve. [`not_after`] reads a leaf's expiry for the dataplane's
//! expiry metric.
//!
//! The one part of the model that is not plain data: it parses with rustls (no I/O), which
//! both sides already use for TLS.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The key of a `kubernetes.io/tls` Secret that holds the certificate chain; errors name the
/// pair's parts by these keys, which is where a user finds them.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The key of a `kubernetes.io/tls` Secret that holds the private key.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// Parses a PEM certificate chain and private key into what rustls serves, checking that the
/// key belongs to the first certificate. The error says what is wrong, never what the key is.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{TLS_CERT_KEY} is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{TLS_CERT_KEY} holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("{TLS_PRIVATE_KEY_KEY} is not a PEM private key: {e}"))?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    // from_der parses the leaf and compares its public key with the private key's.
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{TLS_PRIVATE_KEY_KEY} does not belong to the certificate in {TLS_CERT_KEY}")
        }
        other => format!("the certificate or key cannot be used: {other}"),
    })
}

/// When a DER X.509 certificate stops being valid (its `notAfter`), in seconds since the
/// Unix epoch; `None` when the bytes are not a certificate this walk understands. Reads
/// only `Certificate → TBSCertificate → validity` (RFC 5280 §4.1), for the expiry metric.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (certificate, _) = der_tlv(der, 0x30)?;
    let (tbs, _) = der_tlv(certificate, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT is absent in v1 certificates.
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest, 0xa0)?.1;
    }
    rest = der_tlv(rest, 0x02)?.1; // serialNumber
    rest = der_tlv(rest, 0x30)?.1; // signature
    rest = der_tlv(rest, 0x30)?.1; // issuer
    let (validity, _) = der_tlv(rest, 0x30)?;
    let (_, after_not_before) = der_any(validity)?;
    let ((tag, time), _) = der_any(after_not_before)?;
    asn1_time(tag, time)
}

/// The CA certificates of a PEM bundle (a BackendTLSPolicy's `ca.crt`), each one a trust
/// anchor rustls accepts; the error says why the bundle cannot be trusted as a whole.
pub fn ca_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
    }
    Ok(certs)
}

/// A subjectAltName entry of a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
}

/// The DNS and URI names of a DER X.509 certificate's subjectAltName extension (RFC 5280
/// §4.2.1.6); `None` when the bytes are not a certificate this walk understands.
pub fn subject_alt_names(der: &[u8]) -> Option<Vec<San>> {
    let (certificate, _) = der_tlv(der, 0x30)?;
    let (tbs, _) = der_tlv(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30, 0x30] {
        rest = der_tlv(rest, tag)?.1;
    }
    let mut names = Vec::new();
    while let Some(((tag, contents), after)) = der_any(rest) {
        rest = after;
        // issuerUniqueID [1] and subjectUniqueID [2] come before extensions [3].
        if tag != 0xa3 {
            continue;
        }
        let (mut extensions, _) = der_tlv(contents, 0x30)?;
        while !extensions.is_empty() {
            let (extension, after) = der_tlv(extensions, 0x30)?;
            extensions = after;
            let (oid, mut value) = der_tlv(extension, 0x06)?;
            if oid != [0x55, 0x1d, 0x11] {
                continue;
            }
            if value.first() == Some(&0x01) {
                value = der_tlv(value, 0x01)?.1; // critical
            }
            let (octets, _) = der_tlv(value, 0x04)?;
            let (mut general_names, _) = der_tlv(octets, 0x30)?;
            while !general_names.is_empty() {
                let ((tag, name), after) = der_any(general_names)?;
                general_names = after;
                let text = || String::from_utf8(name.to_vec()).ok();
                match tag {
                    0x82 => names.push(San::Dns(text()?)),
                    0x86 => names.push(San::Uri(text()?)),
                    _ => {}
                }
            }
        }
    }
    Some(names)
}

/// The subject's CommonName (the last one, as X.509 orders the most specific last) of a DER
/// X.509 certificate; `None` when it has none or the bytes are not a certificate this walk
/// understands. Read from `TBSCertificate → subject` (RFC 5280 §4.1.2.6).
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (certificate, _) = der_tlv(der, 0x30)?;
    let (tbs, _) = der_tlv(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity.
    for tag in [0x02, 0x30, 0x30, 0x30] {
        rest = der_tlv(rest, tag)?.1;
    }
    let (mut rdns, _) = der_tlv(rest, 0x30)?;
    let mut found = None;
    while !rdns.is_empty() {
        let (mut set, after) = der_tlv(rdns, 0x31)?;
        rdns = after;
        while !set.is_empty() {
            let (attribute, after) = der_tlv(set, 0x30)?;
            set = after;
            let (oid, value) = der_tlv(attribute, 0x06)?;
            if oid != [0x55, 0x04, 0x03] {
                continue;
            }
            // UTF8String, PrintableString or IA5String; the last CN in another encoding
            // leaves none (never an earlier one in its place).
            let ((tag, text), _) = der_any(value)?;
            found = if matches!(tag, 0x0c | 0x13 | 0x16) {
                Some(String::from_utf8(text.to_vec()).ok()?)
            } else {
                None
            };
        }
    }
    found
}

/// One DER element of `tag`: its contents and what follows it.
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let ((found, contents), rest) = der_any(input)?;
    (found == tag).then_some((contents, rest))
}

/// A DER element's tag and contents.
type Element<'a> = (u8, &'a [u8]);

/// One DER element and what follows it. Lengths up to four bytes.
fn der_any(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| {
        let (contents, after) = rest.split_at(len);
        ((tag, contents), after)
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// two forms RFC 5280 §4.1.2.5 allows, to seconds since the Unix epoch.
fn asn1_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[..2])?, num(&rest[2..4])?);
    let (hour, minute, second) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (the proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_the_validity_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        // UTCTime up to 2049, GeneralizedTime from 2050 on (RFC 5280).
        for (year, expected) in [(2031, 1_924_992_000), (2051, 2_556_144_000)] {
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
            let cert = params.self_signed(&key).expect("certificate");
            assert_eq!(not_after(cert.der()), Some(expected), "{year}");
        }
    }

    #[test]
    fn subject_alt_names_reads_dns_and_uri_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["abc.example.com".to_string()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://abc.example.com/test-identity")
                .expect("uri"),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            subject_alt_names(cert.der()),
            Some(vec![
                San::Dns("abc.example.com".into()),
                San::Uri("spiffe://abc.example.com/test-identity".into())
            ])
        );
        assert_eq!(subject_alt_names(b"not der"), None);
        assert_eq!(
            subject_common_name(cert.der()),
            Some("rcgen self signed cert".into())
        );
        assert_eq!(subject_common_name(b"not der"), None);
        assert!(ca_certificates(&cert.pem()).is_ok());
        assert!(ca_certificates("").is_err());
        assert!(
            ca_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn not_after_refuses_what_is_not_a_certificate() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        assert_eq!(asn1_time(0x17, b"991301000000Z"), None);
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x18, b"20000229120000Z"), Some(951_825_600));
    }
}
