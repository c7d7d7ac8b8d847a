//! Random-operation model testing through the library (issue 20): the
//! fast entrance. Each operation runs through the same command code the
//! `btrs` binary runs (`ops::write::*_in`), many of them in one transaction
//! between commits; the model (`model.rs`) says what must happen. After every
//! operation the touched paths are compared through the running transaction;
//! at every `check` op the whole tree through a fresh open, `btrfs check
//! --check-data-csum` and scrub. Faults: the k-th image I/O fails or is torn
//! (`volumes::fault`), after which the images must hold a committed state.
//!
//! `tests/model.rs` is the command-line entrance; `benches/soak.sh` runs
//! [`soak`] with random seeds.

mod model;
mod shared;

#[allow(dead_code, unused_imports)]
#[path = "../../tests/common/interop.rs"]
#[allow(unreachable_pub)] // Shared with the integration tests, whose crates use it whole.
mod interop;

/// The btrs items the shared files use (`btrs::` in `tests/model.rs`).
#[allow(unused_imports)]
mod crash;

mod lib_api {
    pub(super) use crate::error::Error;
    pub(super) use crate::format::items::{parse_inode_refs, FileExtentKind};
    pub(super) use crate::format::{CsumType, FileType, Key, Profile, EMPTY_SUBVOL_DIR_OBJECTID, INODE_REF_KEY};
    pub(super) use crate::fs::{DirEnt, FileChunk, Filesystem, InodeId};
    pub(super) use crate::ops::mkfs::{mkfs, MkfsOptions};
    pub(super) use crate::ops::scrub::{scrub, Finding, FindingKind, ScrubOptions};
    pub(super) use crate::volumes::{raw, OpenOptions};
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use crate::format::items::{parse_dir_items, parse_file_extent, DirEntry, FileExtentKind};
use crate::format::*;
use crate::fs::txn::Transaction;
use crate::fs::Filesystem;
use crate::ops::write as cmd;
use crate::volumes::fault::{Fault, FaultPlan};
use model::*;
use shared::*;

// ---------------------------------------------------------------- a running transaction's view

struct TxView<'a> {
    tx: &'a mut Transaction,
}

/// Tree, inode, a tag telling placeholders apart, and a placeholder's directory inode.
type TxId = (u64, u64, u64, u64);

