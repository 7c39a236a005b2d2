//! The body of the agent's cargo-fuzz target (`agent/fuzz/`), shared with the seed replay test
//! (`agent/tests/fuzz_corpus.rs`): the config file is untrusted input to a root-run agent that a
//! provisioning system may write. Must never panic, whatever `data` is.

use crate::config::{Args, Config, FileConfig};

/// Parses `data` as an agent config file, merges it over empty flags and validates: whatever
/// comes out, an error stays one line (operators' scripts read the first line), and a config
/// that merges is valid.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match FileConfig::parse(text, "fuzz.toml") {
        Ok(f) => f,
        Err(e) => return assert_one_line(&e.to_string()),
    };
    match Config::merge(Args::default(), file) {
        Ok(config) => assert!(config.validate().is_ok(), "a merged config does not validate"),
        Err(e) => assert_one_line(&e.to_string()),
    }
}

fn assert_one_line(message: &str) {
    assert!(!message.contains('\n'), "multi-line config error: {message:?}");
}
