//! Fuzzes the ClientHello peek (SNI and ALPN) that runs before any authentication, one-shot and
//! incremental (they must agree).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz::client_hello(data));
