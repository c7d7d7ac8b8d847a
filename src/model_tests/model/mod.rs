//! The model of random-operation testing, shared by both entrances (the
//! library test module and `tests/model.rs`, which includes this file): a
//! reproducible generator of operations, an in-memory tree every operation is
//! applied to as well, the error each operation must end in, a text form of
//! operation lists (regression seeds are pasted from it) and a delta-debugging
//! minimizer. Nothing here knows btrs: the model says what btrs's commands
//! (`ops::write`) must do, from their documented behaviour and the kernel's
//! limits, computed here on their own.

#![allow(dead_code)]

mod basics;
mod compare;
mod gen;
mod host;
mod ops;
mod subvol;

pub(crate) use basics::*;
pub(crate) use compare::*;
pub(crate) use gen::*;
pub(crate) use host::*;
pub(crate) use ops::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

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

pub(crate) type Id = u32;

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
pub(crate) const TOP: u64 = 5;

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
        if matches!(self.node(e.id).kind, Kind::Stub) {
            return Err(ErrClass::Stub);
        }
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
        // `Transaction::add_entry`: any entry of that name, a subvolume's too.
        if self.entries(dir).is_some_and(|e| e.contains_key(name)) {
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
    /// A new node in `dir`, owned by root; from a set-group-ID directory
    /// its group, and for a directory the bit too (inode_init_owner).
    fn create(&mut self, dir: Id, name: &[u8], mode: u32, flags: u64, kind: Kind) -> Result<Id, ErrClass> {
        let d = self.node(dir);
        let subvol = d.subvol;
        let (mut mode, mut gid) = (mode, 0);
        if d.mode & 0o2000 != 0 {
            gid = d.gid;
            if mode & S_IFMT == S_IFDIR {
                mode |= 0o2000;
            }
        }
        let id = self.add_node(Node { kind, mode, uid: 0, gid, flags, xattrs: BTreeMap::new(), subvol, nlink: 1 });
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
            Op::Commit { .. } | Op::Abort | Op::WriteBack { .. } | Op::Crash { .. } | Op::Check => Ok(()),
            Op::SubvolCreate { path } => m.subvol_create(path),
            Op::Snapshot { src, dest, ro } => m.snapshot(src, dest, *ro),
            Op::SubvolDelete { path } => m.subvol_delete(path),
            Op::SetRo { path, ro } => m.set_ro(path, *ro),
            Op::Chmod { path, mode } => m.chmod(path, *mode),
            Op::Chown { path, uid, gid } => m.chown(path, *uid, *gid),
            // One commit per chunk moved, the tree as it was after each.
            Op::Convert { .. } => {
                commits.extend(std::iter::repeat_n(m.clone(), 64));
                Ok(())
            }
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
        // -p on an existing directory writes nothing, read-only or not.
        if parents && self.resolve(path)?.is_some_and(|p| self.node(p).is_dir()) {
            return Ok(());
        }
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

    /// `chmod`: the permission bits; a symlink's mode cannot change (the
    /// kernel has no lchmod, and btrs follows no symlink).
    fn chmod(&mut self, path: &str, mode: u32) -> Result<(), ErrClass> {
        let id = self.resolve(path)?.ok_or(ErrClass::NotFound)?;
        self.ensure_writable(id)?;
        if matches!(self.node(id).kind, Kind::Symlink(_)) {
            return Err(ErrClass::SymlinkMode);
        }
        let n = self.node_mut(id);
        n.mode = (n.mode & S_IFMT) | (mode & 0o7777);
        Ok(())
    }

    /// `chown` (of the path itself, as `chown -h`): on a non-directory
    /// the kernel drops set-user-ID, and set-group-ID with group execute.
    fn chown(&mut self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), ErrClass> {
        let id = self.resolve(path)?.ok_or(ErrClass::NotFound)?;
        self.ensure_writable(id)?;
        let n = self.node_mut(id);
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if n.mode & S_IFMT != S_IFDIR {
            n.mode &= !0o4000;
            if n.mode & 0o010 != 0 {
                n.mode &= !0o2000;
            }
        }
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

    /// `ops::put::put` of one generated host tree, copied as `dest` or
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
        // put copies the host's owner: the test's own, which made the host tree.
        node.uid = rustix::process::geteuid().as_raw();
        node.gid = rustix::process::getegid().as_raw();
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
pub(crate) fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// `limits::check_entry_name`.
pub(crate) fn check_name(name: &[u8]) -> Result<(), ErrClass> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(ErrClass::NotAName);
    }
    if name.len() > NAME_MAX {
        return Err(ErrClass::NameTooLong);
    }
    Ok(())
}

/// `ops::write::split`: "/a/b/c" into ("/a/b", "c").
pub(crate) fn split(path: &str) -> Result<(String, Vec<u8>), ErrClass> {
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
pub(crate) fn write_file(f: &mut FileData, off: u64, bytes: &[u8], ss: u64, direct: bool, gaps: Gaps) -> Result<(), ErrClass> {
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
pub(crate) fn truncate_file(f: &mut FileData, size: u64, ss: u64, gaps: Gaps) -> Result<(), ErrClass> {
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
