//! `kubectl tether ssh`: a DeviceStream for the length of one ssh session. ssh's
//! `ProxyCommand` is `kubectl-tether connect --stream <name> --stdio` with the same cluster flags,
//! so the token is fetched by that subprocess over the API and never appears in argv or a file.

use kube::ResourceExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Error, Result, args::SshArgs, cluster::Cluster, stream};

/// Runs ssh to the device through a fresh stream; returns ssh's exit code. The stream is deleted
/// when ssh exits, or on SIGTERM/SIGHUP (ssh is stopped first); a killed plugin leaves it to its TTL.
///
/// # Errors
/// The stream could not be created or made Ready, or ssh could not be started.
pub async fn run(cluster: &Cluster, args: SshArgs) -> Result<u8> {
    let (user, device) = crate::args::split_destination(&args.destination);
    let (created, _target) = stream::open(cluster, device, args.port, args.ttl, "ssh").await?;
    let name = created.name_any();
    let outcome = run_ssh(cluster, &args, user, device, &name).await;
    if let Err(e) = stream::delete(cluster, &name).await {
        eprintln!("warning: could not delete DeviceStream {name} (its TTL will expire it): {e}");
    }
    outcome
}

/// The ssh command line: options, `[user@]device`, then the user's arguments (OpenSSH accepts
/// options after the destination, so `-- -i key uname -a` works).
pub fn ssh_command(
    exe: &str,
    flags: &[String],
    stream: &str,
    namespace: &str,
    user: Option<&str>,
    device: &str,
) -> Vec<String> {
    let mut proxy = vec![
        exe.to_owned(),
        "connect".into(),
        "--stream".into(),
        stream.to_owned(),
        "--stdio".into(),
    ];
    proxy.extend(flags.iter().cloned());
    let proxy = proxy.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    let mut cmd = vec![
        "-o".to_owned(),
        // ssh expands `%` tokens in ProxyCommand: a literal % is `%%`.
        format!("ProxyCommand={}", proxy.replace('%', "%%")),
        "-o".to_owned(),
        // Host keys are remembered per device, not per (meaningless) host name.
        format!("HostKeyAlias={device}.{namespace}.tether"),
    ];
    cmd.push(match user {
        Some(user) => format!("{user}@{device}"),
        None => device.to_owned(),
    });
    cmd
}

async fn run_ssh(
    cluster: &Cluster,
    args: &SshArgs,
    user: Option<&str>,
    device: &str,
    name: &str,
) -> Result<u8> {
    let exe = std::env::current_exe().map_err(Error::io("cannot find the kubectl-tether binary"))?;
    let mut cmd = tokio::process::Command::new(&args.ssh);
    cmd.args(ssh_command(
        &exe.display().to_string(),
        &cluster.flags(),
        name,
        &cluster.namespace,
        user,
        device,
    ))
    .args(&args.ssh_args);
    let mut child = cmd
        .spawn()
        .map_err(Error::io(format!("cannot run {:?}", args.ssh)))?;
    // Ctrl-C belongs to ssh (it is in our process group and sees it too); we only must not die
    // before deleting the stream. SIGTERM/SIGHUP stop ssh, then the stream is deleted.
    let mut int = signal(SignalKind::interrupt()).map_err(Error::io("signals"))?;
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("signals"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(Error::io("signals"))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(Error::io("waiting for ssh"))?,
            _ = int.recv() => {}
            _ = term.recv() => { let _ = child.start_kill(); }
            _ = hup.recv() => { let _ = child.start_kill(); }
        }
    };
    // A signal-killed ssh has no code: report 128 + signal like a shell, else 255 (ssh's own
    // "connection failed" code).
    use std::os::unix::process::ExitStatusExt as _;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(255),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 255,
    })
}

/// POSIX shell single-quoting (ssh runs `ProxyCommand` with `/bin/sh -c`).
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@' | ','))
    {
        return arg.to_owned();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_command_carries_the_cluster_flags_quoted() {
        let flags = [
            "--kubeconfig".to_owned(),
            "/home/a b/kc%".to_owned(),
            "--namespace".to_owned(),
            "f".to_owned(),
        ];
        let cmd = ssh_command(
            "/usr/bin/kubectl-tether",
            &flags,
            "pump-ssh-x1",
            "f",
            Some("root"),
            "pump",
        );
        assert_eq!(
            cmd[1],
            "ProxyCommand=/usr/bin/kubectl-tether connect --stream pump-ssh-x1 --stdio --kubeconfig \
             '/home/a b/kc%%' --namespace f"
        );
        assert_eq!(cmd[3], "HostKeyAlias=pump.f.tether");
        assert_eq!(cmd[4], "root@pump");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
