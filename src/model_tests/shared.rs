//! What both entrances of the model tests share beyond the pure model:
//! btrs's committed view (`Filesystem`), the kernel's view (a mount), the
//! judges (`btrfs check`, scrub), the image layouts, the kernel-made
//! starting image and the kernel's end step. Included by the library test
//! module and by `tests/model.rs`; `super::lib_api` names the btrs items in
//! either.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::interop;
use super::lib_api::{self, Filesystem, InodeId, OpenOptions};
use super::model::*;

pub(super) fn open_opts(imgs: &[PathBuf], writable: bool) -> OpenOptions {
    OpenOptions {
        image: imgs[0].clone(),
        devices: imgs.to_vec(),
        degraded: false,
        writable,
        alongside_writer: false,
        accept_lagging: false,
        divergent_ok: false,
        replacement: None,
        added: Vec::new(),
    }
}

/// Read-only, as a caller who knows a crash just happened opens it: a device
/// left one commit behind that nothing can compare is taken as current
/// (`--accept-lagging`; see `judge` for what plain opens make of it).
pub(super) fn open_after_crash(imgs: &[PathBuf]) -> Result<Filesystem, String> {
    Filesystem::open(&OpenOptions { accept_lagging: true, ..open_opts(imgs, false) }).map_err(|e| format!("open: {e}"))
}

pub(super) fn open_ro(imgs: &[PathBuf]) -> Result<Filesystem, String> {
    Filesystem::open(&open_opts(imgs, false)).map_err(|e| format!("open: {e}"))
}

/// The newest generation of the set. After a crash between a commit's
/// superblock writes a device may be one commit behind and hold the only
/// copies of the chunk tree: read it as the error says to (the newest
/// superblock names the generation either way).
pub(super) fn generation(imgs: &[PathBuf]) -> Result<u64, String> {
    match open_ro(imgs) {
        Ok(fs) => Ok(fs.sb.generation.get()),
        Err(e) if e.contains("one commit behind") => Ok(open_after_crash(imgs)?.sb.generation.get()),
        Err(e) => Err(e),
    }
}

/// Chunks in the chunk tree.
pub(super) fn chunk_count(imgs: &[PathBuf]) -> usize {
    open_ro(imgs).map(|fs| fs.volume().chunks.entries().len()).unwrap_or(0)
}

// ---------------------------------------------------------------- counting

/// Counts for the report of a run.
#[derive(Default, Debug, Clone)]
pub(crate) struct Stats {
    pub(crate) ops: u64,
    pub(crate) by_op: BTreeMap<&'static str, u64>,
    pub(crate) refused: BTreeMap<String, u64>,
    pub(crate) enospc: u64,
    pub(crate) crashes: u64,
    /// Write-outs of dirty tree blocks before a commit that wrote.
    pub(crate) write_backs: u64,
    pub(crate) commits: u64,
    pub(crate) checks: u64,
    pub(crate) new_chunks: usize,
    /// Time spent in whole-tree checks and judges.
    pub(crate) check_time: std::time::Duration,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.ops += o.ops;
        for (k, v) in &o.by_op {
            *self.by_op.entry(k).or_default() += v;
        }
        for (k, v) in &o.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
        self.enospc += o.enospc;
        self.crashes += o.crashes;
        self.write_backs += o.write_backs;
        self.commits += o.commits;
        self.checks += o.checks;
        self.new_chunks += o.new_chunks;
        self.check_time += o.check_time;
    }
}

/// A conversion refused because a chunk's new stripes find no contiguous
/// room even after cutting it where no extent spans the cut: a limit of
/// re-striping in place (the chunk keeps its logical range), whatever the
/// fill; nothing was written.
pub(super) fn no_room_to_restripe(op: &Op, msg: &str) -> bool {
    matches!(op, Op::Convert { .. }) && msg.contains("cannot become")
}

pub(super) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Write { direct: true, .. } => "write-direct",
        Op::Write { .. } => "write",
        Op::Truncate { .. } => "truncate",
        Op::Mkdir { .. } => "mkdir",
        Op::Rm { recursive: true, .. } => "rm-r",
        Op::Rm { .. } => "rm",
        Op::Mv { .. } => "mv",
        Op::Link { .. } => "ln",
        Op::Symlink { .. } => "symlink",
        Op::SetXattr { value: Some(_), .. } => "setxattr",
        Op::SetXattr { .. } => "rmxattr",
        Op::Chmod { .. } => "chmod",
        Op::Chown { .. } => "chown",
        Op::Put { .. } => "put",
        Op::Commit { .. } => "commit",
        Op::Abort => "abort",
        Op::WriteBack { .. } => "writeback",
        Op::Crash { .. } => "crash",
        Op::Check => "check",
        Op::Convert { .. } => "convert",
        Op::SubvolCreate { .. } => "subvol-create",
        Op::Snapshot { .. } => "snapshot",
        Op::SubvolDelete { .. } => "subvol-delete",
        Op::SetRo { .. } => "set-ro",
    }
}

pub(super) fn report(name: &str, s: &Stats, t: std::time::Duration) {
    eprintln!(
        "{name}: {} ops in {:.1}s ({:.0} ops/s outside the {:.1}s of whole-tree checks; {} commits, {} write-backs, {} checks, {} faults, {} ENOSPC, {} new chunks); refused {:?}; ops {:?}",
        s.ops,
        t.as_secs_f64(),
        s.ops as f64 / (t.saturating_sub(s.check_time)).as_secs_f64().max(1e-3),
        s.check_time.as_secs_f64(),
        s.commits,
        s.write_backs,
        s.checks,
        s.crashes,
        s.enospc,
        s.new_chunks,
        s.refused,
        s.by_op
    );
}

