//! Fuzzes the device preface (after TLS, before the identity check) and the relay's reply.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tether_proto::fuzz::preface(data));
