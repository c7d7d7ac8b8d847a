//! `dump-tree`: which trees to print and in what order, the walk through
//! each (depth or breadth first, going on past blocks that cannot be read),
//! the log root, and the closing totals.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use super::block::print_block;
use super::names::{key_str, objectid_str, tree_label};
use super::{out_err, DumpCtx};
use crate::error::{Error, Result};
use crate::format::items;
use crate::format::ondisk::*;
use crate::format::types::uuid_string;
use crate::format::Key;
use crate::fs::Filesystem;
use crate::tree::{Expect, TreeBlock};

/// How `dump_tree_with` walks a tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Traversal {
    /// Each node followed by its children, recursively (btrfs-progs `--dfs`).
    #[default]
    DepthFirst,
    /// Level by level from the root (btrfs-progs' default).
    BreadthFirst,
}

/// Print tree `tree` (or, with `None`, every tree) like `btrfs inspect-internal
/// dump-tree [-t ID] --dfs`.
///
/// `Some(1)` is the root tree, `Some(3)` the chunk tree, `Some(-6i64 as u64)`
/// the log root tree; any other id is looked up through its ROOT_ITEM(s) in
/// the root tree (subvolume ids too), printed under a `NAME tree key (...) `
/// line and followed by the `total bytes`/`bytes used`/`uuid` lines, as
/// btrfs-progs does; an id without a ROOT_ITEM is `Error::NotFound`. `None`
/// prints the root tree, the chunk tree, the log root tree if any, then every
/// tree that has a ROOT_ITEM in the root tree (and in the log root tree), then
/// the totals. Blocks that cannot be read print an `ERROR:`
/// line naming them and the dump goes on.
pub fn dump_tree(out: &mut dyn Write, fs: &Filesystem, tree: Option<u64>) -> Result<()> {
    dump_tree_with(out, fs, tree, Traversal::DepthFirst)
}

/// [`dump_tree`] with a choice of traversal order.
pub fn dump_tree_with(out: &mut dyn Write, fs: &Filesystem, tree: Option<u64>, order: Traversal) -> Result<()> {
    let d = Dumper { fs, ctx: DumpCtx::of(fs), order };
    let sb = &fs.sb;
    let root_start = TreeStart::from_ptr(fs.tree_root(ROOT_TREE_OBJECTID)?, false);
    let log_start =
        log_root_of(fs).map(|(bytenr, level)| TreeStart { bytenr, level: Some(level), owner: TREE_LOG_OBJECTID, allow_newer: true });
    match tree {
        Some(ROOT_TREE_OBJECTID) => {
            out.write_all(b"root tree\n").map_err(out_err)?;
            d.print_tree(out, root_start, None)?;
        }
        Some(CHUNK_TREE_OBJECTID) => {
            out.write_all(b"chunk tree\n").map_err(out_err)?;
            d.print_tree(out, TreeStart::from_ptr(fs.tree_root(CHUNK_TREE_OBJECTID)?, false), None)?;
        }
        Some(TREE_LOG_OBJECTID) => {
            let Some(log) = log_start else {
                return Err(Error::NotFound("the filesystem has no log tree (log_root is 0)".into()));
            };
            out.write_all(b"log root tree\n").map_err(out_err)?;
            d.print_tree(out, log, None)?;
        }
        Some(id) => {
            let root = fs.tree_root(ROOT_TREE_OBJECTID)?;
            let items = fs.reader.range(&root, Key::new(id, ROOT_ITEM_KEY, 0), Key::new(id, ROOT_ITEM_KEY, u64::MAX))?;
            if items.is_empty() {
                return Err(Error::NotFound(format!("tree {id} has no ROOT_ITEM in the root tree")));
            }
            for (key, data) in items {
                d.print_rooted_tree(out, key, &data, false)?;
            }
            print_totals(out, sb)?;
        }
        None => {
            let mut roots = Vec::new();
            out.write_all(b"root tree\n").map_err(out_err)?;
            d.print_tree(out, root_start, Some(&mut roots))?;
            out.write_all(b"chunk tree\n").map_err(out_err)?;
            d.print_tree(out, TreeStart::from_ptr(fs.tree_root(CHUNK_TREE_OBJECTID)?, false), None)?;
            let mut log_roots = Vec::new();
            if let Some(log) = log_start {
                out.write_all(b"log root tree\n").map_err(out_err)?;
                d.print_tree(out, log, Some(&mut log_roots))?;
            }
            for (key, data) in roots {
                d.print_rooted_tree(out, key, &data, false)?;
            }
            for (key, data) in log_roots {
                d.print_rooted_tree(out, key, &data, true)?;
            }
            print_totals(out, sb)?;
        }
    }
    Ok(())
}

