//! The model of random-operation testing, shared by both entrances (the
//! library test module and `tests/model.rs`, which includes this file): a
//! reproducible generator of operations, an in-memory tree every operation is
//! applied to as well, the error each operation must end in, a text form of
//! operation lists (regression seeds are pasted from it) and a delta-debugging
//! minimizer. Nothing here knows btrs: the model says what btrs's commands
//! (`ops::write`) must do, from their documented behaviour and the kernel's
//! limits, computed here on their own.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------- randomness

/// splitmix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (0 when n is 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability num/den.
    pub(super) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub(super) fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len() as u64) as usize)
        }
    }
    /// Index by weights.
    pub(super) fn weighted(&mut self, w: &[u64]) -> usize {
        let total: u64 = w.iter().sum();
        let mut x = self.below(total);
        for (i, &k) in w.iter().enumerate() {
            if x < k {
                return i;
            }
            x -= k;
        }
        w.len() - 1
    }
}

/// The bytes of a write: `len` bytes from `seed`. A quarter of the seeds give
/// text-like, compressible bytes, the rest noise.
pub(super) fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if seed % 4 == 0 {
        let words: [&[u8]; 6] = [b"btrfs ", b"model ", b"extent ", b"sector ", b"\n", b"0123456789 "];
        let mut r = Rng::new(seed);
        let mut i = 0;
        while i < len {
            let w = words[r.below(6) as usize];
            let n = w.len().min(len - i);
            out[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
        return out;
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    out
}

/// Printable bytes (an xattr value the command line can carry).
pub(super) fn printable(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| b'!' + r.below(94) as u8).collect()
}

// ---------------------------------------------------------------- the kernel's limits

pub(super) const S_IFMT: u32 = 0o170000;
pub(super) const S_IFREG: u32 = 0o100000;
pub(super) const S_IFDIR: u32 = 0o040000;
pub(super) const S_IFLNK: u32 = 0o120000;
pub(super) const S_IFIFO: u32 = 0o010000;
/// btrfs inode flags (BTRFS_INODE_NODATASUM, BTRFS_INODE_NODATACOW).
pub(super) const NODATASUM: u64 = 1;
pub(super) const NODATACOW: u64 = 2;
pub(super) const MAX_FILE: u64 = i64::MAX as u64;
pub(super) const NAME_MAX: usize = 255;
/// Bytes btrs reads into one step of a streaming write (`ops::write`).
pub(super) const WRITE_STEP: u64 = 16 << 20;
/// The kernel's default max_inline; btrs keeps files this small inline.
pub(super) const MAX_INLINE: u64 = 2048;

/// BTRFS_MAX_ITEM_SIZE: a leaf less its header (101) and one item (25).
pub(super) fn max_item(nodesize: u32) -> usize {
    nodesize as usize - 101 - 25
}
/// BTRFS_MAX_XATTR_SIZE: one dir item (30 bytes) and its name and value.
pub(super) fn max_xattr(nodesize: u32) -> usize {
    max_item(nodesize) - 30
}
/// Longest symlink target: one inline extent (21-byte header), below a sector.
pub(super) fn max_symlink(nodesize: u32, sectorsize: u32) -> usize {
    (max_item(nodesize) - 21).min(sectorsize as usize - 1)
}

// ---------------------------------------------------------------- errors

/// What a refused operation is, the way a system call names it. btrs has no
/// errno: `Error::NotFound` and `Error::NoSpace` are typed, the rest are
/// `Error::Invalid`/`Error::Unsupported` told apart by their text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ErrClass {
    NotFound,
    Exists,
    NotEmpty,
    CrossSubvol,
    NoSpace,
    NameTooLong,
    NotAName,
    TooBig,
    XattrLimit,
    /// user.* xattrs on something other than a regular file or directory.
    XattrType,
    /// An xattr name in no namespace the kernel has (or nothing after it).
    XattrNamespace,
    SymlinkLimit,
    NotDir,
    NotRegular,
    ReadOnly,
    IntoItself,
    DirLink,
    Subvol,
    Stub,
    PutDestNotDir,
    /// Known gap: part of a compressed extent (the engine's two texts).
    GapCompressed(&'static str),
    /// Known gap: a name past what one inode ref item holds.
    GapExtref,
    /// Known gap: removing a name the kernel stored as an extended ref.
    GapExtrefStored,
    Other(String),
}

pub(super) const GAP_REWRITE: &str = "rewriting part of a compressed extent";
pub(super) const GAP_PARTIAL: &str = "partially overwriting a compressed extent";

/// The class of an error from its text (the library's `Display`, or what the
/// command line printed after "btrs: error: ").
pub(super) fn classify(msg: &str) -> ErrClass {
    let has = |s: &str| msg.contains(s);
    if has("no space left on the filesystem") {
        ErrClass::NoSpace
    } else if has(GAP_REWRITE) {
        ErrClass::GapCompressed(GAP_REWRITE)
    } else if has(GAP_PARTIAL) {
        ErrClass::GapCompressed(GAP_PARTIAL)
    } else if has("too many hard links in one directory (extended refs)") {
        ErrClass::GapExtref
    } else if has("name stored as an extended inode ref") {
        ErrClass::GapExtrefStored
    } else if has("past the largest file size") || (has("--offset") && has("is not in 0..=")) {
        ErrClass::TooBig
    } else if has("user.* xattrs are only allowed") {
        ErrClass::XattrType
    } else if has("not in a namespace the kernel has") || has("nothing after the namespace") {
        ErrClass::XattrNamespace
    } else if has("empty xattr name") || has("xattr name of") || has("name and value of") || (has("xattr") && has("value of")) {
        ErrClass::XattrLimit
    } else if has("symlink target of") || has("empty symlink target") || has("symlink target contains") {
        ErrClass::SymlinkLimit
    } else if has("file name") && has("bytes: at most") {
        ErrClass::NameTooLong
    } else if has("not a name") || has("empty file name") || (has("file name") && has("is reserved")) {
        ErrClass::NotAName
    } else if has("exists and is not a directory") {
        ErrClass::PutDestNotDir
    } else if has("different subvolumes") {
        ErrClass::CrossSubvol
    } else if has("directory not empty") {
        ErrClass::NotEmpty
    } else if has("cannot move a directory into itself") {
        ErrClass::IntoItself
    } else if has("hard links to directories are not allowed") {
        ErrClass::DirLink
    } else if has("is read-only") {
        ErrClass::ReadOnly
    } else if has("deleted, not yet cleaned up") {
        ErrClass::Stub
    } else if has("is a subvolume") || has("removing a subvolume") {
        ErrClass::Subvol
    } else if has("is not a regular file") {
        ErrClass::NotRegular
    } else if has("is not a directory") || has("a component is not a directory") {
        ErrClass::NotDir
    } else if has("already exists") || msg.trim_end().ends_with(" exists") {
        ErrClass::Exists
    } else if msg.starts_with("not found: ") || has("btrs: error: not found: ") {
        ErrClass::NotFound
    } else {
        ErrClass::Other(msg.to_string())
    }
}

// ---------------------------------------------------------------- file contents

/// Model pages: big enough that a model clone is cheap, small enough that a
/// small write copies little.
const MPAGE: u64 = 64 << 10;

/// A compressed extent item of a file (the kernel made it): its file range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Citem {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) inline: bool,
}

impl Citem {
    fn end(&self) -> u64 {
        self.start + self.len
    }
    /// Overlaps [s, e) the way the engine's extent search counts it.
    fn touches(&self, s: u64, e: u64) -> bool {
        self.start < e && self.end() > s
    }
}

/// A file's bytes: sparse pages shared between model copies.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileData {
    pub(crate) size: u64,
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Compressed extent items (only images the kernel wrote have them).
    pub(crate) compressed: Vec<Citem>,
    /// Recent write edges: where the generator aims next (not compared).
    pub(crate) edges: Vec<u64>,
}

impl FileData {
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let at = off + pos as u64;
            let pi = at / MPAGE;
            let po = (at % MPAGE) as usize;
            let n = (MPAGE as usize - po).min(data.len() - pos);
            let page = self.pages.entry(pi).or_insert_with(|| Arc::new(vec![0u8; MPAGE as usize]));
            Arc::make_mut(page)[po..po + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        self.size = self.size.max(off + data.len() as u64);
        self.edge(off);
        self.edge(off + data.len() as u64);
    }

    fn edge(&mut self, e: u64) {
        if self.edges.len() >= 8 {
            self.edges.remove(0);
        }
        self.edges.push(e);
    }

