//! rathole 0.5.0 in Tether's topology: a rathole server (the relay's role, service side) and a
//! rathole client (the agent's role, device side) forwarding one service port to the target,
//! with the `tcp`, `noise` or `tls` transport. Only the server↔client leg is transported; the
//! service's connection to the rathole server is plain TCP, so `tls` and `noise` encrypt one leg
//! where Tether encrypts two.

use std::path::Path;

use anyhow::{Context, bail};

use crate::{
    netns::{Endpoint, Placement},
    proc_stats::free_port,
    procs::{Proc, output, wait_echo},
    tls_identity::TlsIdentity,
};

/// rathole's transports measured here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Unencrypted.
    Tcp,
    /// Noise_NK_25519_ChaChaPoly_BLAKE2s.
    Noise,
    /// TLS through native-tls (OpenSSL on Linux), server identity from a PKCS#12 file.
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Noise => "noise",
            Self::Tls => "tls",
        }
    }
}

/// Starts a server and client with `transport` forwarding to `target` and waits until a
/// connection through them reaches it. Returns the service endpoint and the processes, the
/// server first.
///
/// # Errors
/// When rathole cannot run or the tunnel does not work within 15 s.
pub async fn start(
    bin: &Path,
    transport: Transport,
    target: &Endpoint,
    place: &Placement,
    identity: Option<&TlsIdentity>,
    dir: &Path,
) -> anyhow::Result<(Endpoint, Vec<Proc>)> {
    let name = transport.name();
    let dir = dir.join(format!("rathole-{name}"));
    std::fs::create_dir_all(&dir)?;
    let control = place.svc_at(free_port()?);
    let service = place.svc_at(free_port()?);
    let (server_extra, client_extra) = match transport {
        Transport::Tcp => (String::new(), String::new()),
        Transport::Noise => {
            let (private, public) = genkey(bin)?;
            (
                format!("[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
                format!("[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
            )
        }
        Transport::Tls => {
            let id = identity.context("rathole tls needs a TLS identity")?;
            (
                format!(
                    "[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"{}\"\n",
                    id.pkcs12.display(),
                    id.password
                ),
                format!(
                    "[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n",
                    id.cert.display()
                ),
            )
        }
    };
    // `nodelay` is rathole's default (true) for the tcp-based transports; stated so the settings
    // are visible in the config.
    let server_toml = format!(
        "[server]\nbind_addr = \"{}\"\n[server.transport]\ntype = \"{name}\"\n\
         [server.transport.tcp]\nnodelay = true\n{server_extra}\
         [server.services.bench]\ntoken = \"tether-bench\"\nbind_addr = \"{}\"\nnodelay = true\n",
        control.addr, service.addr
    );
    let client_toml = format!(
        "[client]\nremote_addr = \"{}\"\n[client.transport]\ntype = \"{name}\"\n\
         [client.transport.tcp]\nnodelay = true\n{client_extra}\
         [client.services.bench]\ntoken = \"tether-bench\"\nlocal_addr = \"{}\"\nnodelay = true\n",
        control.addr, target.addr
    );
    std::fs::write(dir.join("server.toml"), server_toml)?;
    std::fs::write(dir.join("client.toml"), client_toml)?;
    let spawn = |role: &str, ns: Option<&str>| {
        Proc::spawn(
            ns,
            bin,
            [
                format!("--{role}").into(),
                dir.join(format!("{role}.toml")).into_os_string(),
            ],
            &dir.join(format!("{role}.log")),
        )
    };
    let mut server = spawn("server", place.svc())?;
    let mut client = spawn("client", place.dev())?;
    wait_echo(
        &service,
        &mut [&mut server, &mut client],
        std::time::Duration::from_secs(15),
    )
    .await
    .with_context(|| format!("logs in {}", dir.display()))?;
    Ok((service, vec![server, client]))
}

/// Runs `rathole --genkey` and returns (private, public) base64 keys.
fn genkey(bin: &Path) -> anyhow::Result<(String, String)> {
    let text = output(&bin.to_string_lossy(), ["--genkey"]).context("rathole --genkey")?;
    let after = |label: &str| {
        text.lines()
            .skip_while(|l| !l.contains(label))
            .skip(1)
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    match (after("Private Key"), after("Public Key")) {
        (Some(private), Some(public)) => Ok((private, public)),
        _ => bail!("unexpected `rathole --genkey` output: {text}"),
    }
}

/// The version rathole reports (`rathole --version`), if it runs.
pub fn version(bin: &Path) -> Option<String> {
    let text = output(&bin.to_string_lossy(), ["--version"]).ok()?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Build Version:")
                .map(|v| format!("rathole {}", v.trim()))
        })
        .or_else(|| text.lines().next().map(|l| l.trim().to_owned()))
}
