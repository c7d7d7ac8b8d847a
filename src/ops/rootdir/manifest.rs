//! What the image stores as owners and modes, whoever builds it: `--manifest`
//! files (one line per path: mode, uid, gid), `--owner-map` id ranges (ACLs
//! remapped with them) and `--all-root`.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::acl;
use crate::format::ondisk::*;

/// One `--owner-map FROM:TO:COUNT` range: ids FROM..FROM+COUNT become TO..TO+COUNT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) count: u32,
}

impl IdMap {
    /// Parse `FROM:TO:COUNT` (decimal).
    pub fn parse(s: &str) -> Result<IdMap> {
        let bad = || Error::Invalid(format!("--owner-map {s:?}: want FROM:TO:COUNT (decimal ids)"));
        let mut it = s.split(':').map(|p| p.trim().parse::<u32>());
        let (from, to, count) = match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Ok(f)), Some(Ok(t)), Some(Ok(c)), None) => (f, t, c),
            _ => return Err(bad()),
        };
        if count == 0 || from.checked_add(count - 1).is_none() || to.checked_add(count - 1).is_none() {
            return Err(Error::Invalid(format!("--owner-map {s:?}: empty range or ids past 4294967295")));
        }
        Ok(IdMap { from, to, count })
    }

    pub(super) fn map(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.from)?;
        (off < self.count).then(|| self.to + off)
    }
}

/// A system.posix_acl_* value (version 2, then 8-byte tag/perm/id entries)
/// with the ids of named user (tag 2) and group (tag 8) entries passed
/// through `map`, re-sorted as the kernel requires.
pub(super) fn remap_acl(v: &[u8], map: impl Fn(u32) -> u32) -> std::result::Result<Vec<u8>, String> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != 2u32.to_le_bytes() {
        return Err("not a version 2 POSIX ACL".into());
    }
    let mut entries = acl::decode(v)?;
    for e in entries.iter_mut().filter(|e| e.tag == acl::ACL_USER || e.tag == acl::ACL_GROUP) {
        e.id = map(e.id);
    }
    entries.sort_by_key(|e| (e.tag, e.id));
    if entries.windows(2).any(|w| (w[0].tag, w[0].id) == (w[1].tag, w[1].id)) {
        return Err("--owner-map maps two named entries to one id".into());
    }
    Ok(acl::encode(&entries))
}

/// One line of a `--manifest` file, for one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the root directory; empty for the root itself.
    pub(crate) path: PathBuf,
    /// Permission bits (07777) replacing the source's; the file type is kept.
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    /// (name, Some(value)) sets an xattr, (name, None) drops the source's.
    pub(crate) xattrs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What `--all-root`, `--owner-map` and `--manifest` ask, applied in that
/// order of increasing precedence: map ranges first, then all-root, then the
/// manifest's per-path values. This is how image builders get root-owned
/// files and set-uid modes without running as root or under fakeroot.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    pub all_root: bool,
    pub owner_map: Vec<IdMap>,
    pub manifest: Vec<ManifestEntry>,
}

