//! Calendar time as devices write it: RFC 3339 date-times with a UTC offset
//! (`2023-06-09T19:05:47+07:00`) and POSIX `TZ` strings with the inverted sign (`CST-4:00:00`
//! means UTC+4).
//!
//! Small and dependency-free on purpose: devices only use these two forms.

use serde::{Deserialize, Serialize};

/// A date-time read from a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDateTime {
    /// Milliseconds since the Unix epoch. When the text had no UTC offset, the local time is
    /// taken as UTC and [`DeviceDateTime::utc_offset_secs`] is `None`.
    pub unix_ms: i64,
    /// The UTC offset written in the text, in seconds east of UTC.
    pub utc_offset_secs: Option<i32>,
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM|±HHMM|±HH]`; a space instead of `T` is accepted.
/// `None` when the text is not such a date-time (never panics).
pub fn parse_datetime(text: &str) -> Option<DeviceDateTime> {
    let text = text.trim();
    let bytes = text.as_bytes();
    if bytes.len() < 19 || !text.is_char_boundary(19) {
        return None;
    }
    let year = digits(bytes, 0, 4)?;
    let month = digits(bytes, 5, 2)?;
    let day = digits(bytes, 8, 2)?;
    let hour = digits(bytes, 11, 2)?;
    let minute = digits(bytes, 14, 2)?;
    let second = digits(bytes, 17, 2)?;
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if end == 0 {
            return None;
        }
        let digits_text = &frac[..end];
        let mut scale = 100;
        for d in digits_text.bytes().take(3) {
            millis += i64::from(d - b'0') * scale;
            scale /= 10;
        }
        rest = &frac[end..];
    }
    let offset = parse_offset(rest)?;
    let days = days_from_civil(year, month, day);
    let local_secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    let utc_secs = local_secs - i64::from(offset.unwrap_or(0));
    Some(DeviceDateTime {
        unix_ms: utc_secs.checked_mul(1000)?.checked_add(millis)?,
        utc_offset_secs: offset,
    })
}

/// `Some(None)` for no offset, `Some(Some(secs))` for an offset, `None` for garbage.
fn parse_offset(text: &str) -> Option<Option<i32>> {
    match text {
        "" => return Some(None),
        "Z" | "z" => return Some(Some(0)),
        _ => {}
    }
    let sign = match text.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &text[1..];
    let (hours, minutes) = match body.len() {
        2 => (body, "0"),
        4 => (body.get(..2)?, body.get(2..)?),
        5 if body.as_bytes()[2] == b':' => (body.get(..2)?, body.get(3..)?),
        _ => return None,
    };
    let hours: i32 = small_number(hours)?;
    let minutes: i32 = small_number(minutes)?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(Some(sign * (hours * 3_600 + minutes * 60)))
}

fn small_number(text: &str) -> Option<i32> {
    if text.is_empty() || text.len() > 2 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn digits(bytes: &[u8], start: usize, len: usize) -> Option<i64> {
    let slice = bytes.get(start..start + len)?;
    let mut value = 0i64;
    for b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(value)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Format as `YYYY-MM-DDTHH:MM:SS±HH:MM` in the given offset (seconds east of UTC), the form
/// ISAPI devices expect in requests. Sub-second digits are dropped.
pub fn format_datetime(unix_ms: i64, utc_offset_secs: i32) -> String {
    let local_secs = unix_ms.div_euclid(1000) + i64::from(utc_offset_secs);
    let days = local_secs.div_euclid(86_400);
    let secs_of_day = local_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let sign = if utc_offset_secs < 0 { '-' } else { '+' };
    let offset = utc_offset_secs.unsigned_abs();
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        secs_of_day / 3_600,
        secs_of_day % 3_600 / 60,
        secs_of_day % 60,
        offset / 3_600,
        offset % 3_600 / 60,
    )
}

/// A POSIX `TZ` string as ISAPI devices report it in `timeZone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimeZone {
    /// The standard-time name, e.g. `CST`.
    pub name: String,
    /// Standard time's offset in seconds **east** of UTC. POSIX writes the sign inverted:
    /// `CST-4:00:00` is UTC+4, so this field is `14400`.
    pub utc_offset_secs: i32,
    /// The daylight-saving part as written (`DST01:00:00,M4.1.0/21:00:00,M10.5.0/02:00:00`),
    /// when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
}

