//! The `kubectl tether` command line. The cluster flags are kubectl's own (`--kubeconfig`,
//! `--context`, `-n/--namespace`) and may come before or after the subcommand.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Shortest stream TTL the DeviceStream CRD accepts.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest stream TTL the DeviceStream CRD accepts.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Tether from your kubeconfig: SSH and port-forward to devices by name, enrol devices and
/// export their agent credentials.
#[derive(Debug, Parser)]
#[command(name = "kubectl-tether", bin_name = "kubectl tether", version, about)]
pub struct Cli {
    /// Cluster selection, as in kubectl.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster, user and namespace: kubectl's flags, same meaning.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace of the Devices and DeviceStreams (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// How long to wait for the operator (a stream to become Ready, credentials to be issued).
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// SSH to a device: creates a short-lived DeviceStream, runs your `ssh` through it, deletes it.
    Ssh(SshArgs),
    /// Forward a local port to a device port until Ctrl-C (like `kubectl port-forward`).
    PortForward(PortForwardArgs),
    /// Open a stream for stdin/stdout (ssh ProxyCommand) or a local listener.
    Connect(ConnectArgs),
    /// Enrol devices and export their credentials.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// List Devices: connected, relay, last seen.
    Devices(ListArgs),
    /// List DeviceStreams: phase, bytes, age.
    Streams(ListArgs),
}

/// `kubectl tether ssh [user@]<device> [-p PORT] [--ttl D] [-- ssh args…]`
#[derive(Debug, Clone, Parser)]
pub struct SshArgs {
    /// `[user@]device`.
    pub destination: String,
    /// SSH port on the device.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// Lifetime of the stream (1m-24h). It is deleted when ssh exits; the TTL only matters when
    /// this command is killed.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The ssh client to run.
    #[arg(long, env = "TETHER_SSH", default_value = "ssh")]
    pub ssh: String,
    /// Arguments for ssh, after `--`: options (`-i key`, `-L ...`) and a remote command.
    #[arg(last = true)]
    pub ssh_args: Vec<String>,
}

/// `kubectl tether port-forward <device> [LOCAL:]REMOTE [--address A]`
#[derive(Debug, Clone, Parser)]
pub struct PortForwardArgs {
    /// The device.
    pub device: String,
    /// `REMOTE` (same local port), `LOCAL:REMOTE`, or `:REMOTE` (a free local port).
    pub ports: String,
    /// Local address to listen on (`localhost` means 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_address)]
    pub address: IpAddr,
    /// Lifetime of the stream (1m-24h); the forward stops when it expires.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// `kubectl tether connect --stream <name> --stdio|--listen A`, or `--device D --port P` to
/// create a stream for the lifetime of the command (for `~/.ssh/config`).
#[derive(Debug, Clone, Parser)]
#[command(group(ArgGroup::new("which").required(true).args(["stream", "device"])))]
#[command(group(ArgGroup::new("mode").required(true).args(["stdio", "listen"])))]
pub struct ConnectArgs {
    /// An existing DeviceStream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Create a DeviceStream to this device for as long as the command runs.
    #[arg(long, requires = "port")]
    pub device: Option<String>,
    /// The device port (with --device).
    #[arg(long)]
    pub port: Option<u16>,
    /// Lifetime of a stream created with --device (1m-24h).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Use stdin/stdout as the one connection (ssh `ProxyCommand`).
    #[arg(long)]
    pub stdio: bool,
    /// Accept local connections here; each becomes one tunnelled connection.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// `kubectl tether device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create or update a Device and the ports streams may use.
    Enroll(EnrollArgs),
    /// Write the device's agent bundle: device.crt, device.key (0600), ca.crt, agent.toml.
    Credentials(CredentialsArgs),
}

/// `kubectl tether device enroll <name> --allow 22,8080`
#[derive(Debug, Clone, Parser)]
pub struct EnrollArgs {
    /// Device name (a DNS label).
    pub name: String,
    /// Ports DeviceStreams may use, comma-separated.
    #[arg(long, required = true, value_delimiter = ',')]
    pub allow: Vec<u16>,
}

/// `kubectl tether device credentials <name> --out DIR`
#[derive(Debug, Clone, Parser)]
pub struct CredentialsArgs {
    /// Device name.
    pub name: String,
    /// Directory to write the bundle into (created with mode 0700 if absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the files will live on the device: the paths written into agent.toml.
    #[arg(long, default_value = "/etc/tether")]
    pub install_dir: PathBuf,
    /// Replace files that already exist in --out.
    #[arg(long)]
    pub force: bool,
}

/// Output format of the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A JSON `List`, like `kubectl get -o json`.
    Json,
    /// A YAML `List`, like `kubectl get -o yaml`.
    Yaml,
}

