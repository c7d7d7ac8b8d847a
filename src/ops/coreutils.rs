//! The argument syntaxes of coreutils' `chmod` (octal and symbolic
//! modes), `chown` (OWNER[:GROUP], numeric: an image has no user
//! database), `touch -d` and `truncate -s`, parsed as those tools take them.

use crate::fs::txn::TimeSet;
use crate::ops::write::TruncateSize;

/// A `chmod` mode: octal, or symbolic clauses applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModeSpec {
    /// Octal digits. With fewer than five (`755`, `0755`) a directory keeps
    /// its set-ID bits, as GNU chmod does; `00755` sets exactly.
    Octal {
        mode: u32,
        keep_dir_ids: bool,
    },
    /// An operator and octal bits (`=755`, `-6000`, `+4000`): every class,
    /// no umask; `=` sets exactly, on directories too.
    OctalOp {
        op: char,
        bits: u32,
    },
    Symbolic(Vec<Clause>),
}

/// One `[ugoa]*[-+=]perms` step of a symbolic mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// Bits of the classes named (u 04700, g 02070, o 01007); 0: none named.
    who: u32,
    op: char,
    perms: Perms,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Perms {
    /// r w x s t as bits (for every class), and X.
    Bits { bits: u32, cond_x: bool },
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

const U: u32 = 0o4700;
const G: u32 = 0o2070;
const O: u32 = 0o1007;

impl std::str::FromStr for ModeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid mode: {s:?}");
        let octal = |digits: &str| -> Result<u32, String> {
            if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(bad());
            }
            u32::from_str_radix(digits, 8).ok().filter(|&m| m <= 0o7777).ok_or_else(bad)
        };
        if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return Ok(ModeSpec::Octal { mode: octal(s)?, keep_dir_ids: s.len() < 5 });
        }
        if let (Some(op @ ('+' | '-' | '=')), Some(rest)) = (s.chars().next(), s.get(1..)) {
            if rest.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                return Ok(ModeSpec::OctalOp { op, bits: octal(rest)? });
            }
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let b = part.as_bytes();
            let mut i = 0;
            let mut who = 0;
            while let Some(c) = b.get(i) {
                who |= match c {
                    b'u' => U,
                    b'g' => G,
                    b'o' => O,
                    b'a' => U | G | O,
                    _ => break,
                };
                i += 1;
            }
            if b.get(i).is_none() {
                return Err(bad());
            }
            while let Some(&op) = b.get(i) {
                if !matches!(op, b'+' | b'-' | b'=') {
                    return Err(bad());
                }
                i += 1;
                let perms = match b.get(i) {
                    Some(&c @ (b'u' | b'g' | b'o')) => {
                        i += 1;
                        Perms::Copy(char::from(c))
                    }
                    _ => {
                        let (mut bits, mut cond_x) = (0, false);
                        while let Some(c) = b.get(i) {
                            match c {
                                b'r' => bits |= 0o444,
                                b'w' => bits |= 0o222,
                                b'x' => bits |= 0o111,
                                b'X' => cond_x = true,
                                b's' => bits |= 0o6000,
                                b't' => bits |= 0o1000,
                                _ => break,
                            }
                            i += 1;
                        }
                        Perms::Bits { bits, cond_x }
                    }
                };
                clauses.push(Clause { who, op: char::from(op), perms });
            }
        }
        Ok(ModeSpec::Symbolic(clauses))
    }
}