    /// New size; bytes past it read as zeros if the file grows again.
    pub(crate) fn truncate(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(MPAGE);
            self.pages.retain(|&k, _| k < first_gone);
            if size % MPAGE != 0 {
                if let Some(p) = self.pages.get_mut(&(size / MPAGE)) {
                    Arc::make_mut(p)[(size % MPAGE) as usize..].fill(0);
                }
            }
        }
        self.size = size;
        self.edge(size);
    }

    /// Bytes of [off, off+len) (zeros in holes and past the end).
    pub(crate) fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let end = off + len as u64;
        for (&pi, p) in self.pages.range(off / MPAGE..end.div_ceil(MPAGE)) {
            let ps = pi * MPAGE;
            let s = ps.max(off);
            let e = (ps + MPAGE).min(end);
            if s < e {
                out[(s - off) as usize..(e - off) as usize].copy_from_slice(&p[(s - ps) as usize..(e - ps) as usize]);
            }
        }
        out
    }

    /// Whether [off, off+len) is all zeros.
    pub(crate) fn zero(&self, off: u64, len: u64) -> bool {
        let end = off.saturating_add(len);
        for (&pi, p) in self.pages.range(off / MPAGE..end.div_ceil(MPAGE)) {
            let ps = pi * MPAGE;
            let s = ps.max(off);
            let e = (ps + MPAGE).min(end);
            if s < e && p[(s - ps) as usize..(e - ps) as usize].iter().any(|&b| b != 0) {
                return false;
            }
        }
        true
    }

    /// Bytes held in pages (what the data takes, roughly).
    pub(crate) fn held(&self) -> u64 {
        self.pages.len() as u64 * MPAGE
    }
}

// ---------------------------------------------------------------- the tree

pub(super) type Id = u32;

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) id: Id,
    /// Creation order (the DIR_INDEX order the engine walks).
    pub(crate) index: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    File(FileData),
    Dir {
        entries: BTreeMap<Vec<u8>, Entry>,
        next_index: u64,
        parent: Option<Id>,
    },
    /// A snapshot's stand-in for a subvolume nested in what it copied: an
    /// empty read-only directory.
    Stub,
    Symlink(Vec<u8>),
    Special,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) flags: u64,
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) subvol: u64,
    pub(crate) nlink: u32,
}

impl Node {
    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir { .. } | Kind::Stub)
    }
    pub(crate) fn file(&self) -> Option<&FileData> {
        match &self.kind {
            Kind::File(f) => Some(f),
            _ => None,
        }
    }
}

/// Which known gaps (being closed in branch `gaps`) the engine now handles:
/// off, the model expects today's refusal; on, success.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gaps {
    pub(crate) compressed_partial: bool,
    pub(crate) extref: bool,
    pub(crate) compressed_write: bool,
}

impl Gaps {
    /// From `BTRS_MODEL_GAPS` (comma separated: compressed, extref,
    /// compress-write, all, none); unset: all (every gap is filled now).
    pub(crate) fn from_env() -> Gaps {
        let v = std::env::var("BTRS_MODEL_GAPS").unwrap_or_else(|_| "all".into());
        let on = |k: &str| v.split(',').any(|x| x.trim() == k || x.trim() == "all");
        Gaps { compressed_partial: on("compressed"), extref: on("extref"), compressed_write: on("compress-write") }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) nodesize: u32,
    pub(crate) sectorsize: u32,
    pub(crate) gaps: Gaps,
}

#[derive(Clone, Debug)]
pub(crate) struct Subvol {
    pub(crate) ro: bool,
    pub(crate) root: Id,
}

#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub(crate) nodes: BTreeMap<Id, Arc<Node>>,
    pub(crate) root: Id,
    next_id: Id,
    pub(crate) subvols: BTreeMap<u64, Subvol>,
    pub(crate) params: Params,
    /// Names the kernel stored as extended inode refs: (directory, name).
    pub(crate) extref: BTreeSet<(Id, Vec<u8>)>,
}

/// The top-level subvolume's id in the model (the kernel's FS_TREE).
pub(super) const TOP: u64 = 5;

/// What an operation did to the model: its end state or the refusal, and
/// the states committed on the way (a long write commits in steps).
pub(crate) struct Applied {
    pub(crate) result: Result<Model, ErrClass>,
    pub(crate) commits: Vec<Model>,
}

impl Model {
    /// An empty filesystem: the root directory (0755, root's).
    pub(crate) fn new(params: Params) -> Model {
        let root = Node {
            kind: Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: None },
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            flags: 0,
            xattrs: BTreeMap::new(),
            subvol: TOP,
            nlink: 1,
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(1, Arc::new(root));
        let mut subvols = BTreeMap::new();
        subvols.insert(TOP, Subvol { ro: false, root: 1 });
        Model { nodes, root: 1, next_id: 2, subvols, params, extref: BTreeSet::new() }
    }

    pub(crate) fn node(&self, id: Id) -> &Node {
        &self.nodes[&id]
    }
    pub(crate) fn node_mut(&mut self, id: Id) -> &mut Node {
        Arc::make_mut(self.nodes.get_mut(&id).expect("model node"))
    }

