//! `ls`: directory listings in short and long (`ls -l`-like) form.

use std::collections::HashSet;
use std::io::Write;

use crate::error::{CorruptKind, Error, Result};
use crate::format::FileType;
use crate::fs::{DirEnt, Filesystem, Inode, Timespec};
use crate::ops::quoting::{needs_quoting, quote, quote_dir_line, Quoting};

pub struct LsOptions {
    pub long: bool,
    pub recursive: bool,
    /// Sizes as `ls -lh` writes them.
    pub human: bool,
    /// Directory (index) order; otherwise sorted by name bytes, as `ls`
    /// sorts in the C locale.
    pub unsorted: bool,
    /// How names (and symlink targets, and -R's directory lines) are printed.
    pub quoting: Quoting,
}

/// List `path` (a directory's entries, or a single non-directory) to `out`.
pub fn ls<'p>(fs: &Filesystem, path: impl Into<crate::fs::ImagePath<'p>>, opts: &LsOptions, out: &mut dyn Write) -> Result<()> {
    let path = path.into();
    let ent = fs.resolve(path)?;
    if ent.file_type != FileType::Directory {
        let name = path.parent_and_name().1.to_vec();
        return print_entry(fs, &DirEnt { name, ..ent }, opts, false, out);
    }
    let shown = if path.as_bytes().is_empty() { b"/".to_vec() } else { path.as_bytes().to_vec() };
    list_dir(fs, &ent, &shown, opts, out)
}

/// List directory `dir` (recursively with `-R`: each directory's entries,
/// then its subdirectories depth first). Iterative, with an explicit stack
/// of the directories whose subdirectories are still to list: a tree as deep
/// as `mkdir -p` can make must not overflow the thread's stack.
///
/// `seen`: directories listed so far. A directory has one parent, so meeting one again in a
/// recursive listing means damaged metadata (a loop, or two entries naming one directory); going
/// on would list whole subtrees again at every level, exponentially with several such entries.
fn list_dir(fs: &Filesystem, dir: &DirEnt, shown: &[u8], opts: &LsOptions, out: &mut dyn Write) -> Result<()> {
    let mut seen: HashSet<crate::fs::InodeId> = HashSet::new();
    // Each level: its shown path (bytes: names need not be UTF-8) and its
    // subdirectories not yet listed.
    let mut stack: Vec<(Vec<u8>, std::vec::IntoIter<DirEnt>)> = Vec::new();
    let mut next: Option<(DirEnt, Vec<u8>)> = Some((dir.clone(), shown.to_vec()));
    loop {
        if let Some((dir, shown)) = next.take() {
            if opts.recursive && dir.id.ino != crate::format::EMPTY_SUBVOL_DIR_OBJECTID && !seen.insert(dir.id) {
                let shown = String::from_utf8_lossy(&shown);
                let parent = shown.rsplit_once('/').map_or("/", |p| if p.0.is_empty() { "/" } else { p.0 });
                return Err(Error::corrupt(
                    CorruptKind::Loop,
                    format!("directory {} (entry {:?} in {})", dir.id, String::from_utf8_lossy(&dir.name), short(parent)),
                    "reached twice (directory loop or aliased directory)",
                ));
            }
            let mut entries = fs.read_dir(dir.id)?;
            if !opts.unsorted {
                entries.sort_by(|a, b| a.name.cmp(&b.name));
            }
            if opts.recursive {
                let mut line = quote_dir_line(&shown, opts.quoting);
                line.extend_from_slice(b":\n");
                w(out.write_all(&line))?;
            }
            // ls -l on a terminal: when some names are quoted, the others
            // move one column right, so the names line up.
            let align = opts.long && opts.quoting == Quoting::ShellEscape && entries.iter().any(|e| needs_quoting(&e.name));
            for e in &entries {
                print_entry(fs, e, opts, align, out)?;
            }
            if !opts.recursive {
                return Ok(());
            }
            let subdirs: Vec<DirEnt> = entries.into_iter().filter(|e| e.file_type == FileType::Directory).collect();
            stack.push((shown, subdirs.into_iter()));
        }
        let Some((shown, subdirs)) = stack.last_mut() else { return Ok(()) };
        match subdirs.next() {
            Some(e) => {
                w(writeln!(out))?;
                let mut child = shown.clone();
                while child.last() == Some(&b'/') {
                    child.pop();
                }
                child.push(b'/');
                child.extend_from_slice(&e.name);
                next = Some((e, child));
            }
            None => {
                stack.pop();
            }
        }
    }
}

