//! `mkfs --rootdir-tar`: the members of a tar archive as the tree the
//! `--rootdir` walk reads ([`crate::ops::rootdir::Tree`]), so both sources
//! make the same items and share one data path.
//!
//! Only the members' metadata is kept in memory. A member's bytes lie
//! contiguous in an uncompressed archive, so the data pass reads them from
//! the archive file at the member's data offset. A compressed archive, or one
//! read from a pipe or standard input, is first copied (decompressed) into an
//! unlinked temporary file in `$TMPDIR`, which then serves the same way.
//!
//! What an archive says and how it is taken:
//! - ustar, GNU and PAX headers (long names, PAX `path`, `linkpath`, `size`,
//!   `uid`, `gid`); numeric owners only, user and group names are ignored;
//! - PAX `mtime`, `atime`, `ctime` with nanoseconds; without them the
//!   header's mtime (whole seconds) stands for all three;
//! - PAX `SCHILY.xattr.NAME` records become xattrs (GNU tar `--xattrs`, bsdtar),
//!   and bsdtar's `LIBARCHIVE.xattr.NAME` (URL-encoded name, base64 value)
//!   where no SCHILY record names the same xattr;
//! - POSIX ACLs (`SCHILY.acl.access`, `SCHILY.acl.default`, GNU tar `--acls`,
//!   bsdtar) become `system.posix_acl_access`/`_default` xattrs, as the
//!   kernel stores them; a named user or group needs a numeric id (bsdtar
//!   adds it; GNU tar does when the name is unknown on the archiving host),
//!   else that ACL is left out with a warning naming the member;
//! - hard links (type `1`) name an earlier member: one inode, several names;
//! - `./` prefixes are dropped; the `./` member, if any, is the root directory;
//! - directories the archive does not list (`a/b/c` without `a/`) and a root
//!   it does not list are made with mode 0755, owner 0:0 and every time set to
//!   the time mkfs stamps what it makes up (SOURCE_DATE_EPOCH when set);
//! - a path given twice: the later member wins, as extraction does (earlier
//!   hard links keep the earlier file; a directory given again only gets the
//!   new metadata and keeps its contents; a non-directory cannot replace a
//!   directory);
//! - sparse members keep their holes: old GNU (`S`, with extension blocks)
//!   and PAX formats 0.0, 0.1 and 1.0 (GNU tar `--sparse`); the data of the
//!   listed segments is read where it lies in the archive;
//! - refused, naming the member: absolute paths, `..`, damaged sparse maps,
//!   and entry types other than files,
//!   directories, symlinks, hard links, devices and fifos; also archives
//!   compressed other than with gzip or zstd, damaged or truncated archives;
//! - PAX global headers and NFSv4 ACLs (`SCHILY.acl.ace`) are ignored, with
//!   a warning.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;

use super::source::SourceFile;
use crate::error::{Error, Result};
use crate::format::acl::{self, ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_UNDEFINED_ID, ACL_USER, ACL_USER_OBJ};

const S_IFMT: u32 = 0o170000;

/// The archive's members as a tree; node 0 is the root directory.
pub(crate) struct TarTree {
    nodes: Vec<Node>,
    /// The archive, as messages name it.
    shown: PathBuf,
    pub(crate) warnings: Vec<String>,
}

struct Node {
    file: SourceFile,
    /// Symlink target.
    target: Vec<u8>,
    /// Sorted by name.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Directories: name to node.
    children: BTreeMap<Vec<u8>, usize>,
}

impl TarTree {
    fn find(&self, rel: &Path) -> Option<usize> {
        let mut cur = 0;
        for c in rel.components() {
            if let Component::Normal(n) = c {
                cur = *self.nodes[cur].children.get(n.as_bytes())?;
            }
        }
        Some(cur)
    }

    /// How messages name a member: ARCHIVE:PATH.
    pub(crate) fn shown(&self, rel: &Path) -> PathBuf {
        PathBuf::from(format!("{}:{}", self.shown.display(), rel.display()))
    }

    pub(crate) fn list(&self, rel: &Path) -> Vec<Vec<u8>> {
        self.find(rel).map(|n| self.nodes[n].children.keys().cloned().collect()).unwrap_or_default()
    }

    pub(crate) fn stat(&self, rel: &Path) -> Option<SourceFile> {
        self.find(rel).map(|n| self.nodes[n].file.clone())
    }

    pub(crate) fn link_target(&self, rel: &Path) -> Vec<u8> {
        self.find(rel).map(|n| self.nodes[n].target.clone()).unwrap_or_default()
    }

    pub(crate) fn xattrs(&self, rel: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.find(rel).map(|n| self.nodes[n].xattrs.clone()).unwrap_or_default()
    }

    /// A directory the archive implies but does not list.
    fn implicit_dir(&mut self, now: (u64, u32)) -> usize {
        let file = SourceFile {
            mode: 0o040755,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            id: (0, self.nodes.len() as u64),
            offset: 0,
            sparse: None,
            blocks: None,
        };
        self.nodes.push(Node { file, target: Vec::new(), xattrs: Vec::new(), children: BTreeMap::new() });
        self.nodes.len() - 1
    }