    pub(crate) fn add_node(&mut self, n: Node) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(id, Arc::new(n));
        id
    }

    pub(crate) fn entries(&self, dir: Id) -> Option<&BTreeMap<Vec<u8>, Entry>> {
        match &self.node(dir).kind {
            Kind::Dir { entries, .. } => Some(entries),
            _ => None,
        }
    }

    /// A directory's i_size: twice the bytes of its entry names.
    pub(crate) fn dir_size(&self, dir: Id) -> u64 {
        self.entries(dir).map_or(0, |e| e.keys().map(|k| 2 * k.len() as u64).sum())
    }

    fn is_subvol_root(&self, id: Id) -> bool {
        self.subvols.values().any(|s| s.root == id)
    }

    /// Whether the entry `name` of `dir` leads out of `dir`'s tree (a
    /// subvolume, or a snapshot's stub of one).
    fn entry_is_subvol(&self, dir: Id, child: Id) -> bool {
        matches!(self.node(child).kind, Kind::Stub) || self.node(child).subvol != self.node(dir).subvol
    }

    fn ro(&self, id: Id) -> bool {
        self.subvols.get(&self.node(id).subvol).is_some_and(|s| s.ro)
    }

    // ------------------------------------------------ the engine's lookups

    /// `Transaction::lookup_name`: subvolume entries are refused.
    fn lookup_name(&self, dir: Id, name: &[u8]) -> Result<Option<Id>, ErrClass> {
        let Some(e) = self.entries(dir).and_then(|e| e.get(name)) else { return Ok(None) };
        if self.entry_is_subvol(dir, e.id) {
            return Err(ErrClass::Subvol);
        }
        Ok(Some(e.id))
    }

    /// `Transaction::lookup`: steps into subvolumes; a stub is refused.
    fn lookup(&self, dir: Id, name: &[u8]) -> Result<Option<Id>, ErrClass> {
        let Some(e) = self.entries(dir).and_then(|e| e.get(name)) else { return Ok(None) };
        if matches!(self.node(e.id).kind, Kind::Stub) {
            return Err(ErrClass::Stub);
        }
        Ok(Some(e.id))
    }

    /// `Transaction::resolve`.
    fn resolve(&self, path: &str) -> Result<Option<Id>, ErrClass> {
        let mut cur = self.root;
        for comp in components(path) {
            if !self.node(cur).is_dir() {
                return Err(ErrClass::NotDir);
            }
            match self.lookup(cur, comp.as_bytes())? {
                Some(x) => cur = x,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Where a path leads as a reader sees it (`Filesystem::resolve`: a stub
    /// is an empty directory), without errors.
    pub(crate) fn find(&self, path: &str) -> Option<Id> {
        let mut cur = self.root;
        for comp in components(path) {
            cur = self.entries(cur)?.get(comp.as_bytes())?.id;
        }
        Some(cur)
    }

    fn ensure_writable(&self, id: Id) -> Result<(), ErrClass> {
        if self.ro(id) {
            Err(ErrClass::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// `ops::write::dir_at`.
    fn dir_at(&mut self, path: &str, parents: bool) -> Result<Id, ErrClass> {
        let mut cur = self.root;
        for comp in components(path) {
            cur = match self.lookup(cur, comp.as_bytes())? {
                Some(p) if self.node(p).is_dir() => p,
                Some(_) => return Err(ErrClass::NotDir),
                None if parents => {
                    check_name(comp.as_bytes())?;
                    self.ensure_writable(cur)?;
                    self.create(
                        cur,
                        comp.as_bytes(),
                        S_IFDIR | 0o755,
                        0,
                        Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: Some(cur) },
                    )?
                }
                None => return Err(ErrClass::NotFound),
            };
        }
        self.ensure_writable(cur)?;
        Ok(cur)
    }

    /// `Transaction::add_link` for an existing node.
    fn add_link(&mut self, dir: Id, name: &[u8], id: Id) -> Result<(), ErrClass> {
        check_name(name)?;
        if self.lookup_name(dir, name)?.is_some() {
            return Err(ErrClass::Exists);
        }
        if !matches!(self.node(dir).kind, Kind::Dir { .. }) {
            return Err(ErrClass::NotDir);
        }
        // One INODE_REF item holds the node's names in this directory;
        // btrs refuses past half a leaf (the kernel would go on in
        // extended refs).
        if !self.params.gaps.extref {
            let refs: usize = self
                .entries(dir)
                .map(|e| e.iter().filter(|(n, x)| x.id == id && !self.extref.contains(&(dir, n.to_vec()))).map(|(n, _)| n.len() + 10).sum())
                .unwrap_or(0);
            if refs + name.len() + 10 > self.params.nodesize as usize / 2 {
                return Err(ErrClass::GapExtref);
            }
        }
        let Kind::Dir { entries, next_index, .. } = &mut self.node_mut(dir).kind else { unreachable!() };
        let index = *next_index;
        *next_index += 1;
        entries.insert(name.to_vec(), Entry { id, index });
        if let Kind::Dir { parent, .. } = &mut self.node_mut(id).kind {
            *parent = Some(dir);
        }
        Ok(())
    }

    /// `Transaction::remove_link`: the name goes, the node stays.
    fn remove_link(&mut self, dir: Id, name: &[u8]) -> Result<Id, ErrClass> {
        let id = self.entries(dir).and_then(|e| e.get(name)).map(|e| e.id).ok_or(ErrClass::NotFound)?;
        if self.entry_is_subvol(dir, id) {
            return Err(ErrClass::Subvol);
        }
        if self.extref.contains(&(dir, name.to_vec())) {
            if !self.params.gaps.extref {
                return Err(ErrClass::GapExtrefStored);
            }
            self.extref.remove(&(dir, name.to_vec()));
        }
        let Kind::Dir { entries, .. } = &mut self.node_mut(dir).kind else { unreachable!() };
        entries.remove(name);
        Ok(id)
    }

    /// `Transaction::create`.
    fn create(&mut self, dir: Id, name: &[u8], mode: u32, flags: u64, kind: Kind) -> Result<Id, ErrClass> {
        let subvol = self.node(dir).subvol;
        let id = self.add_node(Node { kind, mode, uid: 0, gid: 0, flags, xattrs: BTreeMap::new(), subvol, nlink: 1 });
        self.add_link(dir, name, id)?;
        Ok(id)
    }

    /// `Transaction::unlink`.
    fn unlink(&mut self, dir: Id, name: &[u8]) -> Result<(), ErrClass> {
        let id = self.lookup_name(dir, name)?.ok_or(ErrClass::NotFound)?;
        if self.node(id).is_dir() && self.dir_size(id) != 0 {
            return Err(ErrClass::NotEmpty);
        }
        self.remove_link(dir, name)?;
        let n = self.node(id).nlink.saturating_sub(1);
        if n == 0 || self.node(id).is_dir() {
            self.nodes.remove(&id);
        } else {
            self.node_mut(id).nlink = n;
        }
        Ok(())
    }

    /// `ops::write::rm_tree`: children first, in creation order.
    fn rm_tree(&mut self, dir: Id, name: &[u8]) -> Result<(), ErrClass> {
        if let Some(id) = self.lookup_name(dir, name)? {
            if matches!(self.node(id).kind, Kind::Dir { .. }) {
                let mut kids: Vec<(u64, Vec<u8>)> =
                    self.entries(id).map(|e| e.iter().map(|(n, x)| (x.index, n.clone())).collect()).unwrap_or_default();
                kids.sort();
                for (_, k) in kids {
                    self.rm_tree(id, &k)?;
                }
            }
        }
        self.unlink(dir, name)
    }

    // ------------------------------------------------ operations

    /// Apply `op` as btrs must: the new state, or the refusal (the state is
    /// then what it was, or the last of `commits`).
    pub(crate) fn apply(&self, op: &Op) -> Applied {
        let mut m = self.clone();
        let mut commits = Vec::new();
        let r = match op {
            Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, .. } => {
                m.write(path, *off, *len, *seed, *direct, *truncate, *parents, *create, *commit_every, &mut commits)
            }
            Op::Truncate { path, size } => m.write(path, *size, 0, 0, false, true, false, Create::Plain, false, &mut commits),
            Op::Mkdir { path, parents } => m.mkdir(path, *parents),
            Op::Rm { paths, recursive } => m.rm(paths, *recursive),
            Op::Mv { src, dst } => m.mv(src, dst),
            Op::Link { target, link } => m.link(target, link),
            Op::Symlink { target, link } => m.symlink(target, link),
            Op::SetXattr { path, name, value } => m.setxattr(path, name, value.map(|(n, s)| printable(s, n as usize))),
            Op::Put { dest, seed } => m.put(dest, &HostTree::generate(*seed)),
            Op::Commit { .. } | Op::Abort | Op::Crash { .. } | Op::Check => Ok(()),
        };
        Applied { result: r.map(|()| m), commits }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        path: &str,
        off: u64,
        len: u64,
        seed: u64,
        direct: bool,
        truncate: bool,
        parents: bool,
        create: Create,
        commit_every: bool,
        commits: &mut Vec<Model>,
    ) -> Result<(), ErrClass> {
        if off.checked_add(len).is_none_or(|e| e > MAX_FILE) {
            return Err(ErrClass::TooBig);
        }
        let (dir, name) = split(path)?;
        let d = self.dir_at(&dir, parents)?;
        let id = match self.lookup_name(d, &name)? {
            Some(id) if matches!(self.node(id).kind, Kind::File(_)) => id,
            Some(_) => return Err(ErrClass::NotRegular),
            None => {
                let flags = match create {
                    Create::Plain => 0,
                    Create::NoSum => NODATASUM,
                    Create::NoCow => NODATASUM | NODATACOW,
                };
                self.create(d, &name, S_IFREG | 0o644, flags, Kind::File(FileData::default()))?
            }
        };
        let ss = self.params.sectorsize as u64;
        let gaps = self.params.gaps;
        if truncate {
            let Kind::File(f) = &mut self.node_mut(id).kind else { unreachable!() };
            truncate_file(f, off, ss, gaps)?;
        }
        if len == 0 {
            return Ok(());
        }
        // The steps of the streaming write, committing as asked.
        let step = len.next_multiple_of(4096).clamp(4096, WRITE_STEP);
        let bytes = data(seed, len as usize);
        let (mut done, mut last) = (0u64, 0u64);
        while done < len {
            let n = step.min(len - done);
            let Kind::File(f) = &mut self.node_mut(id).kind else { unreachable!() };
            write_file(f, off + done, &bytes[done as usize..(done + n) as usize], ss, direct, gaps)?;
            done += n;
            if commit_every && done - last >= WRITE_STEP {
                commits.push(self.clone());
                last = done;
            }
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &str, parents: bool) -> Result<(), ErrClass> {
        if parents {
            self.dir_at(path, true)?;
        } else {
            let (dir, name) = split(path)?;
            let d = self.dir_at(&dir, false)?;
            self.create(d, &name, S_IFDIR | 0o755, 0, Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: Some(d) })?;
        }
        Ok(())
    }

    fn rm(&mut self, paths: &[String], recursive: bool) -> Result<(), ErrClass> {
        for p in paths {
            let (dir, name) = split(p)?;
            let d = self.dir_at(&dir, false)?;
            if recursive {
                self.rm_tree(d, &name)?;
            } else {
                self.unlink(d, &name)?;
            }
        }
        Ok(())
    }

    fn mv(&mut self, src: &str, dst: &str) -> Result<(), ErrClass> {
        let (sd, sn) = split(src)?;
        let sdir = self.dir_at(&sd, false)?;
        let (ddir, dn) = match self.resolve(dst)? {
            Some(p) if self.node(p).is_dir() => {
                self.ensure_writable(p)?;
                (p, sn.clone())
            }
            _ => {
                let (dd, dn) = split(dst)?;
                (self.dir_at(&dd, false)?, dn)
            }
        };
        if self.node(ddir).subvol != self.node(sdir).subvol {
            return Err(ErrClass::CrossSubvol);
        }
        // `Transaction::rename`.
        let id = self.lookup_name(sdir, &sn)?.ok_or(ErrClass::NotFound)?;
        let is_dir = self.node(id).is_dir();
        if let Some(t) = self.lookup_name(ddir, &dn)? {
            if t == id {
                return Ok(());
            }
            if self.node(t).is_dir() || is_dir {
                return Err(ErrClass::Exists);
            }
            self.unlink(ddir, &dn)?;
        }
        if is_dir {
            let mut cur = ddir;
            while !self.is_subvol_root(cur) {
                if cur == id {
                    return Err(ErrClass::IntoItself);
                }
                let Kind::Dir { parent: Some(p), .. } = self.node(cur).kind else { break };
                cur = p;
            }
        }
        self.remove_link(sdir, &sn)?;
        self.add_link(ddir, &dn, id)
    }

    fn link(&mut self, target: &str, link: &str) -> Result<(), ErrClass> {
        let (ld, ln) = split(link)?;
        let dir = self.dir_at(&ld, false)?;
        let t = self.resolve(target)?.ok_or(ErrClass::NotFound)?;
        self.ensure_writable(t)?;
        if self.node(t).subvol != self.node(dir).subvol {
            return Err(ErrClass::CrossSubvol);
        }
        if self.node(t).is_dir() {
            return Err(ErrClass::DirLink);
        }
        self.add_link(dir, &ln, t)?;
        self.node_mut(t).nlink += 1;
        Ok(())
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<(), ErrClass> {
        let (ld, ln) = split(link)?;
        let dir = self.dir_at(&ld, false)?;
        let t = target.as_bytes();
        if t.is_empty() || t.contains(&0) || t.len() > max_symlink(self.params.nodesize, self.params.sectorsize) {
            return Err(ErrClass::SymlinkLimit);
        }
        self.create(dir, &ln, S_IFLNK | 0o777, 0, Kind::Symlink(t.to_vec()))?;
        Ok(())
    }

    fn setxattr(&mut self, path: &str, name: &str, value: Option<Vec<u8>>) -> Result<(), ErrClass> {
        let id = self.resolve(path)?.ok_or(ErrClass::NotFound)?;
        self.ensure_writable(id)?;
        let n = name.as_bytes();
        if n.is_empty() || n.len() > NAME_MAX || n.contains(&0) {
            return Err(ErrClass::XattrLimit);
        }
        if let Some(v) = &value {
            if v.len() > 65536 || n.len() + v.len() > max_xattr(self.params.nodesize) {
                return Err(ErrClass::XattrLimit);
            }
        }
        // The namespaces the kernel has an xattr handler for (the names the
        // generator makes; ACLs and btrfs.* properties are tested apart).
        let namespaced = [&b"user."[..], b"trusted.", b"security."].iter().any(|p| n.len() > p.len() && n.starts_with(p));
        if value.is_some() && !namespaced {
            return Err(ErrClass::XattrNamespace);
        }
        // The kernel keeps user.* xattrs to regular files and directories.
        if n.starts_with(b"user.") && !matches!(self.node(id).kind, Kind::File(_) | Kind::Dir { .. }) {
            return Err(ErrClass::XattrType);
        }
        let node = self.node_mut(id);
        match value {
            Some(v) => {
                node.xattrs.insert(n.to_vec(), v);
            }
            None => {
                node.xattrs.remove(n).ok_or(ErrClass::NotFound)?;
            }
        }
        Ok(())
    }

    /// `ops::write::put` of one generated host tree, copied as `dest` or
    /// into it.
    fn put(&mut self, dest: &str, tree: &HostTree) -> Result<(), ErrClass> {
        let (dir, name) = match self.resolve(dest)? {
            Some(p) if self.node(p).is_dir() => {
                self.ensure_writable(p)?;
                (p, tree.name.clone())
            }
            Some(_) => return Err(ErrClass::PutDestNotDir),
            None => {
                let (d, n) = split(dest)?;
                (self.dir_at(&d, false)?, n)
            }
        };
        check_name(&name)?;
        let mut copied: HashMap<usize, Id> = HashMap::new();
        self.put_one(dir, &name, &tree.root, &mut copied)
    }

    fn put_one(&mut self, dir: Id, name: &[u8], h: &HostNode, copied: &mut HashMap<usize, Id>) -> Result<(), ErrClass> {
        if let HostKind::File { group: Some(g), .. } = &h.kind {
            if let Some(&id) = copied.get(g) {
                self.add_link(dir, name, id)?;
                self.node_mut(id).nlink += 1;
                return Ok(());
            }
        }
        let id = match &h.kind {
            HostKind::Symlink(t) => self.create(dir, name, S_IFLNK | 0o777, 0, Kind::Symlink(t.clone()))?,
            HostKind::Dir(kids) => {
                let id =
                    self.create(dir, name, S_IFDIR | h.mode, 0, Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: Some(dir) })?;
                for (kn, k) in kids {
                    self.put_one(id, kn, k, copied)?;
                }
                id
            }
            HostKind::File { size, runs, group } => {
                let mut f = FileData::default();
                for (off, len, seed) in runs {
                    f.write(*off, &data(*seed, *len as usize));
                }
                f.size = *size;
                let id = self.create(dir, name, S_IFREG | h.mode, 0, Kind::File(f))?;
                if let Some(g) = group {
                    copied.insert(*g, id);
                }
                id
            }
            HostKind::Fifo => self.create(dir, name, S_IFIFO | h.mode, 0, Kind::Special)?,
        };
        let node = self.node_mut(id);
        for (k, v) in &h.xattrs {
            node.xattrs.insert(k.clone(), v.clone());
        }
        if !matches!(h.kind, HostKind::Symlink(_)) {
            node.mode = (node.mode & S_IFMT) | h.mode;
        }
        Ok(())
    }

    // ------------------------------------------------ views for the generator

    /// Every path of the tree (through subvolumes, not into stubs) with its node.
    pub(crate) fn paths(&self) -> Vec<(String, Id)> {
        let mut out = vec![("/".to_string(), self.root)];
        let mut stack = vec![("".to_string(), self.root)];
        while let Some((p, d)) = stack.pop() {
            if let Some(es) = self.entries(d) {
                for (n, e) in es {
                    let path = format!("{p}/{}", String::from_utf8_lossy(n));
                    out.push((path.clone(), e.id));
                    if matches!(self.node(e.id).kind, Kind::Dir { .. }) {
                        stack.push((path, e.id));
                    }
                }
            }
        }
        out
    }

    /// Whether `op` would remove or replace a name the kernel stored as an
    /// extended inode ref (a known gap, generated only when it is closed).
    pub(crate) fn hits_extref(&self, op: &Op) -> bool {
        if self.extref.is_empty() {
            return false;
        }
        let named = |p: &str| -> Option<(Id, Vec<u8>)> {
            let (d, n) = split(p).ok()?;
            Some((self.find(&d)?, n))
        };
        let is_ext = |x: Option<(Id, Vec<u8>)>| x.is_some_and(|k| self.extref.contains(&k));
        let below = |p: &str| -> bool {
            let Some(top) = self.find(p) else { return false };
            let mut stack = vec![top];
            while let Some(d) = stack.pop() {
                if self.extref.iter().any(|(x, _)| *x == d) {
                    return true;
                }
                stack.extend(self.entries(d).into_iter().flat_map(|e| e.values().map(|x| x.id)));
            }
            false
        };
        match op {
            Op::Rm { paths, recursive } => paths.iter().any(|p| is_ext(named(p)) || (*recursive && below(p))),
            Op::Mv { src, dst } => {
                let into = self.find(dst).filter(|&d| self.node(d).is_dir()).and_then(|d| Some((d, split(src).ok()?.1)));
                is_ext(named(src)) || is_ext(named(dst)) || is_ext(into)
            }
            _ => false,
        }
    }

    /// Bytes of file data the model holds (each inode once).
    pub(crate) fn data_bytes(&self) -> u64 {
        self.nodes.values().filter_map(|n| n.file()).map(|f| f.held()).sum()
    }
}

/// Path components as the engine walks them.
pub(super) fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// `limits::check_entry_name`.
fn check_name(name: &[u8]) -> Result<(), ErrClass> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(ErrClass::NotAName);
    }
    if name.len() > NAME_MAX {
        return Err(ErrClass::NameTooLong);
    }
    Ok(())
}

/// `ops::write::split`: "/a/b/c" into ("/a/b", "c").
pub(super) fn split(path: &str) -> Result<(String, Vec<u8>), ErrClass> {
    let p = path.trim_end_matches('/');
    let (dir, name) = match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(ErrClass::NotAName);
    }
    check_name(name.as_bytes())?;
    Ok((if dir.is_empty() { "/".into() } else { dir.to_string() }, name.as_bytes().to_vec()))
}

/// The write engine on a file's compressed extents (`Transaction::write_impl`):
/// the sectors around an unaligned edge are read back (a compressed extent
/// there: "rewriting part"), then every extent over the whole sectors is cut
/// out (one that sticks out: "partially overwriting").
fn write_file(f: &mut FileData, off: u64, bytes: &[u8], ss: u64, direct: bool, gaps: Gaps) -> Result<(), ErrClass> {
    let end = off + bytes.len() as u64;
    if !f.compressed.is_empty() && !gaps.compressed_partial {
        let old = f.size;
        let inline = f.compressed.iter().any(|c| c.inline);
        // Past the inline extent's sector, it is read back to move it out.
        if inline && off >= ss {
            return Err(ErrClass::GapCompressed(GAP_REWRITE));
        }
        let a = if inline { 0 } else { off / ss * ss };
        let b = end.div_ceil(ss) * ss;
        let hit = |s: u64, e: u64| f.compressed.iter().any(|c| c.touches(s, e));
        if a < off && a < old && hit(a, off.min(old).min(b)) {
            return Err(ErrClass::GapCompressed(GAP_REWRITE));
        }
        if end < b && end < old && hit(end, old.min(b)) {
            return Err(ErrClass::GapCompressed(GAP_REWRITE));
        }
        let new_size = old.max(end);
        let (ps, pe) = if !direct && a == 0 && new_size <= MAX_INLINE && new_size < ss { (0, b) } else { (a, b) };
        if f.compressed.iter().any(|c| c.touches(ps, pe) && (c.start < ps || c.end() > pe)) {
            return Err(ErrClass::GapCompressed(GAP_PARTIAL));
        }
        f.compressed.retain(|c| !c.touches(ps, pe));
    }
    f.write(off, bytes);
    Ok(())
}

/// `Transaction::truncate` on a file's compressed extents: down to an
/// unaligned size writes zeros over the rest of its sector first.
fn truncate_file(f: &mut FileData, size: u64, ss: u64, gaps: Gaps) -> Result<(), ErrClass> {
    if size > MAX_FILE {
        return Err(ErrClass::TooBig);
    }
    if size < f.size && !f.compressed.is_empty() && !gaps.compressed_partial {
        let keep = size.div_ceil(ss) * ss;
        if size % ss != 0 {
            let zeros = vec![0u8; (keep.min(f.size) - size) as usize];
            write_file(f, size, &zeros, ss, false, gaps)?;
        }
        if f.compressed.iter().any(|c| c.touches(keep, u64::MAX) && c.start < keep) {
            return Err(ErrClass::GapCompressed(GAP_PARTIAL));
        }
        f.compressed.retain(|c| c.start < keep);
    }
    f.truncate(size);
    Ok(())
}

// ---------------------------------------------------------------- host trees for `put`

#[derive(Clone, Debug)]
pub(super) enum HostKind {
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
pub(super) struct HostNode {
    pub(crate) kind: HostKind,
    /// Permission bits (with set-id bits).
    pub(crate) mode: u32,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A small host tree `put` copies in, made from a seed.
#[derive(Clone, Debug)]
pub(super) struct HostTree {
    pub(crate) name: Vec<u8>,
    pub(crate) root: HostNode,
}

impl HostTree {
    pub(super) fn generate(seed: u64) -> HostTree {
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
    pub(super) fn materialize(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
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

// ---------------------------------------------------------------- operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Create {
    Plain,
    NoSum,
    NoCow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `btrs write PATH --offset OFF` of `len` bytes from `seed`.
    Write {
        path: String,
        off: u64,
        len: u64,
        seed: u64,
        direct: bool,
        truncate: bool,
        parents: bool,
        create: Create,
        /// `--commit-every 16M`.
        commit_every: bool,
        /// `--max-bio` in KiB (0: default).
        max_bio_k: u32,
        /// Compressed (zstd): a known gap, generated only with
        /// BTRS_MODEL_GAPS=compress-write.
        compress: bool,
    },
    /// `btrs write PATH --truncate --offset SIZE` of nothing (creates a missing file).
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Rm {
        paths: Vec<String>,
        recursive: bool,
    },
    Mv {
        src: String,
        dst: String,
    },
    Link {
        target: String,
        link: String,
    },
    Symlink {
        target: String,
        link: String,
    },
    /// Value: (length, seed) of printable bytes; `None` removes.
    SetXattr {
        path: String,
        name: String,
        value: Option<(u32, u64)>,
    },
    Put {
        dest: String,
        seed: u64,
    },
    /// Library: commit (and with `reopen`, open the images afresh, as a new
    /// process would). Command line: every command commits; nothing to do.
    Commit {
        reopen: bool,
    },
    /// Library: drop the running transaction. Command line: nothing.
    Abort,
    /// Library: the `at`-th image I/O from now fails (or is torn) and every
    /// later one too. Command line: the next command is killed (SIGKILL)
    /// `at` microseconds after it starts.
    Crash {
        at: u64,
        torn: bool,
    },
    /// Whole tree against the model, `btrfs check`, scrub.
    Check,
}

impl Op {
    /// Whether the op changes the filesystem (a command runs for it).
    pub(crate) fn mutates(&self) -> bool {
        !matches!(self, Op::Commit { .. } | Op::Abort | Op::Crash { .. } | Op::Check)
    }

    /// Paths whose state the op may change (checked right after it).
    pub(crate) fn touched(&self) -> Vec<String> {
        let parent = |p: &str| split(p).map(|(d, _)| d).unwrap_or_else(|_| "/".into());
        match self {
            Op::Write { path, .. } | Op::Truncate { path, .. } | Op::Mkdir { path, .. } => vec![path.clone(), parent(path)],
            Op::Rm { paths, .. } => paths.iter().flat_map(|p| [p.clone(), parent(p)]).collect(),
            Op::Mv { src, dst } => {
                let mut v = vec![src.clone(), dst.clone(), parent(src), parent(dst)];
                if let Ok((_, n)) = split(src) {
                    v.push(format!("{}/{}", dst.trim_end_matches('/'), String::from_utf8_lossy(&n)));
                }
                v
            }
            Op::Link { target, link } => vec![target.clone(), link.clone(), parent(link)],
            Op::Symlink { link, .. } => vec![link.clone(), parent(link)],
            Op::SetXattr { path, .. } => vec![path.clone()],
            Op::Put { dest, seed } => {
                let n = String::from_utf8_lossy(&HostTree::generate(*seed).name).into_owned();
                vec![dest.clone(), format!("{}/{n}", dest.trim_end_matches('/')), parent(dest)]
            }
            _ => Vec::new(),
        }
    }
}

/// Path and name text in op lists: bytes outside a safe set as %XX.
pub(super) fn enc(s: &str) -> String {
    let mut o = String::new();
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"._/-~+,:".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    if o.is_empty() {
        o.push_str("%%");
    }
    o
}

pub(super) fn dec(s: &str) -> Result<String, String> {
    if s == "%%" {
        return Ok(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3).ok_or_else(|| format!("bad escape in {s:?}"))?;
            out.push(u8::from_str_radix(h, 16).map_err(|_| format!("bad escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {s:?}"))
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress } => {
                write!(f, "write {} off={off} len={len} seed={seed}", enc(path))?;
                for (on, w) in [(*direct, "direct"), (*truncate, "trunc"), (*parents, "p"), (*commit_every, "ce"), (*compress, "zstd")] {
                    if on {
                        write!(f, " {w}")?;
                    }
                }
                match create {
                    Create::Plain => {}
                    Create::NoSum => write!(f, " nosum")?,
                    Create::NoCow => write!(f, " nocow")?,
                }
                if *max_bio_k != 0 {
                    write!(f, " bio={max_bio_k}")?;
                }
                Ok(())
            }
            Op::Truncate { path, size } => write!(f, "truncate {} size={size}", enc(path)),
            Op::Mkdir { path, parents } => write!(f, "mkdir {}{}", enc(path), if *parents { " p" } else { "" }),
            Op::Rm { paths, recursive } => {
                write!(f, "rm{}", if *recursive { " -r" } else { "" })?;
                for p in paths {
                    write!(f, " {}", enc(p))?;
                }
                Ok(())
            }
            Op::Mv { src, dst } => write!(f, "mv {} {}", enc(src), enc(dst)),
            Op::Link { target, link } => write!(f, "ln {} {}", enc(target), enc(link)),
            Op::Symlink { target, link } => write!(f, "symlink {} {}", enc(target), enc(link)),
            Op::SetXattr { path, name, value } => match value {
                Some((n, s)) => write!(f, "setxattr {} {} len={n} seed={s}", enc(path), enc(name)),
                None => write!(f, "rmxattr {} {}", enc(path), enc(name)),
            },
            Op::Put { dest, seed } => write!(f, "put {} seed={seed}", enc(dest)),
            Op::Commit { reopen } => write!(f, "commit{}", if *reopen { " reopen" } else { "" }),
            Op::Abort => write!(f, "abort"),
            Op::Crash { at, torn } => write!(f, "crash at={at}{}", if *torn { " torn" } else { "" }),
            Op::Check => write!(f, "check"),
        }
    }
}

/// Parse one line of an op list (as `Display` writes it).
pub(super) fn parse_op(line: &str) -> Result<Op, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let kv = |k: &str| -> Result<u64, String> {
        w.iter()
            .find_map(|x| x.strip_prefix(&format!("{k}=")))
            .ok_or_else(|| format!("{line:?}: no {k}="))?
            .parse()
            .map_err(|_| format!("{line:?}: bad {k}"))
    };
    let flag = |k: &str| w.iter().skip(1).any(|x| *x == k);
    let arg = |i: usize| -> Result<String, String> { dec(w.get(i).ok_or_else(|| format!("{line:?}: missing argument {i}"))?) };
    Ok(match w.first().copied() {
        Some("write") => Op::Write {
            path: arg(1)?,
            off: kv("off")?,
            len: kv("len")?,
            seed: kv("seed")?,
            direct: flag("direct"),
            truncate: flag("trunc"),
            parents: flag("p"),
            create: if flag("nosum") {
                Create::NoSum
            } else if flag("nocow") {
                Create::NoCow
            } else {
                Create::Plain
            },
            commit_every: flag("ce"),
            max_bio_k: kv("bio").unwrap_or(0) as u32,
            compress: flag("zstd"),
        },
        Some("truncate") => Op::Truncate { path: arg(1)?, size: kv("size")? },
        Some("mkdir") => Op::Mkdir { path: arg(1)?, parents: flag("p") },
        Some("rm") => {
            let recursive = w.get(1) == Some(&"-r");
            let paths = w.iter().skip(if recursive { 2 } else { 1 }).map(|p| dec(p)).collect::<Result<_, _>>()?;
            Op::Rm { paths, recursive }
        }
        Some("mv") => Op::Mv { src: arg(1)?, dst: arg(2)? },
        Some("ln") => Op::Link { target: arg(1)?, link: arg(2)? },
        Some("symlink") => Op::Symlink { target: arg(1)?, link: arg(2)? },
        Some("setxattr") => Op::SetXattr { path: arg(1)?, name: arg(2)?, value: Some((kv("len")? as u32, kv("seed")?)) },
        Some("rmxattr") => Op::SetXattr { path: arg(1)?, name: arg(2)?, value: None },
        Some("put") => Op::Put { dest: arg(1)?, seed: kv("seed")? },
        Some("commit") => Op::Commit { reopen: flag("reopen") },
        Some("abort") => Op::Abort,
        Some("crash") => Op::Crash { at: kv("at")?, torn: flag("torn") },
        Some("check") => Op::Check,
        _ => return Err(format!("unknown op {line:?}")),
    })
}

/// An op list from text: one op a line; blank lines and `#` comments skipped.
pub(super) fn parse_ops(text: &str) -> Result<Vec<Op>, String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_op).collect()
}

pub(super) fn ops_text(ops: &[Op]) -> String {
    ops.iter().map(|o| format!("{o}\n")).collect()
}

// ---------------------------------------------------------------- the generator

#[derive(Clone, Debug)]
pub(crate) struct GenCfg {
    /// The command-line entrance (crash = SIGKILL; commit/abort do nothing).
    pub(crate) cli: bool,
    /// A `check` op every this many ops.
    pub(crate) check_every: usize,
    /// On average one crash op in this many (0: none).
    pub(crate) crash_one_in: u64,
    /// Largest "big" write; a few writes are this big to fill the image.
    pub(crate) big_write: u64,
    /// About the data the images hold (their bytes over the copies kept):
    /// a few writes are this big, to run out of space.
    pub(crate) fill: u64,
    /// Whether the image has subvolumes the kernel made (targets for paths).
    pub(crate) gaps: Gaps,
}

pub(super) struct Gen {
    pub(crate) rng: Rng,
    pub(crate) cfg: GenCfg,
    count: usize,
    /// Per mille chance of a commit after an op (changes every so often:
    /// runs of small transactions and a few large ones).
    commit_pm: u64,
    names: u64,
}

impl Gen {
    pub(super) fn new(seed: u64, cfg: GenCfg) -> Gen {
        Gen { rng: Rng::new(seed), cfg, count: 0, commit_pm: 300, names: 0 }
    }

    /// The next op for model state `m`.
    pub(super) fn next(&mut self, m: &Model) -> Op {
        for _ in 0..20 {
            let op = self.next_any(m);
            if self.cfg.gaps.extref || !m.hits_extref(&op) {
                return op;
            }
        }
        Op::Check
    }

    fn next_any(&mut self, m: &Model) -> Op {
        self.count += 1;
        if self.cfg.check_every > 0 && self.count % self.cfg.check_every == 0 {
            return Op::Check;
        }
        if self.count % 97 == 0 {
            self.commit_pm = [400, 250, 100, 10, 2][self.rng.below(5) as usize];
        }
        let r = &mut self.rng;
        if !self.cfg.cli && r.below(1000) < self.commit_pm {
            return Op::Commit { reopen: r.chance(1, 5) };
        }
        if self.cfg.crash_one_in > 0 && r.chance(1, self.cfg.crash_one_in) {
            return if self.cfg.cli {
                Op::Crash { at: [r.below(4_000), r.range(2_000, 15_000), r.below(40_000)][r.below(3) as usize], torn: false }
            } else {
                Op::Crash { at: [r.below(8), r.below(60), r.below(400)][r.below(3) as usize], torn: r.chance(1, 2) }
            };
        }
        if !self.cfg.cli && r.chance(1, 150) {
            return Op::Abort;
        }
        let all = m.paths();
        let files: Vec<&(String, Id)> = all.iter().filter(|(_, id)| matches!(m.node(*id).kind, Kind::File(_))).collect();
        let dirs: Vec<&(String, Id)> = all.iter().filter(|(_, id)| matches!(m.node(*id).kind, Kind::Dir { .. })).collect();
        let w = [30, 6, 7, 6, 3, 3, 8, 5, 4, 6, 2, 2];
        match self.rng.weighted(&w) {
            0 => self.write(m, &files, &dirs),
            1 => {
                let path = self.file_or_new(&files, &dirs);
                let size = self.size_for(m, &path);
                Op::Truncate { path, size }
            }
            2 => {
                let parents = self.rng.chance(1, 4);
                let path = if self.rng.chance(1, 12) {
                    self.any(&all)
                } else if parents {
                    let d = self.dir(&dirs);
                    format!("{}/{}/{}", d.trim_end_matches('/'), self.name(), self.name())
                } else {
                    self.new_path(&dirs)
                };
                Op::Mkdir { path, parents }
            }
            3 => {
                let n = 1 + self.rng.below(2) as usize + usize::from(self.rng.chance(1, 8));
                let paths = (0..n).map(|_| if self.rng.chance(1, 10) { self.new_path(&dirs) } else { self.any(&all) }).collect();
                Op::Rm { paths, recursive: false }
            }
            4 => Op::Rm { paths: vec![self.dir(&dirs)], recursive: true },
            5 => {
                // rmdir: an empty directory (or not).
                let empty: Vec<&(String, Id)> = dirs.iter().copied().filter(|(_, id)| m.dir_size(*id) == 0).collect();
                let p = if empty.is_empty() || self.rng.chance(1, 4) {
                    self.dir(&dirs)
                } else {
                    self.rng.pick(&empty).map(|x| x.0.clone()).unwrap_or_default()
                };
                Op::Rm { paths: vec![p], recursive: false }
            }
            6 => {
                let src = self.any(&all);
                let dst = match self.rng.below(10) {
                    0..=3 => {
                        let d = split(&src).map(|x| x.0).unwrap_or_else(|_| "/".into());
                        format!("{}/{}", d.trim_end_matches('/'), self.name())
                    }
                    4..=6 => self.new_path(&dirs),
                    7 => self.file_or_new(&files, &dirs),
                    8 => self.dir(&dirs),
                    _ => self.any(&all),
                };
                Op::Mv { src, dst }
            }
            7 => {
                let target = if self.rng.chance(1, 10) { self.any(&all) } else { self.file_or_new(&files, &dirs) };
                // Many links in one directory: some with long names, to fill
                // the inode ref item.
                let link = if self.rng.chance(1, 3) {
                    let d = split(&target).map(|x| x.0).unwrap_or_else(|_| "/".into());
                    let long = self.rng.chance(1, 2);
                    let n = if long {
                        let k = self.rng.range(150, 255) as usize;
                        self.long_name(k)
                    } else {
                        self.name()
                    };
                    format!("{}/{n}", d.trim_end_matches('/'))
                } else {
                    self.new_path(&dirs)
                };
                Op::Link { target, link }
            }
            8 => {
                let max = max_symlink(m.params.nodesize, m.params.sectorsize);
                let target = match self.rng.below(20) {
                    0 => String::new(),
                    1 => "t".repeat(max),
                    2 => "u".repeat(max + 1),
                    3 => "é".repeat(max / 2),
                    _ => format!("../{}/{}", self.name(), self.name()),
                };
                Op::Symlink { target, link: self.new_path(&dirs) }
            }
            9 | 10 => {
                let path = self.any(&all);
                let max = max_xattr(m.params.nodesize);
                let name = match self.rng.below(30) {
                    0 => format!("user.{}", "x".repeat(250)),
                    1 => format!("user.{}", "y".repeat(251)),
                    2 => String::new(),
                    3 => "trusted.t".into(),
                    4 => "security.s".into(),
                    5 => ["system.foo", "foo.bar", "user.", "trusted.", "security"][self.rng.below(5) as usize].into(),
                    n => format!("user.{}", ["a", "b", "c", "mime", "long"][(n % 5) as usize]),
                };
                let remove = self.rng.chance(1, 4);
                let value = if remove {
                    None
                } else {
                    let nl = name.len() as u64;
                    let len = match self.rng.below(12) {
                        0 => (max as u64).saturating_sub(nl),
                        1 => max as u64 + 1 - nl.min(max as u64),
                        2 => 0,
                        3 => self.rng.below(max as u64),
                        _ => self.rng.below(120),
                    };
                    Some((len as u32, self.rng.next()))
                };
                Op::SetXattr { path, name, value }
            }
            _ => {
                let dest = if self.rng.chance(1, 2) { self.dir(&dirs) } else { self.new_path(&dirs) };
                Op::Put { dest, seed: self.rng.next() }
            }
        }
    }

    fn name(&mut self) -> String {
        self.names += 1;
        match self.rng.below(40) {
            0 => self.long_name(255),
            1 => self.long_name(256),
            2 => format!("é{}", self.names),
            3 => format!("sp ace{}", self.names),
            _ => {
                let l = ["a", "b", "c", "d", "e", "f", "g", "h"][self.rng.below(8) as usize];
                format!("{l}{}", self.rng.below(40))
            }
        }
    }

    fn long_name(&mut self, n: usize) -> String {
        let c = (b'k' + self.rng.below(10) as u8) as char;
        let tag = format!("{}", self.rng.below(1000));
        let mut s = c.to_string().repeat(n.saturating_sub(tag.len()));
        s.push_str(&tag);
        s
    }

    fn dir(&mut self, dirs: &[&(String, Id)]) -> String {
        self.rng.pick(dirs).map(|x| x.0.clone()).unwrap_or_else(|| "/".into())
    }

    fn any(&mut self, all: &[(String, Id)]) -> String {
        self.rng.pick(all).map(|x| x.0.clone()).unwrap_or_else(|| "/".into())
    }

    fn new_path(&mut self, dirs: &[&(String, Id)]) -> String {
        let d = self.dir(dirs);
        format!("{}/{}", d.trim_end_matches('/'), self.name())
    }

    fn file_or_new(&mut self, files: &[&(String, Id)], dirs: &[&(String, Id)]) -> String {
        if files.is_empty() || self.rng.chance(1, 5) {
            self.new_path(dirs)
        } else {
            self.rng.pick(files).map(|x| x.0.clone()).unwrap_or_default()
        }
    }

    /// A size or offset near what the file has: its end, its recent write
    /// edges, sector / node / stripe / MiB boundaries, past the end, the
    /// largest file size.
    fn size_for(&mut self, m: &Model, path: &str) -> u64 {
        let f = m.find(path).and_then(|id| m.node(id).file().cloned()).unwrap_or_default();
        let size = f.size;
        let r = &mut self.rng;
        let base = match r.below(12) {
            0 => 0,
            1 | 2 => size,
            3 => r.below(size + 1),
            4 => *r.pick(&f.edges).unwrap_or(&size),
            5 => (r.below(size / 4096 + 2)) * 4096,
            6 => (r.below(size / 65536 + 2)) * 65536,
            7 => (r.below(size / (1 << 20) + 2)) << 20,
            8 => size + r.below(3 << 20),
            9 => size + r.below(1 << 32) * [1, 4096][r.below(2) as usize],
            10 => {
                return match r.below(4) {
                    0 => MAX_FILE,
                    1 => MAX_FILE + 1,
                    _ => MAX_FILE - r.below(1 << 20),
                };
            }
            _ => size / 2,
        };
        let d = [0i64, 1, -1, 2, -2, 511, 4095, -4095, 100][r.below(9) as usize];
        base.saturating_add_signed(d).min(MAX_FILE)
    }

    fn write(&mut self, m: &Model, files: &[&(String, Id)], dirs: &[&(String, Id)]) -> Op {
        let existing = !files.is_empty() && self.rng.chance(7, 10);
        // Files with compressed extents (the kernel's) get their share.
        let compressed: Vec<&(String, Id)> =
            files.iter().copied().filter(|(_, id)| m.node(*id).file().is_some_and(|f| !f.compressed.is_empty())).collect();
        let (path, parents) = if existing && !compressed.is_empty() && self.rng.chance(1, 4) {
            (self.rng.pick(&compressed).map(|x| x.0.clone()).unwrap_or_default(), false)
        } else if existing {
            (self.rng.pick(files).map(|x| x.0.clone()).unwrap_or_default(), false)
        } else if self.rng.chance(1, 6) {
            let d = self.dir(dirs);
            (format!("{}/{}/{}", d.trim_end_matches('/'), self.name(), self.name()), true)
        } else {
            (self.new_path(dirs), false)
        };
        let r = &mut self.rng;
        let big = r.chance(1, 60);
        let len = if self.cfg.fill > 0 && r.chance(1, 120) {
            r.range(self.cfg.fill / 3, self.cfg.fill * 5 / 4)
        } else if big {
            r.range(self.cfg.big_write / 2, self.cfg.big_write)
        } else {
            match r.below(14) {
                0 => 0,
                1 => r.range(1, 16),
                2 => r.range(1, 2048),
                3 => [4095, 4096, 4097][r.below(3) as usize],
                4 => [65535, 65536, 65537, 131072][r.below(4) as usize],
                5 | 6 => r.range(1, 300_000),
                7 => [(1 << 20) - 1, 1 << 20, (1 << 20) + 1][r.below(3) as usize],
                8 => r.range(1 << 20, 6 << 20),
                _ => r.range(1, 40_000),
            }
        };
        let off = if r.chance(1, 40) {
            match r.below(3) {
                0 => MAX_FILE - len,
                1 => MAX_FILE - len + 1,
                _ => MAX_FILE - len - r.below(100_000),
            }
        } else {
            self.size_for(m, &path)
        };
        let r = &mut self.rng;
        let off = if off == MAX_FILE { off - len.min(off) } else { off };
        let create = match r.below(10) {
            0 => Create::NoSum,
            1 => Create::NoCow,
            _ => Create::Plain,
        };
        let seed = r.next();
        let direct = r.chance(3, 10);
        let truncate = r.chance(1, 20);
        let commit_every = big && r.chance(1, 2);
        let max_bio_k = [0, 0, 0, 64, 4, 256][r.below(6) as usize];
        // The command line refuses --compress with --direct, --nodatasum or
        // --nodatacow (the kernel compresses none of them): never asked together.
        let compress = self.cfg.gaps.compressed_write && r.chance(1, 6) && !direct && create == Create::Plain;
        Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress }
    }
}

