//! Fuzzes the agent's TOML config file: parse, merge over empty flags, validate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_agent::fuzz::config_file(data));
