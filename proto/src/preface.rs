//! The versioned preface of a device connection, and the relay's reply to it.
//!
//! Right after the TLS handshake (ALPN `tether/1`) the agent sends a [`Preface`]; the relay answers
//! with a [`PrefaceReply`]; then HTTP/2 starts with the relay as the client. Both messages share one
//! frame layout:
//!
//! ```text
//! magic (8 bytes) | version (1 byte) | body length (u16, big-endian) | body (JSON, ≤ MAX_BODY_LEN)
//! ```
//!
//! The magic differs per direction so a misdirected byte stream fails loudly.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

/// Magic bytes that open an agent's preface.
pub const AGENT_MAGIC: &[u8; 8] = b"TETHER\x00A";
/// Magic bytes that open the relay's reply.
pub const RELAY_MAGIC: &[u8; 8] = b"TETHER\x00R";
/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Largest JSON body accepted. Agent metadata is a few short strings; 4 KiB leaves ample room while
/// bounding what an unauthenticated peer can make us buffer.
pub const MAX_BODY_LEN: usize = 4096;
/// Bytes before the body: magic, version and length.
pub const HEADER_LEN: usize = 8 + 1 + 2;
/// Longest `agentVersion` accepted. The device controls it and the relay logs it and writes it
/// into Device status, so it is bounded well below the body limit (a semver with build metadata
/// fits easily).
pub const MAX_AGENT_VERSION_LEN: usize = 64;

/// What the agent tells the relay about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preface {
    /// The agent's version, shown in Device status.
    pub agent_version: String,
    /// Optional protocol features the agent supports (none are defined in version 1).
    #[serde(default)]
    pub features: Vec<String>,
}

/// The relay's answer to a [`Preface`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefaceReply {
    /// Whether the relay accepted the device; when false the relay closes the connection.
    pub accepted: bool,
    /// A human-readable reason when refused (for the agent's log).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The relay's version.
    pub relay_version: String,
}

/// Why a preface could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefaceError {
    /// The first bytes are not Tether's magic.
    #[error("not a Tether preface (bad magic bytes): is the peer a Tether agent/relay?")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error(
        "unsupported protocol version {got} (this build speaks version {VERSION}): upgrade the older side"
    )]
    UnsupportedVersion {
        /// The version the peer sent.
        got: u8,
    },
    /// The announced body is larger than [`MAX_BODY_LEN`].
    #[error("preface body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not the expected JSON.
    #[error("malformed preface body: {0}")]
    BadBody(String),
    /// `agentVersion` is empty, longer than [`MAX_AGENT_VERSION_LEN`] or not printable ASCII
    /// (a newline would forge a log line, an escape sequence would reach the terminal).
    #[error("agentVersion must be 1-{MAX_AGENT_VERSION_LEN} printable ASCII characters (got {len} bytes)")]
    BadAgentVersion {
        /// Its length in bytes.
        len: usize,
    },
}

/// Result of trying to decode from a buffer that may hold only part of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole message; its bytes were consumed from the buffer.
    Complete(T),
    /// More bytes are needed; nothing was consumed.
    Incomplete,
}

fn encode<T: Serialize>(magic: &[u8; 8], msg: &T, dst: &mut BytesMut) {
    // Serializing our own plain structs cannot fail; the length is bounded by construction in
    // practice, and checked so an oversized message is never sent.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let body = if body.len() > MAX_BODY_LEN {
        b"{}".to_vec()
    } else {
        body
    };
    dst.reserve(HEADER_LEN + body.len());
    dst.put_slice(magic);
    dst.put_u8(VERSION);
    dst.put_u16(body.len() as u16);
    dst.put_slice(&body);
}

