//! The clients' side (the CLI and agents): which CA to trust, which certificate to
//! present, and what a failed connection most likely means.

use std::net::IpAddr;
use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{Error, pem};

/// `--ca` (the CA that signed the server's certificate; without it the system's
/// roots), and `--cert`/`--key` (this client's certificate, for mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// The configuration for dialling `url`, with the files read now (so a rotated
    /// certificate is used from the next connection on): `None` for `http://`.
    /// Files given for a plaintext URL are an error, not silently ignored.
    pub fn for_url(&self, url: &str) -> Result<Option<ClientTlsConfig>, Error> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(Error::Flags("--key: required with --cert".into())),
            (None, Some(_)) => return Err(Error::Flags("--cert: required with --key".into())),
            _ => {}
        }
        if !url.starts_with("https://") {
            let flag = [(self.ca.is_some(), "--ca"), (self.cert.is_some(), "--cert")]
                .into_iter()
                .find_map(|(set, flag)| set.then_some(flag));
            return match flag {
                Some(flag) => Err(Error::Flags(format!(
                    "{flag}: given, but the server URL {url} is plaintext; use https://"
                ))),
                None => Ok(None),
            };
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(path) => {
                pem::certs("--ca", path)?;
                config.ca_certificate(Certificate::from_pem(pem::read("--ca", path)?))
            }
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            pem::certs("--cert", cert)?;
            pem::key("--key", key)?;
            config = config.identity(Identity::from_pem(
                pem::read("--cert", cert)?,
                pem::read("--key", key)?,
            ));
        }
        Ok(Some(config))
    }
}

/// A warning for a plaintext URL whose host is not a loopback address: the token
/// (and everything else) would cross the network readable.
pub fn plaintext_warning(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "warning: {url} is plaintext to a non-loopback address: the token and every object cross the network unencrypted; serve TLS (flotilla server --tls-cert/--tls-key) and use https://"
        )
    })
}

/// What a failed connection's error chain most likely means, as a sentence to add
/// to it (none when nothing is recognised).
pub fn explain(url: &str, chain: &str) -> Option<&'static str> {
    let e = chain.to_ascii_lowercase();
    let https = url.starts_with("https://");
    let has = |s: &str| e.contains(s);
    Some(if has("expired") && !has("alert") {
        "the server's certificate has expired (or is not valid yet)"
    } else if has("notvalidforname") || has("not valid for name") {
        "the server's certificate does not name the host of the URL"
    } else if has("unknownissuer") || has("unknown issuer") || has("selfsigned") {
        "the server's certificate is not signed by a CA this client trusts: pass the CA with --ca (or FLOTILLA_CA)"
    } else if has("alert") {
        "the server refused this client's TLS handshake: a client certificate (--cert/--key) signed by the server's --client-ca, valid now, is needed"
    } else if https
        && (has("corrupt message") || has("invalidcontenttype") || has("invalid content type"))
    {
        "the server does not speak TLS on this address: use http://"
    } else if !https
        && (has("frame") || has("reset") || has("broken pipe") || has("closed") || has("h2"))
    {
        "if the server serves TLS, use https:// (and --ca)"
    } else {
        return None;
    })
}

/// Whether a connection's error chain is a certificate that one side refused (the
/// server's, here; this client's, by the server's alert): retrying will not help
/// until a file changes.
pub fn certificate_refused(chain: &str) -> bool {
    let e = chain.to_ascii_lowercase();
    e.contains("invalid peer certificate") || e.contains("received fatal alert")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_warns_only_off_loopback() {
        assert!(plaintext_warning("http://127.0.0.1:7443").is_none());
        assert!(plaintext_warning("http://127.5.6.7:7443").is_none());
        assert!(plaintext_warning("http://[::1]:7443").is_none());
        assert!(plaintext_warning("http://localhost:7443").is_none());
        assert!(plaintext_warning("https://10.0.0.1:7443").is_none());
        let w = plaintext_warning("http://10.0.0.1:7443").unwrap();
        assert!(
            w.contains("http://10.0.0.1:7443") && w.contains("https://"),
            "{w}"
        );
        assert!(plaintext_warning("http://flotilla.example.com").is_some());
        assert!(plaintext_warning("http://[2001:db8::1]:7443/").is_some());
    }

    #[test]
    fn files_for_a_plaintext_url_or_a_lone_half_are_refused_by_flag() {
        let ca = ClientTls {
            ca: Some("/x".into()),
            ..ClientTls::default()
        };
        let e = ca.for_url("http://127.0.0.1:1").unwrap_err().to_string();
        assert!(e.starts_with("--ca: ") && e.contains("plaintext"), "{e}");
        let half = ClientTls {
            cert: Some("/x".into()),
            ..ClientTls::default()
        };
        assert_eq!(
            half.for_url("https://h:1").unwrap_err().to_string(),
            "--key: required with --cert"
        );
        assert!(
            ClientTls::default()
                .for_url("http://h:1")
                .unwrap()
                .is_none()
        );
        let missing = ClientTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let e = missing.for_url("https://h:1").unwrap_err().to_string();
        assert!(e.starts_with("--ca /nonexistent/ca.pem: "), "{e}");
    }
}
