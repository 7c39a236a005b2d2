//! Fuzzes stream-token verification: nothing the fuzzer makes may verify.
#![no_main]
use std::sync::OnceLock;

use tether_proto::token::{TokenSigner, TokenVerifier};

static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verifier = VERIFIER.get_or_init(|| TokenSigner::generate().verifier());
    tether_proto::fuzz::token(verifier, data);
});
