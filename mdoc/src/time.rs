//! The two date forms of ISO/IEC 18013-5: `tdate` (tag 0, RFC 3339 date-time text) for the MSO's
//! validity, and `full-date` (tag 1004, or plain text, `YYYY-MM-DD`) for elements such as
//! `birth_date`. Read without a calendar library: the proleptic Gregorian calendar, UTC.

/// Days from 1970-01-01 to the civil date (y, m, d); `None` for a date that does not exist.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

/// A full date `YYYY-MM-DD` (RFC 3339 full-date): (year, month, day).
pub fn full_date(s: &str) -> Option<(i64, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..])?);
    days_from_civil(i64::from(y), m, d)?;
    Some((i64::from(y), m, d))
}

/// An RFC 3339 date-time (`2020-10-01T13:30:02Z`, fractions of a second and `±hh:mm` offsets
/// allowed) as Unix seconds, fractions dropped.
pub fn date_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, m, d) = full_date(s.get(..10)?)?;
    let (hh, mm, ss) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, m, d)?;
    Some(days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss.min(59)) - offset)
}

/// Full years between a birth date and the civil date `today` (ISO/IEC 18013-5 `age_over_NN`
/// counts full years: the birthday must have come). A 29 February birthday comes on 1 March in
/// other years.
pub fn full_years(birth: (i64, u32, u32), today: (i64, u32, u32)) -> i64 {
    let mut years = today.0 - birth.0;
    if (today.1, today.2) < (birth.1, birth.2) {
        years -= 1;
    }
    years
}

/// The civil date of Unix seconds `t` at UTC offset `offset_secs`.
pub fn civil(t: i64, offset_secs: i32) -> (i64, u32, u32) {
    let z = (t + i64::from(offset_secs)).div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
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

    #[test]
    fn dates_read_as_rfc_3339_says() {
        assert_eq!(date_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(date_time("2020-10-01T13:30:02Z"), Some(1_601_559_002));
        assert_eq!(date_time("2020-10-01T13:30:02.25Z"), Some(1_601_559_002));
        assert_eq!(date_time("2020-10-01T22:30:02+09:00"), Some(1_601_559_002));
        assert_eq!(date_time("2020-02-30T00:00:00Z"), None);
        assert_eq!(date_time("2020-10-01 13:30:02Z"), None);
        assert_eq!(date_time("2020-10-01T13:30:02"), None);
        assert_eq!(full_date("2000-02-29"), Some((2000, 2, 29)));
        assert_eq!(full_date("1900-02-29"), None);
        assert_eq!(civil(1_601_559_002, 0), (2020, 10, 1));
        assert_eq!(civil(1_601_559_002, 11 * 3600), (2020, 10, 2));
    }

    #[test]
    fn full_years_need_the_birthday() {
        assert_eq!(full_years((2000, 6, 15), (2019, 6, 14)), 18);
        assert_eq!(full_years((2000, 6, 15), (2019, 6, 15)), 19);
        assert_eq!(full_years((2000, 2, 29), (2019, 2, 28)), 18);
        assert_eq!(full_years((2000, 2, 29), (2019, 3, 1)), 19);
    }
}
