//! One inode's metadata as coreutils' `stat` and attr's `getfattr` print
//! it, `readlink`, and the value encodings attr's tools share (`0x…` hex,
//! `0s…` base64, `"…"` text), read by `setfattr` too.

use std::io::Write;

use base64::Engine;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::FileType;
use crate::fs::{Filesystem, Inode, Timespec};
use crate::ops::listing::{format_time, mode_string};

/// An inode's fields, as `stat --json` prints them.
#[derive(Serialize, Debug)]
pub struct StatInfo {
    /// The path as given, bytes that are not UTF-8 as `\\xNN`.
    pub path: String,
    /// The path's bytes, as the text output writes them (as coreutils' stat).
    #[serde(skip)]
    pub path_bytes: Vec<u8>,
    pub subvolume: u64,
    pub inode: u64,
    /// coreutils' %F: "regular file", "directory", ...
    pub file_type: &'static str,
    pub mode: u32,
    pub size: u64,
    /// 512-byte units, as st_blocks: the bytes the inode's extents take.
    pub blocks: u64,
    pub io_block: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
    pub atime: StatTime,
    pub mtime: StatTime,
    pub ctime: StatTime,
    pub otime: StatTime,
    pub flags: u64,
    /// `lsattr`'s letters for the flags.
    pub attrs: String,
    pub generation: u64,
    pub transid: u64,
    pub sequence: u64,
    /// A symlink's target, bytes that are not UTF-8 as `\\xNN`.
    pub symlink_target: Option<String>,
    #[serde(skip)]
    pub symlink_target_bytes: Option<Vec<u8>>,
    /// `ls -l`'s `-rw-r--r--`.
    pub permissions: String,
}

#[derive(Serialize, Debug)]
pub struct StatTime {
    pub sec: i64,
    pub nsec: u32,
}

impl From<Timespec> for StatTime {
    fn from(t: Timespec) -> Self {
        StatTime { sec: t.sec, nsec: t.nsec }
    }
}

/// coreutils' file type names (stat's %F).
fn type_name(ino: &Inode) -> &'static str {
    match ino.file_type {
        FileType::Regular if ino.size == 0 => "regular empty file",
        FileType::Regular => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharDevice => "character special file",
        FileType::BlockDevice => "block special file",
    }
}

/// The fields of the inode at `path` (symlinks are not followed, like
/// `stat` without -L).
pub fn stat<'p>(fs: &Filesystem, path: impl Into<crate::fs::ImagePath<'p>>) -> Result<StatInfo> {
    let path = path.into();
    // (A path ending in "/" that leads to a non-directory: `resolve`'s walk refuses it.)
    let e = fs.resolve(path)?;
    let ino = fs.entry_inode(&e)?;
    let symlink_target_bytes = match ino.file_type {
        FileType::Symlink => Some(fs.read_link(e.id)?),
        _ => None,
    };
    let rdev = matches!(ino.file_type, FileType::CharDevice | FileType::BlockDevice).then(|| ino.rdev_major_minor());
    Ok(StatInfo {
        path: path.to_string(),
        path_bytes: path.as_bytes().to_vec(),
        subvolume: e.id.subvol,
        inode: e.id.ino,
        file_type: type_name(&ino),
        mode: ino.mode,
        size: ino.size,
        // The kernel's btrfs_getattr: the inode's bytes rounded up to a sector, in 512-byte units.
        blocks: ino.nbytes.div_ceil(u64::from(fs.sectorsize)).saturating_mul(u64::from(fs.sectorsize)) / 512,
        io_block: fs.sectorsize,
        nlink: ino.nlink,
        uid: ino.uid,
        gid: ino.gid,
        rdev,
        atime: ino.atime.into(),
        mtime: ino.mtime.into(),
        ctime: ino.ctime.into(),
        otime: ino.otime.into(),
        flags: ino.flags,
        attrs: crate::fs::txn::lsattr_string(ino.flags),
        generation: ino.generation,
        transid: ino.transid,
        sequence: ino.sequence,
        symlink_target: symlink_target_bytes.as_ref().map(|t| crate::fs::ImagePath::from(t).to_string()),
        symlink_target_bytes,
        permissions: mode_string(&ino),
    })
}

