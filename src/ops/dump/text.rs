//! How raw bytes and times are spelled: hex, printable characters, C
//! strings, UTC dates, and the hex dump of an item body.

use std::io::Write;

use crate::format::ondisk::Timespec;

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn printable(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect()
}

/// A name as C's `%.*s` prints it: at most `max` bytes, stopping at a NUL.
pub(super) fn c_str(b: &[u8], max: usize) -> &[u8] {
    let b = &b[..b.len().min(max)];
    match b.iter().position(|&c| c == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}

/// `SECONDS.NANOS (YYYY-MM-DD HH:MM:SS)` in UTC.
pub(super) fn time_str(t: &Timespec) -> String {
    let sec = t.sec.get();
    format!("{}.{} ({})", sec, t.nsec.get(), utc_datetime(sec as i64))
}

pub(crate) fn utc_datetime(t: i64) -> String {
    let days = t.div_euclid(86400);
    let rem = t.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Hex dump of an item body: offset, 16 bytes in hex, the printable ones.
pub(super) fn hex_dump(buf: &mut Vec<u8>, data: &[u8]) {
    w!(buf, "\t\titem data, {} bytes:\n", data.len());
    for (i, chunk) in data.chunks(16).enumerate() {
        let mut hexpart = String::with_capacity(50);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => hexpart.push_str(&format!("{b:02x} ")),
                None => hexpart.push_str("   "),
            }
            if j == 7 {
                hexpart.push(' ');
            }
        }
        w!(buf, "\t\t{:08x}  {hexpart} |{}|\n", i * 16, printable(chunk));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_datetimes() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00:00");
        assert!(utc_datetime(i64::MIN).contains('-'));
        assert!(utc_datetime(i64::MAX).contains(':'));
    }
}