/// Where the log root tree starts, if there is one. A log sync (fsync) writes
/// only the primary superblock copy, so the mirrors carry the same generation
/// with `log_root` 0; when the chosen superblock has no log root, look at the
/// primary copies of the same generation.
fn log_root_of(fs: &Filesystem) -> Option<(u64, u8)> {
    let sb = &fs.sb;
    if sb.log_root.get() != 0 {
        return Some((sb.log_root.get(), sb.log_root_level));
    }
    for dev in fs.volume().devices.values() {
        let mut raw = vec![0u8; SUPER_INFO_SIZE];
        if dev.read_raw_at(SUPER_INFO_OFFSET, &mut raw).is_err() {
            continue;
        }
        if let Ok(p) = crate::format::superblock::parse_super(&raw) {
            if p.fsid == sb.fsid && p.generation.get() == sb.generation.get() && p.log_root.get() != 0 {
                return Some((p.log_root.get(), p.log_root_level));
            }
        }
    }
    None
}

/// The closing lines btrfs-progs prints after trees found through ROOT_ITEMs.
fn print_totals(out: &mut dyn Write, sb: &SuperBlock) -> Result<()> {
    let mut buf = Vec::new();
    w!(buf, "total bytes {}\n", sb.total_bytes.get());
    w!(buf, "bytes used {}\n", sb.bytes_used.get());
    w!(buf, "uuid {}\n", uuid_string(&sb.fsid));
    out.write_all(&buf).map_err(out_err)
}

/// Where a tree to print starts.
#[derive(Clone, Copy, Debug)]
struct TreeStart {
    bytenr: u64,
    /// Checked against the block when known.
    level: Option<u8>,
    owner: u64,
    /// Log trees are written after the superblock's generation.
    allow_newer: bool,
}

impl TreeStart {
    fn from_ptr(p: crate::tree::RootPtr, allow_newer: bool) -> Self {
        TreeStart { bytenr: p.bytenr, level: Some(p.level), owner: p.owner, allow_newer }
    }
}

struct Dumper<'a> {
    fs: &'a Filesystem,
    ctx: DumpCtx,
    order: Traversal,
}

/// A child still to print: where it is and what its parent says about it.
struct Pending {
    logical: u64,
    expect: Expect,
    parent: u64,
    slot: usize,
}