impl ModeSpec {
    /// The new permission bits of an inode with st_mode `old` (type bits
    /// included, for X), `umask` limiting clauses that name no class, as
    /// coreutils' chmod does.
    pub fn apply(&self, old: u32, umask: u32) -> u32 {
        let is_dir = old & crate::format::S_IFMT == crate::format::S_IFDIR;
        let clauses = match self {
            ModeSpec::Octal { mode, keep_dir_ids } if is_dir && *keep_dir_ids => return mode | (old & 0o6000),
            ModeSpec::Octal { mode, .. } => return *mode,
            ModeSpec::OctalOp { op: '+', bits } => return (old & 0o7777) | bits,
            ModeSpec::OctalOp { op: '-', bits } => return old & 0o7777 & !bits,
            ModeSpec::OctalOp { bits, .. } => return *bits,
            ModeSpec::Symbolic(c) => c,
        };
        let mut mode = old & 0o7777;
        for c in clauses {
            let (who, mask) = if c.who == 0 { (U | G | O, !umask & 0o7777) } else { (c.who, 0o7777) };
            let bits = match c.perms {
                Perms::Bits { bits, cond_x } => {
                    let x = if cond_x && (is_dir || mode & 0o111 != 0) { 0o111 } else { 0 };
                    (bits | x) & who & mask
                }
                Perms::Copy(from) => {
                    let (shift, src) = match from {
                        'u' => (6, mode & 0o700),
                        'g' => (3, mode & 0o070),
                        _ => (0, mode & 0o007),
                    };
                    let rwx = src >> shift;
                    (rwx << 6 | rwx << 3 | rwx) & who & 0o777 & mask
                }
            };
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                // `=` clears the classes named (set-ID bits of a directory stay, as coreutils keeps them).
                _ => {
                    let keep = if is_dir { 0o6000 } else { 0 };
                    (mode & !(who & 0o7777 & !keep)) | bits
                }
            };
        }
        mode
    }
}

/// `chown`'s OWNER[:GROUP] / :GROUP / OWNER. (dot form too), numeric.
pub fn parse_owner(s: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let num = |x: &str, what: &str| -> Result<Option<u32>, String> {
        if x.is_empty() {
            return Ok(None);
        }
        // u32::MAX is the kernel's "no change" (-1), never an owner.
        x.parse::<u32>().ok().filter(|&v| v != u32::MAX).map(Some).ok_or_else(|| {
            format!("invalid {what}: {x:?} (numeric ids only: an image has no user database, and the host's names say nothing about its owners)")
        })
    };
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => {
            if g.is_empty() && !u.is_empty() {
                return Err(format!("{s:?}: OWNER: (the owner's login group) needs a user database; give :GROUP as a number"));
            }
            (num(u, "user")?, num(g, "group")?)
        }
        None => (num(s, "user")?, None),
    };
    if u.is_none() && g.is_none() && s != ":" {
        return Err(format!("invalid owner {s:?}"));
    }
    Ok((u, g))
}

/// `touch -d`: `@SECONDS[.FRACTION]`, or `YYYY-MM-DD[( |T)HH:MM[:SS[.FRACTION]]]`
/// followed by nothing or `Z`/`UTC` (both UTC), or `+HH:MM`/`-HH:MM`.
/// Local time zones are not applied: a date without an offset is UTC.
pub fn parse_date(s: &str) -> Result<TimeSet, String> {
    let bad = |why: &str| format!("invalid date {s:?}: {why}");
    let t = s.trim();
    if t == "now" {
        return Ok(TimeSet::Now);
    }
    if let Some(rest) = t.strip_prefix('@') {
        let (sec, nsec) = seconds(rest).ok_or_else(|| bad("@ takes seconds since the epoch"))?;
        return Ok(TimeSet::At { sec, nsec });
    }
    let (date, rest) = t.split_at(t.find([' ', 'T']).unwrap_or(t.len()));
    let mut d = date.splitn(3, '-');
    let (y, mo, day) = match (d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(dd)) => (
            y.parse::<i64>().map_err(|_| bad("year"))?,
            m.parse::<u32>().map_err(|_| bad("month"))?,
            dd.parse::<u32>().map_err(|_| bad("day"))?,
        ),
        _ => return Err(bad("want YYYY-MM-DD, optionally HH:MM[:SS[.frac]], or @SECONDS")),
    };
    if !(1..=12).contains(&mo) || day == 0 || day > days_in_month(y, mo) || !(-9999..=9999).contains(&y) {
        return Err(bad("no such day"));
    }
    let rest = rest.trim_start_matches([' ', 'T']);
    // Zone suffix.
    let (clock, offset) = if let Some(c) = rest.strip_suffix('Z').or_else(|| rest.strip_suffix("UTC")) {
        (c.trim_end(), 0i64)
    } else if let Some(i) = rest.rfind(['+', '-']).filter(|&i| i > 0 || rest.len() <= 6) {
        let (c, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = z.get(1..).unwrap_or("");
        let (zh, zm) = z.split_once(':').unwrap_or((z.get(..2).unwrap_or(""), z.get(2..).unwrap_or("")));
        let zh: i64 = zh.parse().map_err(|_| bad("zone offset"))?;
        let zm: i64 = if zm.is_empty() { 0 } else { zm.parse().map_err(|_| bad("zone offset"))? };
        if zh > 23 || zm > 59 {
            return Err(bad("zone offset"));
        }
        (c.trim_end(), sign * (zh * 3600 + zm * 60))
    } else {
        (rest, 0)
    };
    let (mut h, mut mi, mut sec, mut nsec) = (0i64, 0i64, 0i64, 0u32);
    if !clock.is_empty() {
        let mut parts = clock.splitn(3, ':');
        h = parts.next().and_then(|x| x.parse().ok()).ok_or_else(|| bad("hour"))?;
        mi = parts.next().and_then(|x| x.parse().ok()).ok_or_else(|| bad("want HH:MM"))?;
        if let Some(sx) = parts.next() {
            let (s2, n2) = seconds(sx).ok_or_else(|| bad("seconds"))?;
            (sec, nsec) = (s2, n2);
        }
        if h > 23 || mi > 59 || !(0..=60).contains(&sec) {
            return Err(bad("no such time of day"));
        }
    }
    let days = days_from_civil(y, mo, day);
    let total = days * 86400 + h * 3600 + mi * 60 + sec - offset;
    Ok(TimeSet::At { sec: total, nsec })
}

