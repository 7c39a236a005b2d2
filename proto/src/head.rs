//! The HTTP/1.1 request head a service sends to open a stream, and the relay's response head.
//!
//! ```text
//! CONNECT <device>.<namespace>:<port> HTTP/1.1
//! Host: <device>.<namespace>:<port>
//! Authorization: Bearer <stream token>
//!
//! ```
//! The relay answers `HTTP/1.1 200 Connection Established` and from then on the connection carries
//! raw bytes of the tunnelled TCP connection; or it answers an error status with a `Tether-Error`
//! header naming the reason and closes.

use crate::{HEADER_ERROR, name::DeviceKey};

/// Largest request or response head accepted. A CONNECT head with a token is well under 2 KiB;
/// 8 KiB matches common proxies' limits and bounds what an unauthenticated client can send.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most headers accepted in one head.
pub const MAX_HEADERS: usize = 32;

/// Why a head was rejected. Each maps to an HTTP status via [`HeadError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than [`MAX_HEAD_LEN`] without ending.
    #[error("request head exceeds {MAX_HEAD_LEN} bytes")]
    TooLarge,
    /// Not parseable as HTTP/1.1.
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// A method other than `CONNECT`.
    #[error("method {0} not allowed: use CONNECT")]
    MethodNotAllowed(String),
    /// The CONNECT target is not `<device>.<namespace>:<port>`.
    #[error("CONNECT target {0:?} must be <device>.<namespace>:<port>")]
    BadTarget(String),
    /// No usable `Authorization: Bearer` header.
    #[error("missing Authorization: Bearer <stream token> header")]
    MissingToken,
}

impl HeadError {
    /// The HTTP status the relay answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Malformed(_) | Self::BadTarget(_) => 400,
            Self::MethodNotAllowed(_) => 405,
            Self::MissingToken => 401,
        }
    }
}

/// A parsed service request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The device named by the CONNECT target.
    pub device: DeviceKey,
    /// The target port on the device.
    pub port: u16,
    /// The bearer token, not yet verified. Never log it.
    pub token: String,
    /// The `traceparent` header, if any, for trace propagation.
    pub traceparent: Option<String>,
}

/// Result of parsing a possibly incomplete head.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole head, and how many bytes of the input it used. Bytes after it belong to the tunnel.
    Complete(T, usize),
    /// More bytes are needed.
    Incomplete,
}

/// Parses a service's CONNECT request head from the front of `buf`.
///
/// # Errors
/// See [`HeadError`].
pub fn parse_connect(buf: &[u8]) -> Result<Parsed<ConnectRequest>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if used > MAX_HEAD_LEN {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default();
    if method != "CONNECT" {
        return Err(HeadError::MethodNotAllowed(method.chars().take(16).collect()));
    }
    let target = req.path.unwrap_or_default();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let request = connect_request(target, header("authorization"), header(crate::HEADER_TRACEPARENT))?;
    Ok(Parsed::Complete(request, used))
}

/// Builds a request from its parts: the CONNECT target (HTTP/1.1 request target, or HTTP/2
/// `:authority`), the `Authorization` header and the `traceparent` header. The HTTP/2 path of the
/// relay calls this with what h2 decoded (h2 bounds the header list), so both forms are checked
/// by one function.
///
/// # Errors
/// [`HeadError::BadTarget`] or [`HeadError::MissingToken`].
pub fn connect_request(
    target: &str,
    authorization: Option<&str>,
    traceparent: Option<&str>,
) -> Result<ConnectRequest, HeadError> {
    let (device, port) = parse_target(target)?;
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(HeadError::MissingToken)?
        .to_owned();
    Ok(ConnectRequest {
        device,
        port,
        token,
        traceparent: traceparent.map(str::to_owned),
    })
}

/// The CONNECT target (`<device>.<namespace>:<port>`) naming `device`'s `port`: the HTTP/1.1
/// request target and the HTTP/2 `:authority`.
pub fn connect_target(device: &DeviceKey, port: u16) -> String {
    format!("{}.{}:{}", device.name(), device.namespace(), port)
}

fn parse_target(target: &str) -> Result<(DeviceKey, u16), HeadError> {
    let bad = || HeadError::BadTarget(target.chars().take(140).collect());
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let (name, namespace) = host.split_once('.').ok_or_else(bad)?;
    let device = DeviceKey::new(namespace, name).map_err(|_| bad())?;
    Ok((device, port))
}

