//! Replays the committed seeds of the agent's config fuzz target (`agent/fuzz/corpus/`) and
//! deterministic mutations of them through the target's body, so `cargo test` on stable runs
//! what the fuzzer runs.

use std::path::Path;

#[test]
fn config_file_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config_file");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(seeds.len() >= 4, "seeds missing in {}", dir.display());
    // xorshift: deterministic byte flips and truncations of every seed.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for seed in &seeds {
        tether_agent::fuzz::config_file(seed);
        for _ in 0..2_000 {
            let mut m = seed.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() % m.len() as u64) as usize;
                // Printable ASCII mostly: TOML structure survives more often than with raw bytes.
                m[i] = b" \"=[]{},.:0123456789abcdefghijklmnopqrstuvwxyz\n"[(next() % 47) as usize];
            }
            m.truncate((next() % (m.len() as u64 + 1)) as usize);
            tether_agent::fuzz::config_file(&m);
        }
    }
}
