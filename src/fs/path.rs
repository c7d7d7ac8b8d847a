//! Path walks: the one reading of a '/'-separated path (empty and "."
//! components skipped, ".." back to the directory the walk came from, no
//! symlink followed: paths name entries, like `btrfs restore`) shared by the read side ([`super::Filesystem::resolve`]) and the
//! write side (the transaction's `resolve`), so both stop at the same
//! component for the same reason and say so in the same words.
//!
//! A path is bytes ([`ImagePath`]), as btrfs names are: a name that is not
//! UTF-8 can be named as it is listed.

use std::fmt;

use crate::error::{Error, Result};
use crate::name::Name;

/// A path inside an image: the bytes it is (a btrfs name is any bytes but
/// '/' and NUL), shown as [`Name`] shows names. Made from a
/// `&str`, bytes or an `OsStr` (a command-line argument as the shell gave it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImagePath<'a>(&'a [u8]);

impl<'a> ImagePath<'a> {
    pub fn new(path: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        ImagePath(path.as_ref())
    }

    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }

    /// The components a walk steps through, in order.
    pub(crate) fn components(self) -> impl Iterator<Item = &'a [u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".")
    }

    /// The directory ("/" at the top) and the last component, nothing checked.
    pub(crate) fn parent_and_name(self) -> (ImagePath<'a>, &'a [u8]) {
        let mut p = self.0;
        while let [rest @ .., b'/'] = p {
            p = rest;
        }
        match p.iter().rposition(|&b| b == b'/') {
            Some(i) if i > 0 => (ImagePath(&p[..i]), &p[i + 1..]),
            Some(i) => (ImagePath(b"/"), &p[i + 1..]),
            None => (ImagePath(b"/"), p),
        }
    }

    /// Whether the path ends in "/" or "/." (it then names a directory).
    pub(crate) fn names_dir(self) -> bool {
        self.0.len() > 1 && (self.0.ends_with(b"/") || self.0.ends_with(b"/."))
    }
}

impl<'a> From<&'a str> for ImagePath<'a> {
    fn from(s: &'a str) -> Self {
        ImagePath(s.as_bytes())
    }
}

impl<'a> From<&'a String> for ImagePath<'a> {
    fn from(s: &'a String) -> Self {
        ImagePath(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for ImagePath<'a> {
    fn from(s: &'a [u8]) -> Self {
        ImagePath(s)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for ImagePath<'a> {
    fn from(s: &'a [u8; N]) -> Self {
        ImagePath(s)
    }
}

impl<'a> From<&'a Vec<u8>> for ImagePath<'a> {
    fn from(s: &'a Vec<u8>) -> Self {
        ImagePath(s)
    }
}

impl<'a> From<&'a std::ffi::OsStr> for ImagePath<'a> {
    fn from(s: &'a std::ffi::OsStr) -> Self {
        ImagePath(std::os::unix::ffi::OsStrExt::as_bytes(s))
    }
}

impl<'a> From<&'a std::ffi::OsString> for ImagePath<'a> {
    fn from(s: &'a std::ffi::OsString) -> Self {
        ImagePath::from(s.as_os_str())
    }
}

impl AsRef<[u8]> for ImagePath<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0
    }
}

/// As [`crate::name::Name`] shows it: one line, bytes that are not
/// UTF-8 as `\\xNN`, what bash's `$'...'` reads back.
impl fmt::Display for ImagePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Name(self.0), f)
    }
}

/// In double quotes, as [`Name`]'s `{:?}`.
impl fmt::Debug for ImagePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Name(self.0), f)
    }
}

/// A name (one component) quoted for a message, as [`ImagePath`]'s `{:?}`.
pub(crate) fn quoted(name: &[u8]) -> String {
    format!("{:?}", ImagePath(name))
}

/// Where a walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Walk<T> {
    /// Every component was there: what the last one names.
    Found(T),
    /// `component` is not in the directory the walk had reached.
    Missing { component: Vec<u8> },
    /// `component` names something that is not a directory, with more path after it.
    NotDir { component: Vec<u8> },
}

impl<T> Walk<T> {
    /// The read side's reading: a missing or non-directory component is
    /// `NotFound` (there is no such entry to read), naming the path and the
    /// component.
    pub(crate) fn found(self, path: ImagePath<'_>) -> Result<T> {
        match self {
            Walk::Found(t) => Ok(t),
            Walk::Missing { component } => Err(Error::NotFound(format!("{path}: no entry {}", quoted(&component)))),
            Walk::NotDir { component } => Err(Error::NotFound(not_dir(path, &component))),
        }
    }

    /// The write side's reading: a missing component is `None` (the caller
    /// may create it); a non-directory one is `Invalid` (a request that cannot
    /// be carried out), in the same words as [`Walk::found`].
    pub(crate) fn if_present(self, path: ImagePath<'_>) -> Result<Option<T>> {
        match self {
            Walk::Found(t) => Ok(Some(t)),
            Walk::Missing { .. } => Ok(None),
            Walk::NotDir { component } => Err(Error::Invalid(not_dir(path, &component))),
        }
    }
}

/// The error for a path that goes on past `component`, which is not a directory.
pub(crate) fn not_dir(path: ImagePath<'_>, component: &[u8]) -> String {
    format!("{path}: {} is not a directory", quoted(component))
}