/// Parse a POSIX `TZ` string (`CST-4:00:00`, `CST+5:30:00DST01:00:00,M4.1.0/21:00:00,...`).
/// `None` when it does not have that form.
pub fn parse_posix_tz(text: &str) -> Option<PosixTimeZone> {
    let text = text.trim();
    let name_len = text
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    if name_len < 3 {
        return None;
    }
    let (name, rest) = text.split_at(name_len);
    let (sign, rest) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        b'0'..=b'9' => (1, rest),
        _ => return None,
    };
    let clock_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let (clock, dst) = rest.split_at(clock_len);
    let mut fields = clock.split(':');
    let hours: i32 = small_number(fields.next()?)?;
    let minutes: i32 = fields.next().map_or(Some(0), small_number)?;
    let seconds: i32 = fields.next().map_or(Some(0), small_number)?;
    if fields.next().is_some() || hours > 24 || minutes > 59 || seconds > 59 {
        return None;
    }
    let posix_offset = sign * (hours * 3_600 + minutes * 60 + seconds);
    Some(PosixTimeZone {
        name: name.to_string(),
        utc_offset_secs: -posix_offset,
        dst: (!dst.is_empty()).then(|| dst.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_datetimes_with_offsets() {
        let t = parse_datetime("2023-06-09T19:05:47+07:00").unwrap();
        assert_eq!(t.utc_offset_secs, Some(7 * 3600));
        // 2023-06-09T12:05:47Z
        assert_eq!(t.unix_ms, 1_686_312_347_000);
        let z = parse_datetime("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(z.unix_ms, 0);
        let frac = parse_datetime("1970-01-01T00:00:01.250-01:30").unwrap();
        assert_eq!(frac.unix_ms, 1_250 + 5_400_000);
        let naive = parse_datetime("2026-05-29 15:16:24").unwrap();
        assert_eq!(naive.utc_offset_secs, None);
        for bad in [
            "",
            "2023-13-01T00:00:00Z",
            "2023-02-30T00:00:00Z",
            "2023-06-09T19:05:47+7",
            "2023-06-09T19:05:47+07:00x",
            "2023-06-09T19:05:47.+07:00",
            "20é3-06-09T19:05:47Z",
            "2023-06-09T19:05:4é",
        ] {
            assert!(parse_datetime(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for (ms, offset) in [
            (1_686_312_347_000, 7 * 3600),
            (0, 0),
            (-86_400_000, -3600),
            (951_782_400_000, 19_800),
        ] {
            let text = format_datetime(ms, offset);
            let back = parse_datetime(&text).unwrap();
            assert_eq!(back.unix_ms, ms, "{text}");
            assert_eq!(back.utc_offset_secs, Some(offset));
        }
        assert_eq!(
            format_datetime(1_686_312_347_000, 7 * 3600),
            "2023-06-09T19:05:47+07:00"
        );
    }

    #[test]
    fn posix_time_zones_have_the_inverted_sign() {
        let tz = parse_posix_tz("CST-4:00:00").unwrap();
        assert_eq!(tz.utc_offset_secs, 4 * 3600);
        assert_eq!(tz.dst, None);
        let west = parse_posix_tz("EST+5:00:00").unwrap();
        assert_eq!(west.utc_offset_secs, -5 * 3600);
        let dst =
            parse_posix_tz("CST-4:00:00DST01:00:00,M4.1.0/21:00:00,M10.5.0/02:00:00").unwrap();
        assert_eq!(dst.utc_offset_secs, 4 * 3600);
        assert_eq!(
            dst.dst.as_deref(),
            Some("DST01:00:00,M4.1.0/21:00:00,M10.5.0/02:00:00")
        );
        assert_eq!(parse_posix_tz("IST-5:30").unwrap().utc_offset_secs, 19_800);
        assert!(parse_posix_tz("-4:00").is_none());
        assert!(parse_posix_tz("CST").is_none());
        assert!(parse_posix_tz("CST-99:00:00").is_none());
    }
}