/// `kubectl tether devices|streams [-o json|yaml]`
#[derive(Debug, Clone, Parser)]
pub struct ListArgs {
    /// Output format (default: a table).
    #[arg(short = 'o', long)]
    pub output: Option<Format>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(MIN_TTL..=MAX_TTL).contains(&d) {
        return Err("must be between 1m and 24h (the DeviceStream limits)".into());
    }
    Ok(d)
}

fn parse_address(s: &str) -> Result<IpAddr, String> {
    if s == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP address or `localhost`"))
}

/// A `[LOCAL:]REMOTE` port pair; `LOCAL` 0 means any free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPair {
    /// Local port (0: pick one).
    pub local: u16,
    /// Device port.
    pub remote: u16,
}

impl std::str::FromStr for PortPair {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str, what: &str| -> Result<u16, String> {
            p.parse::<u16>()
                .map_err(|_| format!("{what} port {p:?} is not a number 0-65535"))
        };
        let (local, remote) = match s.split_once(':') {
            Some(("", remote)) => (0, port(remote, "remote")?),
            Some((local, remote)) => (port(local, "local")?, port(remote, "remote")?),
            None => {
                let p = port(s, "remote")?;
                (p, p)
            }
        };
        if remote == 0 {
            return Err("the remote port must be 1-65535".into());
        }
        Ok(Self { local, remote })
    }
}

/// `[user@]device`, split.
pub fn split_destination(destination: &str) -> (Option<&str>, &str) {
    match destination.rsplit_once('@') {
        Some((user, device)) => (Some(user), device),
        None => (None, destination),
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

    #[test]
    fn port_pairs_and_destinations() {
        assert_eq!(
            "8080".parse(),
            Ok(PortPair {
                local: 8080,
                remote: 8080
            })
        );
        assert_eq!(":80".parse(), Ok(PortPair { local: 0, remote: 80 }));
        assert_eq!(
            "9000:80".parse(),
            Ok(PortPair {
                local: 9000,
                remote: 80
            })
        );
        assert!("9000:0".parse::<PortPair>().is_err());
        assert!("x:80".parse::<PortPair>().is_err());
        assert_eq!(split_destination("root@pump-7"), (Some("root"), "pump-7"));
        assert_eq!(split_destination("pump-7"), (None, "pump-7"));
    }

    #[test]
    fn cluster_flags_go_anywhere_and_ssh_args_after_dashes() {
        let cli = Cli::try_parse_from([
            "kubectl-tether",
            "ssh",
            "root@pump",
            "-n",
            "factory",
            "--context",
            "prod",
            "-p",
            "2222",
            "--",
            "-i",
            "key",
            "uname",
            "-a",
        ])
        .expect("parses");
        assert_eq!(cli.kube.namespace.as_deref(), Some("factory"));
        assert_eq!(cli.kube.context.as_deref(), Some("prod"));
        let Command::Ssh(ssh) = cli.command else {
            panic!("ssh")
        };
        assert_eq!(ssh.port, 2222);
        assert_eq!(ssh.ssh_args, ["-i", "key", "uname", "-a"]);
        assert!(Cli::try_parse_from(["kubectl-tether", "ssh", "pump", "--ttl", "10s"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-tether", "connect", "--stream", "s"]).is_err());
    }
}