// ---------------------------------------------------------------- btrs's committed view

/// A placeholder directory (a snapshot's stub of a nested subvolume) has
/// inode 2 wherever it is: its path tells two apart.
pub(super) fn tag(name: &[u8], parent: u64) -> u64 {
    // A real hash of both: an XOR of the parent into the start of the
    // name's hash let two stubs collide when their directories' inode
    // numbers differed in the bits their names' first bytes did (lib soak
    // seed 1304: f15 in directory 261, e15 in 262).
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (parent, name).hash(&mut h);
    h.finish()
}

pub(super) struct FsView<'a> {
    pub(crate) fs: &'a Filesystem,
}

impl View for FsView<'_> {
    /// The inode, a tag telling placeholders apart, and a placeholder's directory.
    type Id = (InodeId, u64, Option<InodeId>);
    fn root(&mut self) -> Self::Id {
        (self.fs.root_dir(), 0, None)
    }
    fn lookup(&mut self, dir: Self::Id, name: &[u8]) -> Result<Option<Self::Id>, String> {
        if self.fs.inode(dir.0).map_err(|e| e.to_string())?.file_type != lib_api::FileType::Directory {
            return Ok(None);
        }
        Ok(self.fs.lookup(dir.0, name).map_err(|e| e.to_string())?.map(|d| fix(&d, dir)))
    }
    fn stat(&mut self, id: Self::Id) -> Result<Stat, String> {
        let i = match id.2 {
            Some(dir) => self.fs.inode_in(id.0, dir),
            None => self.fs.inode(id.0),
        }
        .map_err(|e| e.to_string())?;
        Ok(Stat { mode: i.mode, uid: i.uid, gid: i.gid, nlink: i.nlink, size: i.size, flags: Some(i.flags & (NODATASUM | NODATACOW)) })
    }
    fn entries(&mut self, dir: Self::Id) -> Result<Vec<(Vec<u8>, Self::Id)>, String> {
        Ok(self.fs.read_dir(dir.0).map_err(|e| e.to_string())?.into_iter().map(|d| (d.name.clone(), fix(&d, dir))).collect())
    }
    fn xattrs(&mut self, id: Self::Id) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
        if id.0.ino == lib_api::EMPTY_SUBVOL_DIR_OBJECTID {
            return Ok(BTreeMap::new());
        }
        Ok(self.fs.xattrs(id.0).map_err(|e| e.to_string())?.into_iter().collect())
    }
    fn target(&mut self, id: Self::Id) -> Result<Vec<u8>, String> {
        self.fs.read_link(id.0).map_err(|e| e.to_string())
    }
    fn read(&mut self, id: Self::Id, off: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; len as usize];
        let end = off + len;
        self.stream(id, end, &mut |at, c| {
            if let Chunk::Data(b) = c {
                let s = at.max(off);
                let e = (at + b.len() as u64).min(end);
                if s < e {
                    out[(s - off) as usize..(e - off) as usize].copy_from_slice(&b[(s - at) as usize..(e - at) as usize]);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
    fn stream(&mut self, id: Self::Id, size: u64, f: &mut dyn FnMut(u64, Chunk<'_>) -> Result<(), String>) -> Result<(), String> {
        let mut inode = self.fs.inode(id.0).map_err(|e| e.to_string())?;
        inode.size = inode.size.min(size);
        let mut failed: Option<String> = None;
        let r = self.fs.read_file(&inode, &mut |c| {
            let r = match c {
                lib_api::FileChunk::Data { offset, data } => f(offset, Chunk::Data(data)),
                lib_api::FileChunk::Hole { offset, len } => f(offset, Chunk::Hole(len)),
            };
            r.map_err(|e| {
                failed = Some(e);
                lib_api::Error::Invalid("compare stopped".into())
            })
        });
        match failed {
            Some(e) => Err(e),
            None => r.map_err(|e| e.to_string()),
        }
    }
}

fn fix(d: &lib_api::DirEnt, dir: (InodeId, u64, Option<InodeId>)) -> (InodeId, u64, Option<InodeId>) {
    if d.id.ino == lib_api::EMPTY_SUBVOL_DIR_OBJECTID {
        (d.id, tag(&d.name, dir.0.ino ^ dir.1), Some(dir.0))
    } else {
        (d.id, 0, None)
    }
}

// ---------------------------------------------------------------- the kernel's view

/// A mounted filesystem seen through the host's system calls.
pub(super) struct KView {
    pub(crate) root: PathBuf,
    paths: HashMap<(u64, u64, u64), PathBuf>,
}

impl KView {
    pub(super) fn new(root: &Path) -> KView {
        KView { root: root.to_path_buf(), paths: HashMap::new() }
    }
    fn id_of(&mut self, p: &Path, parent: u64) -> Result<(u64, u64, u64), String> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        // Stubs of nested subvolumes may share st_dev: their path tells them apart.
        let t = if m.ino() == 2 { tag(p.as_os_str().as_bytes(), parent) } else { 0 };
        let id = (m.dev(), m.ino(), t);
        self.paths.insert(id, p.to_path_buf());
        Ok(id)
    }
    fn path(&self, id: (u64, u64, u64)) -> &Path {
        &self.paths[&id]
    }
}

impl View for KView {
    type Id = (u64, u64, u64);
    fn root(&mut self) -> Self::Id {
        let r = self.root.clone();
        self.id_of(&r, 0).expect("mount point")
    }
    fn lookup(&mut self, dir: Self::Id, name: &[u8]) -> Result<Option<Self::Id>, String> {
        use std::os::unix::ffi::OsStrExt;
        let p = self.path(dir).join(std::ffi::OsStr::from_bytes(name));
        if !self.path(dir).is_dir() || std::fs::symlink_metadata(&p).is_err() {
            return Ok(None);
        }
        self.id_of(&p, dir.1 ^ dir.2).map(Some)
    }
    fn stat(&mut self, id: Self::Id) -> Result<Stat, String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(self.path(id)).map_err(|e| e.to_string())?;
        Ok(Stat { mode: m.mode(), uid: m.uid(), gid: m.gid(), nlink: m.nlink() as u32, size: m.size(), flags: None })
    }
    fn entries(&mut self, dir: Self::Id) -> Result<Vec<(Vec<u8>, Self::Id)>, String> {
        use std::os::unix::ffi::OsStrExt;
        let p = self.path(dir).to_path_buf();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let id = self.id_of(&e.path(), dir.1 ^ dir.2)?;
            out.push((e.file_name().as_bytes().to_vec(), id));
        }
        Ok(out)
    }
    fn xattrs(&mut self, id: Self::Id) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
        use std::os::unix::ffi::OsStrExt;
        let p = self.path(id).to_path_buf();
        let mut out = BTreeMap::new();
        for n in xattr::list(&p).map_err(|e| format!("{}: listxattr: {e}", p.display()))? {
            let v = xattr::get(&p, &n).map_err(|e| e.to_string())?.unwrap_or_default();
            out.insert(n.as_bytes().to_vec(), v);
        }
        Ok(out)
    }
    fn target(&mut self, id: Self::Id) -> Result<Vec<u8>, String> {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::fs::read_link(self.path(id)).map_err(|e| e.to_string())?.as_os_str().as_bytes().to_vec())
    }
    fn read(&mut self, id: Self::Id, off: u64, len: u64) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(self.path(id)).map_err(|e| e.to_string())?;
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, off).map_err(|e| format!("{}: read {off}+{len}: {e}", self.path(id).display()))?;
        Ok(b)
    }
    fn stream(&mut self, id: Self::Id, size: u64, f: &mut dyn FnMut(u64, Chunk<'_>) -> Result<(), String>) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(self.path(id)).map_err(|e| e.to_string())?;
        let mut pos = 0u64;
        while pos < size {
            // Data and holes as the kernel reports them (a file may be 2^63 bytes).
            let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos as i64)) {
                Ok(d) => d.min(size),
                Err(rustix::io::Errno::NXIO) => size,
                Err(e) => return Err(format!("SEEK_DATA: {e}")),
            };
            if data > pos {
                f(pos, Chunk::Hole(data - pos))?;
                pos = data;
            }
            if pos >= size {
                break;
            }
            let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(pos as i64)).map_err(|e| format!("SEEK_HOLE: {e}"))?.min(size);
            while pos < hole {
                let n = (hole - pos).min(4 << 20);
                let mut b = vec![0u8; n as usize];
                file.read_exact_at(&mut b, pos).map_err(|e| e.to_string())?;
                f(pos, Chunk::Data(&b))?;
                pos += n;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- NODATACOW

/// A write that may have gone in place into a NODATACOW file: (node, file
/// offset, bytes).
pub(super) type InPlace = (Id, u64, Vec<u8>);

/// The in-place candidates of `op` on `m`: a write or truncate of an
/// existing NODATACOW file.
pub(super) fn in_place_of(m: &Model, op: &Op) -> Vec<InPlace> {
    let (path, writes): (&str, Vec<(u64, Vec<u8>)>) = match op {
        Op::Write { path, off, len, seed, truncate, .. } => {
            let mut w = vec![(*off, data(*seed, *len as usize))];
            if *truncate {
                w.push((*off, vec![0u8; 4096]));
            }
            (path, w)
        }
        Op::Truncate { path, size } => (path, vec![(*size, vec![0u8; 4096])]),
        _ => return Vec::new(),
    };
    match m.find(path) {
        Some(id) if m.node(id).file().is_some() && m.node(id).flags & NODATACOW != 0 => {
            writes.into_iter().map(|(o, d)| (id, o, d)).collect()
        }
        _ => Vec::new(),
    }
}

/// NODATACOW overwrites go in place, outside any transaction (the kernel's
/// do too): after a rollback, each byte such a write covered may be the
/// committed one or one of the writes'. Check that btrs's bytes there are
/// one of those, and take them into the model.
pub(super) fn reconcile_in_place(fs: &Filesystem, m: &mut Model, cands: &[InPlace]) -> Result<(), String> {
    let ids: std::collections::BTreeSet<Id> = cands.iter().map(|c| c.0).collect();
    let paths = m.paths();
    for id in ids {
        let Some(size) = m.nodes.get(&id).and_then(|n| n.file()).map(|f| f.size) else { continue };
        let Some((path, _)) = paths.iter().find(|(_, x)| *x == id) else { continue };
        let mut v = FsView { fs };
        let vid = view_find(&mut v, path)?.ok_or_else(|| format!("{path}: not in btrs after a rollback"))?;
        for &(_, off, ref d) in cands.iter().filter(|c| c.0 == id) {
            let end = (off.saturating_add(d.len() as u64)).min(size);
            if off >= end {
                continue;
            }
            let got = v.read(vid, off, end - off)?;
            let old = m.node(id).file().map(|f| f.read(off, got.len())).unwrap_or_default();
            for (i, &b) in got.iter().enumerate() {
                let p = off + i as u64;
                let ok = b == old[i]
                    || cands.iter().any(|c| c.0 == id && p >= c.1 && p < c.1 + c.2.len() as u64 && c.2[(p - c.1) as usize] == b);
                if !ok {
                    return Err(format!("{path}: byte {p} of a NODATACOW file is {b:#x}: neither committed ({:#x}) nor written", old[i]));
                }
            }
            if let Kind::File(f) = &mut m.node_mut(id).kind {
                f.write(off, &got);
                f.size = size;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- judges

/// `btrfs check --readonly --check-data-csum` and btrs's scrub (every copy of
/// every block readable, checksums good, mirrors identical). After a crash
/// some superblock copies may lag one generation (the kernel's commit has the
/// same window): `after_crash` lets scrub name those, and nothing else. A
/// device whose superblocks all lag, and whose copies of the last commit's
/// tree blocks cannot be compared with a current device's, is stale (nothing
/// tells a crash from an older copy of the image): then `scrub --repair`,
/// what its message says to run, must rebuild it; where it holds copies no
/// current device has and no checksum covers, only `--accept-lagging` (the
/// caller knows it was a crash) may take it as current, and then every
/// mirror must agree and the next scrub be clean.
pub(super) fn judge(imgs: &[PathBuf], after_crash: bool, torn: &[String]) -> Result<(), String> {
    if progs_here(imgs) {
        interop::btrfs_check(imgs, &["--check-data-csum"]).map_err(|e| format!("btrfs check: {e}"))?;
    }
    let scrub = |repair: bool, accept_lagging: bool, prefer_mirror: Option<usize>| {
        let open = OpenOptions { accept_lagging, ..open_opts(imgs, repair) };
        lib_api::scrub(&open, &lib_api::ScrubOptions { threads: 1, repair, prefer_mirror, ..Default::default() })
            .map_err(|e| format!("scrub: {e}"))
    };
    // Taken as current (the caller knows it was a crash), a repair must
    // leave nothing behind, and the next plain scrub must find nothing.
    let take_lagging = |prefer: Option<usize>| -> Result<(), String> {
        let taken = scrub(true, true, prefer)?;
        if !taken.clean() {
            return Err(format!("scrub --repair --accept-lagging after a crash is not clean: {:?}", taken.findings));
        }
        Ok(())
    };
    let settled = || -> Result<(), String> {
        let again = scrub(false, false, None)?;
        if !again.findings.is_empty() {
            return Err(format!("scrub after --repair is not clean: {:?}", again.findings));
        }
        Ok(())
    };
    // After a crash, tree blocks only lagging devices hold (RAID10 keeps the
    // root on two of four) cannot be trusted by a plain open or a writer:
    // the error says --accept-lagging takes them as current.
    const TAKE: &str = "--accept-lagging takes it as current";
    let untrusted_root = |e: &String| after_crash && e.contains(TAKE);
    let rep = match scrub(false, false, None) {
        Ok(r) => r,
        Err(e) if untrusted_root(&e) => {
            take_lagging(None)?;
            return settled();
        }
        Err(e) => return Err(e),
    };
    let lagging_copy = |f: &lib_api::Finding| f.kind == lib_api::FindingKind::MirrorMismatch && f.detail.contains("lagging device's copy");
    let behind = |f: &lib_api::Finding| {
        f.kind == lib_api::FindingKind::Super && f.detail.contains("is not the newest")
            || f.kind == lib_api::FindingKind::StaleDevice && f.detail.contains("one behind")
            || lagging_copy(f)
    };
    // A NODATACOW write goes in place on each mirror in turn, outside any
    // transaction (as the kernel's): stopped between them, the mirrors of
    // what it covered differ, and no checksum says which is right.
    let torn_copy = |f: &lib_api::Finding| {
        f.kind == lib_api::FindingKind::MirrorMismatch
            && !f.metadata
            && !f.paths.is_empty()
            && f.paths.iter().all(|p| torn.iter().any(|t| t.trim_start_matches('/') == p.trim_start_matches('/')))
    };
    // After a crash, a plain scrub may also find tree blocks only lagging
    // devices hold (written after their generation, so not trusted): the
    // caller who knows it was a crash takes them as current below.
    let crash_only = |f: &lib_api::Finding| {
        after_crash
            && rep.findings.iter().any(|g| g.kind == lib_api::FindingKind::StaleDevice && g.detail.contains("one behind"))
            && (f.detail.contains(TAKE) || f.detail.contains("no current copy to compare"))
    };
    if !rep.findings.iter().all(|f| after_crash && behind(f) || torn_copy(f) || crash_only(f)) || rep.findings_dropped > 0 {
        return Err(format!("scrub is not clean: {:?}", rep.findings));
    }
    let stale = rep.findings.iter().any(|f| f.kind == lib_api::FindingKind::StaleDevice);
    let diverged = rep.findings.iter().any(torn_copy);
    if !stale && !diverged {
        return Ok(());
    }
    // The model took what copy 1 holds (what a read serves first), so the
    // repair must keep it.
    let prefer = diverged.then_some(1);
    match scrub(true, false, prefer) {
        Ok(fixed) if fixed.clean() => {}
        Ok(fixed) => {
            let unfixed = |f: &&lib_api::Finding| !f.repaired;
            if !fixed.findings.iter().filter(unfixed).all(|f| behind(f) || crash_only(f)) {
                return Err(format!(
                    "scrub --repair left more than a lagging device's unverifiable copies after a crash: {:?}",
                    fixed.findings
                ));
            }
            take_lagging(prefer)?;
        }
        Err(e) if untrusted_root(&e) => take_lagging(prefer)?,
        Err(e) => return Err(e),
    }
    settled()
}

/// The model after [`judge`]'s repair of a crash: what the torn NODATACOW
/// bytes settled on. The judge prefers copy 1, what a read served first and
/// the model took, but a majority of three copies outvotes a preference
/// (soak seed 811317: RAID1C3, a truncate's in-place zeroing killed after the
/// first mirror; the repair put the old bytes back and a later check found
/// them), so the model takes what the copies hold now, from `unreconciled`
/// (the state before the first reconcile).
pub(super) fn settle_in_place(imgs: &[PathBuf], unreconciled: Model, cands: &[InPlace]) -> Result<Model, String> {
    let mut st = unreconciled;
    if !cands.is_empty() {
        let fs = open_after_crash(imgs)?;
        reconcile_in_place(&fs, &mut st, cands)?;
    }
    Ok(st)
}

/// The paths of the files NODATACOW writes went in place in (see [`judge`]).
pub(super) fn torn_paths(m: &Model, cands: &[InPlace]) -> Vec<String> {
    m.paths().into_iter().filter(|(_, id)| cands.iter().any(|c| c.0 == *id)).map(|(p, _)| p).collect()
}

/// Whether `btrfs check` can judge these images here (several need loop
/// devices, so root); says why not once, and fails under BTRS_INTEROP=require.
pub(super) fn progs_here(imgs: &[PathBuf]) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAID: AtomicBool = AtomicBool::new(false);
    let root = imgs.len() > 1;
    if interop::progs_available() && (!root || interop::is_root()) {
        return true;
    }
    // Under BTRS_INTEROP=require every caller fails, not only the first:
    // a judge skipped in the other threads must not count as a pass.
    if !SAID.swap(true, Ordering::Relaxed) || std::env::var("BTRS_INTEROP").as_deref() == Ok("require") {
        interop::progs_for("model tests", root);
    }
    false
}

// ---------------------------------------------------------------- layouts

/// How a run's images are made.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) name: &'static str,
    /// `btrs mkfs` (library) or `mkfs.btrfs`.
    pub(crate) progs: bool,
    pub(crate) devs: usize,
    pub(crate) data: &'static str,
    pub(crate) meta: &'static str,
    pub(crate) csum: &'static str,
    pub(crate) nodesize: u32,
    pub(crate) size_mb: u64,
    /// `-O`/`-R` arguments for mkfs.btrfs, or `-O` features for btrs mkfs.
    pub(crate) features: &'static str,
    /// Subvolumes, snapshots, compressed and prealloc extents made by the
    /// kernel before the run (interop only).
    pub(crate) kernel_init: bool,
}

pub(super) const LAYOUTS: &[Layout] = &[
    Layout {
        name: "single-crc32c-16k-btrs",
        progs: false,
        devs: 1,
        data: "single",
        meta: "dup",
        csum: "crc32c",
        nodesize: 16384,
        size_mb: 160,
        features: "",
        kernel_init: false,
    },
    Layout {
        name: "dup-xxhash-4k-btrs",
        progs: false,
        devs: 1,
        data: "dup",
        meta: "dup",
        csum: "xxhash",
        nodesize: 4096,
        size_mb: 200,
        features: "",
        kernel_init: false,
    },
    Layout {
        name: "raid1-sha256-16k-progs-noholes",
        progs: true,
        devs: 2,
        data: "raid1",
        meta: "raid1",
        csum: "sha256",
        nodesize: 16384,
        size_mb: 160,
        features: "-O no-holes",
        kernel_init: false,
    },
    Layout {
        name: "raid1c3-blake2-4k-progs-holes-fst",
        progs: true,
        devs: 3,
        data: "raid1c3",
        meta: "raid1c3",
        csum: "blake2",
        nodesize: 4096,
        size_mb: 160,
        features: "-O ^no-holes -R free-space-tree",
        kernel_init: false,
    },
    Layout {
        name: "raid10-crc32c-4k-btrs-holes",
        progs: false,
        devs: 4,
        data: "raid10",
        meta: "raid10",
        csum: "crc32c",
        nodesize: 4096,
        size_mb: 128,
        features: "^no-holes",
        kernel_init: false,
    },
    Layout {
        name: "kernel-subvols-16k",
        progs: true,
        devs: 1,
        data: "single",
        meta: "dup",
        csum: "crc32c",
        nodesize: 16384,
        size_mb: 256,
        features: "",
        kernel_init: true,
    },
];

pub(super) fn layout(name: &str) -> &'static Layout {
    LAYOUTS.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no layout {name}"))
}

/// Make the images of `l` in `dir`; `None` when the tools it needs are not
/// here (said, or a failure under BTRS_INTEROP=require).
pub(super) fn make_images(dir: &Path, l: &Layout) -> Option<Vec<PathBuf>> {
    let imgs: Vec<PathBuf> = (1..=l.devs).map(|i| dir.join(format!("dev{i}.img"))).collect();
    for p in &imgs {
        lib_api::raw::set_len(p, l.size_mb << 20).ok()?;
    }
    if l.progs {
        if !interop::progs_for(l.name, false) {
            return None;
        }
        let mut cmd = Command::new("mkfs.btrfs");
        cmd.args(["-q", "-f", "-d", l.data, "-m", l.meta, "--csum", l.csum, "-n", &l.nodesize.to_string()]);
        cmd.args(l.features.split_whitespace());
        let o = cmd.args(&imgs).output().expect("mkfs.btrfs");
        assert!(o.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&o.stderr));
    } else {
        let mut o = lib_api::MkfsOptions::new(imgs.clone());
        o.data_profile = lib_api::Profile::from_name(l.data);
        o.metadata_profile = lib_api::Profile::from_name(l.meta);
        o.csum = match l.csum {
            "crc32c" => lib_api::CsumType::Crc32c,
            "xxhash" => lib_api::CsumType::Xxhash64,
            "sha256" => lib_api::CsumType::Sha256,
            _ => lib_api::CsumType::Blake2b256,
        };
        o.nodesize = l.nodesize;
        o.force = true;
        o.features = o.features.apply(l.features).expect("features");
        lib_api::mkfs(&o).expect("btrs mkfs");
    }
    Some(imgs)
}

/// The model of a fresh image: an empty root directory.
pub(super) fn fresh_model(imgs: &[PathBuf], gaps: Gaps) -> Model {
    let fs = open_ro(imgs).expect("open fresh image");
    Model::new(Params { nodesize: fs.sb.nodesize.get(), sectorsize: fs.sectorsize, gaps })
}

// ---------------------------------------------------------------- the kernel's start and end

fn sh(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cmd:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Fill a fresh mkfs.btrfs image through the kernel: subvolumes (nested),
/// a writable and a read-only snapshot (with the stub of the nested one),
/// compressed files (extents and inline), prealloc extents, hard links
/// (many in one directory, so some names go to extended refs), symlinks,
/// xattrs. Returns the model, read from the kernel's view of it.
pub(super) fn kernel_init(imgs: &[PathBuf], tmp: &Path, gaps: Gaps) -> Result<Model, String> {
    let params = fresh_model(imgs, gaps).params;
    let mnt = tmp.join("init-mnt");
    let mounted = interop::Mounted::mount(&mnt, imgs, "")?;
    let m = |p: &str| mnt.join(p);
    let w = |p: &str, b: &[u8]| std::fs::write(m(p), b).map_err(|e| format!("{p}: {e}"));
    let subvol = |args: &[&str]| sh(Command::new("btrfs").arg("subvolume").args(args));
    subvol(&["create", m("sv").to_str().unwrap()])?;
    std::fs::create_dir_all(m("sv/d")).map_err(|e| e.to_string())?;
    // Compressed: the property makes every later write to the file compress.
    for (p, n, seed) in [("sv/d/z", 700_000usize, 4u64), ("sv/zsmall", 1500, 8), ("sv/d/zmid", 200_000, 12)] {
        std::fs::File::create(m(p)).map_err(|e| e.to_string())?;
        sh(Command::new("btrfs").args(["property", "set"]).arg(m(p)).args(["compression", "zstd"]))?;
        w(p, &data(seed, n))?;
    }
    w("sv/plain", &data(3, 100_000))?;
    xattr::set(m("sv/plain"), "user.k", b"kernel").map_err(|e| e.to_string())?;
    // Prealloc: all of it, and with a written piece in the middle.
    sh(Command::new("fallocate").args(["-l", "1M"]).arg(m("sv/pre")))?;
    sh(Command::new("fallocate").args(["-l", "512K"]).arg(m("sv/pre2")))?;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(m("sv/pre2")).map_err(|e| e.to_string())?;
        f.write_all_at(&data(5, 8192), 100_000).map_err(|e| e.to_string())?;
    }
    subvol(&["create", m("sv/inner").to_str().unwrap()])?;
    w("sv/inner/g", b"inner")?;
    std::fs::create_dir(m("h")).map_err(|e| e.to_string())?;
    w("h/a", &data(6, 5000))?;
    std::fs::hard_link(m("h/a"), m("h/b")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("../h/a", m("h/sym")).map_err(|e| e.to_string())?;
    // Enough long names of one inode in one directory to spill into extended refs.
    std::fs::create_dir(m("xr")).map_err(|e| e.to_string())?;
    w("xr/base", b"many names")?;
    for i in 0..90 {
        std::fs::hard_link(m("xr/base"), m(&format!("xr/{}{i:03}", "n".repeat(200)))).map_err(|e| e.to_string())?;
    }
    subvol(&["snapshot", m("sv").to_str().unwrap(), m("snap").to_str().unwrap()])?;
    subvol(&["snapshot", "-r", m("sv").to_str().unwrap(), m("ro").to_str().unwrap()])?;
    sh(&mut Command::new("sync"))?;
    let mut model = model_from_kernel(&mnt, params)?;
    mounted.unmount()?;
    // What only the trees tell: compressed extents and extended refs.
    let fs = open_ro(imgs)?;
    let paths = model.paths();
    let mut v = FsView { fs: &fs };
    for (p, id) in &paths {
        let Kind::File(_) = model.node(*id).kind else { continue };
        let vid = view_find(&mut v, p)?.ok_or_else(|| format!("{p}: btrs does not find it"))?;
        let mut c = Vec::new();
        for (off, fe) in fs.file_extents(vid.0).map_err(|e| e.to_string())? {
            if fe.compression != 0 {
                let inline = matches!(fe.kind, lib_api::FileExtentKind::Inline { .. });
                c.push(Citem { start: off, len: fe.file_len(), inline });
            }
        }
        if let Kind::File(f) = &mut model.node_mut(*id).kind {
            f.compressed = c;
        }
    }
    for (p, id) in &paths {
        let Some(es) = model.entries(*id).cloned() else { continue };
        let did = view_find(&mut v, p)?.ok_or_else(|| format!("{p}: btrs does not find it"))?;
        for (name, e) in es {
            if model.node(e.id).is_dir() {
                continue;
            }
            let child = fs.lookup(did.0, &name).map_err(|e| e.to_string())?.ok_or("lookup")?.id;
            let tree = fs.tree_root(child.subvol).map_err(|e| e.to_string())?;
            let key = lib_api::Key::new(child.ino, lib_api::INODE_REF_KEY, did.0.ino);
            let in_ref = match fs.reader.lookup(&tree, key).map_err(|e| e.to_string())? {
                Some(d) => lib_api::parse_inode_refs(key, &d).map_err(|e| e.to_string())?.iter().any(|r| r.name == name),
                None => false,
            };
            if !in_ref {
                model.extref.insert((*id, name));
            }
        }
    }
    let (nc, ne) = (model.nodes.values().filter(|n| n.file().is_some_and(|f| !f.compressed.is_empty())).count(), model.extref.len());
    if nc == 0 || ne == 0 {
        return Err(format!("the kernel made {nc} compressed files and {ne} extended refs; expected some of both"));
    }
    eprintln!("kernel-made image: {} nodes, {nc} files with compressed extents, {ne} names in extended refs", model.nodes.len());
    Ok(model)
}

/// The model of what the kernel shows at `mnt`.
pub(super) fn model_from_kernel(mnt: &Path, params: Params) -> Result<Model, String> {
    use std::os::unix::fs::MetadataExt;
    let mut kv = KView::new(mnt);
    let root = kv.root();
    let mut model = Model::new(params);
    let rootst = kv.stat(root)?;
    {
        let r = model.root;
        let n = model.node_mut(r);
        n.mode = rootst.mode;
        n.xattrs = kv.xattrs(root)?;
    }
    let mut ids: HashMap<(u64, u64, u64), Id> = HashMap::new();
    ids.insert(root, model.root);
    let mut subvol_of: HashMap<u64, u64> = HashMap::new();
    subvol_of.insert(root.0, TOP);
    let mut stack = vec![(root, model.root)];
    while let Some((vd, md)) = stack.pop() {
        let mut index = 2;
        for (name, vid) in kv.entries(vd)? {
            index += 1;
            let meta = std::fs::symlink_metadata(kv.path(vid)).map_err(|e| e.to_string())?;
            let id = if let Some(&id) = ids.get(&vid) {
                id
            } else {
                let stat = kv.stat(vid)?;
                let next_sv = 256 + subvol_of.len() as u64;
                // A placeholder has a device number of its own on the kernel's
                // side, but lives in the tree of the directory it is in: an id
                // of its own would collide with the next subvolume made.
                let subvol = if meta.ino() == 2 { model.node(md).subvol } else { *subvol_of.entry(vid.0).or_insert(next_sv) };
                if subvol != TOP && meta.ino() == 256 {
                    let ro = kv.path(vid).file_name().is_some_and(|n| n == "ro");
                    model.subvols.insert(subvol, Subvol { ro, root: 0 });
                }
                let kind = if meta.ino() == 2 {
                    Kind::Stub
                } else if meta.is_dir() {
                    Kind::Dir { entries: BTreeMap::new(), next_index: 2, parent: Some(md) }
                } else if meta.file_type().is_symlink() {
                    Kind::Symlink(kv.target(vid)?)
                } else if meta.is_file() {
                    let mut f = FileData::default();
                    kv.stream(vid, stat.size, &mut |off, c| {
                        if let Chunk::Data(b) = c {
                            if b.iter().any(|&x| x != 0) {
                                f.write(off, b);
                            }
                        }
                        Ok(())
                    })?;
                    f.truncate(stat.size);
                    f.edges.clear();
                    Kind::File(f)
                } else {
                    Kind::Special
                };
                let xattrs = if meta.ino() == 2 { BTreeMap::new() } else { kv.xattrs(vid)? };
                let id = model.add_node(Node {
                    kind,
                    mode: stat.mode,
                    uid: stat.uid,
                    gid: stat.gid,
                    flags: 0,
                    xattrs,
                    subvol,
                    nlink: stat.nlink,
                });
                if let Some(sv) = model.subvols.get_mut(&subvol) {
                    if meta.ino() == 256 {
                        sv.root = id;
                    }
                }
                ids.insert(vid, id);
                if model.node(id).is_dir() && meta.ino() != 2 {
                    stack.push((vid, id));
                }
                id
            };
            if let Kind::Dir { entries, next_index, .. } = &mut model.node_mut(md).kind {
                entries.insert(name, Entry { id, index });
                *next_index = index + 1;
            }
        }
    }
    Ok(model)
}

/// The kernel's part at the end of a run: it mounts the images, shows what
/// the model holds, scrubs clean, writes more (applied to the model too),
/// balances every chunk; then `btrfs check`, btrs's view and btrs's scrub
/// agree with the model, which is the kernel's view.
pub(super) fn kernel_end(imgs: &[PathBuf], tmp: &Path, model: &mut Model, test: &str) -> Result<bool, String> {
    if !interop::interop_enabled(test) {
        return Ok(false);
    }
    let mnt = tmp.join("end-mnt");
    // The images were made small to fill up; the kernel gets room for its
    // balance (which needs a free chunk of each kind): the files grow and it
    // resizes every device to them.
    for p in imgs {
        let len = lib_api::raw::len(p).map_err(|e| e.to_string())?;
        lib_api::raw::set_len(p, len + (256 << 20)).map_err(|e| e.to_string())?;
    }
    let mounted = interop::Mounted::mount(&mnt, imgs, "")?;
    let n = compare_all(&mut KView::new(&mnt), model).map_err(|e| format!("kernel view: {e}"))?;
    let out = sh(Command::new("btrfs").args(["scrub", "start", "-B"]).arg(&mnt))?;
    if !out.contains("no errors found") {
        return Err(format!("kernel scrub: {out}"));
    }
    for devid in 1..=imgs.len() {
        sh(Command::new("btrfs").args(["filesystem", "resize", &format!("{devid}:max")]).arg(&mnt))?;
    }
    // A run that made the top level read-only: the kernel makes it
    // writable again (its property), as the model does.
    if model.subvols.get(&TOP).is_some_and(|s| s.ro) {
        sh(Command::new("btrfs").args(["property", "set"]).arg(&mnt).args(["ro", "false"]))?;
        *model = model.apply(&Op::SetRo { path: "/".into(), ro: false }).result.map_err(|e| format!("set-ro: {e:?}"))?;
    }
    // The kernel writes more, into the top-level subvolume.
    let ops = [
        "mkdir /kernel-end",
        "write /kernel-end/big off=0 len=3000000 seed=71",
        "write /kernel-end/small off=0 len=100 seed=72",
        "write /kernel-end/big off=1000001 len=70000 seed=73",
        "ln /kernel-end/small /kernel-end/hard",
        "symlink ../x/y /kernel-end/sym",
        "setxattr /kernel-end/small user.end len=20 seed=74",
        "rm /kernel-end/small",
    ];
    for line in ops {
        let op = parse_op(line)?;
        kernel_apply(&mnt, &op)?;
        *model = model.apply(&op).result.map_err(|e| format!("{line}: the model refuses it: {e:?}"))?;
    }
    // The kernel's own full balance can end in ENOSPC on these small
    // filesystems even when only the kernel wrote them (raid1c3 with 4 KiB
    // nodes and one sparse file is enough): it is told, and the rest of the
    // end step still holds the kernel and btrs to the model.
    match sh(Command::new("btrfs").args(["balance", "start", "--full-balance"]).arg(&mnt)) {
        Ok(_) => {}
        Err(e) if e.contains("No space left on device") => {
            eprintln!("{test}: the kernel's balance ran out of space (its own limit on small filesystems)")
        }
        Err(e) => return Err(e),
    }
    sh(&mut Command::new("sync"))?;
    compare_all(&mut KView::new(&mnt), model).map_err(|e| format!("kernel view after its writes and balance: {e}"))?;
    mounted.unmount()?;
    judge(imgs, false, &[])?;
    let fs = open_ro(imgs)?;
    compare_all(&mut FsView { fs: &fs }, model).map_err(|e| format!("btrs after the kernel's balance: {e}"))?;
    eprintln!("{test}: the kernel's view of {n} nodes equals the model; it wrote, balanced, and btrs agrees");
    Ok(true)
}

/// Do `op` through the kernel (the few kinds the end step uses).
fn kernel_apply(mnt: &Path, op: &Op) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let p = |s: &str| mnt.join(s.trim_start_matches('/'));
    let e = |x: std::io::Error| format!("{op}: {x}");
    match op {
        Op::Mkdir { path, .. } => std::fs::create_dir(p(path)).map_err(e),
        Op::Write { path, off, len, seed, .. } => {
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(p(path)).map_err(e)?;
            f.write_all_at(&data(*seed, *len as usize), *off).map_err(e)
        }
        Op::Link { target, link } => std::fs::hard_link(p(target), p(link)).map_err(e),
        Op::Symlink { target, link } => std::os::unix::fs::symlink(target, p(link)).map_err(e),
        Op::SetXattr { path, name, value: Some((n, s)) } => xattr::set(p(path), name, &printable(*s, *n as usize)).map_err(e),
        Op::Rm { paths, .. } => paths.iter().try_for_each(|x| std::fs::remove_file(p(x)).map_err(e)),
        _ => Err(format!("{op}: not a kernel op")),
    }
}
