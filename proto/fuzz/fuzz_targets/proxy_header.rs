//! Fuzzes the PROXY protocol v2 header of the relay's peer port.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz::proxy_header(data));