/// A path cut to its last 200 bytes for a message (a deep tree's paths are
/// long).
fn short(path: &str) -> String {
    if path.len() <= 200 {
        return path.to_string();
    }
    let mut cut = path.len() - 200;
    while !path.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &path[cut..])
}

fn print_entry(fs: &Filesystem, e: &DirEnt, opts: &LsOptions, align: bool, out: &mut dyn Write) -> Result<()> {
    let mut name = quote(&e.name, opts.quoting);
    if align && !needs_quoting(&e.name) {
        name.insert(0, b' ');
    }
    if !opts.long {
        name.push(b'\n');
        return w(out.write_all(&name));
    }
    let ino = fs.entry_inode(e)?;
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>10} {} ",
        mode_string(&ino),
        ino.nlink,
        ino.uid,
        ino.gid,
        size_field(&ino, opts.human),
        format_time(ino.mtime),
    )
    .into_bytes();
    line.extend_from_slice(&name);
    if ino.file_type == FileType::Symlink {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(&quote(&fs.read_link(e.id)?, opts.quoting));
    }
    line.push(b'\n');
    w(out.write_all(&line))
}

fn size_field(ino: &Inode, human: bool) -> String {
    match ino.file_type {
        FileType::CharDevice | FileType::BlockDevice => {
            let (ma, mi) = ino.rdev_major_minor();
            format!("{ma}, {mi}")
        }
        _ if human => human_size(ino.size),
        _ => ino.size.to_string(),
    }
}

/// A size as GNU `ls -lh` writes it: bytes below 1024, else powers of
/// 1024 rounded up, with one decimal below 10 (1.1K, 10K, 1.5M).
pub(crate) fn human_size(size: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    if size < 1024 {
        return size.to_string();
    }
    let mut unit = 1u128;
    let mut i = 0;
    while u128::from(size) >= unit * 1024 && i < UNITS.len() - 1 {
        unit *= 1024;
        i += 1;
    }
    let s = u128::from(size);
    // Tenths, rounded up.
    let tenths = (s * 10).div_ceil(unit);
    if tenths < 100 {
        format!("{}.{}{}", tenths / 10, tenths % 10, UNITS[i])
    } else {
        let whole = s.div_ceil(unit);
        // 1023.x rounds up to the next unit, as ls does (1.0M, not 1024K).
        if whole >= 1024 && i + 1 < UNITS.len() {
            format!("1.0{}", UNITS[i + 1])
        } else {
            format!("{whole}{}", UNITS[i])
        }
    }
}

/// `drwxr-xr-x`-style mode string, with s/S/t/T for setuid, setgid and sticky.
pub(crate) fn mode_string(ino: &Inode) -> String {
    let m = ino.mode;
    let mut s = String::with_capacity(10);
    s.push(ino.file_type.ls_char());
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, sp: u32, lower: char, upper: char| match (m & x != 0, m & sp != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// UTC `YYYY-MM-DD HH:MM:SS.nnnnnnnnn`, computed without a time zone database.
pub(crate) fn format_time(t: Timespec) -> String {
    let days = t.sec.div_euclid(86400);
    let secs = t.sec.rem_euclid(86400);
    let (y, mo, d) = civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:09}", secs / 3600, secs % 3600 / 60, secs % 60, t.nsec)
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn w(r: std::io::Result<()>) -> Result<()> {
    r.map_err(|e| Error::io("<stdout>", "write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(format_time(Timespec { sec: 0, nsec: 0 }), "1970-01-01 00:00:00.000000000");
        assert_eq!(format_time(Timespec { sec: 1_614_834_367, nsec: 123_456_789 }), "2021-03-04 05:06:07.123456789");
        assert_eq!(format_time(Timespec { sec: -1, nsec: 0 }), "1969-12-31 23:59:59.000000000");
    }
}
