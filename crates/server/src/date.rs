//! Dates in UTC: RFC 5322 §3.3 for trace headers, RFC 3339 for admin
//! output, and the admin's `--since` forms. Small enough to not pull a date
//! crate in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Fri, 27 Nov 2026 05:43:35 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2026-11-27T05:43:35Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Parses an admin's point in time: `2026-11-27`, `2026-11-27T05:43:35Z`,
/// `@1795758215` (unix seconds), an age before `now` such as `3d`, `12h`,
/// `30m`, `45s`, or a time after `now` such as `+3d`.
pub fn parse_time(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim();
    if let Some(secs) = text.strip_prefix('@') {
        return Some(UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?));
    }
    // "+3d": a time in the future (for dry-run previews); "3d": in the past.
    let (future, age) = match text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(unit) = age.chars().last().filter(|c| c.is_ascii_alphabetic())
        && let Ok(n) = age[..age.len() - 1].parse::<u64>()
    {
        let secs = match unit {
            'd' => n.checked_mul(86_400)?,
            'h' => n.checked_mul(3600)?,
            'm' => n.checked_mul(60)?,
            's' => n,
            _ => return None,
        };
        let d = Duration::from_secs(secs);
        return if future { now.checked_add(d) } else { now.checked_sub(d) };
    }
    if future {
        return None;
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d).checked_mul(86_400)?;
    if let Some(time) = time {
        let mut hms = time.splitn(3, ':');
        let h: i64 = hms.next()?.parse().ok()?;
        let mi: i64 = hms.next()?.parse().ok()?;
        let se: i64 = hms.next().unwrap_or("0").parse().ok()?;
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se;
    }
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Howard Hinnant's civil-to-days algorithm, the inverse of the one below.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_and_parse_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_758_215);
        assert_eq!(rfc3339(t), "2026-11-27T05:43:35Z");
        assert_eq!(parse_time("2026-11-27T05:43:35Z", t), Some(t));
        assert_eq!(parse_time("@1795758215", t), Some(t));
        assert_eq!(parse_time("2026-11-27", t), Some(t - Duration::from_secs(5 * 3600 + 43 * 60 + 35)));
        assert_eq!(parse_time("2d", t), Some(t - Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_time("90m", t), Some(t - Duration::from_secs(90 * 60)));
        assert_eq!(parse_time("+3d", t), Some(t + Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_time("+2026-01-01", t), None);
        assert_eq!(parse_time("2000-02-29", t), Some(UNIX_EPOCH + Duration::from_secs(951_782_400)));
        for bad in ["", "yesterday", "2026-13-01", "3w", "2026-11-27T25:00:00Z", "@x"] {
            assert_eq!(parse_time(bad, t), None, "{bad}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc5322(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322(UNIX_EPOCH + Duration::from_secs(1_795_758_215)),
            "Fri, 27 Nov 2026 05:43:35 +0000"
        );
        // 2000-02-29, a leap day in a century year divisible by 400.
        assert_eq!(
            rfc5322(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
