//! The agent's command-line flags (clap), each also a `TETHER_AGENT_*` variable; the file keys
//! have the same names ([`crate::config`] merges both).

use std::{path::PathBuf, time::Duration};

use clap::Parser;

/// Command-line flags. Every flag can also be given as a `TETHER_AGENT_*` environment variable,
/// and overrides the same key of the config file.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether device agent: serves streams from a relay to local ports"
)]
pub struct Args {
    /// TOML configuration file (keys are the long flag names).
    #[arg(long, short = 'c', env = "TETHER_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Relay address, host:port.
    #[arg(long, env = "TETHER_AGENT_RELAY")]
    pub relay: Option<String>,
    /// Relay domain: the agent sends SNI <device>.<namespace>.<relay-domain>.
    #[arg(long, env = "TETHER_AGENT_RELAY_DOMAIN")]
    pub relay_domain: Option<String>,
    /// Name the relay's certificate must carry (default: the relay domain).
    #[arg(long, env = "TETHER_AGENT_RELAY_NAME")]
    pub relay_name: Option<String>,
    /// Device, <namespace>/<name> (default: taken from the certificate's URI SAN).
    #[arg(long, env = "TETHER_AGENT_DEVICE")]
    pub device: Option<String>,
    /// SPIFFE trust domain of device identities [default: tether.local].
    #[arg(long, env = "TETHER_AGENT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Device certificate chain, PEM file.
    #[arg(long, env = "TETHER_AGENT_CERT")]
    pub cert: Option<PathBuf>,
    /// Device private key, PEM file.
    #[arg(long, env = "TETHER_AGENT_KEY")]
    pub key: Option<PathBuf>,
    /// CA bundle trusted for the relay's certificate, PEM file.
    #[arg(long, env = "TETHER_AGENT_CA")]
    pub ca: Option<PathBuf>,
    /// Allowed target port: PORT (served on 127.0.0.1:PORT) or PORT=HOST:TARGETPORT. Repeatable or
    /// comma-separated; replaces the file's `allow` list.
    #[arg(long, env = "TETHER_AGENT_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Maximum concurrent streams on the device connection [default: 256].
    #[arg(long, env = "TETHER_AGENT_MAX_STREAMS")]
    pub max_streams: Option<u32>,
    /// Interval between HTTP/2 PINGs to the relay [default: 20s].
    #[arg(long, env = "TETHER_AGENT_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before reconnecting [default: 20s].
    #[arg(long, env = "TETHER_AGENT_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Option<Duration>,
    /// First reconnect delay ceiling, doubled per failure [default: 500ms].
    #[arg(long, env = "TETHER_AGENT_BACKOFF_BASE", value_parser = humantime::parse_duration)]
    pub backoff_base: Option<Duration>,
    /// Largest reconnect delay [default: 30s].
    #[arg(long, env = "TETHER_AGENT_BACKOFF_CAP", value_parser = humantime::parse_duration)]
    pub backoff_cap: Option<Duration>,
    /// Time in-flight streams get to finish on shutdown [default: 30s].
    #[arg(long, env = "TETHER_AGENT_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Log filter, e.g. `info` or `tether_agent=debug` (RUST_LOG wins when set) [default: info].
    #[arg(long, env = "TETHER_AGENT_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve Prometheus metrics (`/metrics`, `/live`, `/ready`) on this address, e.g.
    /// 127.0.0.1:9464 (needs an agent built with the `metrics` feature) [default: off].
    #[arg(long, env = "TETHER_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}