/// Checks the header at the front of `src` (magic on whatever prefix has arrived, so garbage
/// fails without waiting) and returns the body length once the header is complete.
fn body_len(magic: &[u8; 8], src: &[u8]) -> Result<Decoded<usize>, PrefaceError> {
    let seen = src.len().min(magic.len());
    if src[..seen] != magic[..seen] {
        return Err(PrefaceError::BadMagic);
    }
    if src.len() < HEADER_LEN {
        return Ok(Decoded::Incomplete);
    }
    let version = src[8];
    if version != VERSION {
        return Err(PrefaceError::UnsupportedVersion { got: version });
    }
    let len = u16::from_be_bytes([src[9], src[10]]) as usize;
    if len > MAX_BODY_LEN {
        return Err(PrefaceError::TooLarge(len));
    }
    Ok(Decoded::Complete(len))
}

/// The whole frame's length announced by a complete header, for a reader that must take
/// exactly the frame off a stream (the HTTP/2 bytes behind it are not its to consume).
fn frame_len(magic: &[u8; 8], header: &[u8; HEADER_LEN]) -> Result<usize, PrefaceError> {
    match body_len(magic, header)? {
        Decoded::Complete(len) => Ok(HEADER_LEN + len),
        // A full header is never incomplete.
        Decoded::Incomplete => Err(PrefaceError::BadBody("incomplete header".into())),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    magic: &[u8; 8],
    src: &mut BytesMut,
) -> Result<Decoded<T>, PrefaceError> {
    let Decoded::Complete(len) = body_len(magic, src)? else {
        return Ok(Decoded::Incomplete);
    };
    if src.len() < HEADER_LEN + len {
        return Ok(Decoded::Incomplete);
    }
    let msg = serde_json::from_slice(&src[HEADER_LEN..HEADER_LEN + len])
        .map_err(|e| PrefaceError::BadBody(e.to_string()))?;
    src.advance(HEADER_LEN + len);
    Ok(Decoded::Complete(msg))
}

impl Preface {
    /// Appends the encoded preface to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode(AGENT_MAGIC, self, dst);
    }

    /// Decodes a preface from the front of `src`, consuming it when complete.
    ///
    /// # Errors
    /// Bad magic, another version, an oversized or malformed body.
    pub fn decode(src: &mut BytesMut) -> Result<Decoded<Self>, PrefaceError> {
        let decoded = decode::<Self>(AGENT_MAGIC, src)?;
        if let Decoded::Complete(p) = &decoded {
            validate_agent_version(&p.agent_version)?;
        }
        Ok(decoded)
    }

    /// The length of the preface frame (header and body) that `header` announces.
    ///
    /// # Errors
    /// Bad magic, another version, or a body over [`MAX_BODY_LEN`].
    pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, PrefaceError> {
        frame_len(AGENT_MAGIC, header)
    }
}

/// Checks that `version` is safe to log and store: bounded, printable ASCII (space included).
///
/// # Errors
/// [`PrefaceError::BadAgentVersion`].
pub fn validate_agent_version(version: &str) -> Result<(), PrefaceError> {
    let printable = version.bytes().all(|b| (0x20..0x7f).contains(&b));
    if version.is_empty() || version.len() > MAX_AGENT_VERSION_LEN || !printable {
        return Err(PrefaceError::BadAgentVersion { len: version.len() });
    }
    Ok(())
}