impl TxView<'_> {
    fn entry_id(&mut self, dir: TxId, e: &DirEntry) -> Result<TxId, String> {
        match e.location.item_type {
            INODE_ITEM_KEY => Ok((dir.0, e.location.objectid, 0, 0)),
            ROOT_ITEM_KEY => {
                let sub = e.location.objectid;
                // As the transaction has it (a subvolume made in it too).
                let linked = self.tx.subvol_linked_here(dir.0, dir.1, sub, &e.name).map_err(|e| e.to_string())?;
                if !linked {
                    let h = shared::tag(&e.name, dir.1 ^ dir.2.rotate_left(17));
                    return Ok((dir.0, EMPTY_SUBVOL_DIR_OBJECTID, h | 1, dir.1));
                }
                let (_, ri) = self.tx.root_item_now(sub).map_err(|e| e.to_string())?.ok_or("no root item")?;
                Ok((sub, ri.root_dirid.get(), 0, 0))
            }
            t => Err(format!("entry of type {t}")),
        }
    }
    fn items(&mut self, root: u64, ino: u64, ty: u8) -> Result<Vec<DirEntry>, String> {
        let mut out = Vec::new();
        for (_, d) in self.tx.range(root, Key::new(ino, ty, 0), Key::new(ino, ty, u64::MAX)).map_err(|e| e.to_string())? {
            out.extend(parse_dir_items(&d).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

impl View for TxView<'_> {
    type Id = TxId;
    fn root(&mut self) -> TxId {
        (FS_TREE_OBJECTID, FIRST_FREE_OBJECTID, 0, 0)
    }
    fn lookup(&mut self, dir: TxId, name: &[u8]) -> Result<Option<TxId>, String> {
        if dir.1 == EMPTY_SUBVOL_DIR_OBJECTID || self.stat(dir)?.mode & model::S_IFMT != model::S_IFDIR {
            return Ok(None);
        }
        let key = Key::new(dir.1, DIR_ITEM_KEY, crate::format::items::name_hash(name));
        let Some(d) = self.tx.get(dir.0, key).map_err(|e| e.to_string())? else { return Ok(None) };
        let Some(e) = parse_dir_items(&d).map_err(|e| e.to_string())?.into_iter().find(|e| e.name == name) else { return Ok(None) };
        self.entry_id(dir, &e).map(Some)
    }
    fn stat(&mut self, id: TxId) -> Result<Stat, String> {
        if id.1 == EMPTY_SUBVOL_DIR_OBJECTID {
            // Owned as the directory it is in (the kernel's new_simple_dir).
            let d = self.tx.read_inode(id.0, id.3).map_err(|e| e.to_string())?;
            return Ok(Stat { mode: model::S_IFDIR | 0o755, uid: d.uid.get(), gid: d.gid.get(), nlink: 1, size: 0, flags: Some(0) });
        }
        let i = self.tx.read_inode(id.0, id.1).map_err(|e| e.to_string())?;
        Ok(Stat {
            mode: i.mode.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            nlink: i.nlink.get(),
            size: i.size.get(),
            flags: Some(i.flags.get() & (NODATASUM | NODATACOW)),
        })
    }
    fn entries(&mut self, dir: TxId) -> Result<Vec<(Vec<u8>, TxId)>, String> {
        if dir.1 == EMPTY_SUBVOL_DIR_OBJECTID {
            return Ok(Vec::new());
        }
        let es = self.items(dir.0, dir.1, DIR_INDEX_KEY)?;
        es.into_iter().map(|e| Ok((e.name.clone(), self.entry_id(dir, &e)?))).collect()
    }
    fn xattrs(&mut self, id: TxId) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
        if id.1 == EMPTY_SUBVOL_DIR_OBJECTID {
            return Ok(BTreeMap::new());
        }
        Ok(self.items(id.0, id.1, XATTR_ITEM_KEY)?.into_iter().map(|e| (e.name, e.data)).collect())
    }
    fn target(&mut self, id: TxId) -> Result<Vec<u8>, String> {
        let size = self.stat(id)?.size as usize;
        let d = self.tx.get(id.0, Key::new(id.1, EXTENT_DATA_KEY, 0)).map_err(|e| e.to_string())?.ok_or("symlink without extent")?;
        match parse_file_extent(&d).map_err(|e| e.to_string())?.kind {
            FileExtentKind::Inline { data } => Ok(data[..size.min(data.len())].to_vec()),
            _ => Err("symlink target not inline".into()),
        }
    }
    fn read(&mut self, id: TxId, off: u64, len: u64) -> Result<Vec<u8>, String> {
        self.tx.read_range(id.0, id.1, off, len).map_err(|e| e.to_string())
    }
    fn can_read_compressed(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------- running ops

/// A fault plan on the running transaction's volume, and the states the
/// images may be left in: one per generation since it was armed.
struct Armed {
    plan: Arc<FaultPlan>,
    gen0: u64,
    states: Vec<Model>,
}

pub(crate) struct LibRunner {
    pub(crate) imgs: Vec<PathBuf>,
    scratch: PathBuf,
    tx: Option<Transaction>,
    armed: Option<Armed>,
    pub(crate) model: Model,
    pub(crate) committed: Model,
    dirty: bool,
    pub(crate) stats: Stats,
    capacity: u64,
    copies: u64,
    chunks0: usize,
    puts: u64,
    /// A crash left some superblock copies one generation behind; the next
    /// commit rewrites them.
    stale_supers: bool,
    /// Writes since the last commit that may have gone in place (NODATACOW).
    inplace: Vec<InPlace>,
    /// What the last `writeback` op set every transaction's write-back
    /// budget to, in bytes.
    write_back_at: Option<u64>,
}

fn injected(e: &Error) -> bool {
    e.to_string().contains("injected")
}

impl LibRunner {
    pub(crate) fn new(imgs: Vec<PathBuf>, scratch: &Path, model: Model, copies: u64) -> LibRunner {
        let capacity = imgs.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        let chunks0 = chunk_count(&imgs);
        LibRunner {
            imgs,
            scratch: scratch.to_path_buf(),
            tx: None,
            armed: None,
            committed: model.clone(),
            model,
            dirty: false,
            stats: Stats::default(),
            capacity,
            copies,
            chunks0,
            puts: 0,
            stale_supers: false,
            inplace: Vec::new(),
            write_back_at: None,
        }
    }

    fn open_tx(&mut self) -> Result<(), String> {
        if self.tx.is_none() {
            let fs = Filesystem::open(&open_opts(&self.imgs, true)).map_err(|e| format!("[open] open: {e}"))?;
            let mut tx = Transaction::begin(fs).map_err(|e| format!("[open] begin: {e}"))?;
            if let Some(at) = self.write_back_at {
                tx.write_back_at = at;
            }
            self.tx = Some(tx);
        }
        Ok(())
    }

    fn gen_of_tx(&self) -> u64 {
        self.tx.as_ref().map_or(0, |t| t.fs().sb.generation.get())
    }

    /// Run one op through btrs and the model; Err is a failure of btrs.
    pub(crate) fn step(&mut self, op: &Op) -> Result<(), String> {
        self.stats.ops += 1;
        *self.stats.by_op.entry(op_name(op)).or_default() += 1;
        match op {
            Op::Check => {
                self.commit(true)?;
                self.full_check()
            }
            Op::Commit { reopen } => self.commit(*reopen),
            Op::Convert { data, meta } => self.convert(op, data, meta),
            Op::WriteBack { blocks } => {
                self.open_tx()?;
                let before = self.gen_of_tx();
                let tx = self.tx.as_mut().ok_or("[writeback] no transaction")?;
                let at = u64::from(*blocks) * u64::from(tx.fs().sb.nodesize.get());
                self.write_back_at = Some(at);
                tx.write_back_at = at;
                match tx.write_back_if_over() {
                    Ok(wrote) => {
                        self.stats.write_backs += u64::from(wrote);
                        Ok(())
                    }
                    // Only an injected fault may stop it; the transaction is gone.
                    Err(e) => self.failed(e, Vec::new(), before, None, op),
                }
            }
            Op::Abort => {
                self.tx = None;
                self.armed = None;
                self.rolled_back()
            }
            Op::Crash { at, torn } => {
                self.commit(true)?;
                self.open_tx()?;
                let plan = Arc::new(FaultPlan::new(*at, if *torn { Fault::Torn } else { Fault::Fail }));
                let tx = self.tx.as_ref().expect("open");
                tx.fs().volume().set_fault(plan.clone());
                self.armed = Some(Armed { plan, gen0: self.gen_of_tx(), states: vec![self.committed.clone()] });
                Ok(())
            }
            _ => self.mutate(op),
        }
    }

    /// `btrs balance --convert` through the library: what the transaction
    /// holds committed first, then the conversion on the images (a fault
    /// armed reaches its volumes too); the tree stays as it was.
    fn convert(&mut self, op: &Op, data: &str, meta: &str) -> Result<(), String> {
        self.commit(true)?;
        // A transaction kept for an armed fault holds the lock: let it go.
        self.tx = None;
        let to: crate::ops::balance::Convert = format!("data={data},metadata={meta}").parse().map_err(|e| format!("[convert] {e}"))?;
        let before = generation(&self.imgs).map_err(|e| format!("[open] {e}"))?;
        crate::volumes::fault::arm_for_writers(self.armed.as_ref().map(|a| a.plan.clone()));
        let r = crate::ops::balance::convert(&open_opts(&self.imgs, true), &to, &mut |_| {});
        crate::volumes::fault::arm_for_writers(None);
        match r {
            Ok(_) => {
                let now = generation(&self.imgs).map_err(|e| format!("[open] {e}"))?;
                if let Some(a) = &mut self.armed {
                    // The fault has not come yet: it goes on counting on the next transaction.
                    a.states.extend(std::iter::repeat_n(self.committed.clone(), (now - before) as usize));
                    let plan = a.plan.clone();
                    self.open_tx()?;
                    if let Some(tx) = &self.tx {
                        tx.fs().volume().set_fault(plan);
                    }
                }
                Ok(())
            }
            Err(e) => self.failed(e, vec![self.committed.clone(); 64], before, None, op),
        }
    }

    /// Commit what the transaction holds; with `reopen` the next op opens
    /// the images afresh (while a fault is armed the volume is kept).
    fn commit(&mut self, reopen: bool) -> Result<(), String> {
        let Some(tx) = self.tx.take() else { return Ok(()) };
        if !self.dirty && reopen && self.armed.is_none() {
            return Ok(());
        }
        let before = tx.fs().sb.generation.get();
        let pending = self.model.clone();
        let keep = !reopen || self.armed.is_some();
        let r = if keep { tx.commit_and_continue().map(Some) } else { tx.commit().map(|()| None) };
        match r {
            Ok(next) => {
                self.tx = next;
                self.stats.commits += 1;
                self.stale_supers = false;
                self.inplace.clear();
                self.committed = pending;
                self.dirty = false;
                if let Some(a) = &mut self.armed {
                    if self.tx.as_ref().is_some_and(|t| t.fs().sb.generation.get() > before) {
                        a.states.push(self.committed.clone());
                    }
                }
                Ok(())
            }
            Err(e) => self.failed(e, vec![pending], before, None, &Op::Commit { reopen }),
        }
    }

    /// The transaction failed with `e` (and is gone): an injected fault, or
    /// ENOSPC; either way the images must hold a committed state.
    fn failed(&mut self, e: Error, extra: Vec<Model>, gen_before: u64, predicted: Option<&ErrClass>, op: &Op) -> Result<(), String> {
        self.tx = None;
        // What the failed transaction held before this op, uncommitted writes
        // included: they take space until the rollback below forgets them.
        let uncommitted = self.model.data_bytes();
        if let Some(a) = self.armed.take() {
            if injected(&e) || a.plan.count() > a.plan.at {
                let mut states = a.states;
                states.extend(extra);
                let now = generation(&self.imgs).map_err(|x| format!("[crash] reopen after a fault: {x}"))?;
                let k = now.checked_sub(a.gen0).ok_or("[crash] generation went back")? as usize;
                let mut st = states
                    .get(k)
                    .cloned()
                    .ok_or_else(|| format!("[crash] generation {now} is {k} past {}, only {} states", a.gen0, states.len()))?;
                let fs = open_after_crash(&self.imgs)?;
                let cands = std::mem::take(&mut self.inplace);
                let torn = torn_paths(&st, &cands);
                let unreconciled = st.clone();
                reconcile_in_place(&fs, &mut st, &cands).map_err(|x| format!("[crash] {x}"))?;
                compare_all(&mut FsView { fs: &fs }, &st).map_err(|x| format!("[crash] after a fault at I/O {} ({op}): {x}", a.plan.at))?;
                drop(fs);
                judge(&self.imgs, true, &torn).map_err(|x| format!("[crash] after a fault at I/O {} ({op}): {x}", a.plan.at))?;
                st = settle_in_place(&self.imgs, unreconciled, &cands).map_err(|x| format!("[crash] after the repair: {x}"))?;
                self.stats.crashes += 1;
                self.stale_supers = true;
                self.model = st.clone();
                self.committed = st;
                self.dirty = false;
                return Ok(());
            }
            // Not the fault: judge it as if none were armed.
        }
        let now = generation(&self.imgs).map_err(|x| format!("[open] after a failure: {x}"))?;
        let k = now.saturating_sub(gen_before) as usize;
        if k > 0 {
            self.committed = extra
                .get(k - 1)
                .cloned()
                .ok_or_else(|| format!("[commits] {k} commits landed before the failure, {} expected at most", extra.len()))?;
        }
        self.rolled_back()?;
        match classify(&e.to_string()) {
            ErrClass::NoSpace => {
                if !matches!(e, Error::NoSpace(_)) {
                    return Err(format!("[error-type] ENOSPC text from a {e:?}"));
                }
                let held = self.committed.data_bytes().max(self.model.data_bytes()).max(uncommitted) + request(op);
                if held * self.copies * 4 < self.capacity && !no_room_to_restripe(op, &e.to_string()) {
                    return Err(format!(
                        "[enospc] ({op}): {e}, with about {} MiB of data ({} copies) on {} MiB of images",
                        held >> 20,
                        self.copies,
                        self.capacity >> 20
                    ));
                }
                self.stats.enospc += 1;
                Ok(())
            }
            got if predicted == Some(&got) => {
                if !typed_as(&got, &e) {
                    return Err(format!("[error-type] {op}: {got:?} refused as {e:?}"));
                }
                *self.stats.refused.entry(format!("{got:?}")).or_default() += 1;
                Ok(())
            }
            got => Err(match predicted {
                Some(want) => format!("[error-class] {op}: btrs refused with {got:?} ({e}), the model expects {want:?}"),
                None => format!("[refused] {op}: btrs refused ({e}), the model expects success"),
            }),
        }
    }

    /// The running transaction is gone: back to the committed state, with
    /// what NODATACOW writes put in place since.
    fn rolled_back(&mut self) -> Result<(), String> {
        let cands = std::mem::take(&mut self.inplace);
        if !cands.is_empty() {
            let fs = open_ro(&self.imgs)?;
            reconcile_in_place(&fs, &mut self.committed, &cands).map_err(|e| format!("[nocow] {e}"))?;
        }
        self.model = self.committed.clone();
        self.dirty = false;
        Ok(())
    }

    fn mutate(&mut self, op: &Op) -> Result<(), String> {
        let mut applied = self.model.apply(op);
        // A refused command aborts its transaction: what came before is
        // committed first, so that the refusal loses nothing. A snapshot
        // copies, and a delete drops, trees as last committed: what came
        // before is committed first too.
        let needs_commit = matches!(op, Op::Snapshot { .. } | Op::SubvolDelete { .. });
        if (applied.result.is_err() || needs_commit) && self.dirty {
            self.commit(false)?;
            applied = self.model.apply(op);
        }
        self.open_tx()?;
        self.inplace.extend(in_place_of(&self.model, op));
        let tx = self.tx.take().expect("open");
        let gen_before = tx.fs().sb.generation.get();
        let (back, res) = exec(tx, op, &self.scratch, &mut self.puts);
        self.tx = back;
        match (res, applied.result) {
            (Ok(()), Ok(m)) => {
                if let Some(last) = applied.commits.last() {
                    self.committed = last.clone();
                    if let Some(a) = &mut self.armed {
                        a.states.extend(applied.commits.iter().cloned());
                    }
                }
                self.model = m;
                self.dirty = true;
                let tx = self.tx.as_mut().expect("tx after success");
                match compare_paths(&mut TxView { tx }, &self.model, op) {
                    Ok(()) => Ok(()),
                    // A queued direct bio met the fault: it surfaces at the
                    // next read, and the transaction is lost.
                    Err(e) if self.armed.is_some() && e.contains("injected") => {
                        self.failed(Error::Invalid(e), Vec::new(), gen_before, None, op)
                    }
                    Err(e) => Err(format!("[view] {e}")),
                }
            }
            (Ok(()), Err(want)) => Err(format!("[accepted] {op}: btrs did it, the model expects {want:?}")),
            (Err(e), want) => {
                let predicted = want.err();
                self.failed(e, applied.commits, gen_before, predicted.as_ref(), op)?;
                // Refused or rolled back: the touched paths are as committed.
                let fs = open_ro(&self.imgs)?;
                compare_paths(&mut FsView { fs: &fs }, &self.committed, op).map_err(|e| format!("[unchanged] after a refusal: {e}"))
            }
        }
    }

    /// Everything against the model, `btrfs check` and scrub.
    fn full_check(&mut self) -> Result<(), String> {
        let t = std::time::Instant::now();
        let r = self.full_check_timed();
        self.stats.check_time += t.elapsed();
        r
    }

    fn full_check_timed(&mut self) -> Result<(), String> {
        self.stats.checks += 1;
        self.tx = None;
        self.armed = None;
        let fs = open_ro(&self.imgs)?;
        compare_all(&mut FsView { fs: &fs }, &self.committed).map_err(|e| format!("[tree] {e}"))?;
        drop(fs);
        judge(&self.imgs, self.stale_supers, &[]).map_err(|e| format!("[judge] {e}"))?;
        self.stats.new_chunks = chunk_count(&self.imgs).saturating_sub(self.chunks0);
        Ok(())
    }
}

/// Whether the library's error type says what the class is: "not found"
/// and "no space" are typed, what btrs does not implement is Unsupported,
/// every other refusal is Invalid (EEXIST, ENOTEMPTY, EXDEV, ENAMETOOLONG,
/// EFBIG, EROFS alike: only the text tells them apart).
fn typed_as(class: &ErrClass, e: &Error) -> bool {
    match class {
        ErrClass::NotFound => matches!(e, Error::NotFound(_)),
        ErrClass::NoSpace => matches!(e, Error::NoSpace(_)),
        ErrClass::GapCompressed(_) | ErrClass::GapExtref | ErrClass::GapExtrefStored | ErrClass::Subvol | ErrClass::Stub => {
            matches!(e, Error::Unsupported(_))
        }
        _ => matches!(e, Error::Invalid(_)),
    }
}

/// Bytes an op asks to write.
fn request(op: &Op) -> u64 {
    match op {
        Op::Write { len, .. } => *len,
        Op::Put { .. } => 1 << 20,
        _ => 0,
    }
}

/// The command code for `op` on a running transaction: the transaction back
/// after success; on an error it is gone, as when a command fails.
fn exec(mut tx: Transaction, op: &Op, scratch: &Path, puts: &mut u64) -> (Option<Transaction>, crate::error::Result<()>) {
    let r = match op {
        Op::Write { path, off, len, seed, direct, truncate, parents, create, commit_every, max_bio_k, compress } => {
            let req = cmd::WriteRequest {
                offset: *off,
                truncate: *truncate,
                parents: *parents,
                nodatasum: *create == Create::NoSum,
                nodatacow: *create == Create::NoCow,
                max_bio: (*max_bio_k != 0).then_some(*max_bio_k as usize * 1024),
                direct: *direct,
                commit_every: commit_every.then_some(WRITE_STEP),
                on_bio: None,
                compress: compress.then_some(crate::fs::txn::CompressOpts {
                    kind: crate::format::compress::Compression::Zstd,
                    level: None,
                    force: false,
                }),
            };
            let input = Box::new(std::io::Cursor::new(data(*seed, *len as usize)));
            return match cmd::write_in(tx, path, input, Some(*len), &req, &mut |_| {}) {
                Ok((tx, _)) => (Some(tx), Ok(())),
                Err(e) => (None, Err(e)),
            };
        }
        Op::Truncate { path, size } => {
            let req = cmd::WriteRequest { offset: *size, truncate: true, ..Default::default() };
            return match cmd::write_in(tx, path, Box::new(std::io::empty()), Some(0), &req, &mut |_| {}) {
                Ok((tx, _)) => (Some(tx), Ok(())),
                Err(e) => (None, Err(e)),
            };
        }
        Op::Mkdir { path, parents } => cmd::mkdir_in(&mut tx, path, *parents, None),
        Op::SubvolCreate { path } => crate::ops::subvol::create_in(&mut tx, path, false).map(drop),
        Op::Snapshot { src, dest, ro } => crate::ops::subvol::snapshot_in(&mut tx, src, dest, *ro).map(drop),
        Op::SubvolDelete { path } => crate::ops::subvol::delete_in(&mut tx, path).map(drop),
        Op::SetRo { path, ro } => crate::ops::subvol::set_readonly_in(&mut tx, path, *ro).map(drop),
        Op::Chmod { path, mode } => cmd::chmod_in(&mut tx, std::slice::from_ref(path), &|_| *mode),
        Op::Chown { path, uid, gid } => cmd::set_attr_in(
            &mut tx,
            std::slice::from_ref(path),
            &crate::fs::txn::SetAttr { uid: *uid, gid: *gid, chown: true, ..Default::default() },
        ),
        Op::Rm { paths, recursive } => cmd::rm_in(&mut tx, paths, *recursive),
        Op::Mv { src, dst } => cmd::mv_in(&mut tx, src, dst),
        Op::Link { target, link } => cmd::ln_in(&mut tx, target, link, false),
        Op::Symlink { target, link } => cmd::ln_in(&mut tx, target, link, true),
        Op::SetXattr { path, name, value } => {
            let v = value.map(|(n, s)| printable(s, n as usize));
            cmd::setfattr_in(&mut tx, path, name.as_bytes(), v.as_deref())
        }
        Op::Put { dest, seed } => {
            *puts += 1;
            let host = scratch.join(format!("put-{puts}"));
            let _ = std::fs::remove_dir_all(&host);
            let made = std::fs::create_dir_all(&host).and_then(|()| HostTree::generate(*seed).materialize(&host));
            let r = match made {
                Ok(src) => crate::ops::put::put_in(&mut tx, &[src], dest).map(|_| ()),
                Err(e) => Err(Error::io(&host, "make the host tree", e)),
            };
            let _ = std::fs::remove_dir_all(&host);
            r
        }
        _ => Ok(()),
    };
    match r {
        Ok(()) => (Some(tx), Ok(())),
        Err(e) => (None, Err(e)),
    }
}

// ---------------------------------------------------------------- runs

/// How a run goes: its layout, length and op mix.
#[derive(Clone, Debug)]
pub(crate) struct RunCfg {
    pub(crate) layout: &'static Layout,
    pub(crate) ops: usize,
    pub(crate) gen: GenCfg,
    /// The kernel's end step (interop only).
    pub(crate) kernel_end: bool,
}

pub(crate) fn gen_cfg(check_every: usize) -> GenCfg {
    GenCfg { cli: false, check_every, crash_one_in: 90, big_write: 40 << 20, fill: 0, gaps: Gaps::from_env(), devs: 1, data: "single" }
}

/// A failure: the ops up to the failing one, and what failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) ops: Vec<Op>,
    pub(crate) msg: String,
}

impl Failure {
    /// The kind of failure, which a minimized list must keep.
    pub(crate) fn kind(&self) -> String {
        kind_of(&self.msg)
    }
}

/// Fresh images and the model of them; `None` when the tools are missing.
fn setup(l: &Layout, dir: &Path) -> Option<(Vec<PathBuf>, Model)> {
    if l.kernel_init && !interop::interop_enabled(l.name) {
        return None;
    }
    let imgs = make_images(dir, l)?;
    let gaps = Gaps::from_env();
    let model = if l.kernel_init {
        kernel_init(&imgs, dir, gaps).unwrap_or_else(|e| panic!("{}: kernel setup: {e}", l.name))
    } else {
        fresh_model(&imgs, gaps)
    };
    Some((imgs, model))
}

fn copies(l: &Layout) -> u64 {
    Profile::from_name(l.data).map_or(1, |p| p.copies() as u64)
}

/// Run `source` (generated ops, or a fixed list) on fresh images of `l`.
/// Ok: the stats; Err: the ops run up to the failure.
fn run(
    l: &'static Layout,
    dir: &Path,
    mut source: impl FnMut(&Model) -> Option<Op>,
    kernel: bool,
) -> Option<Result<(Stats, Model), Failure>> {
    let (imgs, model) = setup(l, dir)?;
    let mut r = LibRunner::new(imgs.clone(), dir, model, copies(l));
    let mut ops = Vec::new();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
        while let Some(op) = source(&r.model) {
            ops.push(op.clone());
            r.step(&op)?;
        }
        ops.push(Op::Check);
        r.step(&Op::Check)?;
        // For a person to look at: the images as the run left them.
        if let Ok(keep) = std::env::var("BTRS_MODEL_KEEP") {
            for (i, p) in imgs.iter().enumerate() {
                let _ = std::fs::copy(p, Path::new(&keep).join(format!("dev{}.img", i + 1)));
            }
        }
        if kernel {
            let mut m = r.committed.clone();
            kernel_end(&imgs, dir, &mut m, l.name).map_err(|e| format!("[kernel] {e}"))?;
        }
        Ok(())
    }));
    let res = match res {
        Ok(r) => r,
        Err(p) => Err(format!(
            "[panic] {}",
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        )),
    };
    Some(match res {
        Ok(()) => Ok((r.stats.clone(), r.committed.clone())),
        Err(msg) => Err(Failure { ops, msg }),
    })
}

