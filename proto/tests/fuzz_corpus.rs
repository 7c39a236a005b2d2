//! Replays every committed fuzz seed (`proto/fuzz/corpus/<target>/`) through the body of its
//! cargo-fuzz target, so `cargo test` on stable catches a regression on any input the fuzzer
//! once found interesting; plus mutated copies of each seed for good measure.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tether_proto::{fuzz, token::TokenSigner};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds for {target}");
    // A few thousand mutations of each seed (byte flips, truncations), deterministic.
    let mut rng = StdRng::seed_from_u64(12);
    for seed in out.clone() {
        for _ in 0..2_000 {
            let mut m = seed.clone();
            if !m.is_empty() {
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.r#gen();
                }
                m.truncate(rng.gen_range(0..=m.len()));
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn client_hello_seeds() {
    for s in seeds("client_hello") {
        fuzz::client_hello(&s);
    }
}

#[test]
fn connect_head_seeds() {
    for s in seeds("connect_head") {
        fuzz::connect_head(&s);
    }
}

#[test]
fn preface_seeds() {
    for s in seeds("preface") {
        fuzz::preface(&s);
    }
}

#[test]
fn token_seeds() {
    let verifier = TokenSigner::generate().verifier();
    for s in seeds("token") {
        fuzz::token(&verifier, &s);
    }
}

#[test]
fn proxy_header_seeds() {
    for s in seeds("proxy_header") {
        fuzz::proxy_header(&s);
    }
}
