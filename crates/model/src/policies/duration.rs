//! Durations as Kuma's policies write them: Go's `time.ParseDuration` form (`5s`, `1h0m0s`,
//! `1.5s`, `250ms`, `-1s`; units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`; a bare `0`).
//! Kept as the string the user wrote; parsed when validated and when configured.

use std::time::Duration;

/// A parsed Go duration: its sign and magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl GoDuration {
    pub fn is_zero(&self) -> bool {
        self.magnitude.is_zero()
    }
}

/// Parses a Go duration string; `None` when it is not one.
pub fn parse(s: &str) -> Option<GoDuration> {
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        nanos = nanos.checked_add(whole.checked_mul(unit)?)?;
        let mut scale = unit;
        for digit in frac.bytes() {
            scale /= 10;
            nanos = nanos.checked_add(u128::from(digit - b'0') * scale)?;
        }
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    // Less than 1e9, so it fits.
    let sub = (nanos % 1_000_000_000) as u32;
    Some(GoDuration {
        negative,
        magnitude: Duration::new(secs, sub),
    })
}

/// A non-negative duration; `None` for a negative or malformed one.
pub fn parse_non_negative(s: &str) -> Option<Duration> {
    parse(s)
        .filter(|d| !d.negative || d.is_zero())
        .map(|d| d.magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s: &str, d: Duration| assert_eq!(parse_non_negative(s), Some(d), "{s}");
        ok("5s", Duration::from_secs(5));
        ok("1h0m0s", Duration::from_secs(3600));
        ok("1h30m", Duration::from_secs(5400));
        ok("1.5s", Duration::from_millis(1500));
        ok("250ms", Duration::from_millis(250));
        ok("0", Duration::ZERO);
        ok("0s", Duration::ZERO);
        ok("10us", Duration::from_micros(10));
        ok("3ns", Duration::from_nanos(3));
        ok(".5m", Duration::from_secs(30));
        assert_eq!(
            parse("-1s"),
            Some(GoDuration {
                negative: true,
                magnitude: Duration::from_secs(1)
            })
        );
        for bad in ["", "5", "s", "1d", "1.2.3s", "abc", "-", "1s x", "5 s"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_non_negative("-1s"), None);
    }
}
