//! The PROXY protocol v2 header that prefixes a connection one relay forwards to another's peer
//! port: it carries the original client's address, so the owner sees (and rate-limits) the real
//! source. Encoding and decoding are the `ppp` crate's; this module bounds what is read.
//!
//! Only `PROXY` commands over TCP (`STREAM`, IPv4 or IPv6) are accepted: a peer port never serves
//! a connection without a client address. TLVs are allowed but ignored; the whole header is at
//! most [`MAX_HEADER_LEN`] bytes.

use std::net::SocketAddr;

use ppp::v2::{self, Addresses, Command, Protocol};

/// The fixed part: 12-byte signature, version/command, family/protocol, 2-byte length.
pub const FIXED_LEN: usize = 16;
/// Largest header accepted: IPv6 addresses (36 bytes) plus room for a few TLVs.
pub const MAX_HEADER_LEN: usize = 256;

/// What a peer-port connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client's address.
    pub source: SocketAddr,
    /// The address the client dialled (the forwarding relay's data port).
    pub destination: SocketAddr,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// Not a PROXY v2 header at all.
    #[error("not a PROXY protocol v2 header: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEADER_LEN`].
    #[error("PROXY header of {0} bytes exceeds the {MAX_HEADER_LEN}-byte limit")]
    TooLarge(usize),
    /// A `LOCAL` command, UDP, or a Unix / unspecified address: nothing to attribute the
    /// connection to.
    #[error("PROXY header carries no TCP client address")]
    NoClientAddress,
}

/// The total header length announced by the fixed part, once `buf` holds it.
///
/// # Errors
/// When the signature is wrong or the length exceeds [`MAX_HEADER_LEN`].
pub fn announced_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyHeaderError> {
    if fixed[..12] != v2::PROTOCOL_PREFIX[..] {
        return Err(ProxyHeaderError::Malformed("bad signature".into()));
    }
    let total = FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if total > MAX_HEADER_LEN {
        return Err(ProxyHeaderError::TooLarge(total));
    }
    Ok(total)
}

/// Decodes a complete header (exactly [`announced_len`] bytes).
///
/// # Errors
/// See [`ProxyHeaderError`].
pub fn decode(header: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(ProxyHeaderError::TooLarge(header.len()));
    }
    let parsed = v2::Header::try_from(header).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    if parsed.command != Command::Proxy || parsed.protocol != Protocol::Stream {
        return Err(ProxyHeaderError::NoClientAddress);
    }
    let (source, destination) = match parsed.addresses {
        Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        Addresses::Unspecified | Addresses::Unix(_) => return Err(ProxyHeaderError::NoClientAddress),
    };
    Ok(ProxyHeader { source, destination })
}

/// Encodes a header for a TCP connection from `source` to `destination`.
///
/// # Panics
/// Never: both addresses must be of one family, and a mixed pair is mapped to IPv6 first.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (source, destination)
        }
        _ => (to_v6(source), to_v6(destination)),
    };
    v2::Builder::with_addresses(
        v2::Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .expect("a PROXY v2 header with two addresses of one family always encodes")
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn fixed(b: &[u8]) -> [u8; FIXED_LEN] {
        b[..FIXED_LEN].try_into().unwrap()
    }

    #[test]
    fn round_trip_v4_v6_and_mixed() {
        for (s, d) in [
            ("192.0.2.7:51000", "10.0.0.2:8443"),
            ("[2001:db8::1]:4000", "[2001:db8::2]:8443"),
            ("192.0.2.7:51000", "[2001:db8::2]:8443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let bytes = encode(s, d);
            assert_eq!(announced_len(&fixed(&bytes)).unwrap(), bytes.len());
            let h = decode(&bytes).unwrap();
            assert_eq!(h.source.port(), s.port());
            assert_eq!(h.destination.port(), d.port());
            if s.is_ipv4() == d.is_ipv4() {
                assert_eq!((h.source, h.destination), (s, d));
            }
        }
    }

    #[test]
    fn refuses_local_udp_bad_signature_and_oversize() {
        let local = v2::Builder::new(v2::Version::Two | Command::Local, 0)
            .build()
            .unwrap();
        assert_eq!(decode(&local), Err(ProxyHeaderError::NoClientAddress));
        let s: SocketAddr = "192.0.2.7:1".parse().unwrap();
        let udp = v2::Builder::with_addresses(v2::Version::Two | Command::Proxy, Protocol::Datagram, (s, s))
            .build()
            .unwrap();
        assert_eq!(decode(&udp), Err(ProxyHeaderError::NoClientAddress));
        let mut tls = [0u8; FIXED_LEN];
        tls[0] = 0x16;
        assert!(matches!(announced_len(&tls), Err(ProxyHeaderError::Malformed(_))));
        let mut big = fixed(&encode(s, s));
        big[14..16].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(announced_len(&big), Err(ProxyHeaderError::TooLarge(1016)));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(7);
        let good = encode(
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.2:8443".parse().unwrap(),
        );
        for _ in 0..50_000 {
            let mut b = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.r#gen();
            }
            b.truncate(rng.gen_range(FIXED_LEN..=b.len()));
            if let Ok(n) = announced_len(&fixed(&b)) {
                let _ = decode(&b[..n.min(b.len())]);
            }
            let noise: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.r#gen()).collect();
            let _ = decode(&noise);
        }
    }
}
