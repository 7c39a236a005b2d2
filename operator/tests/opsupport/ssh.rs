//! A throwaway OpenSSH server for tests that carry real `ssh` sessions through Tether.

use std::time::Duration;

use anyhow::ensure;
use tether_tests::testenv::eventually;

/// A throwaway `sshd` on 127.0.0.1 accepting one generated client key.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Sshd {
    /// Starts sshd, or `None` when OpenSSH is missing or we are not root (sshd needs root).
    pub async fn start(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if !root || !std::path::Path::new("/usr/sbin/sshd").exists() || which("ssh").is_none() {
            return Ok(None);
        }
        let dir = dir.join("ssh");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        for (key, comment) in [("host_key", "host"), ("client_key", "client")] {
            let st = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(dir.join(key))
                .status()?;
            ensure!(st.success(), "ssh-keygen failed");
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                 UsePAM no\nStrictModes no\n"
            ),
        )?;
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let sshd = Self { port, dir, child };
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            Ok(())
        })
        .await?;
        Ok(Some(sshd))
    }

    /// The ssh client options [`Sshd::run_ssh`] uses (this server's client key, no host-key
    /// prompts or files, batch mode), for tests that run `ssh` themselves.
    pub fn client_options(&self) -> Vec<String> {
        let key = self.dir.join("client_key").display().to_string();
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "-i",
            &key,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Runs `command` over ssh to 127.0.0.1:`port` (the tunnel's local end); returns stdout.
    pub async fn run_ssh(&self, port: u16, command: &str) -> anyhow::Result<String> {
        let key = self.dir.join("client_key");
        let command = command.to_owned();
        // Blocking wait on a blocking thread: the test runtime keeps serving the forward.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-i"])
                .arg(key)
                .args(["-p", &port.to_string(), "root@127.0.0.1", &command])
                .output()
        })
        .await??;
        ensure!(
            out.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.exists())
}