/// Generate and run `cfg.ops` ops from `seed`.
pub(crate) fn run_seed(cfg: &RunCfg, seed: u64) -> Option<Result<Stats, Failure>> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut gc = cfg.gen.clone();
    gc.fill = (cfg.layout.size_mb << 20) * cfg.layout.devs as u64 / copies(cfg.layout);
    gc.devs = cfg.layout.devs;
    gc.data = cfg.layout.data;
    let mut g = Gen::new(seed, gc);
    let mut n = 0;
    let total = cfg.ops;
    run(
        cfg.layout,
        tmp.path(),
        |m| {
            n += 1;
            (n <= total).then(|| g.next(m))
        },
        cfg.kernel_end,
    )
    .map(|r| r.map(|(s, _)| s))
}

/// Run a fixed op list on fresh images of `l` (then the kernel's end step
/// with `kernel`).
pub(crate) fn replay(l: &'static Layout, ops: &[Op], kernel: bool) -> Option<Result<Stats, Failure>> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut it = ops.iter().cloned();
    run(l, tmp.path(), |_| it.next(), kernel).map(|r| r.map(|(s, _)| s))
}

/// Shrink a failing list to a few ops that fail the same way.
pub(crate) fn shrink(l: &'static Layout, f: &Failure, budget: usize) -> Vec<Op> {
    let kind = f.kind();
    let kernel = kind.starts_with("[kernel");
    let mut fails = |ops: &[Op]| matches!(replay(l, ops, kernel), Some(Err(g)) if g.kind() == kind);
    minimize(f.ops.clone(), &mut fails, budget)
}

