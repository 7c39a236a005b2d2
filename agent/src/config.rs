//! Agent configuration: a TOML file plus command-line flags (each with a `TETHER_AGENT_*` variable).
//!
//! Precedence: flag or environment variable, then the file, then the built-in default. Keys in the
//! file are kebab-case and spelled exactly like the long flags (`relay-domain` ↔ `--relay-domain`),
//! so one name works everywhere. Unknown keys are rejected, and everything is validated before
//! the agent dials anything; a bad configuration is a one-line error and exit code 64.
//!
//! ```toml
//! relay = "relay.example.com:443"       # host:port of the relay (or its load balancer)
//! relay-domain = "relay.example.com"    # SNI is <device>.<namespace>.<relay-domain>
//! # relay-name = "relay.example.com"    # name in the relay's certificate; default: relay-domain
//! device = "factory-1/pump-7"           # <namespace>/<name>; default: from the certificate's URI SAN
//! trust-domain = "tether.local"         # SPIFFE trust domain of device identities
//! cert = "/etc/tether/device.crt"       # device certificate chain (PEM)
//! key = "/etc/tether/device.key"        # device private key (PEM)
//! ca = "/etc/tether/ca.crt"             # CA bundle that issued the relay's certificate (PEM)
//! allow = [22, { port = 8080, target = "192.168.10.7:80" }]
//! max-streams = 256
//! keepalive-interval = "20s"
//! keepalive-timeout = "20s"
//! backoff-base = "500ms"
//! backoff-cap = "30s"
//! drain-timeout = "30s"
//! log-level = "info"
//! # metrics-listen = "127.0.0.1:9464"  # Prometheus /metrics (agents built with feature `metrics`)
//! ```

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;
use tether_net::h2io::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_STREAMS};
use tether_proto::name::DeviceKey;

use crate::allow::{allowlist, parse_allow_flag};
pub use crate::{
    allow::{AllowEntry, Target},
    args::Args,
};