/// `stat`'s text: coreutils' layout (its time format in UTC), with the
/// subvolume where it prints the device (offline there is none) and
/// btrfs's own fields after it. No user or group names: the host's
/// /etc/passwd says nothing about the image's owners.
pub fn print_stat(s: &StatInfo, out: &mut dyn Write) -> Result<()> {
    let mut name = b"  File: ".to_vec();
    name.extend_from_slice(&s.path_bytes);
    if let Some(t) = &s.symlink_target_bytes {
        name.extend_from_slice(b" -> ");
        name.extend_from_slice(t);
    }
    name.push(b'\n');
    let time = |t: &StatTime| format!("{} +0000", format_time(Timespec { sec: t.sec, nsec: t.nsec }));
    let mut text = String::new();
    text.push_str(&format!("  Size: {:<10}\tBlocks: {:<10} IO Block: {:<6} {}\n", s.size, s.blocks, s.io_block, s.file_type));
    let links = format!("Subvolume: {}\tInode: {:<11} Links: {:<5}", s.subvolume, s.inode, s.nlink);
    match s.rdev {
        Some((ma, mi)) => text.push_str(&format!("{links} Device type: {ma},{mi}\n")),
        None => text.push_str(&format!("{links}\n")),
    }
    text.push_str(&format!("Access: ({:04o}/{})  Uid: ({:>5})   Gid: ({:>5})\n", s.mode & 0o7777, s.permissions, s.uid, s.gid));
    text.push_str(&format!(
        "Access: {}\nModify: {}\nChange: {}\n Birth: {}\n",
        time(&s.atime),
        time(&s.mtime),
        time(&s.ctime),
        time(&s.otime)
    ));
    text.push_str(&format!(" Flags: {} ({:#x})\n", s.attrs, s.flags));
    text.push_str(&format!("Generation: {}\tTransid: {}\tSequence: {}\n", s.generation, s.transid, s.sequence));
    name.extend_from_slice(text.as_bytes());
    out.write_all(&name).map_err(|e| Error::io("<stdout>", "write", e))
}

/// `readlink`: a symlink's target; anything else is an error naming it.
pub fn readlink<'p>(fs: &Filesystem, path: impl Into<crate::fs::ImagePath<'p>>) -> Result<Vec<u8>> {
    let path = path.into();
    let e = fs.resolve(path)?;
    if e.file_type != FileType::Symlink {
        return Err(Error::Invalid(format!("{path}: not a symbolic link")));
    }
    fs.read_link(e.id)
}

/// How `getfattr -e` writes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Text,
    Hex,
    Base64,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(Encoding::Text),
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            _ => Err(format!("unknown encoding {s:?}; use text, hex or base64")),
        }
    }
}

/// A value as attr's getfattr writes it: with no encoding asked for, text
/// when every byte (but one trailing NUL) is printable ASCII, else base64.
/// Text drops one trailing NUL and escapes NUL, LF and CR as octal, `\`
/// and `"` with a backslash; other bytes go out as they are (not UTF-8
/// necessarily, as getfattr writes them).
pub fn encode_value(v: &[u8], enc: Option<Encoding>) -> Vec<u8> {
    let body = match v.split_last() {
        Some((0, rest)) => rest,
        _ => v,
    };
    let enc = enc.unwrap_or(if body.iter().all(|b| (0x20..0x7f).contains(b)) { Encoding::Text } else { Encoding::Base64 });
    match enc {
        Encoding::Hex => {
            let mut s = String::from("0x");
            for b in v {
                s.push_str(&format!("{b:02x}"));
            }
            s.into_bytes()
        }
        Encoding::Base64 => format!("0s{}", base64::engine::general_purpose::STANDARD.encode(v)).into_bytes(),
        Encoding::Text => {
            let mut raw = Vec::with_capacity(body.len().saturating_add(2));
            raw.push(b'"');
            for &b in body {
                match b {
                    0 | b'\n' | b'\r' => raw.extend_from_slice(format!("\\{b:03o}").as_bytes()),
                    b'\\' | b'"' => raw.extend_from_slice(&[b'\\', b]),
                    _ => raw.push(b),
                }
            }
            raw.push(b'"');
            raw
        }
    }
}

