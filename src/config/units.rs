//! Durations (`ms`, `s`, `m`, `h`) and sizes (`B`, `kB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`)
//! as written in the config file: `"500ms"`, `"30s"`, `"64MiB"`.
//!
//! A value is a whole number followed by its unit, optionally with spaces between
//! (`"5 s"`). The unit is required, so that `"64"` can never be misread as bytes when
//! megabytes were meant; the only exception is `"0"`, which means zero in any unit.
//!
//! Sizes follow Postgres' own convention for memory settings (docs, "Setting
//! Parameters", "Parameter Names and Values"): `kB`, `MB` and `GB` are powers of 1024,
//! exactly like `KiB`, `MiB` and `GiB`. Units are case-sensitive, as in Postgres.

use std::time::Duration;

const DURATION_EXPECTED: &str = "expected a duration such as \"5s\" (units: ms, s, m, h)";
const SIZE_EXPECTED: &str =
    "expected a size such as \"64MiB\" (units: B, kB, KiB, MB, MiB, GB, GiB; kB = KiB = 1024 bytes)";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Parses `"500ms"`, `"5s"`, `"10m"`, `"1h"`, `"0s"` or a bare `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let fail = || format!("{DURATION_EXPECTED}, found {s:?}");
    let (number, unit) = split_number_unit(s).ok_or_else(fail)?;
    let duration = match unit {
        "" if number == 0 => Some(Duration::ZERO),
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => return Err(fail()),
    };
    duration.ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses a size into bytes: `"512B"`, `"8kB"`, `"64MiB"`, `"1GB"`, or a bare `"0"`.
///
/// `kB`/`KiB` = 1024, `MB`/`MiB` = 1024², `GB`/`GiB` = 1024³ bytes (Postgres' convention).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let fail = || format!("{SIZE_EXPECTED}, found {s:?}");
    let (number, unit) = split_number_unit(s).ok_or_else(fail)?;
    let multiplier = match unit {
        "" if number == 0 => 1,
        "B" => 1,
        "kB" | "KiB" => KIB,
        "MB" | "MiB" => MIB,
        "GB" | "GiB" => GIB,
        _ => return Err(fail()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Writes a duration in the largest unit that keeps it whole, so that
/// `parse_duration(&format_duration(d)) == Ok(d)` for whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Writes a size in the largest binary unit that keeps it whole, so that
/// `parse_size(&format_size(n)) == Ok(n)`.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0B".to_string(),
        b if b % GIB == 0 => format!("{}GiB", b / GIB),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % KIB == 0 => format!("{}KiB", b / KIB),
        b => format!("{b}B"),
    }
}

/// Splits `"64 MiB"` into `(64, "MiB")`; `None` unless it starts with a whole number.
fn split_number_unit(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number = s[..digits_end].parse().ok()?;
    Some((number, s[digits_end..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_h() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 30 s "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn bare_zero_is_a_duration_but_other_bare_numbers_are_not() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let err = parse_duration("5").unwrap_err();
        assert!(err.starts_with(DURATION_EXPECTED), "{err}");
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for bad in [
            "",
            "s",
            "5",
            "5sec",
            "1d",
            "-5s",
            "1.5s",
            "5S",
            "five seconds",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(
                err,
                format!("expected a duration such as \"5s\" (units: ms, s, m, h), found {bad:?}")
            );
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 2))
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_follow_postgres_1024_based_units() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("8kB"), Ok(8 * 1024));
        assert_eq!(parse_size("8KiB"), Ok(8 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("16 MB"), Ok(16 * 1024 * 1024));
    }

    #[test]
    fn bad_sizes_say_what_is_expected() {
        for bad in ["", "64", "64mb", "64KB", "1TB", "1.5MB", "-1MB", "MB"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.starts_with("expected a size such as \"64MiB\""),
                "{err}"
            );
            assert!(err.ends_with(&format!("found {bad:?}")), "{err}");
        }
        assert!(parse_size(&format!("{}GB", u64::MAX / 1024))
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formatting_round_trips() {
        for d in ["0s", "250ms", "1500ms", "5s", "90s", "10m", "2h"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for n in [
            0,
            1,
            1000,
            1024,
            10 * 1024 * 1024,
            64 * 1024 * 1024 + 1,
            3 * GIB,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(64 * 1024 * 1024), "64MiB");
    }
}