/// Keep a failing list where a person can replay it (`replay_file`).
fn save(l: &Layout, seed: u64, what: &str, ops: &[Op]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("btrs-model-{}-{seed}-{what}.ops", l.name));
    let _ = std::fs::write(&p, format!("# layout {}\n{}", l.name, ops_text(ops)));
    p
}

/// Run a seed; on a failure, minimize it and panic with the seed and the
/// minimized ops (ready to become a regression test).
pub(crate) fn run_or_explain(cfg: &RunCfg, seed: u64) -> Option<Stats> {
    let r = run_seed(cfg, seed)?;
    match r {
        Ok(s) => Some(s),
        Err(f) => {
            let full = save(cfg.layout, seed, "full", &f.ops);
            eprintln!("seed {seed} on {} failed after {} ops (saved in {}): {}", cfg.layout.name, f.ops.len(), full.display(), f.msg);
            let budget = std::env::var("BTRS_MODEL_SHRINK").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
            let small = shrink(cfg.layout, &f, budget);
            let again =
                replay(cfg.layout, &small, f.kind().starts_with("[kernel")).and_then(|r| r.err()).map(|g| g.msg).unwrap_or_default();
            let min = save(cfg.layout, seed, "min", &small);
            panic!(
                "seed {seed} on layout {} fails: {}\nminimized to {} ops (in {}; fails with: {again}):\n{}",
                cfg.layout.name,
                f.msg,
                small.len(),
                min.display(),
                ops_text(&small)
            );
        }
    }
}