/// A value as attr's setfattr reads it: `0x…` hex and `0s…` base64
/// (whitespace between digits skipped), `"…"` text (quotes at both ends)
/// where `\NNN` (one to three octal digits, the low byte kept), `\\` and
/// `\"` stand for one byte and any other backslash stays as it is, else
/// the bytes as given. Checked against attr 2.5.1's setfattr, byte for
/// byte, on the cases in the tests below.
pub fn decode_value(s: &str) -> std::result::Result<Vec<u8>, String> {
    let bad = || format!("{s:?}: bad input encoding");
    let squeeze = |t: &str| t.chars().filter(|c| !c.is_ascii_whitespace()).collect::<String>();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let digits = squeeze(hex).into_bytes();
        if digits.len() % 2 != 0 {
            return Err(bad());
        }
        return digits
            .chunks(2)
            .map(|p| std::str::from_utf8(p).ok().and_then(|p| u8::from_str_radix(p, 16).ok()).ok_or_else(bad))
            .collect();
    }
    if let Some(b64) = s.strip_prefix("0s").or_else(|| s.strip_prefix("0S")) {
        return base64::engine::general_purpose::STANDARD.decode(squeeze(b64)).map_err(|_| bad());
    }
    let b = s.as_bytes();
    if !(b.len() >= 2 && b.first() == Some(&b'"') && b.last() == Some(&b'"')) {
        return Ok(b.to_vec());
    }
    // The escapes may look at the closing quote (attr's does: `"\"` is `"`).
    let body = b.get(1..).unwrap_or_default();
    let end = body.len().saturating_sub(1);
    let mut out = Vec::with_capacity(end);
    let mut i = 0;
    while i < end {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match body.get(i) {
            Some(d) if (b'0'..=b'7').contains(d) => {
                let mut n = 0u32;
                let mut k = 0;
                while k < 3 && i < end && (b'0'..=b'7').contains(&body[i]) {
                    n = n * 8 + u32::from(body[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((n & 0xff) as u8);
            }
            Some(&q @ (b'\\' | b'"')) => {
                out.push(q);
                i += 1;
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// A file or attribute name as attr's getfattr writes it: the bytes as
/// they are, but for `\\`, newline, carriage return and `extra` (getfattr
/// passes `=` for attribute names), each as a `\ooo` octal escape, so that
/// setfattr --restore reads the dump back.
pub fn attr_quote(name: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        if b == b'\\' || b == b'\n' || b == b'\r' || extra.contains(&b) {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// `getfattr`: the xattrs of the inode at `path` whose names match `pattern`
/// (`None`: every one), sorted by name as getfattr lists them.
pub fn xattrs_matching<'p>(
    fs: &Filesystem,
    path: impl Into<crate::fs::ImagePath<'p>>,
    pattern: Option<&regex_lite::Regex>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let e = fs.resolve(path)?;
    let mut all = fs.xattrs(e.id)?;
    all.retain(|(n, _)| pattern.is_none_or(|p| p.is_match(&String::from_utf8_lossy(n))));
    all.sort();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_s(v: &[u8], e: Option<Encoding>) -> String {
        String::from_utf8(encode_value(v, e)).unwrap()
    }

    #[test]
    fn names_are_quoted_as_attr_getfattr_quotes_them() {
        // What getfattr 2.5 printed for these names (`od -c` of its output).
        assert_eq!(attr_quote(b"a\x80b", b""), b"a\x80b");
        assert_eq!(attr_quote(b"e\\f", b""), b"e\\134f");
        assert_eq!(attr_quote(b"g\nh\ri", b""), b"g\\012h\\015i");
        assert_eq!(attr_quote(b"t\tu v\x7fw=x", b""), b"t\tu v\x7fw=x");
        assert_eq!(attr_quote(b"user.a\x80=b\\c d", b"="), b"user.a\x80\\075b\\134c d");
    }

    #[test]
    fn default_encoding_is_text_only_for_printable_ascii() {
        // As attr 2.5.1's getfattr prints them (checked on a host file).
        assert_eq!(enc_s(b"hello", None), "\"hello\"");
        assert_eq!(enc_s(b"abc\0", None), "\"abc\"");
        assert_eq!(enc_s(b"", None), "\"\"");
        assert_eq!(enc_s(b"\0", None), "\"\"");
        assert_eq!(enc_s(b"a\"b\\c", None), "\"a\\\"b\\\\c\"");
        assert_eq!(enc_s(b"a\nb", None), "0sYQpi");
        assert_eq!(enc_s(b"a\tb", None), "0sYQli");
        assert_eq!(enc_s("é".as_bytes(), None), "0sw6k=");
        assert_eq!(enc_s(b"ab\0\0", None), "0sYWIAAA==");
        assert_eq!(enc_s(b"ab\0\0", Some(Encoding::Text)), "\"ab\\000\"");
        assert_eq!(enc_s(b"a\nb", Some(Encoding::Text)), "\"a\\012b\"");
        assert_eq!(enc_s(b"\0\xff\nA", Some(Encoding::Hex)), "0x00ff0a41");
        assert_eq!(enc_s(b"", Some(Encoding::Hex)), "0x");
        assert_eq!(encode_value(b"\xff", Some(Encoding::Text)), b"\"\xff\"");
    }

    #[test]
    fn setfattr_encodings_decode_what_getfattr_encodes() {
        for v in [&b"hello"[..], b"a\"b\\c", b"\0\xff\nA", b"", b"ab\0\0x\r"] {
            for enc in [Encoding::Hex, Encoding::Base64, Encoding::Text] {
                let s = encode_value(v, Some(enc));
                // Text is written raw; setfattr takes it through argv, where
                // only UTF-8 survives here: decode what a shell would pass.
                let Ok(s) = String::from_utf8(s) else { continue };
                let back = decode_value(&s).unwrap();
                // Text drops one trailing NUL, as getfattr does.
                let want = if enc == Encoding::Text && v.last() == Some(&0) { &v[..v.len() - 1] } else { v };
                assert_eq!(back, want, "{enc:?} {s}");
            }
        }
        // attr 2.5.1's setfattr on the same strings (stored bytes read back).
        let attr: [(&str, &[u8]); 22] = [
            ("\"a\\n\"", b"a\\n"),
            ("\"\\x41\"", b"\\x41"),
            ("\"a\\8\"", b"a\\8"),
            ("\"unterminated", b"\"unterminated"),
            ("\"", b"\""),
            ("\"\\\"", b"\""),
            ("\"a\\400\"", b"a\0"),
            ("\"\\777\"", b"\xff"),
            ("0x 12", b"\x12"),
            ("0S YQ==", b"a"),
            ("\"a\\\"b\"", b"a\"b"),
            ("\"\\101\\102\"", b"AB"),
            ("\"a\"b\"", b"a\"b"),
            ("\"\\1\"", b"\x01"),
            ("\"\\12x\"", b"\nx"),
            ("0x12 34", b"\x124"),
            ("\"ab\"c", b"\"ab\"c"),
            ("abc\"", b"abc\""),
            ("0X4142", b"AB"),
            ("\"\\\\\"", b"\\"),
            ("plain", b"plain"),
            ("\"\"", b""),
        ];
        for (input, want) in attr {
            assert_eq!(decode_value(input).unwrap(), want, "{input:?}");
        }
        for refused in ["0x1", "0sYQ", "0xZZ", "0x123", "0s!!"] {
            assert!(decode_value(refused).is_err(), "{refused:?}");
        }
    }
}
