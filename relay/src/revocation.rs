//! Standalone revocation: a file the relay watches, listing revoked devices and streams.
//!
//! Without a cluster there is no Device to disable and no DeviceStream to delete, so an operator
//! revokes by editing a file (`--revocation-file`). One entry per line; `#` starts a comment:
//!
//! ```text
//! # a retired or stolen device: cut now, refused until the line is removed
//! device factory-1/pump-7
//! # a leaked token: its stream UID and expiry (both printed by `tether token`)
//! stream standalone-4f1c0a9e2b7d8c6f5a3e1b0d 1767225600
//! ```
//!
//! The relay polls the file's modification time, size and inode every [`POLL_INTERVAL`] and
//! replaces its whole revoked set when the file changes ([`crate::RelayHandle::set_revoked`]), so
//! a change is enforced within about a second. A file that cannot be read or parsed is logged and
//! ignored: the last good set stays in force (a half-written file must not lift every
//! revocation), and the relay never stops over it. At start the file must be valid, or the relay
//! refuses to start.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tether_proto::name::DeviceKey;
use tokio_util::sync::CancellationToken;

use crate::RelayHandle;

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest revocation file read (a million-device fleet's worth of lines would be ~40 MB; this
/// is for standalone sites).
pub const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

/// The revoked set a file describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Revoked devices.
    pub devices: HashSet<DeviceKey>,
    /// Revoked streams: UID → Unix second until which to refuse it.
    pub streams: HashMap<String, u64>,
}

/// Why a revocation file was not used.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file could not be read.
    #[error("cannot read revocation file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_LEN`].
    #[error("revocation file {path} exceeds {MAX_FILE_LEN} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// A line is not a valid entry.
    #[error("revocation file {path} line {line}: {message}")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Parses a revocation file's text; `path` names it in errors.
///
/// # Errors
/// [`RevocationError::BadLine`] for the first invalid line.
pub fn parse(path: &str, text: &str) -> Result<Revocations, RevocationError> {
    let mut out = Revocations::default();
    for (i, raw) in text.lines().enumerate() {
        let bad = |message: String| RevocationError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let line = raw.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["device", key] => {
                let key = DeviceKey::parse(key).map_err(|e| bad(format!("bad device {key:?}: {e}")))?;
                out.devices.insert(key);
            }
            ["stream", uid, until] => {
                let valid_uid = uid.len() <= 128
                    && uid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !valid_uid {
                    return Err(bad(format!("bad stream UID {uid:?}")));
                }
                let until: u64 = until
                    .parse()
                    .map_err(|_| bad(format!("bad expiry {until:?}: expected Unix seconds")))?;
                out.streams.insert((*uid).to_owned(), until);
            }
            _ => {
                return Err(bad(
                    "expected `device <namespace>/<name>` or `stream <uid> <unix-seconds>`".into(),
                ));
            }
        }
    }
    Ok(out)
}

/// Reads and parses the file at `path`.
///
/// # Errors
/// See [`RevocationError`].
pub fn load(path: &Path) -> Result<Revocations, RevocationError> {
    let name = path.display().to_string();
    let unreadable = |source| RevocationError::Unreadable {
        path: name.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > MAX_FILE_LEN {
        return Err(RevocationError::TooLarge { path: name });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    parse(&name, &text)
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Applies the file at `path` to `relay` now and whenever it changes, until `stop` fires.
/// Errors are logged; the last good set stays in force.
pub async fn watch(path: PathBuf, relay: RelayHandle, stop: CancellationToken) {
    // The version last looked at (`Some(None)`: the file was missing), so each version is
    // applied, or its error logged, once.
    let mut seen = None;
    loop {
        let now = stamp(&path);
        if seen != Some(now) {
            seen = Some(now);
            match load(&path) {
                Ok(set) => {
                    tracing::info!(
                        devices = set.devices.len(),
                        streams = set.streams.len(),
                        file = %path.display(),
                        "revocation file applied"
                    );
                    relay.set_revoked(set.devices, set.streams);
                }
                Err(e) => {
                    tracing::error!(error = %e, "revocation file ignored; the previous revocations stay in force")
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_streams_and_comments() {
        let set = parse(
            "f",
            "# header\n\ndevice factory-1/pump-7  # stolen\nstream standalone-ab12 1767225600\n",
        )
        .unwrap();
        assert!(
            set.devices
                .contains(&DeviceKey::parse("factory-1/pump-7").unwrap())
        );
        assert_eq!(set.streams.get("standalone-ab12"), Some(&1_767_225_600));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, expect) in [
            ("device nonamespace", "bad device"),
            ("stream abc", "expected `device"),
            ("stream abc soon", "bad expiry"),
            ("stream a\u{1b}b 5", "bad stream UID"),
            ("revoke everything", "expected `device"),
        ] {
            let err = parse("f", &format!("device a/b\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2") && err.contains(expect), "{text}: {err}");
        }
    }
}
