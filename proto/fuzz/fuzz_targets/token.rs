//! Fuzzes stream-token verification (parsing happens before and after the signature check).
#![no_main]
use std::sync::OnceLock;

use tether_proto::token::{TokenSigner, TokenVerifier};

static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verifier = VERIFIER.get_or_init(|| TokenSigner::generate().verifier());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier.verify(text, "tether.local", 1_800_000_000, 30);
    }
});
