//! Tether's shared async transport pieces, used by the relay, the agent and the CLI.
//!
//! * [`tls`]: rustls configurations for each role, PEM loading with clear errors, and the verifier
//!   that checks the relay's certificate against the relay's name while SNI names the device.
//! * [`rewind`]: a stream that replays bytes already read from it.
//! * [`pki`]: a small CA that issues relay serving certificates and device client certificates.
//! * [`h2io`]: an HTTP/2 stream as `AsyncRead + AsyncWrite`, and the HTTP/2 tuning both ends use.
//! * [`window`]: the adaptive HTTP/2 receive window (bandwidth-delay product from PINGs).
//! * [`dial`]: outbound TCP, directly or through an HTTP `CONNECT` proxy (`HTTPS_PROXY`).
//! * `admin` (feature `admin`): the `/metrics`, `/ready`, `/live` server of relays, the operator and
//!   (feature `metrics`) the agent.
//! * [`signal`]: SIGTERM/SIGINT as a graceful shutdown, a second signal as an exit.
//! * `testing` (feature `test-util`): helpers for the workspace's tests.
//! * [`telemetry`]: the binaries' log subscriber and, with feature `otel`, OTLP trace export
//!   configured by the standard `OTEL_*` variables; W3C `traceparent` helpers.
//!
//! It is a separate crate from `tether-proto` because that one stays sans-IO; see
//! docs/architecture.md.

#![forbid(unsafe_code)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod dial;
pub mod h2io;
pub mod pki;
pub mod rewind;
pub mod signal;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;
pub mod window;

/// Installs the process-wide rustls crypto provider (ring). Binaries call it first thing in `main`;
/// calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
