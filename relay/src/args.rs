//! Command-line flags of `tether-relay`; every flag can also come from a `TETHER_RELAY_*` variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    Limits,
    config::{ConfigError, FleetConfig, RelayConfig, TlsFiles},
};

/// Tether relay: splices device agents and service clients into tunnels.
#[derive(Debug, Parser)]
#[command(name = "tether-relay", version, about)]
pub struct Args {
    /// Data port for devices and services (TLS).
    #[arg(long, env = "TETHER_RELAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Admin port: /metrics, /ready, /live (plain HTTP). Loopback by default: binding it wider
    /// (e.g. `0.0.0.0:9090` in a pod, for Prometheus and probes) is an explicit choice.
    #[arg(long, env = "TETHER_RELAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// DNS suffix of SNI names (`<device>.<namespace>.<relay-domain>`) and audience of stream tokens.
    #[arg(long, env = "TETHER_RELAY_DOMAIN", default_value = "tether.local")]
    pub relay_domain: String,
    /// SPIFFE trust domain of device certificates.
    #[arg(long, env = "TETHER_TRUST_DOMAIN", default_value = "tether.local")]
    pub trust_domain: String,
    /// Serving certificate chain (PEM).
    #[arg(long, env = "TETHER_RELAY_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Serving private key (PEM).
    #[arg(long, env = "TETHER_RELAY_TLS_KEY")]
    pub tls_key: PathBuf,
    /// CA bundle that issues device client certificates (PEM).
    #[arg(long, env = "TETHER_RELAY_CLIENT_CA")]
    pub client_ca: PathBuf,
    /// Ed25519 public key that verifies stream tokens (SPKI PEM).
    #[arg(long, env = "TETHER_RELAY_TOKEN_PUBLIC_KEY")]
    pub token_public_key: PathBuf,
    /// Deadline for a connection's TLS handshake plus its preface or request head.
    #[arg(long, env = "TETHER_RELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Connections allowed in their handshake at once.
    #[arg(long, env = "TETHER_RELAY_MAX_PENDING_HANDSHAKES", default_value_t = 1024)]
    pub max_pending_handshakes: usize,
    /// Connections one source address (IPv6: one /64) may have in their handshake at once.
    #[arg(
        long,
        env = "TETHER_RELAY_MAX_PENDING_HANDSHAKES_PER_SOURCE",
        default_value_t = 256
    )]
    pub max_pending_handshakes_per_source: usize,
    /// Connections allowed at once in total.
    #[arg(long, env = "TETHER_RELAY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// How long a service waits for its device to connect.
    #[arg(long, env = "TETHER_RELAY_DEVICE_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub device_connect_timeout: Duration,
    /// Concurrent streams per device.
    #[arg(long, env = "TETHER_RELAY_MAX_STREAMS_PER_DEVICE", default_value_t = 256)]
    pub max_streams_per_device: u32,
    /// Concurrent connections per stream when its token does not say.
    #[arg(long, env = "TETHER_RELAY_MAX_CONNECTIONS_PER_STREAM", default_value_t = 16)]
    pub max_connections_per_stream: u32,
    /// PING interval on device connections.
    #[arg(long, env = "TETHER_RELAY_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// How long a keepalive PING may go unanswered before the device is declared dead (its
    /// session and streams end). A dead peer is found within interval + timeout.
    #[arg(long, env = "TETHER_RELAY_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
    /// Standalone revocation file: lines `device <namespace>/<name>` and `stream <uid>
    /// <unix-seconds>`, re-read within a second of every change. Must be valid at start; a later
    /// bad version is logged and ignored (the previous revocations stay in force).
    #[arg(long, env = "TETHER_RELAY_REVOCATION_FILE")]
    pub revocation_file: Option<PathBuf>,
    /// After SIGTERM, how long to keep accepting while /ready reports 503.
    #[arg(long, env = "TETHER_RELAY_DRAIN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// After the grace period, how long streams may take to finish.
    #[arg(long, env = "TETHER_RELAY_DRAIN_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,
    /// Kubernetes mode: ring membership from the pool's EndpointSlices, revocation from
    /// DeviceStreams, status into Device and DeviceStream (in-cluster config or KUBECONFIG).
    #[arg(long, env = "TETHER_RELAY_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes mode: the RelayPool this relay belongs to.
    #[arg(long, env = "TETHER_RELAY_POOL", required_if_eq("kubernetes", "true"))]
    pub pool: Option<String>,
    /// Kubernetes mode: this relay's ring member name (its pod name).
    #[arg(long, env = "POD_NAME", required_if_eq("kubernetes", "true"))]
    pub pod_name: Option<String>,
    /// Kubernetes mode: the pool's namespace (this pod's).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("kubernetes", "true"))]
    pub pod_namespace: Option<String>,
    /// Kubernetes mode: this pod's IP, the source address of connections to peers (peers admit
    /// only ring members' addresses).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Kubernetes mode: the peer port, where other relays forward connections (PROXY v2, ring
    /// members only).
    #[arg(long, env = "TETHER_RELAY_PEER_LISTEN", default_value = "0.0.0.0:8444")]
    pub peer_listen: SocketAddr,
    /// Kubernetes mode: most status writes per second this relay sends the API server.
    #[arg(long, env = "TETHER_RELAY_STATUS_WRITES_PER_SECOND", default_value_t = 50)]
    pub status_writes_per_second: u32,
}