/// Default SPIFFE trust domain of device identities (the operator's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "tether.local";
/// Default first reconnect delay ceiling; doubled per failed attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Default ceiling of the reconnect delay: long enough not to hammer a relay that is down, short
/// enough that a device is back within a minute of the relay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Default time in-flight streams get to finish on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time allowed to connect to a local target.
pub const DEFAULT_TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default log filter (an `EnvFilter` directive; `RUST_LOG` wins when set).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Why the configuration is unusable. Each message fits on one line and names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown/mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, flattened to one line.
        message: String,
    },
    /// A required setting is absent.
    #[error("missing setting `{0}` (set it in the config file or with --{0})")]
    Missing(&'static str),
    /// A setting has an invalid value.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

pub(crate) fn invalid(key: &'static str, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

/// The configuration file, as written. Every key is optional here; [`Config::from_args`] checks
/// what is required once flags are merged in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// See [`Args::relay`].
    pub relay: Option<String>,
    /// See [`Args::relay_domain`].
    pub relay_domain: Option<String>,
    /// See [`Args::relay_name`].
    pub relay_name: Option<String>,
    /// See [`Args::device`].
    pub device: Option<String>,
    /// See [`Args::trust_domain`].
    pub trust_domain: Option<String>,
    /// See [`Args::cert`].
    pub cert: Option<PathBuf>,
    /// See [`Args::key`].
    pub key: Option<PathBuf>,
    /// See [`Args::ca`].
    pub ca: Option<PathBuf>,
    /// Allowed ports: each a port number or `{ port = N, target = "host:port" }`.
    pub allow: Option<Vec<AllowEntry>>,
    /// See [`Args::max_streams`].
    pub max_streams: Option<u32>,
    /// See [`Args::keepalive_interval`].
    #[serde(default, with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// See [`Args::keepalive_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub keepalive_timeout: Option<Duration>,
    /// See [`Args::backoff_base`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`Args::backoff_cap`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_cap: Option<Duration>,
    /// See [`Args::drain_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// See [`Args::log_level`].
    pub log_level: Option<String>,
    /// See [`Args::metrics_listen`].
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Reconnect backoff settings (full-jitter exponential; see [`crate::connector::Backoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay ceiling of the first retry; doubles per failed attempt.
    pub base: Duration,
    /// Largest delay ceiling.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

/// A validated agent configuration. Build it from flags and a file with [`Config::from_args`], or
/// in code with [`Config::new`] and then adjust the public fields (tests, `tether demo`);
/// [`crate::Agent::new`] validates it again.
#[derive(Debug, Clone)]
pub struct Config {
    /// Relay host (DNS name or IP address).
    pub relay_host: String,
    /// Relay port.
    pub relay_port: u16,
    /// Relay domain used to build the SNI `<device>.<namespace>.<relay_domain>`.
    pub relay_domain: String,
    /// Name the relay's certificate is verified against.
    pub relay_name: String,
    /// The device; `None` takes it from the certificate's URI SAN under `trust_domain`.
    pub device: Option<DeviceKey>,
    /// SPIFFE trust domain of device identities.
    pub trust_domain: String,
    /// Device certificate chain, PEM file.
    pub cert: PathBuf,
    /// Device private key, PEM file (secret: only its path is ever logged).
    pub key: PathBuf,
    /// CA bundle trusted for the relay's certificate, PEM file.
    pub ca: PathBuf,
    /// Allowed target ports and where each is served. Empty is valid (the agent refuses every
    /// stream) but logged as a warning.
    pub allow: BTreeMap<u16, Target>,
    /// Cap on concurrent streams on the device connection.
    pub max_streams: u32,
    /// Interval between keepalive PINGs.
    pub keepalive_interval: Duration,
    /// Time a PING may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Time in-flight streams get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Time allowed to connect to a local target.
    pub target_connect_timeout: Duration,
    /// Log filter directive.
    pub log_level: String,
    /// Whether to dial through `HTTPS_PROXY` (honouring `NO_PROXY`) when it is set. Always true
    /// from flags and files; in-process tests turn it off so a developer's proxy is not used.
    pub proxy_from_env: bool,
    /// Where to serve Prometheus metrics; `None` (the default) serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// A configuration with every optional setting at its default and an empty allowlist.
    pub fn new(
        relay_host: impl Into<String>,
        relay_port: u16,
        relay_domain: impl Into<String>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        let relay_domain = relay_domain.into();
        Self {
            relay_host: relay_host.into(),
            relay_port,
            relay_name: relay_domain.clone(),
            relay_domain,
            device: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
            allow: BTreeMap::new(),
            max_streams: DEFAULT_MAX_STREAMS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            backoff: BackoffConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            target_connect_timeout: DEFAULT_TARGET_CONNECT_TIMEOUT,
            log_level: DEFAULT_LOG_LEVEL.into(),
            proxy_from_env: true,
            metrics_listen: None,
        }
    }

    /// Reads the file named by `--config` (if any), applies the flags over it, fills defaults and
    /// validates.
    ///
    /// # Errors
    /// An unreadable or malformed file, a missing required setting, or an invalid value.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                FileConfig::parse(&text, &path.display().to_string())?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Merges flags over a parsed file, fills defaults and validates.
    ///
    /// # Errors
    /// A missing required setting or an invalid value.
    pub fn merge(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        // Destructure exhaustively so a new flag cannot be forgotten here.
        let Args {
            config: _,
            relay,
            relay_domain,
            relay_name,
            device,
            trust_domain,
            cert,
            key,
            ca,
            allow,
            max_streams,
            keepalive_interval,
            keepalive_timeout,
            backoff_base,
            backoff_cap,
            drain_timeout,
            log_level,
            metrics_listen,
        } = args;
        let relay = relay.or(file.relay).ok_or(ConfigError::Missing("relay"))?;
        let (relay_host, relay_port) = parse_relay(&relay)?;
        let relay_domain = relay_domain
            .or(file.relay_domain)
            .ok_or(ConfigError::Missing("relay-domain"))?;
        let mut config = Self::new(
            relay_host,
            relay_port,
            relay_domain,
            cert.or(file.cert).ok_or(ConfigError::Missing("cert"))?,
            key.or(file.key).ok_or(ConfigError::Missing("key"))?,
            ca.or(file.ca).ok_or(ConfigError::Missing("ca"))?,
        );
        if let Some(name) = relay_name.or(file.relay_name) {
            config.relay_name = name;
        }
        config.device = match device.or(file.device) {
            Some(text) => Some(DeviceKey::parse(&text).map_err(|e| invalid("device", e))?),
            None => None,
        };
        if let Some(td) = trust_domain.or(file.trust_domain) {
            config.trust_domain = td;
        }
        config.allow = if allow.is_empty() {
            allowlist(file.allow.unwrap_or_default())?
        } else {
            allowlist(
                allow
                    .iter()
                    .map(|a| parse_allow_flag(a))
                    .collect::<Result<Vec<_>, _>>()?,
            )?
        };
        let or = |flag: Option<Duration>, file: Option<Duration>, default| flag.or(file).unwrap_or(default);
        config.max_streams = max_streams.or(file.max_streams).unwrap_or(DEFAULT_MAX_STREAMS);
        config.keepalive_interval = or(
            keepalive_interval,
            file.keepalive_interval,
            DEFAULT_KEEPALIVE_INTERVAL,
        );
        config.keepalive_timeout = or(
            keepalive_timeout,
            file.keepalive_timeout,
            DEFAULT_KEEPALIVE_TIMEOUT,
        );
        config.backoff.base = or(backoff_base, file.backoff_base, DEFAULT_BACKOFF_BASE);
        config.backoff.cap = or(backoff_cap, file.backoff_cap, DEFAULT_BACKOFF_CAP);
        config.drain_timeout = or(drain_timeout, file.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        if let Some(level) = log_level.or(file.log_level) {
            config.log_level = level;
        }
        config.metrics_listen = metrics_listen.or(file.metrics_listen);
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; [`Config::from_args`] and [`crate::Agent::new`] call it.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.relay_host.is_empty() || self.relay_port == 0 {
            return Err(invalid("relay", "expected host:port with a non-zero port"));
        }
        // The relay domain is a DNS suffix under which device names become SNI labels.
        // The relay's own rule (its domain must match this one exactly).
        if tether_proto::name::validate_dns_name("relay-domain", &self.relay_domain).is_err() {
            return Err(invalid(
                "relay-domain",
                format!("{:?} is not a DNS name", self.relay_domain),
            ));
        }
        if rustls_pki_types::ServerName::try_from(self.relay_name.as_str()).is_err() {
            return Err(invalid(
                "relay-name",
                format!("{:?} is not a DNS name or IP address", self.relay_name),
            ));
        }
        if let Some(device) = &self.device {
            let sni = device.server_name(&self.relay_domain);
            if sni.len() > tether_proto::name::MAX_DNS_NAME_LEN {
                return Err(invalid(
                    "device",
                    format!("SNI {sni:?} is longer than a DNS name"),
                ));
            }
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return Err(invalid(
                "trust-domain",
                format!("{:?} is not a trust domain name", self.trust_domain),
            ));
        }
        for (key, path) in [("cert", &self.cert), ("key", &self.key), ("ca", &self.ca)] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "empty path"));
            }
        }
        if let Some((port, _)) = self
            .allow
            .iter()
            .find(|(p, t)| **p == 0 || t.port == 0 || t.host.is_empty())
        {
            return Err(invalid("allow", format!("entry for port {port} is invalid")));
        }
        if self.metrics_listen.is_some() && !cfg!(feature = "metrics") {
            return Err(invalid(
                "metrics-listen",
                "this agent was built without the `metrics` feature (cargo build --features metrics)",
            ));
        }
        if self.max_streams == 0 {
            return Err(invalid("max-streams", "must be at least 1"));
        }
        for (key, d) in [
            ("keepalive-interval", self.keepalive_interval),
            ("keepalive-timeout", self.keepalive_timeout),
            ("backoff-base", self.backoff.base),
            ("backoff-cap", self.backoff.cap),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if self.backoff.cap < self.backoff.base {
            return Err(invalid("backoff-cap", "must not be smaller than backoff-base"));
        }
        if self.target_connect_timeout.is_zero() {
            return Err(invalid("target-connect-timeout", "must be greater than zero"));
        }
        if self.log_level.trim().is_empty() {
            return Err(invalid("log-level", "must not be empty"));
        }
        Ok(())
    }
}

impl FileConfig {
    /// Parses TOML text; `origin` names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for invalid TOML, unknown keys or wrong types.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            // toml's messages span several lines (with a source excerpt); keep the config error
            // one line, as promised to operators and scripts.
            message: one_line(&e.to_string()),
        })
    }
}

fn one_line(text: &str) -> String {
    // Drop toml's source excerpt (`|`, `6 | key = ...`, `^`): the position and message remain.
    let excerpt = |l: &str| {
        l.starts_with('^')
            || l.split_once('|')
                .is_some_and(|(gutter, _)| gutter.trim().bytes().all(|b| b.is_ascii_digit()))
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !excerpt(l))
        .collect::<Vec<_>>()
        .join(": ")
}

fn parse_relay(text: &str) -> Result<(String, u16), ConfigError> {
    let target = Target::parse(text).map_err(|e| invalid("relay", e))?;
    Ok((target.host, target.port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    const MINIMAL: &str = r#"
        relay = "relay.example.com:443"
        relay-domain = "relay.example.com"
        cert = "/d.crt"
        key = "/d.key"
        ca = "/ca.crt"
    "#;

    fn from_file(extra: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(&format!("{MINIMAL}\n{extra}"), "test.toml")?;
        Config::merge(Args::default(), file)
    }

    #[test]
    fn verify_cli() {
        Args::command().debug_assert();
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = from_file("").unwrap();
        assert_eq!((c.relay_host.as_str(), c.relay_port), ("relay.example.com", 443));
        assert_eq!(c.relay_name, "relay.example.com");
        assert_eq!(c.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(c.device, None);
        assert!(c.allow.is_empty());
        assert_eq!(c.max_streams, DEFAULT_MAX_STREAMS);
        assert_eq!(c.keepalive_interval, DEFAULT_KEEPALIVE_INTERVAL);
        assert_eq!(c.backoff, BackoffConfig::default());
    }

    #[test]
    fn full_file() {
        let c = from_file(
            r#"
            relay-name = "relay.internal"
            device = "factory-1/pump-7"
            trust-domain = "example.org"
            allow = [22, { port = 8080, target = "192.168.10.7:80" }, { port = 9000, target = "[::1]:9001" }]
            max-streams = 16
            keepalive-interval = "5s"
            keepalive-timeout = "2s 500ms"
            backoff-base = "100ms"
            backoff-cap = "1m"
            drain-timeout = "10s"
            log-level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.relay_name, "relay.internal");
        assert_eq!(c.device.unwrap().to_string(), "factory-1/pump-7");
        assert_eq!(c.allow[&22], Target::local(22));
        assert_eq!(
            c.allow[&8080],
            Target {
                host: "192.168.10.7".into(),
                port: 80
            }
        );
        assert_eq!(
            c.allow[&9000],
            Target {
                host: "::1".into(),
                port: 9001
            }
        );
        assert_eq!(c.allow[&9000].to_string(), "[::1]:9001");
        assert_eq!(c.keepalive_timeout, Duration::from_millis(2500));
        assert_eq!(
            c.backoff,
            BackoffConfig {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(60)
            }
        );
        assert_eq!((c.max_streams, c.log_level.as_str()), (16, "debug"));
    }

    #[test]
    fn unknown_and_mistyped_keys_are_one_line_errors() {
        for (extra, needle) in [
            ("relay_domain = \"x\"", "unknown field"),
            ("keepalive = \"5s\"", "unknown field"),
            (
                "allow = [{ port = 22, targte = \"a:1\" }]",
                "a port number or a table",
            ),
            ("allow = [\"22\"]", "a port number or a table"),
            ("allow = [70000]", "a port number or a table"),
            ("max-streams = \"many\"", "invalid type"),
            ("keepalive-interval = \"soon\"", "expected a duration"),
            ("relay = ", "line"),
        ] {
            let err = from_file(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
            assert!(!err.contains('\n'), "{extra:?}: multi-line error {err:?}");
        }
    }

    #[test]
    fn validation_rejects_bad_values() {
        for (extra, key) in [
            ("device = \"pump-7\"", "device"),
            ("device = \"Factory/pump\"", "device"),
            ("allow = [22, 22]", "allow"),
            ("allow = [0]", "allow"),
            ("allow = [{ port = 80, target = \"nohost\" }]", "allow"),
            ("allow = [{ port = 80, target = \"h:0\" }]", "allow"),
            ("max-streams = 0", "max-streams"),
            ("keepalive-interval = \"0s\"", "keepalive-interval"),
            ("backoff-base = \"10s\"\nbackoff-cap = \"1s\"", "backoff-cap"),
            ("relay-name = \"not a name\"", "relay-name"),
            ("trust-domain = \"\"", "trust-domain"),
        ] {
            let err = from_file(extra).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{extra:?}: {err}");
        }
        let bad_relay = FileConfig::parse(&MINIMAL.replace(":443", ""), "t").unwrap();
        assert!(
            Config::merge(Args::default(), bad_relay)
                .unwrap_err()
                .to_string()
                .contains("`relay`")
        );
        let bad_domain =
            FileConfig::parse(&MINIMAL.replace("\"relay.example.com\"\n", "\"a..b\"\n"), "t").unwrap();
        assert!(
            Config::merge(Args::default(), bad_domain)
                .unwrap_err()
                .to_string()
                .contains("`relay-domain`")
        );
    }

    #[test]
    fn missing_required_settings() {
        let err = Config::merge(Args::default(), FileConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing setting `relay` (set it in the config file or with --relay)"
        );
        let no_ca = FileConfig::parse(&MINIMAL.replace("ca = \"/ca.crt\"", ""), "t").unwrap();
        assert!(matches!(
            Config::merge(Args::default(), no_ca),
            Err(ConfigError::Missing("ca"))
        ));
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(&format!("{MINIMAL}\nallow = [22]\nmax-streams = 4"), "t").unwrap();
        let args = Args::try_parse_from([
            "tether-agent",
            "--relay",
            "10.0.0.1:8443",
            "--allow",
            "80,8080=10.1.2.3:80",
            "--keepalive-interval",
            "3s",
        ])
        .unwrap();
        let c = Config::merge(args, file).unwrap();
        assert_eq!((c.relay_host.as_str(), c.relay_port), ("10.0.0.1", 8443));
        assert_eq!(c.allow.keys().copied().collect::<Vec<_>>(), vec![80, 8080]);
        assert_eq!(
            c.allow[&8080],
            Target {
                host: "10.1.2.3".into(),
                port: 80
            }
        );
        assert_eq!(c.max_streams, 4);
        assert_eq!(c.keepalive_interval, Duration::from_secs(3));
        let bad = Args::try_parse_from(["tether-agent", "--allow", "ssh"]).unwrap();
        assert!(Config::merge(bad, FileConfig::parse(MINIMAL, "t").unwrap()).is_err());
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let args = Args {
            config: Some("/nonexistent/agent.toml".into()),
            ..Args::default()
        };
        let err = Config::from_args(args).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/agent.toml"),
            "{err}"
        );
    }
}