// ---------------------------------------------------------------- minimizing

/// What kind of failure a message reports: its `[tag]` and first few words
/// that are not paths or numbers. A minimized list must fail the same way.
pub(super) fn kind_of(msg: &str) -> String {
    let (tag, rest) = msg.split_once(']').unwrap_or((msg, ""));
    let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.contains('/') && !w.chars().any(|c| c.is_ascii_digit())).take(4).collect();
    format!("{tag}] {}", words.join(" "))
}

/// Delta debugging (ddmin): drop chunks of the list, then single ops, while
/// `fails` still says yes. `budget` bounds the runs.
pub(super) fn minimize(ops: Vec<Op>, fails: &mut dyn FnMut(&[Op]) -> bool, mut budget: usize) -> Vec<Op> {
    let mut cur = ops;
    let mut n = 2usize;
    while cur.len() >= 2 && budget > 0 {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < cur.len() && budget > 0 {
            let end = (start + chunk).min(cur.len());
            let mut cand = cur[..start].to_vec();
            cand.extend_from_slice(&cur[end..]);
            budget -= 1;
            if !cand.is_empty() && fails(&cand) {
                cur = cand;
                reduced = true;
                n = (n - 1).max(2);
            } else {
                start = end;
            }
        }
        if !reduced {
            if chunk <= 1 {
                break;
            }
            n = (n * 2).min(cur.len());
        }
    }
    cur
}

