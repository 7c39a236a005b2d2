//! Logging: `tracing` with an env filter (`RUST_LOG`, default `info`).

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_runtime=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
