//! Fuzzes the CONNECT request head (pre-authentication) and the response head a client parses.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz::connect_head(data));