/// A fixed seed on a layout: every op kind, refusals, faults, and (where
/// the kernel is here) its end step.
fn fixed(layout: &str, seeds: &[u64], ops: usize, check_every: usize) -> Option<Stats> {
    let l = shared::layout(layout);
    let t = std::time::Instant::now();
    let mut total = Stats::default();
    for (i, &seed) in seeds.iter().enumerate() {
        let cfg = RunCfg { layout: l, ops, gen: gen_cfg(check_every), kernel_end: i == 0 };
        total.add(&run_or_explain(&cfg, seed)?);
    }
    report(layout, &total, t.elapsed());
    for k in [
        "write",
        "write-direct",
        "truncate",
        "mkdir",
        "rm",
        "rm-r",
        "mv",
        "ln",
        "symlink",
        "setxattr",
        "rmxattr",
        "put",
        "commit",
        "writeback",
        "crash",
        "check",
    ] {
        assert!(total.by_op.get(k).copied().unwrap_or(0) > 0, "{layout}: no {k} op ran");
    }
    assert!(total.crashes > 0, "{layout}: no fault fired");
    assert!(total.write_backs > 0, "{layout}: no write-back wrote a block");
    Some(total)
}

#[test]
fn model_lib_single_crc32c_16k_btrs() {
    if let Some(s) = fixed("single-crc32c-16k-btrs", &[1, 2], 1200, 150) {
        assert!(s.enospc > 0 && s.new_chunks > 0, "no ENOSPC or no new chunk: {s:?}");
    }
}

