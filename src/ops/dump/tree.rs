//! `dump-tree`: which trees to print and in what order, the walk through
//! each (breadth or depth first, going on past blocks that cannot be read),
//! the log root, and the closing totals; or single blocks (`-b`).
//!
//! The choice of trees follows `btrfs inspect-internal dump-tree` flag for
//! flag, combinations included (`-e`, `-d`, `-u`, `-r`, `-R`, `-t`, `-b`).

use std::collections::{BTreeSet, HashSet, VecDeque};
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
    /// Level by level from the root (btrfs-progs' default, `--bfs`).
    #[default]
    BreadthFirst,
    /// Each node followed by its children, recursively (btrfs-progs `--dfs`).
    DepthFirst,
}

/// What `dump_tree_with` prints, as `btrfs inspect-internal dump-tree`'s flags.
#[derive(Clone, Debug, Default)]
pub struct DumpTreeOptions {
    /// `-t`: only this tree.
    pub tree: Option<u64>,
    /// `-b`: only these blocks (any tree, any generation), in address order.
    pub blocks: Vec<u64>,
    /// `--follow`: with `blocks`, their children too.
    pub follow: bool,
    pub order: Traversal,
    /// `-e`: the leaves of the extent and device trees.
    pub extents_only: bool,
    /// `-d`: the root, chunk (and log root) trees and the device tree.
    pub device_only: bool,
    /// `-u`: the uuid tree.
    pub uuid_only: bool,
    /// `-r`: where each tree's root block is and its level.
    pub roots_only: bool,
    /// `-R`: as `roots_only`, then the superblock's backup roots.
    pub backups: bool,
    /// `--csum-headers`: each block's stored checksum.
    pub csum_headers: bool,
    /// `--csum-items`: every data checksum of csum items.
    pub csum_items: bool,
    /// `--hide-names`: file, xattr and subvolume names (and xattr values) as HIDDEN.
    pub hide_names: bool,
}

/// Print tree `tree` (or, with `None`, every tree) like `btrfs inspect-internal
/// dump-tree [-t ID]`, breadth first.
///
/// `Some(1)` is the root tree, `Some(3)` the chunk tree, `Some(-6i64 as u64)`
/// the log root tree; any other id is looked up through its ROOT_ITEM(s) in
/// the root tree (subvolume ids too), printed under a `NAME tree key (...) `
/// line and followed by the `total bytes`/`bytes used`/`uuid` lines, as
/// btrfs-progs does; for an id without a ROOT_ITEM only the totals are printed
/// (and a warning left on the filesystem, see `Filesystem::take_warnings`). `None`
/// prints the root tree, the chunk tree, the log root tree if any, then every
/// tree that has a ROOT_ITEM in the root tree (and in the log root tree), then
/// the totals. Blocks that cannot be read print an `ERROR:`
/// line naming them and the dump goes on.
pub fn dump_tree(out: &mut dyn Write, fs: &Filesystem, tree: Option<u64>) -> Result<()> {
    dump_tree_with(out, fs, &DumpTreeOptions { tree, ..DumpTreeOptions::default() })
}

