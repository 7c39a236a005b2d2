//! A throwaway OpenSSH server on 127.0.0.1 for tests that carry real ssh through a tunnel: its
//! own host key, one generated client key, no PAM, no passwords.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::ensure;

use crate::testenv::eventually;

/// A running `sshd -D`, killed on drop.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory (config, host key, `client_key`).
    pub dir: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts sshd in `<dir>/ssh`, or returns `None` when OpenSSH is missing or we are not root
    /// (sshd needs root to switch to the logged-in user).
    ///
    /// # Errors
    /// When ssh-keygen or sshd fail to start, or sshd does not listen within 10 s.
    pub async fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if !root || !Path::new("/usr/sbin/sshd").exists() || which("ssh").is_none() {
            return Ok(None);
        }
        let dir = dir.join("ssh");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        for (key, comment) in [("host_key", "host"), ("client_key", "client")] {
            let st = Command::new("ssh-keygen")
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
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let sshd = Self { port, dir, child };
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            Ok(())
        })
        .await?;
        Ok(Some(sshd))
    }

    /// ssh client options for this server: its key, no host-key prompts or files, batch mode.
    pub fn client_options(&self) -> Vec<String> {
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
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([self.dir.join("client_key").display().to_string()])
        .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin` on `$PATH`, if there.
pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}