#[test]
fn model_lib_dup_xxhash_4k_btrs() {
    fixed("dup-xxhash-4k-btrs", &[11, 12], 1000, 150);
}

#[test]
fn model_lib_raid1_sha256_progs() {
    fixed("raid1-sha256-16k-progs-noholes", &[21, 22], 900, 150);
}

#[test]
fn model_lib_raid1c3_blake2_4k_progs_holes() {
    fixed("raid1c3-blake2-4k-progs-holes-fst", &[31], 1000, 150);
}

#[test]
fn model_lib_raid10_crc32c_4k_btrs_holes() {
    fixed("raid10-crc32c-4k-btrs-holes", &[41], 1000, 150);
}

#[test]
fn model_lib_kernel_subvols_compressed_prealloc() {
    fixed("kernel-subvols-16k", &[51, 52, 53], 800, 150);
}

/// The op text round-trips (regression lists are pasted from it).
#[test]
fn op_text_round_trips() {
    let mut g = Gen::new(7, gen_cfg(50));
    let m = Model::new(Params { nodesize: 4096, sectorsize: 4096, gaps: Gaps::default() });
    for _ in 0..2000 {
        let op = g.next(&m);
        assert_eq!(parse_op(&op.to_string()).unwrap(), op, "{op}");
    }
}

