//! Every instance's own loopback address (its "pod IP"), unique on the host.
//!
//! ```text
//!   member block   127.N.0.0/16   N = addressBlock, else from a hash of the dataDir
//!   candidates     127.N.0.1, 127.N.0.2, ... 127.N.255.254
//!   refused when   something listens on the port at every address (0.0.0.0, ::)
//!   free when      no other instance of this member holds it
//!                  ∧ nothing listens on it, any port        (/proc/net/tcp)
//!                  ∧ binding the instance's port on it works (EADDRINUSE: taken)
//! ```
//!
//! Several members (agents) run on one host in tests and on a bare-metal pool; each
//! has its own block, so they do not compete for addresses, and the checks catch a
//! collision of blocks all the same. An instance keeps its address across restarts
//! while it is free; when it is not, the instance gets another (its replicas are
//! re-pointed by the Redis engine).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;

use crate::os;
use crate::{Error, Result};

/// A member's block of loopback addresses, `127.<octet>.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block(pub u8);

impl Block {
    /// The block derived from a member's (canonical) data directory: two members with
    /// different directories most likely get different blocks. 127.0 and 127.1 are
    /// left to everything else on the host (127.0.0.1), and 127.255 to broadcasts.
    pub fn for_dir(data_dir: &Path) -> Block {
        // FNV-1a: stable across Rust versions and runs, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in data_dir.as_os_str().as_encoded_bytes() {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Block(2 + (hash % 253) as u8)
    }

    /// Every address of the block, in order, skipping `.0` and `.255` last octets.
    fn candidates(self) -> impl Iterator<Item = Ipv4Addr> {
        (0..=255u8).flat_map(move |b| (1..=254u8).map(move |c| Ipv4Addr::new(127, self.0, b, c)))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.{}.0.0/16", self.0)
    }
}

/// An address for an instance listening on `port` (if it has one): `preferred` (the
/// address it had) when it is still free, else the first free one of `block`.
/// `held` are the addresses of this member's other instances.
pub fn pick(
    block: Block,
    port: Option<u16>,
    preferred: Option<Ipv4Addr>,
    held: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let listening = os::listening();
    let free = |ip: Ipv4Addr| -> Result<bool> {
        if held.contains(&ip) || listening.addresses.contains(&ip) {
            return Ok(false);
        }
        let Some(port) = port else {
            return Ok(true);
        };
        let addr = SocketAddrV4::new(ip, port);
        match TcpListener::bind(addr) {
            Ok(_) => Ok(true),
            // Taken here; or everywhere, when something listens on all addresses
            // (an IPv6-only one would not have stopped this bind).
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if listening.wildcard_ports.contains(&port) {
                    Err(Error::PortTaken(port))
                } else {
                    Ok(false)
                }
            }
            Err(source) => Err(Error::Bind {
                addr: addr.to_string(),
                source,
            }),
        }
    };
    if let Some(ip) = preferred
        && free(ip)?
    {
        return Ok(ip);
    }
    for ip in block.candidates() {
        if free(ip)? {
            return Ok(ip);
        }
    }
    Err(Error::NoAddress(block.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_stable_and_avoid_the_common_ones() {
        let a = Block::for_dir(Path::new("/var/lib/flotilla/a"));
        assert_eq!(a, Block::for_dir(Path::new("/var/lib/flotilla/a")));
        let blocks: BTreeSet<u8> = (0..200)
            .map(|i| Block::for_dir(Path::new(&format!("/tmp/m{i}"))).0)
            .collect();
        assert!(blocks.iter().all(|b| (2..=254).contains(b)));
        assert!(blocks.len() > 100, "spread: {}", blocks.len());
    }

    #[test]
    fn an_address_in_use_on_the_port_or_held_is_skipped() {
        let block = Block::for_dir(Path::new("/flotilla/address-test"));
        let first = Ipv4Addr::new(127, block.0, 0, 1);
        let taken = TcpListener::bind(SocketAddrV4::new(first, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let ip = pick(block, Some(port), Some(first), &BTreeSet::new()).unwrap();
        assert_ne!(ip, first, "something listens there");
        let again = pick(block, Some(port), Some(ip), &BTreeSet::new()).unwrap();
        assert_eq!(again, ip, "the preferred address while free");
        let other = pick(block, Some(port), Some(ip), &BTreeSet::from([ip])).unwrap();
        assert_ne!(other, ip, "held by another instance");
        assert_ne!(other, first);
    }
}
