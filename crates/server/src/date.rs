//! Dates in UTC: RFC 5322 §3.3 for trace headers, RFC 3339 for admin
//! output, and the admin's `--since` forms. The calendar arithmetic is the
//! `time` crate's (already in the tree through `x509-parser`); the fetcher's
//! mbox `From ` line uses the same crate, so there is one date source.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

/// RFC 5322 §3.3 with a one- or two-digit day, as pobox has always written it.
const RFC5322: &[BorrowedFormatItem<'_>] = format_description!(
    "[weekday repr:short], [day padding:none] [month repr:short] [year] [hour]:[minute]:[second] +0000"
);

/// RFC 3339 in UTC with a `Z`, whole seconds.
const RFC3339: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// `t` as a UTC date-time; times before 1970 (a clock gone wrong) and past
/// year 9999 read as the epoch, as they always have here.
fn utc(t: SystemTime) -> OffsetDateTime {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats with a description known to be valid for every UTC date-time;
/// `format` fails only on an invalid description or an I/O error, neither
/// of which happens when writing a `String`.
fn format(t: SystemTime, description: &[BorrowedFormatItem<'_>]) -> String {
    utc(t).format(description).unwrap_or_default()
}

/// `Fri, 27 Nov 2026 05:43:35 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    format(t, RFC5322)
}

/// `2026-11-27T05:43:35Z`.
pub fn rfc3339(t: SystemTime) -> String {
    format(t, RFC3339)
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
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
    let mut secs = date.midnight().assume_utc().unix_timestamp();
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
        for bad in ["", "yesterday", "2026-13-01", "2026-02-30", "3w", "2026-11-27T25:00:00Z", "@x"] {
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
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        // A clock before 1970 reads as the epoch rather than failing.
        assert_eq!(rfc5322(UNIX_EPOCH - Duration::from_secs(1)), "Thu, 1 Jan 1970 00:00:00 +0000");
    }
}