    /// The directory holding `comps`' last component, made (implicitly) as needed.
    fn parent_of(&mut self, comps: &[Vec<u8>], now: (u64, u32)) -> std::result::Result<usize, String> {
        let mut cur = 0;
        for (i, c) in comps[..comps.len() - 1].iter().enumerate() {
            cur = match self.nodes[cur].children.get(c) {
                Some(&n) if self.nodes[n].file.mode & S_IFMT == 0o040000 => n,
                Some(_) => return Err(format!("{} is not a directory in the archive", join(&comps[..=i]))),
                None => {
                    let n = self.implicit_dir(now);
                    self.nodes[cur].children.insert(c.clone(), n);
                    n
                }
            };
        }
        Ok(cur)
    }

    /// Give node `new` the name `comps` (empty: the root). A name already
    /// there is replaced, as extraction replaces it.
    fn name(&mut self, comps: &[Vec<u8>], new: usize, now: (u64, u32)) -> std::result::Result<(), String> {
        let is_dir = |t: &TarTree, n: usize| t.nodes[n].file.mode & S_IFMT == 0o040000;
        let old = match comps.last() {
            None => Some(0),
            Some(last) => {
                let parent = self.parent_of(comps, now)?;
                match self.nodes[parent].children.get(last) {
                    Some(&o) => Some(o),
                    None => {
                        self.nodes[parent].children.insert(last.clone(), new);
                        None
                    }
                }
            }
        };
        let Some(old) = old else { return Ok(()) };
        match (is_dir(self, old), is_dir(self, new)) {
            // A directory again: new metadata, same contents (and node, so
            // names below it stay valid).
            (true, true) => {
                let mut file = self.nodes[new].file.clone();
                file.id = self.nodes[old].file.id;
                self.nodes[old].file = file;
                self.nodes[old].xattrs = std::mem::take(&mut self.nodes[new].xattrs);
                Ok(())
            }
            (true, false) if comps.is_empty() => Err("the root of the archive is not a directory".into()),
            (true, false) => Err(format!("{} replaces a directory with a non-directory", join(comps))),
            (false, _) => {
                self.nodes[old].file.nlink -= 1;
                let parent = self.parent_of(comps, now)?;
                self.nodes[parent].children.insert(comps[comps.len() - 1].clone(), new);
                Ok(())
            }
        }
    }
}

fn join(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

/// A member path as components: `.` and empty ones dropped; absolute paths
/// and `..` refused (they would leave the root directory), and names the
/// kernel would not hold (longer than 255 bytes, with a NUL: PAX paths may).
fn components(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path: refused, it would leave the root directory".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` in the path: refused, it would leave the root directory".into()),
            c => {
                crate::format::limits::check_entry_name(c).map_err(|e| e.to_string())?;
                out.push(c.to_vec())
            }
        }
    }
    Ok(out)
}

/// A PAX time: decimal seconds, maybe negative, maybe with a fraction.
/// Stored as the kernel stores times: two's-complement seconds, nanoseconds.
fn pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let ns = (0..9).fold(0u32, |n, i| n * 10 + frac.as_bytes().get(i).map_or(0, |b| (b - b'0') as u32));
    let (secs, ns) = match (neg, ns) {
        (false, _) => (secs, ns),
        (true, 0) => (-secs, 0),
        (true, _) => (-secs - 1, 1_000_000_000 - ns),
    };
    Some((secs as u64, ns))
}

/// PAX records (`LEN key=value\n`, values any bytes) of the extended headers
/// found between archive offsets `from` and `to`: the extension headers just
/// before a member's own header.
fn pax_records(file: &File, mut from: u64, to: u64, shown: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while from + 512 <= to {
        let mut block = [0u8; 512];
        file.read_exact_at(&mut block, from).map_err(|e| Error::io(shown, "read", e))?;
        let h = ::tar::Header::from_byte_slice(&block);
        let bad = |what: &str| Error::Invalid(format!("{}: extension header at byte {from}: {what}", shown.display()));
        let size = h.entry_size().map_err(|e| bad(&e.to_string()))?;
        if h.entry_type().is_pax_local_extensions() {
            // Far more than any xattr (64 KiB) or path needs.
            if size > 16 << 20 {
                return Err(bad(&format!("{size} bytes of PAX records")));
            }
            let mut data = vec![0u8; size as usize];
            file.read_exact_at(&mut data, from + 512).map_err(|e| Error::io(shown, "read", e))?;
            out.extend(parse_pax(&data).ok_or_else(|| bad("malformed PAX records"))?);
        }
        from += 512 + size.div_ceil(512) * 512;
    }
    Ok(out)
}

fn parse_pax(mut d: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while d.first().is_some_and(|&b| b != 0) {
        let sp = d.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&d[..sp]).ok()?.parse().ok()?;
        if len <= sp + 1 || len > d.len() || d[len - 1] != b'\n' {
            return None;
        }
        let kv = &d[sp + 1..len - 1];
        let eq = kv.iter().position(|&b| b == b'=')?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        d = &d[len..];
    }
    Some(out)
}