/// Replay the op list in `BTRS_MODEL_REPLAY` (a file as `save` writes it,
/// or the text itself) on its layout, with the kernel's end step when
/// `BTRS_MODEL_KERNEL` is set.
#[test]
#[ignore]
fn replay_file() {
    let src = std::env::var("BTRS_MODEL_REPLAY").expect("BTRS_MODEL_REPLAY");
    let text = std::fs::read_to_string(&src).unwrap_or(src);
    let name = text.lines().find_map(|l| l.strip_prefix("# layout ")).map(str::trim).unwrap_or("single-crc32c-16k-btrs");
    let ops = parse_ops(&text).expect("ops");
    let kernel = std::env::var("BTRS_MODEL_KERNEL").is_ok();
    match replay(shared::layout(name), &ops, kernel) {
        Some(Err(f)) => panic!("{} ops on {name}: {}", ops.len(), f.msg),
        Some(Ok(s)) => eprintln!("{} ops on {name} ran clean: {s:?}", ops.len()),
        None => eprintln!("skipped"),
    }
}

/// Minimize the failing op list in `BTRS_MODEL_SHRINK_FILE` (as `save`
/// writes it) with a budget of `BTRS_MODEL_SHRINK` runs.
#[test]
#[ignore]
fn shrink_file() {
    let src = std::env::var("BTRS_MODEL_SHRINK_FILE").expect("BTRS_MODEL_SHRINK_FILE");
    let text = std::fs::read_to_string(&src).expect("read");
    let name = text.lines().find_map(|l| l.strip_prefix("# layout ")).map(str::trim).unwrap_or("single-crc32c-16k-btrs");
    let l = shared::layout(name);
    let ops = parse_ops(&text).expect("ops");
    let budget = std::env::var("BTRS_MODEL_SHRINK").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let f = match replay(l, &ops, true) {
        Some(Err(f)) => f,
        other => panic!("does not fail: {:?}", other.map(|r| r.map(|_| ()))),
    };
    eprintln!("fails with {}", f.msg);
    let small = shrink(l, &f, budget);
    let again = replay(l, &small, f.kind().starts_with("[kernel")).and_then(|r| r.err()).map(|g| g.msg).unwrap_or_default();
    let p = save(l, 0, "shrunk", &small);
    eprintln!("{} ops in {} (fails with: {again}):\n{}", small.len(), p.display(), ops_text(&small));
}

