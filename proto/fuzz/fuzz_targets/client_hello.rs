//! Fuzzes the ClientHello peek (SNI and ALPN) that runs before any authentication.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tether_proto::client_hello::parse(data);
});