/// Where a sparse member's bytes are.
#[derive(Debug, PartialEq)]
struct SparseMember {
    /// (file offset, length) of each data segment, in file order; the bytes
    /// of the segments lie one after the other from `data_start`.
    segments: Vec<(u64, u64)>,
    real_size: u64,
    /// Archive offset of the first segment's bytes.
    data_start: u64,
    /// Bytes stored in the archive from `data_start` (segments only).
    stored: u64,
    /// The member's real path (PAX `GNU.sparse.name`).
    name: Option<Vec<u8>>,
}

/// A numeric header field: octal ASCII (space or NUL terminated), or GNU
/// base-256 when the high bit of the first byte is set.
fn header_number(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|&b| b & 0x80 != 0) {
        if f[0] & 0x40 != 0 {
            return None; // negative
        }
        return f[1..].iter().try_fold((f[0] & 0x3f) as u64, |n, &b| n.checked_mul(256).map(|n| n | b as u64));
    }
    let t: &[u8] = {
        let s = f.iter().position(|&b| b != b' ').map_or(&f[f.len()..], |i| &f[i..]);
        let end = s.iter().position(|&b| b == 0 || b == b' ').unwrap_or(s.len());
        &s[..end]
    };
    if t.is_empty() {
        return Some(0);
    }
    t.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'7' => n.checked_mul(8).map(|n| n | (b - b'0') as u64),
        _ => None,
    })
}

/// Segments as the archive lists them: zero-length entries (GNU tar ends
/// with one at the real size) dropped, the rest checked to be in order,
/// apart, inside the file, and covered by the stored bytes.
fn check_segments(list: Vec<(u64, u64)>, real_size: u64, stored: u64) -> std::result::Result<Vec<(u64, u64)>, String> {
    let segments: Vec<(u64, u64)> = list.into_iter().filter(|&(_, l)| l > 0).collect();
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, l) in &segments {
        let e = off.checked_add(l).ok_or("segment past 2^64")?;
        if off < end {
            return Err(format!("segments overlap or are out of order at file offset {off}"));
        }
        if e > real_size {
            return Err(format!("segment {off}+{l} past the file size {real_size}"));
        }
        end = e;
        total += l;
    }
    if total > stored {
        return Err(format!("segments hold {total} bytes, the member stores {stored}"));
    }
    Ok(segments)
}

/// An old GNU sparse member (type `S`): four segments in the header, more in
/// extension blocks of 21 after it, then the segments' bytes.
fn old_gnu_sparse(file: &File, header_at: u64, shown: &Path) -> std::result::Result<SparseMember, String> {
    let mut block = [0u8; 512];
    file.read_exact_at(&mut block, header_at).map_err(|e| format!("read {}: {e}", shown.display()))?;
    let field = |b: &[u8], at: usize, what: &str| header_number(&b[at..at + 12]).ok_or_else(|| format!("bad {what} at byte {at}"));
    let stored = field(&block, 124, "size")?;
    let real_size = field(&block, 483, "real size")?;
    let mut list = Vec::new();
    for i in 0..4 {
        list.push((field(&block, 386 + 24 * i, "segment offset")?, field(&block, 398 + 24 * i, "segment length")?));
    }
    let mut extended = block[482] == 1;
    let mut at = header_at + 512;
    while extended {
        if list.len() > 1 << 20 {
            return Err("more than a million segments".into());
        }
        file.read_exact_at(&mut block, at).map_err(|e| format!("read {}: {e}", shown.display()))?;
        for i in 0..21 {
            list.push((field(&block, 24 * i, "segment offset")?, field(&block, 12 + 24 * i, "segment length")?));
        }
        extended = block[504] == 1;
        at += 512;
    }
    let segments = check_segments(list, real_size, stored)?;
    Ok(SparseMember { segments, real_size, data_start: at, stored, name: None })
}

