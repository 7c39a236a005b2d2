//! The rendezvous (highest-random-weight) hash ring that maps a device to its owning relay.
//!
//! For a device key `k` (`<namespace>/<name>`) and each member name `m`, the weight is the first 8
//! bytes, read big-endian, of `SHA-256(m || 0x00 || k)`. The member with the highest weight owns the
//! device; equal weights (practically impossible) go to the lexicographically smaller name. The
//! function is pure and language-neutral, so the operator's status, every relay and third-party
//! tools agree. Removing one of N members moves only the devices it owned (~1/N); adding one moves
//! ~1/(N+1) of devices to it.

use sha2::{Digest, Sha256};

/// The weight of `member` for `device_key`.
pub fn weight(member: &str, device_key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(member.as_bytes());
    hasher.update([0u8]);
    hasher.update(device_key.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The member that owns `device_key`, or `None` when there are no members.
pub fn owner<'a, M: AsRef<str>>(device_key: &str, members: &'a [M]) -> Option<&'a str> {
    members.iter().map(AsRef::as_ref).max_by(|a, b| {
        weight(a, device_key)
            .cmp(&weight(b, device_key))
            .then_with(|| b.cmp(a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tether-relay-{i}")).collect()
    }

    fn devices() -> Vec<String> {
        (0..10_000)
            .map(|i| format!("factory-{}/pump-{i}", i % 7))
            .collect()
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(owner::<String>("a/b", &[]), None);
        assert_eq!(owner("a/b", &["only"]), Some("only"));
    }

    #[test]
    fn known_vector() {
        // Pinned so any change to the function (which would reroute every device in a fleet during an
        // upgrade, and break third-party implementations) fails loudly.
        assert_eq!(weight("relay-0", "default/pump"), KNOWN_WEIGHT);
        let m = ["relay-0", "relay-1", "relay-2"];
        let picks: Vec<_> = ["default/a", "default/b", "default/c", "x/y"]
            .iter()
            .map(|d| owner(d, &m).unwrap())
            .collect();
        assert_eq!(picks, KNOWN_PICKS);
    }

    // Computed independently with Python hashlib (see docs/protocol.md).
    const KNOWN_WEIGHT: u64 = 5_337_134_453_833_017_410;
    const KNOWN_PICKS: [&str; 4] = ["relay-2", "relay-2", "relay-0", "relay-2"];

    #[test]
    fn order_of_members_does_not_matter() {
        let mut m = members(5);
        let before: Vec<_> = devices()
            .iter()
            .map(|d| owner(d, &m).unwrap().to_owned())
            .collect();
        m.reverse();
        let after: Vec<_> = devices()
            .iter()
            .map(|d| owner(d, &m).unwrap().to_owned())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn balanced_and_minimal_movement() {
        let five = members(5);
        let four = members(4);
        let mut per_member = std::collections::HashMap::new();
        let mut moved = 0;
        for d in devices() {
            let a = owner(&d, &five).unwrap();
            *per_member.entry(a).or_insert(0) += 1;
            let b = owner(&d, &four).unwrap();
            if a != b {
                // Only devices of the removed member move.
                assert_eq!(a, "tether-relay-4");
                moved += 1;
            }
        }
        for (m, n) in per_member {
            assert!((1700..2300).contains(&n), "{m} owns {n} of 10000");
        }
        assert!((1700..2300).contains(&moved), "{moved} moved");
    }
}
