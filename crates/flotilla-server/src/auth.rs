//! Tokens: agents' per-cluster tokens and the admin token of the user API.
//!
//! Tokens are 32 random bytes, hex-encoded with a `flt_` prefix. The server keeps only
//! the SHA-256 of an agent token, and compares digests in constant time.

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// A new random token.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(format!("flt_{}", hex(&bytes)))
}

/// The hex SHA-256 of a token, as stored.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a call, or why there is none.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get(flotilla_proto::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("no token: send `authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))
}

/// The user API's check: the call must carry the admin token.
#[derive(Clone)]
pub struct AdminAuth {
    digest: String,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth")
    }
}

impl AdminAuth {
    pub fn new(token: &str) -> AdminAuth {
        AdminAuth {
            digest: digest(token),
        }
    }

    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = bearer(metadata)?;
        if same(digest(token).as_bytes(), self.digest.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("the token was refused"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_checked_by_digest() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("flt_") && a.len() == 4 + 64);
        let auth = AdminAuth::new(&a);
        let mut md = MetadataMap::new();
        assert_eq!(
            auth.check(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", format!("Bearer {b}").parse().unwrap());
        assert_eq!(
            auth.check(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", format!("Bearer {a}").parse().unwrap());
        auth.check(&md).unwrap();
        md.insert("authorization", a.parse().unwrap());
        assert!(
            auth.check(&md).is_err(),
            "a token without `Bearer ` is refused"
        );
        assert!(!same(b"ab", b"abc"));
    }
}