/// A PAX sparse member (GNU tar `--format=posix --sparse`): format 1.0 keeps
/// the segment list in decimal lines at the start of the member's data
/// (padded to 512 bytes); 0.1 in a `GNU.sparse.map` record; 0.0 in repeated
/// `GNU.sparse.offset`/`numbytes` records.
fn pax_sparse(
    records: &[(Vec<u8>, Vec<u8>)],
    file: &File,
    data_at: u64,
    size: u64,
    shown: &Path,
) -> std::result::Result<SparseMember, String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let record = |k: &[u8]| records.iter().rev().find(|r| r.0 == k).map(|r| text(&r.1));
    let num = |v: &str, what: &str| v.trim().parse::<u64>().map_err(|_| format!("bad {what} {v:?}"));
    let name = records.iter().rev().find(|r| r.0 == b"GNU.sparse.name").map(|r| r.1.clone());
    let major = record(b"GNU.sparse.major");
    if major.as_deref() == Some("1") {
        let minor = record(b"GNU.sparse.minor").unwrap_or_default();
        if minor.trim() != "0" {
            return Err(format!("PAX sparse format 1.{minor} is not known"));
        }
        let real_size = num(&record(b"GNU.sparse.realsize").ok_or("no GNU.sparse.realsize record")?, "GNU.sparse.realsize")?;
        // Read the decimal lines block by block until the list is complete.
        let (mut buf, mut at, mut numbers, mut line) = (Vec::new(), 0u64, Vec::new(), Vec::new());
        let mut want: Option<u64> = None;
        while want.is_none_or(|w| (numbers.len() as u64) < 1 + 2 * w) {
            if at >= size {
                return Err("segment list runs past the member's data".into());
            }
            buf.resize(512, 0);
            file.read_exact_at(&mut buf, data_at + at).map_err(|e| format!("read {}: {e}", shown.display()))?;
            at += 512;
            for &b in &buf {
                if want.is_some_and(|w| numbers.len() as u64 > 2 * w) {
                    break;
                }
                if b == b'\n' {
                    numbers.push(num(&text(&line), "segment list number")?);
                    line.clear();
                    if numbers.len() == 1 {
                        if numbers[0] > size / 2 + 1 {
                            return Err(format!("{} segments cannot fit in {size} bytes", numbers[0]));
                        }
                        want = Some(numbers[0]);
                    }
                } else {
                    line.push(b);
                    if line.len() > 24 {
                        return Err("segment list line too long".into());
                    }
                }
            }
        }
        let list = numbers[1..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
        let stored = size - at;
        let segments = check_segments(list, real_size, stored)?;
        return Ok(SparseMember { segments, real_size, data_start: data_at + at, stored, name });
    }
    if let Some(m) = major {
        return Err(format!("PAX sparse format {m}.x is not known"));
    }
    let real_size = num(&record(b"GNU.sparse.size").ok_or("no GNU.sparse.size record")?, "GNU.sparse.size")?;
    let list: Vec<(u64, u64)> = if let Some(map) = record(b"GNU.sparse.map") {
        let v: Vec<u64> =
            map.split(',').filter(|x| !x.is_empty()).map(|x| num(x, "GNU.sparse.map entry")).collect::<std::result::Result<_, _>>()?;
        if v.len() % 2 != 0 {
            return Err("GNU.sparse.map has an odd number of entries".into());
        }
        v.chunks_exact(2).map(|p| (p[0], p[1])).collect()
    } else {
        let offs = records.iter().filter(|r| r.0 == b"GNU.sparse.offset").map(|r| num(&text(&r.1), "GNU.sparse.offset"));
        let lens = records.iter().filter(|r| r.0 == b"GNU.sparse.numbytes").map(|r| num(&text(&r.1), "GNU.sparse.numbytes"));
        let (offs, lens): (Vec<_>, Vec<_>) = (offs.collect::<std::result::Result<_, _>>()?, lens.collect::<std::result::Result<_, _>>()?);
        if offs.len() != lens.len() {
            return Err("GNU.sparse.offset and GNU.sparse.numbytes records do not pair up".into());
        }
        offs.into_iter().zip(lens).collect()
    };
    let segments = check_segments(list, real_size, size)?;
    Ok(SparseMember { segments, real_size, data_start: data_at, stored: size, name })
}