/// Random seeds until `BTRS_SOAK_SECONDS` are up (from `BTRS_SOAK_SEED`,
/// default: the clock); a failure prints its seed and minimized ops.
/// `benches/soak.sh` runs it.
#[test]
#[ignore]
fn soak() {
    let secs: u64 = std::env::var("BTRS_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let base: u64 = std::env::var("BTRS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let ops: usize = std::env::var("BTRS_SOAK_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    let t = std::time::Instant::now();
    let mut total = Stats::default();
    let mut seeds = 0u64;
    let only = std::env::var("BTRS_SOAK_LAYOUT").ok();
    let layouts: Vec<&'static Layout> = shared::LAYOUTS
        .iter()
        .filter(|l| only.as_deref().is_none_or(|o| l.name == o))
        .filter(|l| !l.kernel_init || interop::interop_enabled("soak"))
        .collect();
    while t.elapsed().as_secs() < secs {
        let seed = base.wrapping_add(seeds);
        let l = layouts[(seed % layouts.len() as u64) as usize];
        eprintln!("soak: seed {seed} on {}", l.name);
        let cfg = RunCfg { layout: l, ops, gen: gen_cfg(150), kernel_end: false };
        if let Some(s) = run_or_explain(&cfg, seed) {
            total.add(&s);
        }
        seeds += 1;
    }
    report(&format!("soak: {seeds} seeds from {base}"), &total, t.elapsed());
    eprintln!("soak: clean: {} ops, {} seeds, {} s", total.ops, seeds, t.elapsed().as_secs());
}

// Failures the model found, kept as tests (minimized op lists).
mod regressions;
