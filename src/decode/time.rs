//! Protocol timestamps: microseconds since the PostgreSQL epoch
//! (2000-01-01 00:00:00 UTC), converted without any calendar library.

/// Microseconds between 1970-01-01 and 2000-01-01 (10 957 days).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;
const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// PostgreSQL epoch (2000-01-01) microseconds -> `"2026-11-22T10:00:00.123456Z"`
/// (always 6 fractional digits, UTC). Negative values (before 2000) work.
///
/// Years outside 0000..=9999 (only reachable with absurd inputs) are written
/// with a sign and at least four digits, as in ISO 8601 expanded form
/// (`"-0001-..."`, `"+12345-..."`); that is not strict RFC 3339.
pub fn pg_micros_to_rfc3339(us: i64) -> String {
    let secs = us.div_euclid(MICROS_PER_SEC);
    let micros = us.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days + PG_EPOCH_UNIX_DAYS);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:04}", year.unsigned_abs())
    } else {
        format!("+{year}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// The same instant as microseconds since the Unix epoch (1970-01-01 UTC).
/// Saturates at the `i64` limits instead of overflowing.
pub fn pg_micros_to_unix_micros(us: i64) -> i64 {
    us.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// Proleptic Gregorian (year, month, day) for a count of days since
/// 1970-01-01. Works on 400-year eras counted from 0000-03-01 so that the
/// leap day is the last day of each shifted year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    const DAYS_PER_ERA: i64 = 146_097;
    // shift the origin from 1970-01-01 to 0000-03-01
    let z = days + 719_468;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA); // 0..=146096
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // 0..=399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * 1_000_000;

    #[test]
    fn epoch() {
        assert_eq!(pg_micros_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(pg_micros_to_unix_micros(0), 946_684_800_000_000);
    }

    #[test]
    fn known_2026_instant() {
        // 2026-11-22T10:00:00.123456Z is Unix 1795341600.123456
        let unix = 1_795_341_600_123_456i64;
        let pg = unix - 946_684_800_000_000;
        assert_eq!(pg_micros_to_rfc3339(pg), "2026-11-22T10:00:00.123456Z");
        assert_eq!(pg_micros_to_unix_micros(pg), unix);
    }

    #[test]
    fn before_2000() {
        assert_eq!(pg_micros_to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(pg_micros_to_rfc3339(-DAY), "1999-12-31T00:00:00.000000Z");
        // 1970-01-01 exactly
        assert_eq!(
            pg_micros_to_rfc3339(-946_684_800_000_000),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(pg_micros_to_unix_micros(-946_684_800_000_000), 0);
        // 1999-03-15T12:34:56.5Z = Unix 921501296.5
        let pg = 921_501_296_500_000 - 946_684_800_000_000;
        assert_eq!(pg_micros_to_rfc3339(pg), "1999-03-15T12:34:56.500000Z");
    }

    #[test]
    fn leap_days() {
        // 2000 is a leap year (divisible by 400): day 59 is Feb 29
        assert_eq!(pg_micros_to_rfc3339(59 * DAY), "2000-02-29T00:00:00.000000Z");
        assert_eq!(pg_micros_to_rfc3339(60 * DAY), "2000-03-01T00:00:00.000000Z");
        // 2024-02-29T23:59:59Z = Unix 1709251199
        let pg = 1_709_251_199_000_000 - 946_684_800_000_000;
        assert_eq!(pg_micros_to_rfc3339(pg), "2024-02-29T23:59:59.000000Z");
        // 1900 is not a leap year: 1900-02-28 is followed by 1900-03-01
        // 1900-03-01 = Unix day -25508
        let pg = (-25_508 - 10_957) * DAY;
        assert_eq!(pg_micros_to_rfc3339(pg), "1900-03-01T00:00:00.000000Z");
        assert_eq!(pg_micros_to_rfc3339(pg - 1), "1900-02-28T23:59:59.999999Z");
    }

    #[test]
    fn extremes_do_not_panic() {
        assert_eq!(pg_micros_to_unix_micros(i64::MAX), i64::MAX);
        assert_eq!(pg_micros_to_unix_micros(i64::MIN), i64::MIN + 946_684_800_000_000);
        assert_eq!(pg_micros_to_rfc3339(i64::MAX), "+294277-01-09T04:00:54.775807Z");
        assert_eq!(pg_micros_to_rfc3339(i64::MIN), "-290278-12-22T19:59:05.224192Z");
    }
}