/// `%XX` escapes of a LIBARCHIVE.xattr record's name undone.
fn percent_decode(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hex = std::str::from_utf8(v.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A POSIX.1e text ACL as GNU tar (`acl_to_text`) and bsdtar store it in
/// SCHILY.acl.access/default — entries `tag:qualifier:perms[:id]` separated
/// by commas or newlines, `#` comments — turned into the binary value of the
/// system.posix_acl_* xattr the kernel reads. Named users and groups need a
/// numeric id (bsdtar's fourth field, or a numeric qualifier): resolving
/// names through the build host's passwd would make the image depend on it.
/// None for an empty ACL.
fn acl_xattr(text: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for raw in text.split([',', '\n']) {
        let e = raw.split('#').next().unwrap_or("").trim();
        if e.is_empty() {
            continue;
        }
        let f: Vec<&str> = e.split(':').map(str::trim).collect();
        if f.len() < 3 || f.len() > 4 {
            return Err(format!("entry {e:?} is not tag:qualifier:perms"));
        }
        let perm = f[2].chars().try_fold(0u16, |p, c| match c {
            'r' => Ok(p | 4),
            'w' => Ok(p | 2),
            'x' => Ok(p | 1),
            '-' => Ok(p),
            _ => Err(format!("entry {e:?}: permissions {:?}", f[2])),
        })?;
        let named = !f[1].is_empty();
        let id = || -> std::result::Result<u32, String> {
            f.get(3)
                .copied()
                .filter(|v| !v.is_empty())
                .or(Some(f[1]))
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| format!("entry {e:?} names {:?} without a numeric id", f[1]))
        };
        let (tag, id) = match (f[0], named) {
            ("user" | "u", false) => (ACL_USER_OBJ, ACL_UNDEFINED_ID),
            ("user" | "u", true) => (ACL_USER, id()?),
            ("group" | "g", false) => (ACL_GROUP_OBJ, ACL_UNDEFINED_ID),
            ("group" | "g", true) => (ACL_GROUP, id()?),
            ("mask" | "m", _) => (ACL_MASK, ACL_UNDEFINED_ID),
            ("other" | "o", _) => (ACL_OTHER, ACL_UNDEFINED_ID),
            _ => return Err(format!("entry {e:?}: unknown tag {:?}", f[0])),
        };
        entries.push((tag, id, perm));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    // The kernel's posix_acl_valid: entries ordered by tag, then id; each
    // *_OBJ, MASK and OTHER at most once, named ids unique; USER_OBJ,
    // GROUP_OBJ and OTHER present; MASK present when named entries are.
    entries.sort_unstable_by_key(|&(tag, id, _)| (tag, id));
    if entries.windows(2).any(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
        return Err("an entry is given twice".into());
    }
    let has = |tag: u16| entries.iter().any(|e| e.0 == tag);
    if !(has(ACL_USER_OBJ) && has(ACL_GROUP_OBJ) && has(ACL_OTHER)) {
        return Err("user::, group:: and other:: entries are required".into());
    }
    if (has(ACL_USER) || has(ACL_GROUP)) && !has(ACL_MASK) {
        return Err("named entries without a mask:: entry".into());
    }
    if entries.len() == 3 {
        // Only what the mode bits say: the kernel stores no xattr for it either.
        return Ok(None);
    }
    let entries: Vec<acl::AclEntry> = entries.into_iter().map(|(tag, id, perm)| acl::AclEntry { tag, perm, id }).collect();
    Ok(Some(acl::encode(&entries)))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Packing {
    Plain,
    Gzip,
    Zstd,
}

/// What the first bytes of an archive say about its compression.
fn packing(head: &[u8], shown: &Path) -> Result<Packing> {
    let refuse = |what: &str, tool: &str| {
        Err(Error::Unsupported(format!(
            "{}: {what}-compressed archive; only gzip and zstd are read: decompress it first (`{tool} -dc ARCHIVE | btrs mkfs --rootdir-tar - ...`)",
            shown.display()
        )))
    };
    match head {
        [0x1f, 0x8b, ..] => Ok(Packing::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Packing::Zstd),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => refuse("xz", "xz"),
        [b'B', b'Z', b'h', ..] => refuse("bzip2", "bzip2"),
        [0x04, 0x22, 0x4d, 0x18, ..] => refuse("lz4", "lz4"),
        _ => Ok(Packing::Plain),
    }
}

/// A file in `$TMPDIR` no other process can open, gone when closed: O_TMPFILE,
/// else a fresh name unlinked at once.
fn unlinked_temp() -> Result<File> {
    let dir = std::env::temp_dir();
    let tmpfile = rustix::fs::OFlags::TMPFILE.bits() as i32;
    if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(tmpfile).open(&dir) {
        return Ok(f);
    }
    for n in 0u32.. {
        let p = dir.join(format!(".btrs-rootdir-tar-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(p, "create temporary file", e)),
        }
    }
    unreachable!("u32 names run out")
}

/// Copy `input` (decompressing it) into an unlinked temporary file, so the
/// members' bytes can be read at their offsets later.
fn spool(input: impl Read, packing: Packing, shown: &Path) -> Result<File> {
    let mut reader: Box<dyn Read + '_> = match packing {
        Packing::Plain => Box::new(input),
        Packing::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Packing::Zstd => Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| Error::io(shown, "zstd", e))?),
    };
    let mut out = unlinked_temp()?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let what = if packing == Packing::Plain { "read" } else { "decompress" };
                return Err(Error::io(shown, what, e));
            }
        };
        out.write_all(&buf[..n]).map_err(|e| Error::io(std::env::temp_dir(), "write temporary copy of the archive", e))?;
    }
    // The tar reader starts where the file position is.
    out.rewind().map_err(|e| Error::io(std::env::temp_dir(), "seek temporary copy of the archive", e))?;
    Ok(out)
}

/// The archive as a seekable, uncompressed file, and how messages name it.
fn open(archive: &Path) -> Result<(File, PathBuf)> {
    if archive == Path::new("-") {
        let shown = PathBuf::from("<stdin>");
        let mut input = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
        let head = input.fill_buf().map_err(|e| Error::io(&shown, "read", e))?.to_vec();
        let p = packing(&head, &shown)?;
        return Ok((spool(input, p, &shown)?, shown));
    }
    let f = File::open(archive).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!("--rootdir-tar {}: no such file", archive.display())),
        _ => Error::io(archive, "open", e),
    })?;
    let m = f.metadata().map_err(|e| Error::io(archive, "stat", e))?;
    if m.is_dir() {
        return Err(Error::Invalid(format!("--rootdir-tar {}: a directory, not an archive (use --rootdir)", archive.display())));
    }
    let shown = archive.to_path_buf();
    if !m.is_file() {
        // A pipe (`<(zcat ...)`) or device: not seekable, spool it.
        let mut input = BufReader::with_capacity(1 << 16, f);
        let head = input.fill_buf().map_err(|e| Error::io(&shown, "read", e))?.to_vec();
        let p = packing(&head, &shown)?;
        return Ok((spool(input, p, &shown)?, shown));
    }
    let mut head = [0u8; 6];
    let n = f.read_at(&mut head, 0).map_err(|e| Error::io(&shown, "read", e))?;
    match packing(&head[..n], &shown)? {
        Packing::Plain => Ok((f, shown)),
        p => Ok((spool(f, p, &shown)?, shown)),
    }
}

