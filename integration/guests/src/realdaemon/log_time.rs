//! The time stamps of `sockbypassd`'s log lines (`2026-12-02T05:39:13.779951Z ...`, UTC, from
//! `tracing`), as `SystemTime`, so that a daemon event can be placed against a host event
//! (the daemon runs on the same host, with the same clock).

use std::time::{Duration, SystemTime};

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The time stamp at the start of `line`, if it has one.
pub fn line_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    let digits: String = frac.chars().take(9).collect();
    let nanos = digits.parse::<u64>().ok()? * 10u64.pow(9 - u32::try_from(digits.len()).ok()?);
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// The time of the first line of `log` that contains `marker`.
pub fn first_time_of(log: &str, marker: &str) -> Option<SystemTime> {
    log.lines()
        .filter(|l| l.contains(marker))
        .find_map(line_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_time_stamps() {
        let t = line_time("2026-12-02T05:39:13.779951Z  INFO guest driver detached vm=b")
            .expect("a time");
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        // date -u -d 2026-12-02T05:39:13Z +%s
        assert_eq!(since.as_secs(), 1_796_189_953);
        assert_eq!(since.subsec_nanos(), 779_951_000);
        assert_eq!(
            line_time("1970-01-01T00:00:00Z x"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(line_time("no stamp here"), None);
        assert_eq!(line_time("2026-13-02T05:39:13.1Z x"), None);
    }

    #[test]
    fn finds_the_first_marked_line() {
        let log = "2026-12-02T05:39:13.1Z  INFO a\n2026-12-02T05:39:14.5Z  INFO b vm=x\n2026-12-02T05:39:15Z  INFO b vm=x\n";
        let t = first_time_of(log, "b vm=x").expect("found");
        let want = line_time("2026-12-02T05:39:14.5Z").expect("time");
        assert_eq!(t, want);
        assert_eq!(first_time_of(log, "c"), None);
    }
}
