//! Go-style durations ("1s", "500ms", "1m0s", "1h2m3.5s"), as kube-proxy's flags and config file spell them.

use std::time::Duration;

/// Parse a Go duration string. Negative durations are refused: no kube-proxy setting accepts one.
pub fn parse(s: &str) -> Result<Duration, String> {
    let orig = s;
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("negative duration {orig:?}"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {orig:?}: expected a number"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("invalid duration {orig:?}: missing unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("invalid duration {orig:?}: unknown unit {other:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(format!("invalid duration {orig:?}"));
        }
        let int: u128 =
            if int.is_empty() { 0 } else { int.parse().map_err(|_| format!("invalid duration {orig:?}"))? };
        let mut value = int * unit_nanos;
        let mut scale = unit_nanos;
        for digit in frac.chars() {
            let d = digit.to_digit(10).ok_or_else(|| format!("invalid duration {orig:?}"))? as u128;
            scale /= 10;
            value += d * scale;
        }
        total_nanos += value;
        rest = after;
    }
    u64::try_from(total_nanos).map(Duration::from_nanos).map_err(|_| format!("duration {orig:?} is too large"))
}

/// Format like Go's `time.Duration.String()`: "0s", "500ms", "1.5s", "1m0s", "1h0m0s".
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, div));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = nanos % 60_000_000_000;
    let secs = fraction(secs, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

fn fraction(value: u128, div: u128) -> String {
    let int = value / div;
    let frac = value % div;
    if frac == 0 {
        return int.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse("2µs"), Ok(Duration::from_micros(2)));
    }

    #[test]
    fn refuses_bad_durations() {
        for bad in ["", "1", "s", "1x", "-1s", "1.2.3s", "abc"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(60)), "1m0s");
        assert_eq!(format(Duration::from_secs(900)), "15m0s");
        assert_eq!(format(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_micros(1500)), "1.5ms");
        for s in ["1h2m3.5s", "250ms", "45s", "2h0m0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