/// Read `archive` (`-`: standard input) into a [`TarTree`]; returns the
/// uncompressed archive file the members' bytes are to be read from, and how
/// messages name it. `now` stamps the directories the archive only implies.
pub(crate) fn read(archive: &Path, now: (u64, u32)) -> Result<(File, PathBuf, TarTree)> {
    let (file, shown) = open(archive)?;
    let len = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?.len();
    if len == 0 {
        return Err(Error::Invalid(format!("{}: empty file, not a tar archive", shown.display())));
    }
    let mut t = TarTree { nodes: Vec::new(), shown: shown.clone(), warnings: Vec::new() };
    t.implicit_dir(now);
    let mut ar = ::tar::Archive::new(&file);
    let entries = ar.entries_with_seek().map_err(|e| Error::io(&shown, "read", e))?;
    // The last member read, to say where a damaged archive goes wrong.
    let mut last: Option<String> = None;
    let (mut warned_global, mut warned_acl) = (false, false);
    // Where the previous member's data ends: its extension headers lie
    // between there and a member's own header.
    let mut prev_end = 0u64;
    for entry in entries {
        let e = entry.map_err(|err| match &last {
            None => Error::Invalid(format!("{}: not a tar archive, or damaged at its start ({err})", shown.display())),
            Some(m) => Error::Invalid(format!("{}: damaged or truncated after member {m}: {err}", shown.display())),
        })?;
        // The tar crate splits PAX records at newlines, which binary xattr
        // values (security.capability) hold: the records are read here.
        let records = pax_records(&file, prev_end, e.raw_header_position(), &shown)?;
        prev_end = e.raw_file_position().saturating_add(e.size().div_ceil(512) * 512);
        let record = |k: &[u8]| records.iter().rev().find(|r| r.0 == k).map(|r| r.1.clone());
        let raw = record(b"path").unwrap_or_else(|| e.path_bytes().into_owned());
        let name = String::from_utf8_lossy(&raw).into_owned();
        let bad = |what: String| Error::Invalid(format!("{}: member {name}: {what}", shown.display()));
        let unsupported = |what: String| Error::Unsupported(format!("{}: member {name}: {what}", shown.display()));
        let ty = e.header().entry_type();
        if ty.is_pax_global_extensions() {
            if !warned_global {
                t.warnings.push(format!("{}: PAX global header ignored (its records apply to no member)", shown.display()));
                warned_global = true;
            }
            continue;
        }
        let (mut mtime, mut atime, mut ctime, mut xattrs, mut sparse) = (None, None, None, Vec::new(), false);
        let (mut libarchive_xattrs, mut acls) = (Vec::new(), Vec::new());
        let (mut uid, mut gid) = (None, None);
        for (key, value) in &records {
            let bad_value = || bad(format!("bad PAX {} {:?}", String::from_utf8_lossy(key), String::from_utf8_lossy(value)));
            let time = || pax_time(value).ok_or_else(bad_value);
            let number = || std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad_value);
            match key.as_slice() {
                b"mtime" => mtime = Some(time()?),
                b"atime" => atime = Some(time()?),
                b"ctime" => ctime = Some(time()?),
                b"uid" => uid = Some(number()?),
                b"gid" => gid = Some(number()?),
                // The tar crate found the member's data by its own reading of the records.
                b"size" if number()? != e.size() => return Err(unsupported("PAX size record the tar reader misread".into())),
                _ if key.starts_with(b"SCHILY.xattr.") => xattrs.push((key[13..].to_vec(), value.clone())),
                // bsdtar writes each xattr twice: SCHILY (raw, kept above) and
                // LIBARCHIVE (URL-encoded name, base64 value); the latter alone
                // when told to, so it counts only where no SCHILY record names it.
                _ if key.starts_with(b"LIBARCHIVE.xattr.") => {
                    let xname = percent_decode(&key[17..]).ok_or_else(bad_value)?;
                    let xvalue = base64::engine::general_purpose::STANDARD.decode(value).map_err(|_| bad_value())?;
                    libarchive_xattrs.push((xname, xvalue));
                }
                _ if key.starts_with(b"GNU.sparse.") => sparse = true,
                b"SCHILY.acl.access" | b"SCHILY.acl.default" => {
                    let xname: &[u8] = if key.ends_with(b"access") { b"system.posix_acl_access" } else { b"system.posix_acl_default" };
                    match acl_xattr(value) {
                        Ok(Some(v)) => acls.push((xname.to_vec(), v)),
                        Ok(None) => {}
                        Err(why) => {
                            t.warnings.push(format!("{}: member {name}: {} ignored: {why}", shown.display(), String::from_utf8_lossy(key)))
                        }
                    }
                }
                _ if key.starts_with(b"SCHILY.acl.") && !warned_acl => {
                    t.warnings
                        .push(format!("{}: NFSv4 ACL records ignored (btrfs has no NFSv4 ACLs; first at member {name})", shown.display()));
                    warned_acl = true;
                }
                _ => {}
            }
        }
        use ::tar::EntryType as T;
        let regular_as_dir = matches!(ty, T::Regular) && raw.ends_with(b"/");
        // Sparse members: where their data segments are, their real size and
        // (PAX) their real name.
        let sparse_map = if ty.is_gnu_sparse() {
            Some(old_gnu_sparse(&file, e.raw_header_position(), &shown).map_err(|why| bad(format!("sparse member: {why}")))?)
        } else if sparse {
            Some(pax_sparse(&records, &file, e.raw_file_position(), e.size(), &shown).map_err(|why| bad(format!("sparse member: {why}")))?)
        } else {
            None
        };
        if let Some(sp) = &sparse_map {
            prev_end = sp.data_start.saturating_add(sp.stored.div_ceil(512) * 512);
        }
        let raw = match sparse_map.as_ref().and_then(|sp| sp.name.clone()) {
            Some(n) => n,
            None => raw,
        };
        let name = String::from_utf8_lossy(&raw).into_owned();
        let bad = |what: String| Error::Invalid(format!("{}: member {name}: {what}", shown.display()));
        let ifmt = match ty {
            _ if sparse_map.is_some() => 0o100000,
            // Old archives mark directories by a trailing slash only.
            _ if regular_as_dir => 0o040000,
            T::Regular | T::Continuous => 0o100000,
            T::Directory => 0o040000,
            T::Symlink => 0o120000,
            T::Char => 0o020000,
            T::Block => 0o060000,
            T::Fifo => 0o010000,
            T::Link => 0,
            other => return Err(unsupported(format!("entry type {:?} ({:?}) is not supported", other, other.as_byte() as char))),
        };
        let comps = components(&raw).map_err(bad)?;
        if ty == T::Link {
            let target = record(b"linkpath").or_else(|| e.link_name_bytes().map(|l| l.into_owned()));
            let target = target.filter(|t| !t.is_empty()).ok_or_else(|| bad("hard link without a target".into()))?;
            let tc = components(&target).map_err(|why| bad(format!("hard link target: {why}")))?;
            let node = t
                .find(Path::new(std::ffi::OsStr::from_bytes(&tc.join(&b'/'))))
                .ok_or_else(|| bad(format!("hard link to {}, which no earlier member is", String::from_utf8_lossy(&target))))?;
            if t.nodes[node].file.mode & S_IFMT == 0o040000 {
                return Err(bad(format!("hard link to the directory {}", String::from_utf8_lossy(&target))));
            }
            t.nodes[node].file.nlink += 1;
            t.name(&comps, node, now).map_err(bad)?;
            last = Some(name);
            continue;
        }
        let h = e.header();
        let perm = h.mode().map_err(|err| bad(format!("mode: {err}")))? & 0o7777;
        let id32 = |v: u64, what: &str| u32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit 32 bits")));
        let uid = id32(uid.map_or_else(|| h.uid(), Ok).map_err(|err| bad(format!("uid: {err}")))?, "uid")?;
        let gid = id32(gid.map_or_else(|| h.gid(), Ok).map_err(|err| bad(format!("gid: {err}")))?, "gid")?;
        let mtime = match mtime {
            Some(t) => t,
            None => (h.mtime().map_err(|err| bad(format!("mtime: {err}")))?, 0),
        };
        let rdev = if matches!(ty, T::Char | T::Block) {
            let major = h.device_major().map_err(|err| bad(format!("device major: {err}")))?.unwrap_or(0) as u64;
            let minor = h.device_minor().map_err(|err| bad(format!("device minor: {err}")))?.unwrap_or(0) as u64;
            // The kernel's MKDEV, what btrfs stores (20 bits of minor).
            ((major & 0xfff) << 20) | (minor & 0xf_ffff)
        } else {
            0
        };
        let (size, offset, stored) = match &sparse_map {
            Some(sp) => (sp.real_size, sp.data_start, sp.stored),
            None if ifmt == 0o100000 => (e.size(), e.raw_file_position(), e.size()),
            None => (0, 0, 0),
        };
        if offset.checked_add(stored).is_none_or(|end| end > len) {
            return Err(Error::Invalid(format!(
                "{}: truncated: member {name} has {stored} bytes from offset {offset}, the archive ends at {len}",
                shown.display()
            )));
        }
        let target = if ty == T::Symlink {
            let target = record(b"linkpath").or_else(|| e.link_name_bytes().map(|l| l.into_owned()));
            target.ok_or_else(|| bad("symlink without a target".into()))?
        } else {
            Vec::new()
        };
        // A default ACL belongs to directories only (the kernel refuses it elsewhere).
        acls.retain(|(n, _)| ifmt == 0o040000 || n.as_slice() != b"system.posix_acl_default");
        for (n, v) in libarchive_xattrs.into_iter().chain(acls) {
            if !xattrs.iter().any(|x: &(Vec<u8>, Vec<u8>)| x.0 == n) {
                xattrs.push((n, v));
            }
        }
        xattrs.sort();
        // The later record of one name wins, as it would on extraction.
        xattrs.reverse();
        xattrs.dedup_by(|a, b| a.0 == b.0);
        xattrs.reverse();
        let file = SourceFile {
            mode: ifmt | perm,
            uid,
            gid,
            rdev,
            size,
            atime: atime.unwrap_or(mtime),
            mtime,
            ctime: ctime.unwrap_or(mtime),
            nlink: 1,
            id: (0, t.nodes.len() as u64),
            offset,
            sparse: sparse_map.map(|sp| sp.segments.into()),
            blocks: None,
        };
        t.nodes.push(Node { file, target, xattrs, children: BTreeMap::new() });
        let n = t.nodes.len() - 1;
        t.name(&comps, n, now).map_err(bad)?;
        last = Some(name);
    }
    Ok((file, shown, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(pax_time(b"1700000000.123456789"), Some((1_700_000_000, 123_456_789)));
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"-1.25"), Some(((-2i64) as u64, 750_000_000)));
        assert_eq!(pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        for bad in [&b""[..], b"x", b"1.2x", b"--1", b".5"] {
            assert_eq!(pax_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pax_records_hold_any_bytes() {
        let r = parse_pax(b"30 mtime=1700000000.123456789\n26 SCHILY.xattr.user.a=\n\n\n18 path=a\nb/c d=e\n\0\0").unwrap();
        assert_eq!(r[0], (b"mtime".to_vec(), b"1700000000.123456789".to_vec()));
        assert_eq!(r[1], (b"SCHILY.xattr.user.a".to_vec(), b"\n\n".to_vec()));
        assert_eq!(r[2], (b"path".to_vec(), b"a\nb/c d=e".to_vec()));
        assert!(parse_pax(b"99 x=y\n").is_none() && parse_pax(b"6 xy\n").is_none());
    }

    #[test]
    fn acl_text_becomes_the_kernel_xattr() {
        // bsdtar: named entries carry the id as a fourth field; any order.
        let v = acl_xattr(b"user::rw-,group::r--,other::---,mask::rwx,user:alice:r-x:1001,group:7:rw-").unwrap().unwrap();
        let mut want = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 6u16, u32::MAX), (2, 5, 1001), (4, 4, u32::MAX), (8, 6, 7), (0x10, 7, u32::MAX), (0x20, 0, u32::MAX)]
        {
            want.extend_from_slice(&tag.to_le_bytes());
            want.extend_from_slice(&perm.to_le_bytes());
            want.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(v, want);
        // GNU tar: newline separated, effective-rights comments, abbreviations.
        let g = acl_xattr(b"u::rwx\nu:1002:rwx\t#effective:r-x\ng::r-x\nm::r-x\no::r-x\n").unwrap().unwrap();
        assert_eq!(g.len(), 4 + 5 * 8);
        // Only the mode bits: no xattr, as the kernel keeps none.
        assert_eq!(acl_xattr(b"user::rw-,group::r--,other::r--").unwrap(), None);
        assert_eq!(acl_xattr(b"").unwrap(), None);
        for bad in [
            &b"user:bob:r--,user::rw-,group::r--,mask::r--,other::---"[..],
            b"user::rw-,group::r--",
            b"user::rw-,user:5:r--,group::r--,other::---",
            b"user::rwz,group::r--,other::---",
            b"user::rw-,user::r--,group::r--,other::---",
            b"bogus::rw-",
        ] {
            assert!(acl_xattr(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn header_numbers_are_octal_or_base256() {
        assert_eq!(header_number(b"00000001750\0"), Some(1000));
        assert_eq!(header_number(b"   17 \0\0\0\0\0\0"), Some(15));
        assert_eq!(header_number(b"\0\0\0\0"), Some(0));
        assert_eq!(header_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), Some(1 << 24));
        assert_eq!(header_number(&[0xc0, 0, 0, 0]), None, "negative base-256");
        assert_eq!(header_number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), None, "past 2^64");
        assert_eq!(header_number(b"0009"), None);
    }

    #[test]
    fn sparse_segments_are_checked() {
        assert_eq!(check_segments(vec![(0, 10), (20, 5), (100, 0)], 100, 15).unwrap(), vec![(0, 10), (20, 5)]);
        assert!(check_segments(vec![(0, 10), (5, 5)], 100, 15).is_err(), "overlap");
        assert!(check_segments(vec![(20, 5), (0, 10)], 100, 15).is_err(), "out of order");
        assert!(check_segments(vec![(95, 10)], 100, 15).is_err(), "past the size");
        assert!(check_segments(vec![(0, 10), (20, 10)], 100, 15).is_err(), "more than stored");
        assert!(check_segments(vec![(u64::MAX, 10)], u64::MAX, 15).is_err(), "overflow");
    }

    #[test]
    fn libarchive_names_are_url_decoded() {
        assert_eq!(percent_decode(b"user.a%3Db%25").unwrap(), b"user.a=b%");
        assert_eq!(percent_decode(b"bad%4"), None);
        assert_eq!(percent_decode(b"bad%zz"), None);
    }

    #[test]
    fn member_paths_stay_inside() {
        assert_eq!(components(b"./a//b/./c/").unwrap(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
    }
}