/// [`dump_tree`] with every choice of btrfs-progs' dump-tree. Blocks asked
/// for with `-b` that cannot be read are printed as far as they can be, then
/// named together in the error returned.
pub fn dump_tree_with(out: &mut dyn Write, fs: &Filesystem, opts: &DumpTreeOptions) -> Result<()> {
    let ctx = DumpCtx { csum_headers: opts.csum_headers, csum_items: opts.csum_items, hide_names: opts.hide_names, ..DumpCtx::of(fs) };
    let d = Dumper { fs, ctx, order: opts.order };
    // btrfs-progs says so on standard output, as it opens the filesystem.
    for devid in &fs.volume().missing {
        out.write_all(format!("warning, device {devid} is missing\n").as_bytes()).map_err(out_err)?;
    }
    if !opts.blocks.is_empty() {
        return d.print_blocks(out, &opts.blocks, opts.follow);
    }
    let sb = &fs.sb;
    let root_start = TreeStart::from_ptr(fs.tree_root(ROOT_TREE_OBJECTID)?, false);
    let chunk_start = TreeStart::from_ptr(fs.tree_root(CHUNK_TREE_OBJECTID)?, false);
    let log_start =
        log_root_of(fs).map(|(bytenr, level)| TreeStart { bytenr, level: Some(level), owner: TREE_LOG_OBJECTID, allow_newer: true });

    // The trees the superblock points at, unless a filter leaves them out.
    let mut roots = None;
    let mut log_roots = None;
    if !(opts.extents_only || opts.uuid_only || opts.tree.is_some()) {
        if opts.roots_only {
            let mut buf = Vec::new();
            for (name, start) in [("root tree", Some(root_start)), ("chunk tree", Some(chunk_start)), ("log root tree", log_start)] {
                if let Some(start) = start {
                    match d.read_root(start) {
                        Ok(b) => w!(buf, "{name}: {} level {}\n", b.logical, b.level()),
                        Err(e) => w!(buf, "ERROR: failed to read root block {} of the {name}: {e}\n", start.bytenr),
                    }
                }
            }
            out.write_all(&buf).map_err(out_err)?;
        } else {
            out.write_all(b"root tree\n").map_err(out_err)?;
            roots = Some(d.print_tree(out, root_start, Walk::Print)?);
            out.write_all(b"chunk tree\n").map_err(out_err)?;
            d.print_tree(out, chunk_start, Walk::Print)?;
            if let Some(log) = log_start {
                out.write_all(b"log root tree\n").map_err(out_err)?;
                log_roots = Some(d.print_tree(out, log, Walk::Print)?);
            }
        }
    }

    // Trees not reached through a ROOT_ITEM.
    let whole = |out: &mut dyn Write, name: &str, start: TreeStart| -> Result<()> {
        out.write_all(format!("{name}\n").as_bytes()).map_err(out_err)?;
        d.print_tree(out, start, Walk::Print).map(drop)
    };
    match opts.tree {
        Some(ROOT_TREE_OBJECTID) => return whole(out, "root tree", root_start),
        Some(CHUNK_TREE_OBJECTID) => return whole(out, "chunk tree", chunk_start),
        Some(TREE_LOG_OBJECTID) => {
            let Some(log) = log_start else {
                // As btrfs-progs: nothing printed, said on the side, not a failure.
                fs.warn("the filesystem has no log tree (log_root is 0)".into());
                return Ok(());
            };
            return whole(out, "log root tree", log);
        }
        _ => {}
    }

    // Every ROOT_ITEM of the root tree, then of the log root tree.
    let roots = match roots {
        Some(r) => r,
        None => d.print_tree(out, root_start, Walk::Collect)?,
    };
    let log_roots = match (log_roots, log_start) {
        (Some(r), _) => r,
        (None, Some(log)) => d.print_tree(out, log, Walk::Collect)?,
        (None, None) => Vec::new(),
    };
    let mut found = false;
    for (key, data, allow_newer) in roots.into_iter().map(|(k, v)| (k, v, false)).chain(log_roots.into_iter().map(|(k, v)| (k, v, true))) {
        if opts.tree.is_some_and(|t| t != key.objectid) {
            continue;
        }
        found = true;
        if opts.tree == Some(BLOCK_GROUP_TREE_OBJECTID) {
            // btrfs-progs prints the block group tree under a line of its own, without the totals.
            out.write_all(b"block group tree\n").map_err(out_err)?;
            d.print_rooted(out, key, &data, allow_newer, Shape::Whole)?;
            return Ok(());
        }
        if shown(opts, key.objectid) {
            let mut buf = Vec::new();
            w!(buf, "{} tree {}", tree_label(key.objectid), key_str(&key));
            let shape = if opts.extents_only {
                buf.push(b'\n');
                Shape::Leaves
            } else if opts.roots_only {
                Shape::RootLine
            } else {
                buf.extend_from_slice(b" \n");
                Shape::Whole
            };
            out.write_all(&buf).map_err(out_err)?;
            d.print_rooted(out, key, &data, allow_newer, shape)?;
        }
    }
    if let Some(id) = opts.tree {
        if !found {
            // btrfs-progs prints the totals alone; the reason goes to the side.
            fs.warn(format!("tree {} has no ROOT_ITEM in the root tree", objectid_str(id, 0)));
        }
    }
    if opts.extents_only || opts.device_only || opts.uuid_only {
        return Ok(());
    }
    if opts.backups {
        print_backup_roots(out, sb)?;
    }
    print_totals(out, sb)
}