/// Encodes a CONNECT request head for `device:port` with `token`.
pub fn encode_connect(device: &DeviceKey, port: u16, token: &str, traceparent: Option<&str>) -> Vec<u8> {
    let target = connect_target(device, port);
    let mut head =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {token}\r\n");
    if let Some(tp) = traceparent {
        head.push_str(&format!("traceparent: {tp}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Encodes the relay's success answer.
pub fn encode_established() -> &'static [u8] {
    b"HTTP/1.1 200 Connection Established\r\n\r\n"
}

/// Encodes a refusal: status, a machine-readable `reason` (a low-cardinality label) and a message.
pub fn encode_refusal(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("{message}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\n{HEADER_ERROR}: {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The relay's answer as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// HTTP status code.
    pub status: u16,
    /// The `Tether-Error` reason when refused.
    pub reason: Option<String>,
}

/// Parses the relay's response head (client side).
///
/// # Errors
/// [`HeadError::TooLarge`] or [`HeadError::Malformed`].
pub fn parse_response(buf: &[u8]) -> Result<Parsed<ConnectResponse>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(used)) => {
            let reason = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(HEADER_ERROR))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned);
            Ok(Parsed::Complete(
                ConnectResponse {
                    status: resp.code.unwrap_or_default(),
                    reason,
                },
                used,
            ))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(Parsed::Incomplete),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn key() -> DeviceKey {
        DeviceKey::parse("factory-1/pump-7").unwrap()
    }

    #[test]
    fn connect_round_trip_with_trailing_bytes() {
        let mut wire = encode_connect(&key(), 22, "tok.en.sig", Some("00-abc-def-01"));
        let head_len = wire.len();
        wire.extend_from_slice(b"SSH-2.0-OpenSSH");
        let Parsed::Complete(req, used) = parse_connect(&wire).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(used, head_len);
        assert_eq!(req.device, key());
        assert_eq!(req.port, 22);
        assert_eq!(req.token, "tok.en.sig");
        assert_eq!(req.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!(parse_connect(&wire[..head_len - 1]).unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn rejects_bad_requests() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n", 405),
            (
                b"CONNECT pump:22 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
                400,
            ),
            (
                b"CONNECT pump.ns:0 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
                400,
            ),
            (
                b"CONNECT pump.ns:99999 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
                400,
            ),
            (
                b"CONNECT Pump.ns:22 HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
                400,
            ),
            (b"CONNECT pump.ns:22 HTTP/1.1\r\n\r\n", 401),
            (
                b"CONNECT pump.ns:22 HTTP/1.1\r\nAuthorization: Basic x\r\n\r\n",
                401,
            ),
            (
                b"CONNECT pump.ns:22 HTTP/1.1\r\nAuthorization: Bearer  \r\n\r\n",
                401,
            ),
            (b"\x16\x03\x01garbage\r\n\r\n", 400),
        ];
        for (wire, status) in cases {
            let err = parse_connect(wire).unwrap_err();
            assert_eq!(
                err.status(),
                *status,
                "{:?} gave {err}",
                String::from_utf8_lossy(wire)
            );
        }
        let huge = [
            b"CONNECT pump.ns:22 HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; MAX_HEAD_LEN],
        ]
        .concat();
        assert_eq!(parse_connect(&huge), Err(HeadError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("CONNECT pump.ns:22 HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_connect(many.as_bytes()),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn http2_parts_are_checked_like_a_head() {
        let target = connect_target(&key(), 22);
        let req = connect_request(&target, Some("Bearer a.b.c"), None).unwrap();
        assert_eq!((req.device, req.port, req.token.as_str()), (key(), 22, "a.b.c"));
        assert_eq!(connect_request(&target, None, None).unwrap_err().status(), 401);
        assert_eq!(
            connect_request("pump-7:22", Some("Bearer a"), None)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn response_round_trip() {
        let mut wire = encode_established().to_vec();
        wire.extend_from_slice(b"tail");
        let Parsed::Complete(resp, used) = parse_response(&wire).unwrap() else {
            panic!()
        };
        assert_eq!(
            (resp.status, resp.reason, &wire[used..]),
            (200, None, &b"tail"[..])
        );
        let wire = encode_refusal(403, "token_expired", "the stream token has expired");
        let Parsed::Complete(resp, _) = parse_response(&wire).unwrap() else {
            panic!()
        };
        assert_eq!(
            (resp.status, resp.reason.as_deref()),
            (403, Some("token_expired"))
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(11);
        let seed = encode_connect(&key(), 22, "a.b.c", None);
        for _ in 0..20_000 {
            let mut buf = seed.clone();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..buf.len());
                buf[i] = rng.r#gen();
            }
            buf.truncate(rng.gen_range(0..=buf.len()));
            let _ = parse_connect(&buf);
            let _ = parse_response(&buf);
        }
    }
}