impl Dumper<'_> {
    fn read(&self, logical: u64, expect: Expect, owner: u64, allow_newer: bool) -> Result<Arc<TreeBlock>> {
        match self.fs.reader.read_block(logical, expect, Some(owner)) {
            Ok(b) => Ok(b),
            Err(e) if allow_newer => {
                let copies = self.fs.volume().num_copies(logical).unwrap_or(1);
                for mirror in 0..copies {
                    if let Ok(b) = self.fs.reader.read_copy(logical, mirror, expect) {
                        return Ok(Arc::new(b));
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `NAME tree key (ID ROOT_ITEM OFFSET) ` and the tree a ROOT_ITEM points at.
    fn print_rooted_tree(&self, out: &mut dyn Write, key: Key, data: &[u8], allow_newer: bool) -> Result<()> {
        let mut buf = Vec::new();
        w!(buf, "{} tree {} \n", tree_label(key.objectid), key_str(&key));
        let ri = match items::parse_root_item(data) {
            Ok(ri) => ri,
            Err(e) => {
                w!(buf, "ERROR: cannot decode root item {}: {e}\n", key_str(&key));
                return out.write_all(&buf).map_err(out_err);
            }
        };
        out.write_all(&buf).map_err(out_err)?;
        let start = TreeStart { bytenr: ri.bytenr.get(), level: Some(ri.level), owner: key.objectid, allow_newer };
        self.print_tree(out, start, None)
    }

    /// Print every block of a tree. Leaves' ROOT_ITEMs go to `collect` when given.
    fn print_tree(&self, out: &mut dyn Write, start: TreeStart, mut collect: Option<&mut Vec<(Key, Vec<u8>)>>) -> Result<()> {
        let expect = Expect { level: start.level, generation: None, max_generation: None };
        let root = match self.read(start.bytenr, expect, start.owner, start.allow_newer) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("ERROR: failed to read root block {} of tree {}: {e}\n", start.bytenr, objectid_str(start.owner, 0));
                return out.write_all(msg.as_bytes()).map_err(out_err);
            }
        };
        match self.order {
            Traversal::DepthFirst => self.dfs(out, &root, start, &mut collect),
            Traversal::BreadthFirst => self.bfs(out, root, start, &mut collect),
        }
    }

    fn emit(&self, out: &mut dyn Write, block: &TreeBlock, collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>) -> Result<()> {
        let mut buf = Vec::with_capacity(self.ctx.nodesize as usize * 4);
        print_block(&mut buf, &self.ctx, block);
        out.write_all(&buf).map_err(out_err)?;
        if let Some(c) = collect.as_mut() {
            if block.is_leaf() {
                for i in 0..block.nritems() {
                    let k = block.key(i);
                    if k.item_type == ROOT_ITEM_KEY {
                        c.push((k, block.item_data(i).to_vec()));
                    }
                }
            }
        }
        Ok(())
    }

    fn children(&self, block: &TreeBlock) -> Vec<Pending> {
        if block.is_leaf() {
            return Vec::new();
        }
        (0..block.nritems())
            .map(|slot| {
                let (_, ptr, gen) = block.ptr(slot);
                Pending {
                    logical: ptr,
                    expect: Expect { level: Some(block.level() - 1), generation: Some(gen), max_generation: None },
                    parent: block.logical,
                    slot,
                }
            })
            .collect()
    }

    fn read_child(&self, out: &mut dyn Write, p: &Pending, start: TreeStart) -> Result<Option<Arc<TreeBlock>>> {
        match self.read(p.logical, p.expect, start.owner, start.allow_newer) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                let msg = format!(
                    "ERROR: failed to read tree block {} (slot {} of node {}) in tree {}: {e}\n",
                    p.logical,
                    p.slot,
                    p.parent,
                    objectid_str(start.owner, 0)
                );
                out.write_all(msg.as_bytes()).map_err(out_err)?;
                Ok(None)
            }
        }
    }

    fn dfs(&self, out: &mut dyn Write, block: &TreeBlock, start: TreeStart, collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>) -> Result<()> {
        self.emit(out, block, collect)?;
        for p in self.children(block) {
            if let Some(child) = self.read_child(out, &p, start)? {
                self.dfs(out, &child, start, collect)?;
            }
        }
        Ok(())
    }

    fn bfs(
        &self,
        out: &mut dyn Write,
        root: Arc<TreeBlock>,
        start: TreeStart,
        collect: &mut Option<&mut Vec<(Key, Vec<u8>)>>,
    ) -> Result<()> {
        self.emit(out, &root, collect)?;
        let mut queue: VecDeque<Pending> = self.children(&root).into();
        while let Some(p) = queue.pop_front() {
            if let Some(child) = self.read_child(out, &p, start)? {
                self.emit(out, &child, collect)?;
                queue.extend(self.children(&child));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{mkfs, open_fs, progs};
    use super::*;

    #[test]
    fn root_tree_lists_root_items() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = mkfs(dir.path(), "a.img", &[]) else { return };
        let fs = open_fs(&img);
        let mut out = Vec::new();
        dump_tree(&mut out, &fs, Some(ROOT_TREE_OBJECTID)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("root tree\nleaf "), "{s}");
        for k in ["(EXTENT_TREE ROOT_ITEM 0)", "(DEV_TREE ROOT_ITEM 0)", "(FS_TREE ROOT_ITEM 0)", "(CSUM_TREE ROOT_ITEM 0)"] {
            assert!(s.contains(k), "missing {k} in\n{s}");
        }
        assert!(s.contains("location key (FS_TREE ROOT_ITEM 18446744073709551615) type DIR"), "{s}");
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn whole_dump_matches_btrfs_progs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, extra) in [("a.img", &[][..]), ("x.img", &["--csum", "xxhash", "-O", "^skinny-metadata"][..])] {
            let Some(img) = mkfs(dir.path(), name, extra) else { return };
            let fs = open_fs(&img);
            let mut out = Vec::new();
            dump_tree(&mut out, &fs, None).unwrap();
            let s = String::from_utf8(out).unwrap();
            for want in ["root tree\n", "chunk tree\n", "extent tree key (EXTENT_TREE ROOT_ITEM 0) \n", "total bytes 314572800\n"] {
                assert!(s.contains(want), "missing {want:?} in\n{s}");
            }
            assert!(!s.contains("ERROR"), "{s}");
            if let Some(want) = progs(&["inspect-internal", "dump-tree", "--dfs", img.to_str().unwrap()]) {
                let want = want.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
                assert_eq!(s, want, "{name}");
            }
            let mut out = Vec::new();
            dump_tree_with(&mut out, &fs, Some(FS_TREE_OBJECTID), Traversal::BreadthFirst).unwrap();
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with("fs tree key (FS_TREE ROOT_ITEM 0) \nleaf "), "{s}");
            assert!(matches!(dump_tree(&mut Vec::new(), &fs, Some(4242)), Err(Error::NotFound(_))));
        }
    }
}