/// Whether a tree reached through a ROOT_ITEM is printed under the
/// `-e`/`-d`/`-u` filters, as btrfs-progs decides it.
fn shown(opts: &DumpTreeOptions, objectid: u64) -> bool {
    let filtered = opts.extents_only || opts.device_only || opts.uuid_only;
    match objectid {
        EXTENT_TREE_OBJECTID => !filtered || (!opts.device_only && !opts.uuid_only),
        DEV_TREE_OBJECTID => !filtered || !opts.uuid_only,
        UUID_TREE_OBJECTID => !filtered || (!opts.extents_only && !opts.device_only),
        ROOT_TREE_DIR_OBJECTID => true,
        _ => !filtered,
    }
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

/// `-R`: the superblock's four backup root sets, as btrfs-progs prints them.
fn print_backup_roots(out: &mut dyn Write, sb: &SuperBlock) -> Result<()> {
    let mut buf = Vec::new();
    for (slot, b) in sb.super_roots.iter().enumerate() {
        w!(buf, "btrfs root backup slot {slot}\n");
        w!(buf, "\ttree root gen {} block {}\n", b.tree_root_gen.get(), b.tree_root.get());
        w!(buf, "\t\textent root gen {} block {}\n", b.extent_root_gen.get(), b.extent_root.get());
        w!(buf, "\t\tchunk root gen {} block {}\n", b.chunk_root_gen.get(), b.chunk_root.get());
        w!(buf, "\t\tdevice root gen {} block {}\n", b.dev_root_gen.get(), b.dev_root.get());
        w!(buf, "\t\tcsum root gen {} block {}\n", b.csum_root_gen.get(), b.csum_root.get());
        w!(buf, "\t\tfs root gen {} block {}\n", b.fs_root_gen.get(), b.fs_root.get());
        w!(buf, "\t\t{} used {} total {} devices\n", b.bytes_used.get(), b.total_bytes.get(), b.num_devices.get());
    }
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

/// What a walk through a tree does with its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// Print every block.
    Print,
    /// Print nothing (but the blocks that cannot be read): only collect ROOT_ITEMs.
    Collect,
    /// Print the leaves only, depth first (btrfs-progs' `-e`).
    Leaves,
}

/// How a tree found through a ROOT_ITEM is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Whole,
    Leaves,
    /// ` BYTENR level L` after the label (btrfs-progs' `-r`).
    RootLine,
}

