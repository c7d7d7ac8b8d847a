//! Host trees for `put`: what the model copies in.

#![allow(dead_code, unused_imports)]

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- host trees for `put`

#[derive(Clone, Debug)]
pub(crate) enum HostKind {
    /// size, data runs (offset, length, seed), hard-link group.
    File {
        size: u64,
        runs: Vec<(u64, u64, u64)>,
        group: Option<usize>,
    },
    Dir(Vec<(Vec<u8>, HostNode)>),
    Symlink(Vec<u8>),
    Fifo,
}

#[derive(Clone, Debug)]
pub(crate) struct HostNode {
    pub(crate) kind: HostKind,
    /// Permission bits (with set-id bits).
    pub(crate) mode: u32,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A small host tree `put` copies in, made from a seed.
#[derive(Clone, Debug)]
pub(crate) struct HostTree {
    pub(crate) name: Vec<u8>,
    pub(crate) root: HostNode,
}

impl HostTree {
    pub(crate) fn generate(seed: u64) -> HostTree {
        let mut r = Rng::new(seed);
        let mut groups = 0usize;
        let root = if r.chance(1, 6) { Self::leaf(&mut r, &mut groups, false) } else { Self::dir(&mut r, 0, &mut groups) };
        HostTree { name: format!("put{}", r.below(1000)).into_bytes(), root }
    }

    fn dir(r: &mut Rng, depth: u32, groups: &mut usize) -> HostNode {
        let n = r.below(if depth == 0 { 6 } else { 4 });
        let mut kids: Vec<(Vec<u8>, HostNode)> = Vec::new();
        let mut linked: Option<(Vec<u8>, usize)> = None;
        for i in 0..n {
            let name = format!("{}{i}", ["f", "g", "d", "s"][r.below(4) as usize]).into_bytes();
            let node = if depth < 2 && r.chance(1, 4) { Self::dir(r, depth + 1, groups) } else { Self::leaf(r, groups, true) };
            if let HostKind::File { group: Some(g), .. } = node.kind {
                linked = Some((name.clone(), g));
            }
            kids.push((name, node));
        }
        // A second name of a hard-linked file, in the same directory.
        if let Some((first, g)) = linked {
            let twin = kids.iter().find(|(n, _)| *n == first).map(|(_, k)| k.clone());
            if let Some(mut t) = twin {
                if let HostKind::File { group, .. } = &mut t.kind {
                    *group = Some(g);
                }
                kids.push((format!("{}-link", String::from_utf8_lossy(&first)).into_bytes(), t));
            }
        }
        kids.sort_by(|a, b| a.0.cmp(&b.0));
        kids.dedup_by(|a, b| a.0 == b.0);
        HostNode { kind: HostKind::Dir(kids), mode: [0o755, 0o700, 0o750, 0o1777][r.below(4) as usize], xattrs: Self::xattrs(r) }
    }

    fn leaf(r: &mut Rng, groups: &mut usize, in_dir: bool) -> HostNode {
        match r.below(8) {
            0 => HostNode { kind: HostKind::Symlink(format!("../t{}", r.below(100)).into_bytes()), mode: 0o777, xattrs: Vec::new() },
            1 if in_dir => HostNode { kind: HostKind::Fifo, mode: 0o644, xattrs: Vec::new() },
            _ => {
                let size = [0, 1, 100, 4096, 5000, 70_000, 300_000][r.below(7) as usize];
                let mut runs = Vec::new();
                if size > 0 {
                    if size > 8192 && r.chance(1, 3) {
                        // Sparse: data, a hole, data (maybe a hole at the end).
                        runs.push((0, 4096, r.next()));
                        if r.chance(1, 2) {
                            runs.push((size - 4096, 4096, r.next()));
                        }
                    } else {
                        runs.push((0, size, r.next()));
                    }
                }
                let group = if in_dir && r.chance(1, 5) {
                    *groups += 1;
                    Some(*groups)
                } else {
                    None
                };
                let mode = [0o644, 0o600, 0o755, 0o4755, 0o444][r.below(5) as usize];
                HostNode { kind: HostKind::File { size, runs, group }, mode, xattrs: Self::xattrs(r) }
            }
        }
    }

    fn xattrs(r: &mut Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
        if r.chance(1, 3) {
            vec![(b"user.put".to_vec(), printable(r.next(), r.below(40) as usize))]
        } else {
            Vec::new()
        }
    }

    /// Make the tree at `dir/name` on the host.
    pub(crate) fn materialize(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let at = dir.join(std::ffi::OsStr::from_bytes(&self.name));
        let mut made: HashMap<usize, std::path::PathBuf> = HashMap::new();
        Self::make(&at, &self.root, &mut made)?;
        Ok(at)
    }

    fn make(at: &std::path::Path, h: &HostNode, made: &mut HashMap<usize, std::path::PathBuf>) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::{FileExt, PermissionsExt};
        match &h.kind {
            HostKind::Symlink(t) => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), at)?,
            HostKind::Fifo => {
                let st = std::process::Command::new("mkfifo").arg(at).status()?;
                if !st.success() {
                    return Err(std::io::Error::other("mkfifo failed"));
                }
            }
            HostKind::Dir(kids) => {
                std::fs::create_dir(at)?;
                for (n, k) in kids {
                    Self::make(&at.join(std::ffi::OsStr::from_bytes(n)), k, made)?;
                }
            }
            HostKind::File { size, runs, group } => {
                if let Some(first) = group.and_then(|g| made.get(&g)) {
                    std::fs::hard_link(first, at)?;
                    return Ok(());
                }
                let f = std::fs::File::create(at)?;
                for (off, len, seed) in runs {
                    f.write_all_at(&data(*seed, *len as usize), *off)?;
                }
                f.set_len(*size)?;
                if let Some(g) = group {
                    made.insert(*g, at.to_path_buf());
                }
            }
        }
        if !matches!(h.kind, HostKind::Symlink(_)) {
            for (k, v) in &h.xattrs {
                xattr::set(at, std::ffi::OsStr::from_bytes(k), v)?;
            }
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(h.mode))?;
        }
        Ok(())
    }
}
