//! Logging: `tracing` with an env filter (`RUST_LOG`, default `info`).

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    // Colour codes only on a terminal: in log collectors they are noise at best.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}