/// Where a relay in Kubernetes mode sits: its pool and namespace.
#[derive(Clone, Debug)]
pub struct KubernetesArgs {
    /// The RelayPool.
    pub pool: String,
    /// Its namespace.
    pub namespace: String,
    /// Status write bound.
    pub status_writes_per_second: u32,
}

impl Args {
    /// Builds the runtime configuration, loading and checking every file.
    ///
    /// # Errors
    /// A missing, empty, unreadable or invalid file or setting.
    pub fn into_config(self) -> Result<(RelayConfig, Option<KubernetesArgs>), ConfigError> {
        let Self {
            listen,
            admin_listen,
            relay_domain,
            trust_domain,
            tls_cert,
            tls_key,
            client_ca,
            token_public_key,
            handshake_timeout,
            max_pending_handshakes,
            max_pending_handshakes_per_source,
            max_connections,
            device_connect_timeout,
            max_streams_per_device,
            max_connections_per_stream,
            keepalive_interval,
            keepalive_timeout,
            revocation_file,
            drain_grace,
            drain_deadline,
            kubernetes,
            pool,
            pod_name,
            pod_namespace,
            pod_ip,
            peer_listen,
            status_writes_per_second,
        } = self;
        let limits = Limits {
            handshake_timeout,
            max_pending_handshakes,
            max_pending_handshakes_per_source,
            max_connections,
            device_connect_timeout,
            max_streams_per_device,
            default_max_connections_per_stream: max_connections_per_stream,
            keepalive_interval,
            keepalive_timeout,
            drain_grace,
            drain_deadline,
            ..Limits::default()
        };
        let files = TlsFiles {
            cert: &tls_cert,
            key: &tls_key,
            client_ca: &client_ca,
            token_public_key: &token_public_key,
        };
        let mut config =
            RelayConfig::load(listen, admin_listen, &relay_domain, &trust_domain, files, limits)?;
        if let Some(path) = &revocation_file {
            crate::revocation::load(path)?;
        }
        config.revocation_file = revocation_file;
        let kube = match (kubernetes, pool, pod_name, pod_namespace) {
            (false, ..) => None,
            (true, Some(pool), Some(member_name), Some(namespace)) => {
                config.fleet = Some(FleetConfig {
                    member_name,
                    peer_listen,
                    source_ip: pod_ip,
                });
                Some(KubernetesArgs {
                    pool,
                    namespace,
                    status_writes_per_second,
                })
            }
            (true, ..) => {
                return Err(ConfigError::Kubernetes(
                    "--kubernetes needs --pool, --pod-name and --pod-namespace".into(),
                ));
            }
        };
        Ok((config, kube))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }
}