impl PrefaceReply {
    /// Appends the encoded reply to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode(RELAY_MAGIC, self, dst);
    }

    /// Decodes a reply from the front of `src`, consuming it when complete.
    ///
    /// # Errors
    /// Bad magic, another version, an oversized or malformed body.
    pub fn decode(src: &mut BytesMut) -> Result<Decoded<Self>, PrefaceError> {
        decode(RELAY_MAGIC, src)
    }

    /// The length of the reply frame (header and body) that `header` announces.
    ///
    /// # Errors
    /// Bad magic, another version, or a body over [`MAX_BODY_LEN`].
    pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, PrefaceError> {
        frame_len(RELAY_MAGIC, header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn sample() -> Preface {
        Preface {
            agent_version: "0.1.0".into(),
            features: vec![],
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = BytesMut::new();
        sample().encode(&mut wire);
        wire.extend_from_slice(b"PRI * HTTP/2.0"); // what follows must stay in the buffer
        let mut buf = BytesMut::new();
        let mut out = None;
        for b in wire.iter() {
            buf.put_u8(*b);
            if let Decoded::Complete(p) = Preface::decode(&mut buf).unwrap() {
                out = Some(p);
                break;
            }
        }
        assert_eq!(out.unwrap(), sample());
        let reply = PrefaceReply {
            accepted: false,
            message: "nope".into(),
            relay_version: "1".into(),
        };
        let mut wire = BytesMut::new();
        reply.encode(&mut wire);
        assert_eq!(PrefaceReply::decode(&mut wire).unwrap(), Decoded::Complete(reply));
        assert!(wire.is_empty());
    }

    #[test]
    fn frame_len_is_read_from_a_checked_header() {
        let mut wire = BytesMut::new();
        sample().encode(&mut wire);
        let header: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
        assert_eq!(Preface::frame_len(&header), Ok(wire.len()));
        // The reply's magic differs: an agent's preface is not a reply.
        assert_eq!(PrefaceReply::frame_len(&header), Err(PrefaceError::BadMagic));
        let mut big = header;
        big[9..11].copy_from_slice(&((MAX_BODY_LEN + 1) as u16).to_be_bytes());
        assert_eq!(
            Preface::frame_len(&big),
            Err(PrefaceError::TooLarge(MAX_BODY_LEN + 1))
        );
        let mut other = header;
        other[8] = VERSION + 1;
        assert_eq!(
            Preface::frame_len(&other),
            Err(PrefaceError::UnsupportedVersion { got: VERSION + 1 })
        );
    }

    #[test]
    fn rejects_malformed() {
        let mut wire = BytesMut::new();
        sample().encode(&mut wire);
        let mut bad_magic = wire.clone();
        bad_magic[0] = b'X';
        assert_eq!(Preface::decode(&mut bad_magic), Err(PrefaceError::BadMagic));
        let mut early_garbage = BytesMut::from(&b"GET "[..]);
        assert_eq!(Preface::decode(&mut early_garbage), Err(PrefaceError::BadMagic));
        let mut wrong_dir = wire.clone();
        assert_eq!(PrefaceReply::decode(&mut wrong_dir), Err(PrefaceError::BadMagic));
        let mut bad_version = wire.clone();
        bad_version[8] = 9;
        assert_eq!(
            Preface::decode(&mut bad_version),
            Err(PrefaceError::UnsupportedVersion { got: 9 })
        );
        let mut too_large = wire.clone();
        too_large[9..11].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            Preface::decode(&mut too_large),
            Err(PrefaceError::TooLarge(65535))
        );
        let mut bad_body = BytesMut::new();
        bad_body.put_slice(AGENT_MAGIC);
        bad_body.put_u8(VERSION);
        bad_body.put_u16(3);
        bad_body.put_slice(b"{x}");
        assert!(matches!(
            Preface::decode(&mut bad_body),
            Err(PrefaceError::BadBody(_))
        ));
    }

    #[test]
    fn agent_version_must_be_short_printable_ascii() {
        let decode_version = |v: &str| {
            let mut wire = BytesMut::new();
            Preface {
                agent_version: v.into(),
                features: vec![],
            }
            .encode(&mut wire);
            Preface::decode(&mut wire)
        };
        assert!(matches!(
            decode_version("1.2.3-rc.1+build.5"),
            Ok(Decoded::Complete(_))
        ));
        for bad in [
            "",
            "1.0\nINFO forged log line",
            "\u{1b}[31mred",
            "caf\u{e9}",
            &"9".repeat(MAX_AGENT_VERSION_LEN + 1),
        ] {
            assert!(
                matches!(decode_version(bad), Err(PrefaceError::BadAgentVersion { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut buf: BytesMut = (0..len).map(|_| rng.r#gen::<u8>()).collect::<Vec<_>>()[..].into();
            if rng.gen_bool(0.5) && buf.len() >= 9 {
                buf[..8].copy_from_slice(AGENT_MAGIC);
                buf[8] = VERSION;
            }
            let _ = Preface::decode(&mut buf);
        }
    }
}
