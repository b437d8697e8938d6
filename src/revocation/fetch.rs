//! CRL distribution points: where a certificate says its issuer's CRL can
//! be fetched, and when a fetched CRL should be fetched again (well before
//! its nextUpdate).

use std::time::Duration;

use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// The `http://` URLs in a certificate's CRL distribution points.
pub fn distribution_points(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name
                            && uri.starts_with("http://")
                        {
                            out.push(uri.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// When to fetch a CRL again: at 80 % of the way from thisUpdate to
/// nextUpdate, within `[min, max]`; `max` when it has no nextUpdate.
pub fn refresh_in(crl_der: &[u8], now: i64, min: Duration, max: Duration) -> Duration {
    let due = CertificateRevocationList::from_der(crl_der)
        .ok()
        .and_then(|(_, crl)| {
            let this = crl.last_update().timestamp();
            let next = crl.next_update()?.timestamp();
            Some(this + (next - this) * 4 / 5 - now)
        });
    match due {
        Some(secs) => Duration::from_secs(secs.max(0) as u64).clamp(min, max),
        None => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::pki::{Ca, LeafSpec};
    use rustls_pki_types::pem::PemObject;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn reads_distribution_points_and_schedules_refresh() {
        let ca = Ca::generate(&TrustDomain::parse("td").unwrap(), DAY).unwrap();
        let mut spec = LeafSpec::svid(&SpiffeId::parse("spiffe://td/a").unwrap(), DAY);
        spec.crl_distribution_points = vec!["http://crl.td/ca.crl".into(), "ldap://x".into()];
        let leaf = ca.issue(&spec).unwrap();
        assert_eq!(
            distribution_points(&leaf.der),
            vec!["http://crl.td/ca.crl".to_string()]
        );
        assert!(distribution_points(ca.der()).is_empty());

        let pem = ca.crl(&[], 1, Duration::from_secs(10 * 3600)).unwrap();
        let der =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let now = crate::clock::unix_now();
        let wait = refresh_in(
            &der,
            now,
            Duration::from_secs(10),
            Duration::from_secs(86400),
        );
        // thisUpdate is backdated a minute; 80 % of ~10 h is ~8 h.
        assert!(
            wait > Duration::from_secs(7 * 3600) && wait < Duration::from_secs(9 * 3600),
            "{wait:?}"
        );
        assert_eq!(
            refresh_in(&der, now, Duration::from_secs(10), Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_in(
                b"junk",
                now,
                Duration::from_secs(10),
                Duration::from_secs(60)
            ),
            Duration::from_secs(60)
        );
    }
}
