//! The allowlist: which ports the agent serves and where each is forwarded (`allow` in the file,
//! `--allow` on the command line), parsed into port → [`Target`].

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use crate::config::{ConfigError, invalid};

/// One entry of the file's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a port number or a table { port = N, target = \"host:port\" }"
)]
pub enum AllowEntry {
    /// Serve this port on `127.0.0.1`.
    Port(u16),
    /// Serve this port by connecting to `target`.
    Target {
        /// The port services ask for.
        port: u16,
        /// Where to connect, `host:port`.
        target: String,
    },
}

/// Where an allowed port is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Target {
    /// The loopback target for `port`, the default for a bare allowlist entry.
    pub fn local(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// Parses `host:port`, `[v6]:port` or `v6` in brackets.
    ///
    /// # Errors
    /// When the port is absent or not a number, or the host is empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not host:port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| format!("{text:?} has no valid port"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("{text:?} is not host:port"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn parse_allow_flag(text: &str) -> Result<AllowEntry, ConfigError> {
    let text = text.trim();
    match text.split_once('=') {
        None => text
            .parse()
            .map(AllowEntry::Port)
            .map_err(|_| invalid("allow", format!("{text:?} is not a port"))),
        Some((port, target)) => Ok(AllowEntry::Target {
            port: port
                .trim()
                .parse()
                .map_err(|_| invalid("allow", format!("{port:?} is not a port")))?,
            target: target.trim().to_owned(),
        }),
    }
}

pub(crate) fn allowlist(entries: Vec<AllowEntry>) -> Result<BTreeMap<u16, Target>, ConfigError> {
    let mut map = BTreeMap::new();
    for entry in entries {
        let (port, target) = match entry {
            AllowEntry::Port(port) => (port, Target::local(port)),
            AllowEntry::Target { port, target } => {
                (port, Target::parse(&target).map_err(|e| invalid("allow", e))?)
            }
        };
        if port == 0 {
            return Err(invalid("allow", "port 0 is not a port"));
        }
        if map.insert(port, target).is_some() {
            return Err(invalid("allow", format!("port {port} is listed twice")));
        }
    }
    Ok(map)
}