// ---------------------------------------------------------------- comparing views

/// What a view says of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u32,
    pub(crate) size: u64,
    /// NODATASUM / NODATACOW bits (`None`: the view cannot tell).
    pub(crate) flags: Option<u64>,
}

/// A piece of a file's content as a view streams it.
pub(super) enum Chunk<'a> {
    Data(&'a [u8]),
    Hole(u64),
}

/// A filesystem as seen by btrs (committed, or through a running
/// transaction) or by the kernel.
pub(super) trait View {
    type Id: Copy + Eq + std::hash::Hash + std::fmt::Debug;
    fn root(&mut self) -> Self::Id;
    fn lookup(&mut self, dir: Self::Id, name: &[u8]) -> Result<Option<Self::Id>, String>;
    fn stat(&mut self, id: Self::Id) -> Result<Stat, String>;
    /// (name, id) of every entry.
    #[allow(clippy::type_complexity)] // a pair per entry reads plainer than a named type here
    fn entries(&mut self, dir: Self::Id) -> Result<Vec<(Vec<u8>, Self::Id)>, String>;
    fn xattrs(&mut self, id: Self::Id) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String>;
    fn target(&mut self, id: Self::Id) -> Result<Vec<u8>, String>;
    fn read(&mut self, id: Self::Id, off: u64, len: u64) -> Result<Vec<u8>, String>;
    /// Whether `read` decompresses (a running transaction's reader does not).
    fn can_read_compressed(&self) -> bool {
        true
    }
    /// The whole content in order; the default reads it in pieces.
    fn stream(&mut self, id: Self::Id, size: u64, f: &mut dyn FnMut(u64, Chunk<'_>) -> Result<(), String>) -> Result<(), String> {
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(4 << 20);
            let b = self.read(id, pos, n)?;
            f(pos, Chunk::Data(&b))?;
            pos += n;
        }
        Ok(())
    }
}

