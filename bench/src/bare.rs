//! The memory baseline: a bare rustls server process (Tether's provider, TLS 1.3) serving the
//! [`target`](crate::target) protocol. What it costs per connection is the floor for anything
//! that terminates TLS; the relay terminates it twice per stream.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use tether_net::{pki::Ca, tls};
use tokio::net::TcpListener;

use crate::{
    netns::Placement,
    systems::{Dialer, direct_tls_configs},
};

/// Flags of the hidden `bare-tls-server` subcommand.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Certificate chain (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Address to bind (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Runs the bare server on `--listen` (its port printed on stdout) until killed.
///
/// # Errors
/// Bad key material or bind failures.
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            tls::load_certs("cert", &args.cert)?,
            tls::load_key("key", &args.key)?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen).await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = crate::target::serve(tls).await;
            }
        });
    }
}

/// A running bare server process; killed on drop.
pub struct BareProcess {
    child: Child,
    /// How to connect to it.
    pub dialer: Dialer,
    _dir: tempfile::TempDir,
}

impl Drop for BareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BareProcess {
    /// [`BareProcess::start_at`] on loopback.
    ///
    /// # Errors
    /// As there.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at(&Placement::loopback())
    }

    /// Starts this binary's `bare-tls-server` with a fresh certificate on the device side of
    /// `place` (where the target lives).
    ///
    /// # Errors
    /// When the process cannot start or does not report its port.
    pub fn start_at(place: &Placement) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-bench-bare-").tempdir()?;
        let (ca, _) = Ca::generate("tether-bench bare CA", Duration::from_secs(86_400))?;
        let issued = ca.issue_server(&["localhost".into()], &[], Duration::from_secs(86_400))?;
        std::fs::write(dir.path().join("cert.pem"), &issued.cert_pem)?;
        std::fs::write(dir.path().join("key.pem"), &issued.key_pem)?;
        let (_, client) = direct_tls_configs(&ca)?;
        let exe = std::env::current_exe()?;
        let mut cmd = match place.dev() {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .arg("bare-tls-server")
            .arg("--listen")
            .arg(SocketAddr::new(place.dev_ip, 0).to_string())
            .arg("--cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {} bare-tls-server", exe.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("bare server said {line:?}"))?;
        let dialer = Dialer::Tls {
            at: place.dev_at(port),
            config: Arc::new(client),
        };
        Ok(Self {
            child,
            dialer,
            _dir: dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
