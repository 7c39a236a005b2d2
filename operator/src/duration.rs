//! Parsing the CRDs' duration strings (`spec.ttl`, `spec.idleTimeout`,
//! `spec.scaleDownStabilization`) exactly as the API server's CEL `duration()` does: Go's
//! `time.ParseDuration` syntax, through [`kube::core::Duration`] (kube's port of it).
//!
//! kube's parser differs from Go's in three places, which [`parse`] closes: it accepts the empty
//! string (Go: invalid), it panics instead of failing when a value overflows Rust's `Duration`
//! (Go: "invalid duration"), and it has no upper bound (Go's durations are `int64` nanoseconds, at
//! most ~292 years). Negative durations are valid Go but no field of ours allows one, so they are
//! an error here too.

use std::time::Duration;

/// Go's largest duration: `math.MaxInt64` nanoseconds.
const GO_MAX: Duration = Duration::from_nanos(i64::MAX.unsigned_abs());
/// Longest input accepted. With at most [`MAX_INTEGER_DIGITS`] digits per number, four numbers of
/// hours fit in 64 bytes, 4 × 10^15 h ≈ 1.4 × 10^19 s, below Rust's `Duration` limit
/// (`u64::MAX` seconds ≈ 1.8 × 10^19), so kube's parser cannot panic on accepted input.
const MAX_LEN: usize = 64;
/// Most digits before a decimal point in one number: 10^15 h is far above Go's ~2.6 × 10^6 h
/// limit, so nothing valid in Go with a unit of at least a microsecond is refused.
const MAX_INTEGER_DIGITS: usize = 15;

/// Why a duration string is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration")]
    Empty,
    /// Not Go duration syntax (a missing or unknown unit, a malformed number).
    #[error("{0}")]
    Syntax(#[from] kube::core::duration::ParseError),
    /// A negative duration.
    #[error("negative duration")]
    Negative,
    /// Larger than Go's `time.Duration` can hold (~292 years).
    #[error("duration out of range")]
    Overflow,
}

/// Parses `s` with Go's `time.ParseDuration` syntax: a sequence of decimal numbers, each with a
/// unit `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, e.g. `300ms`, `1.5h`, `1h30m`; or `0`.
///
/// # Errors
/// [`DurationError`]: empty, bad syntax, negative, or out of Go's range.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let too_many_digits = s
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|number| number.split('.').next().unwrap_or_default().len() > MAX_INTEGER_DIGITS);
    if s.len() > MAX_LEN || too_many_digits {
        return Err(DurationError::Overflow);
    }
    let parsed: kube::core::Duration = s.parse()?;
    let negative = parsed.is_negative();
    let parsed = Duration::from(parsed);
    if negative && parsed != Duration::ZERO {
        return Err(DurationError::Negative);
    }
    if parsed > GO_MAX {
        return Err(DurationError::Overflow);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("300ms", ms(300)),
            ("2s", ms(2_000)),
            ("1.5h", ms(5_400_000)),
            ("1h30m", ms(5_400_000)),
            ("1.5m", ms(90_000)),
            (".5s", ms(500)),
            ("+5s", ms(5_000)),
            ("1µs", Duration::from_micros(1)),
            ("1μs", Duration::from_micros(1)),
            ("1us", Duration::from_micros(1)),
            ("1ns", Duration::from_nanos(1)),
            ("1.0000000000000000000001s", ms(1_000)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        for text in ["1d", "1w", "10", "soon", "1 h", "s", "1h 30m"] {
            assert!(
                matches!(parse(text), Err(DurationError::Syntax(_))),
                "{text}: {:?}",
                parse(text)
            );
        }
        // Above Go's int64 nanoseconds, and values that would make kube's parser panic.
        for text in [
            "2562048h",
            "9999999999999999h",
            "99999999999999999999999h",
            "999999999999999h999999999999999h999999999999999h999999999999999h",
        ] {
            assert_eq!(parse(text), Err(DurationError::Overflow), "{text}");
        }
    }
}
