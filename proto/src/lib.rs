//! Tether's wire protocol, sans-IO: every parser of untrusted bytes lives here, bounded in size.
//!
//! * [`name`]: device keys, DNS-label validation, the SNI scheme and the SPIFFE device identity.
//! * [`preface`]: the versioned preface an agent sends on its device connection, and the reply.
//! * [`head`]: the HTTP/1.1 `CONNECT` request head a service sends, and the relay's answer.
//! * [`token`]: stream-token claims with Ed25519 (EdDSA JWS) signing and verification.
//! * [`ring`]: the rendezvous hash ring mapping a device to its owning relay.
//! * [`client_hello`]: reads the SNI and ALPN from a TLS ClientHello without terminating TLS.
//! * [`proxy_header`]: the PROXY protocol v2 header on connections forwarded between relays.
//!
//! Nothing here opens a socket or reads a clock: callers pass bytes and the current time in.

#![forbid(unsafe_code)]

pub mod client_hello;
#[doc(hidden)]
pub mod fuzz;
pub mod head;
pub mod name;
pub mod preface;
pub mod proxy_header;
pub mod ring;
pub mod token;

/// ALPN protocol id of a device connection (agent ↔ relay, HTTP/2 with reversed roles).
pub const ALPN_DEVICE: &[u8] = b"tether/1";
/// ALPN protocol id of a service connection carrying one tunnelled TCP connection (client ↔
/// relay, HTTP/1.1 `CONNECT`).
pub const ALPN_SERVICE: &[u8] = b"http/1.1";
/// ALPN protocol id of a multiplexed service connection (client ↔ relay, HTTP/2, one `CONNECT`
/// stream per tunnelled TCP connection, all for the device the SNI names).
pub const ALPN_SERVICE_H2: &[u8] = b"h2";

/// HTTP/2 request header carrying the target port on the device (relay → agent).
pub const HEADER_TARGET_PORT: &str = "tether-target-port";
/// HTTP/2 request header carrying the DeviceStream UID the stream belongs to (relay → agent).
pub const HEADER_STREAM_UID: &str = "tether-stream-uid";
/// W3C trace-context header propagated across client, relay and agent.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// HTTP/2 request header of a control request (relay → agent) instead of a stream.
pub const HEADER_CONTROL: &str = "tether-control";
/// [`HEADER_CONTROL`] value: "another relay serves you now: reconnect at once; streams in flight
/// on this connection continue until they end".
pub const CONTROL_RECONNECT: &str = "reconnect";
/// Response header carrying a machine-readable refusal reason (relay → client, agent → relay).
pub const HEADER_ERROR: &str = "tether-error";