/// `SECONDS[.FRACTION]` (a leading `-` allowed): whole seconds and nanoseconds.
fn seconds(s: &str) -> Option<(i64, u32)> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = whole.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nsec: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    if whole.starts_with('-') && nsec > 0 {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        return Some((sec.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((sec, nsec))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days_from_civil (proleptic Gregorian): days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `truncate -s`: `[+-<>]SIZE`, SIZE as coreutils reads it: K, M, G, T, P,
/// E (and KiB...) are powers of 1024, KB, MB... powers of 1000.
pub fn parse_truncate_size(s: &str) -> Result<TruncateSize, String> {
    let size = |x: &str| {
        let decimal = x.strip_suffix('B').and_then(|t| {
            let unit = t.chars().last()?;
            let power = "KMGTPE".find(unit.to_ascii_uppercase())?;
            Some((&t[..t.len() - 1], u32::try_from(power).ok()? + 1))
        });
        match decimal {
            Some((num, power)) => num
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1000u64.checked_pow(power)?))
                .ok_or_else(|| format!("bad size {x:?}")),
            None => crate::ops::mkfs::parse_size(x).map_err(|e| e.to_string()),
        }
    };
    Ok(match s.chars().next() {
        Some('+') => TruncateSize::Grow(size(&s[1..])?),
        Some('-') => TruncateSize::Shrink(size(&s[1..])?),
        Some('<') => TruncateSize::AtMost(size(&s[1..])?),
        Some('>') => TruncateSize::AtLeast(size(&s[1..])?),
        _ => TruncateSize::Set(size(s)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str, old: u32) -> u32 {
        s.parse::<ModeSpec>().unwrap().apply(old, 0o022)
    }

    #[test]
    fn symbolic_modes_as_coreutils_applies_them() {
        let f = 0o100644;
        let d = 0o040755;
        assert_eq!(sym("755", f), 0o755);
        assert_eq!(sym("u+x", f), 0o744);
        assert_eq!(sym("+x", f), 0o755);
        // No class named: the umask (022) keeps w from g and o.
        assert_eq!(sym("+w", 0o100444), 0o644);
        assert_eq!(sym("a+w", 0o100444), 0o666);
        assert_eq!(sym("go-r", f), 0o600);
        assert_eq!(sym("u=rw,go=", 0o100777), 0o600);
        assert_eq!(sym("a+X", f), 0o644);
        assert_eq!(sym("a+X", d), 0o755);
        assert_eq!(sym("a+X", 0o100744), 0o755);
        assert_eq!(sym("u+s", f), 0o4644);
        assert_eq!(sym("g+s", f), 0o2644);
        assert_eq!(sym("+t", d), 0o1755);
        assert_eq!(sym("g=u", 0o100640), 0o660);
        assert_eq!(sym("o=g", 0o100640), 0o644);
        assert_eq!(sym("u-x+s", 0o100755), 0o4655);
        for bad in ["", "8", "17777", "z+x", "u", "u+q", "u+x,", "+r,g", "=8", "-17777", "7a"] {
            assert!(bad.parse::<ModeSpec>().is_err(), "{bad:?}");
        }
    }

    /// GNU chmod 9.1 on this machine, from a setgid directory 2775 and a file 6755.
    #[test]
    fn numeric_modes_as_gnu_chmod_applies_them() {
        let (d, f) = (0o042775, 0o106755);
        assert_eq!(sym("755", d), 0o2755, "fewer than five digits: a directory keeps its set-ID bits");
        assert_eq!(sym("0755", d), 0o2755);
        assert_eq!(sym("00755", d), 0o755);
        assert_eq!(sym("4755", d), 0o6755);
        assert_eq!(sym("=755", 0o046775), 0o755);
        assert_eq!(sym("+4000", d), 0o6775);
        assert_eq!(sym("-2000", 0o046775), 0o4775);
        assert_eq!(sym("755", f), 0o755, "a file keeps nothing");
        assert_eq!(sym("=755", f), 0o755);
        assert_eq!(sym("-6000", f), 0o755);
        assert_eq!(sym("=7", 0o100644), 0o007, "no umask for octal bits");
    }

    #[test]
    fn owners_are_numeric() {
        assert_eq!(parse_owner("1000"), Ok((Some(1000), None)));
        assert_eq!(parse_owner("1000:100"), Ok((Some(1000), Some(100))));
        assert_eq!(parse_owner(":100"), Ok((None, Some(100))));
        assert!(parse_owner("root").unwrap_err().contains("numeric"));
        assert!(parse_owner("1000:").is_err());
        assert!(parse_owner("4294967296").is_err());
        assert!(parse_owner("-1").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("@0"), Ok(TimeSet::At { sec: 0, nsec: 0 }));
        assert_eq!(parse_date("@1.5"), Ok(TimeSet::At { sec: 1, nsec: 500_000_000 }));
        assert_eq!(parse_date("@-1.5"), Ok(TimeSet::At { sec: -2, nsec: 500_000_000 }));
        assert_eq!(parse_date("1970-01-02"), Ok(TimeSet::At { sec: 86400, nsec: 0 }));
        // `date -u -d '2024-02-29 12:34:56.789' +%s` = 1709210096
        assert_eq!(parse_date("2024-02-29 12:34:56.789"), Ok(TimeSet::At { sec: 1_709_210_096, nsec: 789_000_000 }));
        assert_eq!(parse_date("2024-02-29T12:34:56Z"), Ok(TimeSet::At { sec: 1_709_210_096, nsec: 0 }));
        assert_eq!(parse_date("2024-02-29 14:34:56+02:00"), Ok(TimeSet::At { sec: 1_709_210_096, nsec: 0 }));
        assert_eq!(parse_date("1969-12-31 23:59:59"), Ok(TimeSet::At { sec: -1, nsec: 0 }));
        assert_eq!(parse_date("now"), Ok(TimeSet::Now));
        for bad in ["2023-02-29", "2024-13-01", "2024-01-01 24:00", "yesterday", "@x", "@1.1234567891", "2024-01-01 12"] {
            assert!(parse_date(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncate_sizes() {
        assert_eq!(parse_truncate_size("1M"), Ok(TruncateSize::Set(1 << 20)));
        assert_eq!(parse_truncate_size("+4K"), Ok(TruncateSize::Grow(4096)));
        assert_eq!(parse_truncate_size("-1"), Ok(TruncateSize::Shrink(1)));
        assert_eq!(parse_truncate_size("<10"), Ok(TruncateSize::AtMost(10)));
        assert_eq!(parse_truncate_size(">10"), Ok(TruncateSize::AtLeast(10)));
        // As coreutils' truncate: KB is 1000, K and KiB 1024.
        assert_eq!(parse_truncate_size("1KB"), Ok(TruncateSize::Set(1000)));
        assert_eq!(parse_truncate_size("2MB"), Ok(TruncateSize::Set(2_000_000)));
        assert_eq!(parse_truncate_size("1K"), Ok(TruncateSize::Set(1024)));
        assert_eq!(parse_truncate_size("1KiB"), Ok(TruncateSize::Set(1024)));
        assert_eq!(parse_truncate_size("+1GB"), Ok(TruncateSize::Grow(1_000_000_000)));
        assert!(parse_truncate_size("x").is_err());
        assert!(parse_truncate_size("99999999EB").is_err());
        assert!(parse_truncate_size("xKB").is_err());
    }
}