/// Undo fstab-style octal escapes (`\040` for a space, `\\` for a backslash)
/// so manifest paths can hold whitespace.
fn unescape(field: &str, lineno: usize) -> Result<Vec<u8>> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            let oct = b.get(i + 1..i + 4).and_then(|o| std::str::from_utf8(o).ok()).and_then(|o| u8::from_str_radix(o, 8).ok());
            match oct {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => return Err(Error::Invalid(format!("manifest line {lineno}: bad escape in {field:?} (use \\NNN octal or \\\\)"))),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parse a `--manifest` file's text. See the `--manifest` help for the syntax.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>> {
    let mut out: Vec<ManifestEntry> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path_field, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let path = unescape(path_field, lineno)?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&path));
        // "/", "." and "./x" all name paths under the root directory.
        let path: PathBuf = path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
        let idx = match out.iter().position(|e| e.path == path) {
            Some(i) => i,
            None => {
                out.push(ManifestEntry { path, ..Default::default() });
                out.len() - 1
            }
        };
        let e = &mut out[idx];
        if let Some(x) = rest.strip_prefix("xattr").filter(|r| r.starts_with([' ', '\t'])) {
            let x = x.trim_start();
            if let Some(name) = x.strip_prefix('-') {
                e.xattrs.push((name.trim_end().as_bytes().to_vec(), None));
                continue;
            }
            let (name, value) =
                x.split_once('=').ok_or_else(|| Error::Invalid(format!("manifest line {lineno}: want `PATH xattr NAME=VALUE`")))?;
            if name.is_empty() || name.len() > NAME_LEN || !name.contains('.') {
                return Err(Error::Invalid(format!("manifest line {lineno}: bad xattr name {name:?} (want e.g. security.selinux)")));
            }
            let value = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
                Some(hex) => {
                    let hex = hex.trim_end();
                    if hex.len() % 2 != 0 {
                        return Err(Error::Invalid(format!("manifest line {lineno}: odd number of hex digits")));
                    }
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                        .collect::<std::result::Result<Vec<u8>, _>>()
                        .map_err(|_| Error::Invalid(format!("manifest line {lineno}: bad hex value")))?
                }
                None => value.as_bytes().to_vec(),
            };
            e.xattrs.push((name.as_bytes().to_vec(), Some(value)));
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() != 3 {
            return Err(Error::Invalid(format!(
                "manifest line {lineno}: want `PATH MODE UID GID` or `PATH xattr NAME=VALUE`, got {raw:?}"
            )));
        }
        let num = |v: &str, radix: u32, what: &str| -> Result<Option<u32>> {
            if v == "-" {
                return Ok(None);
            }
            u32::from_str_radix(v, radix).map(Some).map_err(|_| Error::Invalid(format!("manifest line {lineno}: bad {what} {v:?}")))
        };
        if let Some(m) = num(f[0], 8, "mode (octal)")? {
            if m > 0o7777 {
                return Err(Error::Invalid(format!("manifest line {lineno}: mode {m:o} has more than permission bits (07777)")));
            }
            e.mode = Some(m);
        }
        if let Some(u) = num(f[1], 10, "uid")? {
            e.uid = Some(u);
        }
        if let Some(g) = num(f[2], 10, "gid")? {
            e.gid = Some(g);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_parse() {
        let m = parse_manifest(
            "# c\n\n/ 0755 0 0\n./a\\040b 4755 - 7\n/etc xattr security.selinux=x:y z\n/etc xattr user.h=0x00ff\n/etc xattr -user.gone\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].path.as_os_str().len(), m[0].mode, m[0].uid), (0, Some(0o755), Some(0)));
        assert_eq!((m[1].path.to_str(), m[1].mode, m[1].uid, m[1].gid), (Some("a b"), Some(0o4755), None, Some(7)));
        assert_eq!(m[2].xattrs[0], (b"security.selinux".to_vec(), Some(b"x:y z".to_vec())));
        assert_eq!(m[2].xattrs[1].1, Some(vec![0, 255]));
        assert_eq!(m[2].xattrs[2], (b"user.gone".to_vec(), None));
        for bad in ["/a 8 0 0", "/a 0755 0", "/a 0755 x 0", "/a xattr noequals", "/a xattr user.h=0xabc", "/a 17777 0 0"] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
        assert_eq!(IdMap::parse("1000:0:10").unwrap().map(1009), Some(9));
        assert_eq!(IdMap::parse("1000:0:10").unwrap().map(1010), None);
        assert!(IdMap::parse("1:2").is_err() && IdMap::parse("1:2:0").is_err() && IdMap::parse("4294967295:0:2").is_err());
    }

    #[test]
    fn owner_map_shifts_named_acl_entries() {
        let entry = |tag: u16, perm: u16, id: u32| [tag.to_le_bytes().as_slice(), &perm.to_le_bytes(), &id.to_le_bytes()].concat();
        let acl = |es: &[(u16, u16, u32)]| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for &(t, p, i) in es {
                v.extend(entry(t, p, i));
            }
            v
        };
        let none = u32::MAX;
        let map = IdMap { from: 1000, to: 0, count: 10 };
        let f = |id: u32| map.map(id).unwrap_or(id);
        // uid 1001 becomes 1 and sorts before 500; the *_OBJ entries keep the undefined id.
        let v = acl(&[(1, 6, none), (2, 4, 500), (2, 5, 1001), (4, 4, none), (8, 7, 1002), (0x10, 7, none), (0x20, 0, none)]);
        let want = acl(&[(1, 6, none), (2, 5, 1), (2, 4, 500), (4, 4, none), (8, 7, 2), (0x10, 7, none), (0x20, 0, none)]);
        assert_eq!(remap_acl(&v, f).unwrap(), want);
        // Two named users landing on one id cannot be an ACL.
        assert!(remap_acl(&acl(&[(1, 6, none), (2, 4, 1), (2, 5, 1001), (4, 4, none), (0x10, 7, none), (0x20, 0, none)]), f).is_err());
        assert!(remap_acl(&[2, 0, 0, 0, 1], f).is_err());
        assert!(remap_acl(&[1, 0, 0, 0], f).is_err());
    }
}
