//! The `tether` command line.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tether_net::{dial::Proxy, tls};
use tether_proto::name::DeviceKey;

#[cfg(feature = "demo")]
use crate::demo;
use crate::{connect, standalone};

/// Tether: secure on-demand TCP access to devices behind firewalls, by device ID.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a relay, an agent and a target on loopback, push bytes through a tunnel, and show how
    /// to SSH through it. Ctrl-C stops everything.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Open a stream to a device port: `--stdio` (ssh ProxyCommand) or `--listen` (port forward).
    Connect(ConnectArgs),
    /// Standalone certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Standalone device credentials.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Sign a stream token with the standalone token key (printed to stdout or written to --out).
    Token(TokenArgs),
}

/// `tether ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA, a token-signing key pair and a relay certificate in --dir.
    Init {
        /// Standalone directory.
        #[arg(long, env = "TETHER_HOME", default_value = ".tether")]
        dir: PathBuf,
        /// Names on the relay certificate (the first is the relay domain clients verify).
        #[arg(long = "relay-name", default_values_t = ["tether.local".to_string(), "localhost".to_string()])]
        relay_names: Vec<String>,
        /// IP addresses on the relay certificate.
        #[arg(long = "relay-ip", default_values_t = ["127.0.0.1".parse::<IpAddr>().expect("valid")])]
        relay_ips: Vec<IpAddr>,
    },
}

/// `tether device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Issue a device's client certificate, key and CA bundle into --out.
    Issue {
        /// The device, `<namespace>/<name>`.
        device: String,
        /// Standalone directory.
        #[arg(long, env = "TETHER_HOME", default_value = ".tether")]
        dir: PathBuf,
        /// Output directory (default: <dir>/devices/<namespace>-<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// SPIFFE trust domain.
        #[arg(long, env = "TETHER_TRUST_DOMAIN", default_value = "tether.local")]
        trust_domain: String,
        /// Certificate lifetime.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
}

/// `tether token ...`
#[derive(Debug, Parser)]
pub struct TokenArgs {
    /// The device, `<namespace>/<name>`.
    #[arg(long)]
    pub device: String,
    /// Target port on the device.
    #[arg(long)]
    pub port: u16,
    /// Lifetime (at most 24h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Concurrent connections the token allows (default: relay's default).
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Close a connection after this long without a byte either way (default: never; 1s to 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Relay domain (the token's audience).
    #[arg(long, env = "TETHER_RELAY_DOMAIN", default_value = "tether.local")]
    pub relay_domain: String,
    /// Standalone directory.
    #[arg(long, env = "TETHER_HOME", default_value = ".tether")]
    pub dir: PathBuf,
    /// Write the token to this file (mode 0600) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `tether connect ...`
#[derive(Debug, Parser)]
pub struct ConnectArgs {
    /// The device, `<namespace>/<name>`.
    pub device: String,
    /// Target port on the device.
    #[arg(long)]
    pub port: u16,
    /// File holding the stream token (tokens never go in argv, where `ps` shows them).
    #[arg(long, env = "TETHER_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Relay address, host:port.
    #[arg(long, env = "TETHER_RELAY")]
    pub relay: String,
    /// Relay domain: SNI suffix.
    #[arg(long, env = "TETHER_RELAY_DOMAIN", default_value = "tether.local")]
    pub relay_domain: String,
    /// Name the relay certificate must carry (default: the relay domain).
    #[arg(long, env = "TETHER_RELAY_NAME")]
    pub relay_name: Option<String>,
    /// CA bundle for the relay certificate.
    #[arg(long, env = "TETHER_CA", default_value = ".tether/ca.crt")]
    pub ca: PathBuf,
    /// Accept local connections here; each becomes one stream.
    #[arg(long, conflicts_with = "stdio", required_unless_present = "stdio")]
    pub listen: Option<SocketAddr>,
    /// Use stdin/stdout as the one connection (ssh -o ProxyCommand=...).
    #[arg(long)]
    pub stdio: bool,
}

impl ConnectArgs {
    /// Builds the connect target, reading the token and CA.
    ///
    /// # Errors
    /// Unreadable or empty token, bad CA, bad addresses.
    pub fn target(&self) -> anyhow::Result<connect::Target> {
        let device = DeviceKey::parse(&self.device)?;
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("cannot read token file {}", self.token_file.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("token file {} is empty", self.token_file.display());
        }
        let (host, port) = self.relay.rsplit_once(':').context("--relay must be host:port")?;
        let port: u16 = port.parse().context("--relay must be host:port")?;
        let cas = tls::load_certs("relay CA bundle", &self.ca)?;
        let relay_name = self
            .relay_name
            .clone()
            .unwrap_or_else(|| self.relay_domain.clone());
        let config = tls::service_client_config(&cas, &relay_name)?;
        Ok(connect::Target {
            relay_host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            relay_port: port,
            relay_domain: self.relay_domain.clone(),
            tls: Arc::new(config),
            device,
            port: self.port,
            token: token.into(),
            proxy: Proxy::from_env()?,
        })
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command fails with; `main` prints it on one line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).await,
        Command::Connect(args) => {
            let target = args.target()?;
            if args.stdio {
                connect::stdio(&target).await?;
            } else if let Some(addr) = args.listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!(
                    "forwarding {} -> {} port {} via {}",
                    listener.local_addr()?,
                    target.device,
                    target.port,
                    args.relay
                );
                let shutdown = tokio_util::sync::CancellationToken::new();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    stop.cancel();
                });
                connect::listen(target, listener, shutdown).await;
            }
            Ok(())
        }
        Command::Ca(CaCommand::Init {
            dir,
            relay_names,
            relay_ips,
        }) => {
            standalone::init(&dir, &relay_names, &relay_ips)?;
            println!(
                "created CA, token keys and relay certificate in {}",
                dir.display()
            );
            Ok(())
        }
        Command::Device(DeviceCommand::Issue {
            device,
            dir,
            out,
            trust_domain,
            validity,
        }) => {
            let key = DeviceKey::parse(&device)?;
            let out = out.unwrap_or_else(|| {
                dir.join("devices")
                    .join(format!("{}-{}", key.namespace(), key.name()))
            });
            let out = standalone::issue_device(&dir, &key, &trust_domain, &out, validity)?;
            println!(
                "wrote {}/device.crt, device.key and ca.crt for {key}",
                out.display()
            );
            Ok(())
        }
        Command::Token(args) => {
            let req = standalone::TokenRequest {
                device: DeviceKey::parse(&args.device)?,
                port: args.port,
                ttl: args.ttl,
                audience: args.relay_domain.clone(),
                max_connections: args.max_connections,
                idle_timeout: args.idle_timeout,
            };
            let token = standalone::mint_token(&args.dir, &req)?;
            // What the relay's revocation file needs to revoke this token (the UID is no secret).
            if let Ok(claims) = standalone::verifier(&args.dir)?.verify_signature(&token) {
                eprintln!(
                    "stream {} expires {}; to revoke it, add to the relay's --revocation-file: stream {} {}",
                    claims.stream_uid, claims.expires_at, claims.stream_uid, claims.expires_at
                );
            }
            match args.out {
                Some(path) => standalone::write_new(&path, &format!("{token}\n"), true)?,
                None => println!("{token}"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
