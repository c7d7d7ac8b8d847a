//! Path walks: the one reading of a '/'-separated path (empty and "."
//! components skipped, ".." back to the directory the walk came from, no
//! symlink followed: paths name entries, like `btrfs restore`) shared by the read side ([`super::Filesystem::resolve`]) and the
//! write side (the transaction's `resolve`), so both stop at the same
//! component for the same reason and say so in the same words.

use crate::error::{Error, Result};

/// The components a walk steps through, in order.
pub(crate) fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// Where a walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Walk<T> {
    /// Every component was there: what the last one names.
    Found(T),
    /// `component` is not in the directory the walk had reached.
    Missing { component: String },
    /// `component` names something that is not a directory, with more path after it.
    NotDir { component: String },
}

impl<T> Walk<T> {
    /// The read side's reading: a missing or non-directory component is
    /// `NotFound` (there is no such entry to read), naming the path and the
    /// component.
    pub(crate) fn found(self, path: &str) -> Result<T> {
        match self {
            Walk::Found(t) => Ok(t),
            Walk::Missing { component } => Err(Error::NotFound(format!("{path}: no entry {component:?}"))),
            Walk::NotDir { component } => Err(Error::NotFound(not_dir(path, &component))),
        }
    }

    /// The write side's reading: a missing component is `None` (the caller
    /// may create it); a non-directory one is `Invalid` (a request that cannot
    /// be carried out), in the same words as [`Walk::found`].
    pub(crate) fn if_present(self, path: &str) -> Result<Option<T>> {
        match self {
            Walk::Found(t) => Ok(Some(t)),
            Walk::Missing { .. } => Ok(None),
            Walk::NotDir { component } => Err(Error::Invalid(not_dir(path, &component))),
        }
    }
}

/// The error for a path that goes on past `component`, which is not a directory.
pub(crate) fn not_dir(path: &str, component: &str) -> String {
    format!("{path}: {component:?} is not a directory")
}

/// Walk `path` from `start`: `is_dir` tells whether a step may go on from an
/// entry, `step` looks a name up in a directory (`None`: no such entry).
/// ".." goes back to the directory the walk came from (at `start`, it stays
/// there, as "/.." is "/"): with no symlink followed, a directory's parent is
/// the one its path names, and btrfs keeps no ".." entry to look up.
pub(crate) fn walk<T>(
    path: &str,
    start: T,
    is_dir: impl Fn(&T) -> bool,
    mut step: impl FnMut(&T, &[u8]) -> Result<Option<T>>,
) -> Result<Walk<T>> {
    let mut up: Vec<T> = Vec::new();
    let mut cur = start;
    let mut last = "";
    for comp in components(path) {
        if !is_dir(&cur) {
            return Ok(Walk::NotDir { component: last.to_string() });
        }
        if comp == ".." {
            if let Some(parent) = up.pop() {
                cur = parent;
            }
        } else {
            match step(&cur, comp.as_bytes())? {
                Some(next) => up.push(std::mem::replace(&mut cur, next)),
                None => return Ok(Walk::Missing { component: comp.to_string() }),
            }
        }
        last = comp;
    }
    Ok(Walk::Found(cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tree: "/d" is a directory holding "f"; "/f" is a file.
    fn toy(path: &str) -> Walk<&'static str> {
        walk(
            path,
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
        assert_eq!(toy("/d/x/y"), Walk::Missing { component: "x".into() });
        assert_eq!(toy("/f/x"), Walk::NotDir { component: "f".into() });
        assert_eq!(toy("/d/f/x/y"), Walk::NotDir { component: "f".into() });
        // ".." goes back where the walk came from; "/.." is "/".
        assert_eq!(toy("/d/.."), Walk::Found("/"));
        assert_eq!(toy("/d/../f"), Walk::Found("f"));
        assert_eq!(toy("/../../d/f"), Walk::Found("f"));
        assert_eq!(toy("/d/f/.."), Walk::NotDir { component: "f".into() });
        assert_eq!(toy("/d/x/.."), Walk::Missing { component: "x".into() });
    }

    #[test]
    fn both_readings_name_the_component() {
        let Err(Error::NotFound(e)) = toy("/f/x").found("/f/x") else { panic!("read side: not NotFound") };
        assert_eq!(e, "/f/x: \"f\" is not a directory");
        let Err(Error::Invalid(e2)) = toy("/f/x").if_present("/f/x") else { panic!("write side: not Invalid") };
        assert_eq!(e, e2, "read and write sides report a non-directory in the same words");
        let e = toy("/d/x").found("/d/x").unwrap_err().to_string();
        assert!(e.contains("no entry \"x\""), "{e}");
        assert_eq!(toy("/d/x").if_present("/d/x").unwrap(), None);
    }
}