type RootItems = Vec<(Key, Vec<u8>)>;

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
    fn read(&self, logical: u64, expect: Expect, owner: Option<u64>, allow_newer: bool) -> Result<Arc<TreeBlock>> {
        match self.fs.reader.read_block(logical, expect, owner) {
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

    fn read_root(&self, start: TreeStart) -> Result<Arc<TreeBlock>> {
        let expect = Expect { level: start.level, generation: None, max_generation: None };
        self.read(start.bytenr, expect, Some(start.owner), start.allow_newer)
    }

    /// The tree a ROOT_ITEM points at, in `shape`; the caller printed its label.
    fn print_rooted(&self, out: &mut dyn Write, key: Key, data: &[u8], allow_newer: bool, shape: Shape) -> Result<()> {
        let lead = if shape == Shape::RootLine { " " } else { "" };
        let ri = match items::parse_root_item(data) {
            Ok(ri) => ri,
            Err(e) => {
                let msg = format!("{lead}ERROR: cannot decode root item {}: {e}\n", key_str(&key));
                return out.write_all(msg.as_bytes()).map_err(out_err);
            }
        };
        let start = TreeStart { bytenr: ri.bytenr.get(), level: Some(ri.level), owner: key.objectid, allow_newer };
        match shape {
            Shape::Whole => self.print_tree(out, start, Walk::Print).map(drop),
            Shape::Leaves => self.print_tree(out, start, Walk::Leaves).map(drop),
            Shape::RootLine => {
                let line = match self.read_root(start) {
                    Ok(b) => format!(" {} level {}\n", b.logical, b.level()),
                    Err(e) => format!("{lead}ERROR: failed to read root block {}: {e}\n", start.bytenr),
                };
                out.write_all(line.as_bytes()).map_err(out_err)
            }
        }
    }

    /// Walk a tree; the ROOT_ITEMs of its leaves are returned.
    fn print_tree(&self, out: &mut dyn Write, start: TreeStart, walk: Walk) -> Result<RootItems> {
        let mut roots = Vec::new();
        let root = match self.read_root(start) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("ERROR: failed to read root block {} of tree {}: {e}\n", start.bytenr, objectid_str(start.owner, 0));
                out.write_all(msg.as_bytes()).map_err(out_err)?;
                return Ok(roots);
            }
        };
        self.walk_from(out, root, start, walk, &mut roots)?;
        Ok(roots)
    }

    fn walk_from(&self, out: &mut dyn Write, root: Arc<TreeBlock>, start: TreeStart, walk: Walk, roots: &mut RootItems) -> Result<()> {
        // A block is printed once per tree: a damaged node pointing many
        // times at one subtree would otherwise multiply the output by its
        // fan-out at every level (a hang, for eight levels of 500 pointers).
        let mut seen = HashSet::from([root.logical]);
        if self.order == Traversal::DepthFirst || walk == Walk::Leaves {
            self.dfs(out, &root, start, walk, roots, &mut seen)
        } else {
            self.bfs(out, root, start, walk, roots, &mut seen)
        }
    }

    /// `-b`: each block once, in address order, alone or with its children.
    fn print_blocks(&self, out: &mut dyn Write, blocks: &[u64], follow: bool) -> Result<()> {
        let sectorsize = u64::from(self.ctx.sectorsize);
        let mut failed = Vec::new();
        for &bytenr in blocks.iter().collect::<BTreeSet<_>>() {
            if bytenr.checked_rem(sectorsize) != Some(0) {
                failed.push(format!("tree block bytenr {bytenr} is not aligned to sectorsize {sectorsize}"));
                continue;
            }
            let block = match self.read(bytenr, Expect::default(), None, true) {
                Ok(b) => b,
                Err(e) => {
                    failed.push(format!("failed to read tree block {bytenr}: {e}"));
                    continue;
                }
            };
            let mut roots = Vec::new();
            if follow {
                let start = TreeStart { bytenr, level: Some(block.level()), owner: block.header.owner.get(), allow_newer: true };
                self.walk_from(out, block, start, Walk::Print, &mut roots)?;
            } else {
                self.emit(out, &block, Walk::Print, &mut roots)?;
            }
        }
        match failed.len() {
            0 => Ok(()),
            _ => Err(Error::NotFound(failed.join("; "))),
        }
    }

    fn emit(&self, out: &mut dyn Write, block: &TreeBlock, walk: Walk, roots: &mut RootItems) -> Result<()> {
        if walk == Walk::Print || (walk == Walk::Leaves && block.is_leaf()) {
            let mut buf = Vec::with_capacity(self.ctx.nodesize as usize * 4);
            print_block(&mut buf, &self.ctx, block);
            out.write_all(&buf).map_err(out_err)?;
        }
        if block.is_leaf() {
            for i in 0..block.nritems() {
                let k = block.key(i);
                if k.item_type == ROOT_ITEM_KEY {
                    roots.push((k, block.item_data(i).to_vec()));
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

    fn read_child(&self, out: &mut dyn Write, p: &Pending, start: TreeStart, seen: &mut HashSet<u64>) -> Result<Option<Arc<TreeBlock>>> {
        let at = || format!("tree block {} (slot {} of node {}) in tree {}", p.logical, p.slot, p.parent, objectid_str(start.owner, 0));
        let msg = if !seen.insert(p.logical) {
            format!("ERROR: {} is reached a second time: not printed again\n", at())
        } else {
            match self.read(p.logical, p.expect, Some(start.owner), start.allow_newer) {
                Ok(b) => return Ok(Some(b)),
                Err(e) => format!("ERROR: failed to read {}: {e}\n", at()),
            }
        };
        out.write_all(msg.as_bytes()).map_err(out_err)?;
        Ok(None)
    }

    fn dfs(
        &self,
        out: &mut dyn Write,
        block: &TreeBlock,
        start: TreeStart,
        walk: Walk,
        roots: &mut RootItems,
        seen: &mut HashSet<u64>,
    ) -> Result<()> {
        self.emit(out, block, walk, roots)?;
        for p in self.children(block) {
            if let Some(child) = self.read_child(out, &p, start, seen)? {
                self.dfs(out, &child, start, walk, roots, seen)?;
            }
        }
        Ok(())
    }

    fn bfs(
        &self,
        out: &mut dyn Write,
        root: Arc<TreeBlock>,
        start: TreeStart,
        walk: Walk,
        roots: &mut RootItems,
        seen: &mut HashSet<u64>,
    ) -> Result<()> {
        self.emit(out, &root, walk, roots)?;
        let mut queue: VecDeque<Pending> = self.children(&root).into();
        while let Some(p) = queue.pop_front() {
            if let Some(child) = self.read_child(out, &p, start, seen)? {
                self.emit(out, &child, walk, roots)?;
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
            if let Some(want) = progs(&["inspect-internal", "dump-tree", img.to_str().unwrap()]) {
                let want = want.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
                assert_eq!(s, want, "{name}");
            }
            let mut out = Vec::new();
            dump_tree_with(
                &mut out,
                &fs,
                &DumpTreeOptions { tree: Some(FS_TREE_OBJECTID), order: Traversal::DepthFirst, ..Default::default() },
            )
            .unwrap();
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with("fs tree key (FS_TREE ROOT_ITEM 0) \nleaf "), "{s}");
            // A tree that is not there: the totals alone, as progs, and a warning.
            let mut out = Vec::new();
            dump_tree(&mut out, &fs, Some(4242)).unwrap();
            assert!(String::from_utf8(out).unwrap().starts_with("total bytes "));
            assert!(fs.take_warnings().iter().any(|w| w.0.contains("tree 4242 has no ROOT_ITEM")));
        }
    }
}
