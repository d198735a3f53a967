//! Certificates made at test time (feature `testing`): a CA, leaves it signs (valid
//! now, or expired), and self-signed ones.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, date_time_ymd,
};

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// When a leaf is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago for a year.
    Now,
    /// Ended in 2021.
    Expired,
}

fn params(names: &[&str], validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
        })
        .collect();
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    match validity {
        Validity::Now => {
            let now = std::time::SystemTime::now();
            params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
            params.not_after = (now + std::time::Duration::from_secs(365 * 86_400)).into();
        }
        Validity::Expired => {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
    }
    params
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("a key");
        let mut params = params(&[], Validity::Now);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (IP addresses become IP SANs, the rest DNS SANs).
    pub fn leaf(&self, names: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let cert = params(names, validity)
            .signed_by(&key, &self.issuer)
            .expect("a leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).expect("writing the CA");
        path
    }
}

impl Leaf {
    /// A self-signed leaf for `names`.
    pub fn self_signed(names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let cert = params(names, Validity::Now)
            .self_signed(&key)
            .expect("a certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `dir/name.crt` and `dir/name.key`; their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).expect("writing a certificate");
        std::fs::write(&key, &self.key).expect("writing a key");
        (cert, key)
    }
}
