//! Per-object exponential backoff for `error_policy`: 1 s, 2 s, 4 s … capped at [`MAX_BACKOFF`],
//! reset by the next successful reconcile of that object.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::Duration,
};

/// Longest wait between retries of a failing object: long enough not to hammer a broken API
/// server, short enough that a fixed problem is noticed within minutes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

static FAILURES: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn key(controller: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{controller}/{}/{name}", namespace.unwrap_or_default())
}

/// Records a failure and returns how long to wait before retrying.
pub fn failed(controller: &str, namespace: Option<&str>, name: &str) -> Duration {
    let mut map = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = map.entry(key(controller, namespace, name)).or_insert(0);
    *n = n.saturating_add(1);
    Duration::from_secs(1u64 << (*n - 1).min(16)).min(MAX_BACKOFF)
}

/// Forgets the failures of an object after a successful reconcile.
pub fn succeeded(controller: &str, namespace: Option<&str>, name: &str) {
    let mut map = FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.remove(&key(controller, namespace, name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let d: Vec<_> = (0..3).map(|_| failed("t", Some("ns"), "a")).collect();
        assert_eq!(
            d,
            [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        for _ in 0..20 {
            failed("t", Some("ns"), "a");
        }
        assert_eq!(failed("t", Some("ns"), "a"), MAX_BACKOFF);
        succeeded("t", Some("ns"), "a");
        assert_eq!(failed("t", Some("ns"), "a"), Duration::from_secs(1));
    }
}
