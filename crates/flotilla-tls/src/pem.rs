//! PEM files: read whole (so a message can name the file), then parsed.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// The file's bytes.
pub fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(flag: &'static str, path: &Path, what: impl Into<String>) -> Error {
    Error::Pem {
        flag,
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Every certificate of a PEM file, in order; at least one.
pub fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            flag,
            path,
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem_error(
            flag,
            path,
            "no private key in it (expected -----BEGIN PRIVATE KEY-----)",
        ),
        e => pem_error(flag, path, format!("not a PEM private key: {e}")),
    })
}

/// A root store of every certificate in the file.
pub fn roots(flag: &'static str, path: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}
