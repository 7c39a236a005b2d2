//! Per-object exponential backoff for `error_policy`: 1 s, 2 s, 4 s … capped at [`MAX_BACKOFF`],
//! reset by the next successful reconcile of that object. One [`Backoff`] lives in each
//! operator's `Context` (no process-wide state).

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Longest wait between retries of a failing object: long enough not to hammer a broken API
/// server, short enough that a fixed problem is noticed within minutes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Consecutive failures per object, keyed `controller/namespace/name`.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

fn key(controller: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{controller}/{}/{name}", namespace.unwrap_or_default())
}

impl Backoff {
    /// Records a failure and returns how long to wait before retrying.
    pub fn failed(&self, controller: &str, namespace: Option<&str>, name: &str) -> Duration {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key(controller, namespace, name)).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(16)).min(MAX_BACKOFF)
    }

    /// Forgets the failures of an object after a successful reconcile.
    pub fn succeeded(&self, controller: &str, namespace: Option<&str>, name: &str) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&key(controller, namespace, name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let b = Backoff::default();
        let d: Vec<_> = (0..3).map(|_| b.failed("t", Some("ns"), "a")).collect();
        assert_eq!(
            d,
            [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        assert_eq!(
            b.failed("t", Some("ns"), "other"),
            Duration::from_secs(1),
            "per object"
        );
        assert_eq!(
            b.failed("u", Some("ns"), "a"),
            Duration::from_secs(1),
            "per controller"
        );
        for _ in 0..20 {
            b.failed("t", Some("ns"), "a");
        }
        assert_eq!(b.failed("t", Some("ns"), "a"), MAX_BACKOFF);
        b.succeeded("t", Some("ns"), "a");
        assert_eq!(b.failed("t", Some("ns"), "a"), Duration::from_secs(1));
        assert_eq!(
            Backoff::default().failed("t", Some("ns"), "a"),
            Duration::from_secs(1),
            "separate operators keep separate state"
        );
    }
}
