//! Shutdown signals of the binaries: the first SIGTERM or SIGINT starts a graceful shutdown, a
//! second one exits at once (modelled on linkerd's `signal` crate).

/// Exit code after a second signal (128 + SIGINT), as shells report an interrupted program.
pub const EXIT_INTERRUPTED: i32 = 130;

/// The process's shutdown signals, registered once.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Calls `on_first` with the first signal's name (the caller cancels its root token there and
/// logs what the shutdown does), then exits with [`EXIT_INTERRUPTED`] at the second.
///
/// # Caveats
/// Spawn it early: signals that arrive before it runs take the default action (exit). If the
/// handlers cannot be installed it logs an error and returns; the process then stops only by
/// SIGKILL or its default signal action.
pub async fn drain_then_exit(on_first: impl FnOnce(&'static str)) {
    let mut signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for shutdown signals");
            return;
        }
    };
    on_first(signals.next().await);
    let second = signals.next().await;
    tracing::warn!(signal = second, "second signal: exiting now");
    std::process::exit(EXIT_INTERRUPTED);
}