/// Walk `path` from `start`: `is_dir` tells whether a step may go on from an
/// entry, `step` looks a name up in a directory (`None`: no such entry).
/// ".." goes back to the directory the walk came from (at `start`, it stays
/// there, as "/.." is "/"): with no symlink followed, a directory's parent is
/// the one its path names, and btrfs keeps no ".." entry to look up.
pub(crate) fn walk<T>(
    path: ImagePath<'_>,
    start: T,
    is_dir: impl Fn(&T) -> bool,
    mut step: impl FnMut(&T, &[u8]) -> Result<Option<T>>,
) -> Result<Walk<T>> {
    let mut up: Vec<T> = Vec::new();
    let mut cur = start;
    let mut last: &[u8] = b"";
    for comp in path.components() {
        if !is_dir(&cur) {
            return Ok(Walk::NotDir { component: last.to_vec() });
        }
        if comp == b".." {
            if let Some(parent) = up.pop() {
                cur = parent;
            }
        } else {
            match step(&cur, comp)? {
                Some(next) => up.push(std::mem::replace(&mut cur, next)),
                None => return Ok(Walk::Missing { component: comp.to_vec() }),
            }
        }
        last = comp;
    }
    // A path ending in "/" (or "/.") names a directory: the kernel's ENOTDIR
    // for anything else (no symlink is followed to one).
    if path.names_dir() && !is_dir(&cur) {
        return Ok(Walk::NotDir { component: last.to_vec() });
    }
    Ok(Walk::Found(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tree: "/d" is a directory holding "f"; "/f" is a file.
    fn toy(path: &str) -> Walk<&'static str> {
        walk(
            ImagePath::from(path),
            "/",
            |n| *n == "/" || *n == "d",
            |dir, name| {
                Ok(match (*dir, name) {
                    ("/", b"d") => Some("d"),
                    ("/", b"f") | ("d", b"f") => Some("f"),
                    _ => None,
                })
            },
        )
        .unwrap()
    }

    #[test]
    fn walks_stop_at_the_component_that_fails() {
        assert_eq!(toy("/"), Walk::Found("/"));
        assert_eq!(toy("//./d/./"), Walk::Found("d"));
        assert_eq!(toy("/d/f"), Walk::Found("f"));
        assert_eq!(toy("/d/x/y"), Walk::Missing { component: b"x".to_vec() });
        assert_eq!(toy("/f/x"), Walk::NotDir { component: b"f".to_vec() });
        assert_eq!(toy("/d/f/x/y"), Walk::NotDir { component: b"f".to_vec() });
        // ".." goes back where the walk came from; "/.." is "/".
        assert_eq!(toy("/d/.."), Walk::Found("/"));
        assert_eq!(toy("/d/../f"), Walk::Found("f"));
        assert_eq!(toy("/../../d/f"), Walk::Found("f"));
        assert_eq!(toy("/d/f/.."), Walk::NotDir { component: b"f".to_vec() });
        assert_eq!(toy("/d/x/.."), Walk::Missing { component: b"x".to_vec() });
        // A trailing "/" or "/." names a directory.
        assert_eq!(toy("/d/"), Walk::Found("d"));
        assert_eq!(toy("/d/."), Walk::Found("d"));
        assert_eq!(toy("/f/"), Walk::NotDir { component: b"f".to_vec() });
        assert_eq!(toy("/d/f/."), Walk::NotDir { component: b"f".to_vec() });
        assert_eq!(toy("/d/f/.."), Walk::NotDir { component: b"f".to_vec() });
    }

    #[test]
    fn both_readings_name_the_component() {
        let Err(Error::NotFound(e)) = toy("/f/x").found("/f/x".into()) else { panic!("read side: not NotFound") };
        assert_eq!(e, "/f/x: \"f\" is not a directory");
        let Err(Error::Invalid(e2)) = toy("/f/x").if_present("/f/x".into()) else { panic!("write side: not Invalid") };
        assert_eq!(e, e2, "read and write sides report a non-directory in the same words");
        let e = toy("/d/x").found("/d/x".into()).unwrap_err().to_string();
        assert!(e.contains("no entry \"x\""), "{e}");
        assert_eq!(toy("/d/x").if_present("/d/x".into()).unwrap(), None);
    }

    #[test]
    fn paths_are_bytes_shown_with_what_is_not_utf8_escaped() {
        let p = ImagePath::from(&b"/d\x80\xff/caf\xc3\xa9\n"[..]);
        assert_eq!(p.to_string(), "/d\\x80\\xff/caf\u{e9}\\n");
        assert_eq!(format!("{p:?}"), "\"/d\\x80\\xff/caf\u{e9}\\n\"");
        assert_eq!(format!("{:?}", ImagePath::from("a\"b\tc")), format!("{:?}", "a\"b\tc"), "UTF-8 is quoted as a str is");
        assert_eq!(p.components().collect::<Vec<_>>(), vec![&b"d\x80\xff"[..], &b"caf\xc3\xa9\n"[..]]);
        let (dir, name) = p.parent_and_name();
        assert_eq!((dir.as_bytes(), name), (&b"/d\x80\xff"[..], &b"caf\xc3\xa9\n"[..]));
        for (path, dir, name) in [("/", "/", ""), ("a", "/", "a"), ("/a", "/", "a"), ("/a/b//", "/a", "b"), ("//a", "/", "a")] {
            let (d, n) = ImagePath::from(path).parent_and_name();
            assert_eq!((d.as_bytes(), n), (dir.as_bytes(), name.as_bytes()), "{path}");
        }
        assert!(ImagePath::from("/a/").names_dir() && ImagePath::from("/a/.").names_dir());
        assert!(!ImagePath::from("/").names_dir() && !ImagePath::from("/a").names_dir());
        let os = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&b"/x\x80"[..]);
        assert_eq!(ImagePath::from(os).as_bytes(), b"/x\x80");
        let e = toy("/d\u{e9}").found("/d\u{e9}".into()).unwrap_err().to_string();
        assert!(e.ends_with("no entry \"d\u{e9}\""), "{e}");
    }
}
