//! Fuzzes the service CONNECT request head and the client-side response parser.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tether_proto::head::parse_connect(data);
    let _ = tether_proto::head::parse_response(data);
});