fn show(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    if s.len() > 40 {
        format!("{}...({} bytes)", &s[..s.char_indices().nth(30).map_or(s.len(), |x| x.0)], name.len())
    } else {
        s.into_owned()
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// The model's stat of a node.
pub(super) fn model_stat(m: &Model, id: Id) -> Stat {
    let n = m.node(id);
    let size = match &n.kind {
        Kind::File(f) => f.size,
        Kind::Dir { .. } => m.dir_size(id),
        Kind::Symlink(t) => t.len() as u64,
        Kind::Stub | Kind::Special => 0,
    };
    Stat { mode: n.mode, uid: n.uid, gid: n.gid, nlink: n.nlink, size, flags: Some(n.flags & (NODATASUM | NODATACOW)) }
}

fn cmp_stat(path: &str, want: &Stat, got: &Stat) -> Result<(), String> {
    let mut got = got.clone();
    let mut want = want.clone();
    if got.flags.is_none() {
        want.flags = None;
    }
    if want.flags.is_none() {
        got.flags = None;
    }
    if want != got {
        return Err(format!("{path}: stat differs: model {want:?}, btrs {got:?}"));
    }
    Ok(())
}

/// Compare one node (not below it): stat, xattrs, symlink target, the
/// entries' names, and file bytes (whole when small, else `range` and the
/// file's last 8 KiB).
pub(super) fn compare_node<V: View>(v: &mut V, vid: V::Id, m: &Model, id: Id, path: &str, range: Option<(u64, u64)>) -> Result<(), String> {
    let want = model_stat(m, id);
    let got = v.stat(vid)?;
    cmp_stat(path, &want, &got)?;
    let node = m.node(id);
    let xa = v.xattrs(vid)?;
    if xa != node.xattrs {
        let fmt = |x: &BTreeMap<Vec<u8>, Vec<u8>>| x.iter().map(|(k, v)| format!("{}={}b", show(k), v.len())).collect::<Vec<_>>().join(",");
        let diff: Vec<String> = node
            .xattrs
            .iter()
            .filter(|(k, val)| xa.get(*k) != Some(val))
            .map(|(k, _)| show(k))
            .chain(xa.keys().filter(|k| !node.xattrs.contains_key(*k)).map(|k| show(k)))
            .collect();
        return Err(format!("{path}: xattrs differ ({}): model {}, btrs {}", diff.join(","), fmt(&node.xattrs), fmt(&xa)));
    }
    match &node.kind {
        Kind::Symlink(t) => {
            let g = v.target(vid)?;
            if &g != t {
                return Err(format!("{path}: symlink target {:?}, model {:?}", show(&g), show(t)));
            }
        }
        Kind::Dir { entries, .. } => {
            let got: BTreeSet<Vec<u8>> = v.entries(vid)?.into_iter().map(|(n, _)| n).collect();
            let want: BTreeSet<Vec<u8>> = entries.keys().cloned().collect();
            if got != want {
                let extra: Vec<String> = got.difference(&want).map(|n| show(n)).collect();
                let missing: Vec<String> = want.difference(&got).map(|n| show(n)).collect();
                return Err(format!("{path}: entries differ: btrs has {extra:?} the model has not, lacks {missing:?}"));
            }
        }
        Kind::Stub => {
            if !v.entries(vid)?.is_empty() {
                return Err(format!("{path}: a subvolume stub with entries"));
            }
        }
        Kind::File(f) if !f.compressed.is_empty() && !v.can_read_compressed() => {}
        Kind::File(f) => {
            if f.size <= 1 << 20 {
                compare_bytes(v, vid, f, path, 0, f.size)?;
            } else {
                if let Some((s, e)) = range {
                    let s = s.saturating_sub(8192).min(f.size);
                    let e = e.saturating_add(8192).min(f.size);
                    compare_bytes(v, vid, f, path, s, e.saturating_sub(s).min(64 << 20))?;
                }
                let tail = f.size - f.size.min(8192);
                compare_bytes(v, vid, f, path, tail, f.size - tail)?;
            }
        }
        Kind::Special => {}
    }
    Ok(())
}

fn compare_bytes<V: View>(v: &mut V, vid: V::Id, f: &FileData, path: &str, off: u64, len: u64) -> Result<(), String> {
    if len == 0 {
        return Ok(());
    }
    let got = v.read(vid, off, len)?;
    let want = f.read(off, len as usize);
    if got != want {
        let i = first_diff(&got, &want);
        return Err(format!(
            "{path}: bytes differ at {} (read {off}+{len}): btrs {:02x?}, model {:02x?}",
            off + i as u64,
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        ));
    }
    Ok(())
}

/// Compare a whole file by streaming it.
fn compare_file<V: View>(v: &mut V, vid: V::Id, f: &FileData, path: &str) -> Result<(), String> {
    v.stream(vid, f.size, &mut |off, c| match c {
        Chunk::Data(b) => {
            let want = f.read(off, b.len());
            if b != want.as_slice() {
                let i = first_diff(b, &want);
                return Err(format!(
                    "{path}: bytes differ at {}: btrs {:02x?}, model {:02x?}",
                    off + i as u64,
                    &b[i..(i + 8).min(b.len())],
                    &want[i..(i + 8).min(want.len())]
                ));
            }
            Ok(())
        }
        Chunk::Hole(n) => {
            if !f.zero(off, n) {
                return Err(format!("{path}: a hole at {off}+{n} where the model has data"));
            }
            Ok(())
        }
    })
}

/// Resolve `path` in a view (readers' rules: stubs are empty directories).
pub(super) fn view_find<V: View>(v: &mut V, path: &str) -> Result<Option<V::Id>, String> {
    let mut cur = v.root();
    for comp in components(path) {
        match v.lookup(cur, comp.as_bytes())? {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// After an op: each path it touched is there in both or neither, and the
/// same.
pub(super) fn compare_paths<V: View>(v: &mut V, m: &Model, op: &Op) -> Result<(), String> {
    let range = match op {
        Op::Write { off, len, .. } => Some((*off, off.saturating_add(*len))),
        _ => None,
    };
    for p in op.touched() {
        let want = m.find(&p);
        // A path through a non-directory reads as absent in the model; the
        // views may refuse it instead.
        let got = match view_find(v, &p) {
            Ok(g) => g,
            Err(e) if want.is_none() => {
                let _ = e;
                None
            }
            Err(e) => return Err(e),
        };
        match (want, got) {
            (None, None) => {}
            (Some(_), None) => return Err(format!("{p}: in the model, not in btrs (after {op})")),
            (None, Some(_)) => return Err(format!("{p}: in btrs, not in the model (after {op})")),
            (Some(id), Some(vid)) => compare_node(v, vid, m, id, &p, range).map_err(|e| format!("{e} (after {op})"))?,
        }
    }
    Ok(())
}

/// The whole tree: every node as in the model, whole files streamed, hard
/// links the same inode in both and nowhere else.
pub(super) fn compare_all<V: View>(v: &mut V, m: &Model) -> Result<usize, String> {
    let mut seen: HashMap<Id, V::Id> = HashMap::new();
    let mut back: HashMap<V::Id, Id> = HashMap::new();
    let mut stack = vec![("/".to_string(), m.root, v.root())];
    let mut count = 0;
    while let Some((path, id, vid)) = stack.pop() {
        count += 1;
        match (seen.get(&id), back.get(&vid)) {
            (Some(x), _) if *x != vid => return Err(format!("{path}: a hard link of the model leads to another inode in btrs")),
            (_, Some(x)) if *x != id => return Err(format!("{path}: two model nodes are one inode in btrs")),
            (Some(_), _) => continue,
            _ => {}
        }
        seen.insert(id, vid);
        back.insert(vid, id);
        compare_node(v, vid, m, id, &path, None)?;
        match &m.node(id).kind {
            Kind::File(f) if f.size > 1 << 20 => compare_file(v, vid, f, &path)?,
            Kind::Dir { entries, .. } => {
                let got: HashMap<Vec<u8>, V::Id> = v.entries(vid)?.into_iter().collect();
                for (n, e) in entries {
                    let child = got.get(n).copied().ok_or_else(|| format!("{path}: no entry {}", show(n)))?;
                    stack.push((format!("{}/{}", path.trim_end_matches('/'), String::from_utf8_lossy(n)), e.id, child));
                }
            }
            _ => {}
        }
    }
    Ok(count)
}
