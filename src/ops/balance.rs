//! `btrs balance --convert`, and the chunk moves `device remove` and
//! `resize` below the last stripe make: each chunk re-striped in place of
//! its logical range (see `Transaction::restripe`), one commit per chunk,
//! so a crash or failure leaves every chunk in its old layout or its new one.
//!
//! Every move is planned on a model of the devices before anything is
//! written: a conversion that needs more devices or more room than there is
//! fails naming the first chunk that does not fit, images unchanged. (The
//! commits between moves may add a metadata chunk the model did not see; a
//! move that then finds no room stops there, the chunks before it moved.)

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::*;
use crate::fs::txn::{cut_unit_of, MoveEvent, Restriped, Transaction};
use crate::fs::Filesystem;
use crate::volumes::alloc::{plan_of, plan_restripe, ChunkPlan, DevSpace, Placement};
use crate::volumes::OpenOptions;

/// Target profiles of `balance --convert`, per kind of chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Convert {
    pub data: Option<Profile>,
    pub metadata: Option<Profile>,
    pub system: Option<Profile>,
}

impl std::str::FromStr for Convert {
    type Err = String;

    /// `data=P[,metadata=P][,system=P]` (also `d=`, `m=`, `s=`). Metadata
    /// given without system converts system chunks too, as btrfs balance's
    /// -mconvert does.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut c = Convert::default();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected KIND=PROFILE"))?;
            let p = parse_profile(v)?;
            let slot = match k {
                "data" | "d" => &mut c.data,
                "metadata" | "m" => &mut c.metadata,
                "system" | "s" => &mut c.system,
                _ => return Err(format!("{k:?}: the kinds are data, metadata and system")),
            };
            if slot.replace(p).is_some() {
                return Err(format!("{k} given twice"));
            }
        }
        if c.system.is_none() {
            c.system = c.metadata;
        }
        Ok(c)
    }
}

fn parse_profile(s: &str) -> std::result::Result<Profile, String> {
    let all = [Profile::Single, Profile::Dup, Profile::Raid0, Profile::Raid1, Profile::Raid1C3, Profile::Raid1C4, Profile::Raid10];
    all.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
        if s.eq_ignore_ascii_case("raid5") || s.eq_ignore_ascii_case("raid6") {
            format!("{s}: btrs does not write RAID5/6")
        } else {
            format!("{s:?}: the profiles are single, dup, raid0, raid1, raid1c3, raid1c4, raid10")
        }
    })
}

impl Convert {
    /// The profile chunks of type `flags` should have, when it differs.
    fn target(&self, flags: u64) -> Option<Profile> {
        let want = if flags & BLOCK_GROUP_SYSTEM != 0 {
            self.system
        } else if flags & BLOCK_GROUP_DATA != 0 && flags & BLOCK_GROUP_METADATA != 0 {
            // Mixed block groups: data and metadata must agree (checked at parse).
            self.data.or(self.metadata)
        } else if flags & BLOCK_GROUP_DATA != 0 {
            self.data
        } else {
            self.metadata
        }?;
        (Profile::from_flags(flags) != Some(want)).then_some(want)
    }
}

/// What one run of moves did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MoveReport {
    pub chunks_moved: u64,
    /// Chunks cut in two to make room, and empty chunks removed.
    pub chunks_cut: u64,
    pub chunks_removed: u64,
    pub bytes_copied: u64,
    /// Copies that failed their check and were taken from another copy.
    pub repaired: u64,
    pub chunks: Vec<Restriped>,
}

impl MoveReport {
    pub(crate) fn absorb(&mut self, other: MoveReport) {
        self.chunks_moved += other.chunks_moved;
        self.chunks_cut += other.chunks_cut;
        self.chunks_removed += other.chunks_removed;
        self.bytes_copied += other.bytes_copied;
        self.repaired += other.repaired;
        self.chunks.extend(other.chunks);
    }
}

/// Which chunks to move and where: the profile each chunk should get
/// (None: the one it has) and where its stripes may lie.
pub(crate) struct Moves<'a> {
    /// From a chunk's type and profile bits, the profile it should have.
    pub(crate) want: &'a dyn Fn(u64) -> Option<Profile>,
    pub(crate) place: Placement,
    /// Also move chunks whose stripes `place` does not allow.
    pub(crate) misplaced: bool,
}

/// The chunks as a run of moves sees them: logical -> stripes.
type Layout = BTreeMap<u64, ChunkPlan>;

fn layout(tx: &Transaction) -> Result<Layout> {
    tx.store.fs.volume().chunks.entries().iter().map(|e| Ok((e.logical, plan_of(e.logical, &e.chunk, e.stripe_size()?)?))).collect()
}

/// `place`, else (when nothing fits clear of them) over superblock copies
/// that lie under unused logical addresses.
fn restripe_plan(tx: &Transaction, devs: &[DevSpace], old: &ChunkPlan, to: Profile, place: &Placement) -> Result<ChunkPlan> {
    match plan_restripe(devs, old, to, place) {
        Ok(p) => Ok(p),
        Err(first) => {
            let over = Placement { supers_inside: true, ..place.clone() };
            match plan_restripe(devs, old, to, &over) {
                Ok(p) if tx.supers_clear(&p)? => Ok(p),
                _ => Err(first),
            }
        }
    }
}

impl Moves<'_> {
    /// The plan for `old`, when it has to move.
    fn plan(&self, tx: &Transaction, devs: &[DevSpace], old: &ChunkPlan) -> Result<Option<ChunkPlan>> {
        let to = (self.want)(old.flags);
        let misplaced = self.misplaced && old.stripes.iter().any(|&(d, p)| !self.place.allows(d, p, old.stripe_size));
        if to.is_none() && !misplaced {
            return Ok(None);
        }
        let new = restripe_plan(tx, devs, old, to.unwrap_or(old.profile), &self.place)?;
        Ok((new != *old).then_some(new))
    }

    /// The next step. When a chunk that has to move finds no room: an empty
    /// chunk (not the last of its kind) is removed, else the stuck chunk is
    /// cut in two where no extent spans the cut (each half needs half the
    /// room), else a chunk that can go lower on its devices moves first
    /// (joining the free space it leaves with the hole below it).
    fn next(&self, tx: &Transaction, devs: &[DevSpace], now: &Layout) -> Result<Option<Step>> {
        let mut stuck = None;
        for old in now.values() {
            match self.plan(tx, devs, old) {
                Ok(Some(p)) => return Ok(Some(Step::Move(p))),
                Ok(None) => {}
                Err(e @ Error::NoSpace(_)) => {
                    stuck = Some((e, old.clone()));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let Some((stuck, chunk)) = stuck else { return Ok(None) };
        let kind = |f: u64| f & BLOCK_GROUP_TYPE_MASK;
        for c in now.values() {
            let others = now.values().filter(|o| kind(o.flags) == kind(c.flags)).count();
            if others > 1 && tx.range_is_free(c.logical, c.length) {
                return Ok(Some(Step::Drop(c.logical)));
            }
        }
        let unit = cut_unit_of(chunk.profile, chunk.stripes.len(), chunk.sub_stripes);
        if let Some(at) = tx.cut_point(chunk.logical, chunk.length, unit, SMALLEST_CUT) {
            return Ok(Some(Step::Split(chunk.logical, at)));
        }
        for old in now.values() {
            for &(devid, _) in &old.stripes {
                // Every stripe of it on that device strictly lower.
                let Some(low) = old.stripes.iter().filter(|s| s.0 == devid).map(|s| s.1).min() else { continue };
                let mut place = Placement { avoid: self.place.avoid.clone(), ..Placement::default() };
                place.cap.insert(devid, low);
                if let Ok(p) = restripe_plan(tx, devs, old, old.profile, &place) {
                    // Only lower on the same device: anything else could go round in circles.
                    let lower = p.stripes.iter().filter(|s| !old.stripes.contains(s)).all(|&(d, o)| d == devid && o < low);
                    if p != *old && lower {
                        return Ok(Some(Step::Move(p)));
                    }
                }
            }
        }
        Err(stuck)
    }

    /// Plan every step on a model of the devices (each move frees its old
    /// stripes once committed, as the real run does): the first chunk that
    /// does not fit is the error, before anything is written. The moves.
    pub(crate) fn dry_run(&self, tx: &Transaction) -> Result<Vec<ChunkPlan>> {
        let mut devs = tx.dev_space().to_vec();
        let mut now = layout(tx)?;
        let limit = step_limit(&now);
        let mut plans = Vec::new();
        for _ in 0..limit {
            let Some(step) = self.next(tx, &devs, &now)? else { return Ok(plans) };
            step.model(&mut now, &mut devs);
            if let Step::Move(p) = step {
                plans.push(p);
            }
        }
        Err(Error::Internal(format!("chunks kept needing to move after {limit} steps")))
    }

    /// Move every chunk that has to, one commit each; the transaction after
    /// the last commit (still holding the lock) and what moved.
    ///
    /// Stripes a move freed stay unused while a reader of a generation
    /// before that move is registered (it reads them through its own,
    /// older, chunk map), as the transaction's `Held` does for blocks; a move
    /// that finds no room then waits a little for such readers to go.
    pub(crate) fn run(&self, mut tx: Transaction, progress: &mut dyn FnMut(MoveEvent<'_>)) -> Result<(Transaction, MoveReport)> {
        let mut report = MoveReport::default();
        // Going to fewer copies loses nothing that cannot be told apart:
        // checked for every chunk before the first one moves.
        let plans = self.dry_run(&tx)?;
        let mut used = 0u64;
        for plan in &plans {
            tx.check_drop(plan.logical, plan.profile.copies())?;
            used = used.saturating_add(tx.chunk_used(plan.logical)?);
        }
        progress(MoveEvent::Planned { chunks: u64::try_from(plans.len()).unwrap_or(u64::MAX), used });
        // (devid, offset, length, the generation that freed it)
        let mut freed: Vec<(u64, u64, u64, u64)> = Vec::new();
        // A commit may add a chunk (metadata headroom) that needs moving too.
        let limit = step_limit(&layout(&tx)?).saturating_mul(2);
        for _ in 0..limit {
            let now = layout(&tx)?;
            let step = self.next_beside_readers(&tx, &now, &mut freed).map_err(|e| stopped(e, &report))?;
            let Some(step) = step else { return Ok((tx, report)) };
            let generation = tx.transid();
            match step {
                Step::Move(plan) => {
                    if let Some(old) = now.get(&plan.logical) {
                        for &(devid, phys) in old.stripes.iter().filter(|s| !plan.stripes.contains(s)) {
                            freed.push((devid, phys, old.stripe_size, generation));
                        }
                    }
                    let done = tx.restripe(&plan, progress).map_err(|e| stopped(e, &report))?;
                    tx = tx.commit_and_continue().map_err(|e| stopped(e, &report))?;
                    report.chunks_moved += 1;
                    report.bytes_copied += done.bytes_copied;
                    report.repaired += done.repaired;
                    progress(MoveEvent::Moved(&done));
                    report.chunks.push(done);
                }
                Step::Split(logical, at) => {
                    tx.split_chunk(logical, at).map_err(|e| stopped(e, &report))?;
                    tx = tx.commit_and_continue().map_err(|e| stopped(e, &report))?;
                    report.chunks_cut += 1;
                }
                Step::Drop(logical) => {
                    if let Some(old) = now.get(&logical) {
                        for &(devid, phys) in &old.stripes {
                            freed.push((devid, phys, old.stripe_size, generation));
                        }
                    }
                    tx.drop_empty_chunk(logical).map_err(|e| stopped(e, &report))?;
                    tx = tx.commit_and_continue().map_err(|e| stopped(e, &report))?;
                    report.chunks_removed += 1;
                }
            }
        }
        Err(Error::Internal(format!("chunks kept needing to move after {limit} steps")))
    }
}

impl Moves<'_> {
    /// [`Moves::next`] with the stripes earlier moves freed held for the
    /// readers that may still read them (see [`Moves::run`]).
    fn next_beside_readers(&self, tx: &Transaction, now: &Layout, freed: &mut Vec<(u64, u64, u64, u64)>) -> Result<Option<Step>> {
        let patience = std::time::Instant::now();
        loop {
            let vol = tx.store.fs.volume();
            let oldest = if freed.is_empty() { None } else { vol.oldest_reader(tx.transid())? };
            // A stripe freed by the commit of generation g is read by readers of generations before g.
            freed.retain(|f| oldest.is_some_and(|r| r < f.3));
            let mut devs = tx.dev_space().to_vec();
            for &(devid, phys, len, _) in freed.iter() {
                if let Some(d) = devs.iter_mut().find(|d| d.devid == devid) {
                    d.extents.insert(phys, len);
                }
            }
            match self.next(tx, &devs, now) {
                Err(Error::NoSpace(_)) if !freed.is_empty() && patience.elapsed() < READER_PATIENCE => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(Error::NoSpace(m)) if !freed.is_empty() => {
                    return Err(Error::NoSpace(format!(
                        "{m} (a reader of generation {} still reads stripes an earlier move freed: try again when it is done)",
                        oldest.unwrap_or(0)
                    )));
                }
                r => return r,
            }
        }
    }
}

/// How long a move waits for readers of older generations to go when only
/// the stripes they may read would give it room.
const READER_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Most steps one run makes: every chunk converted or moved off a device,
/// cut a few times, and each stripe moved lower a few times to make room.
fn step_limit(now: &Layout) -> usize {
    let stripes: usize = now.values().map(|p| p.stripes.len()).sum();
    now.len().saturating_mul(8).saturating_add(stripes.saturating_mul(4)).saturating_add(64)
}

/// The smallest half a chunk is cut into to make room.
const SMALLEST_CUT: u64 = 8 * 1024 * 1024;

/// One step of a run, each its own commit.
#[derive(Clone, Debug)]
enum Step {
    /// Re-stripe a chunk.
    Move(ChunkPlan),
    /// Cut the chunk at .0 in two at .1.
    Split(u64, u64),
    /// Remove an empty chunk.
    Drop(u64),
}

impl Step {
    /// What the step does to the model of a dry run.
    fn model(&self, now: &mut Layout, devs: &mut [DevSpace]) {
        let mut set = |devid: u64, phys: u64, len: Option<u64>| {
            if let Some(d) = devs.iter_mut().find(|d| d.devid == devid) {
                match len {
                    Some(l) => d.extents.insert(phys, l),
                    None => d.extents.remove(&phys),
                };
            }
        };
        match self {
            Step::Move(new) => {
                if let Some(old) = now.get(&new.logical) {
                    for &(devid, phys) in &old.stripes {
                        set(devid, phys, None);
                    }
                }
                for &(devid, phys) in &new.stripes {
                    set(devid, phys, Some(new.stripe_size));
                }
                now.insert(new.logical, new.clone());
            }
            Step::Split(logical, at) => {
                let Some(old) = now.get(logical).cloned() else { return };
                let data_stripes = cut_unit_of(old.profile, old.stripes.len(), old.sub_stripes) / STRIPE_LEN;
                let ss1 = (at - logical) / data_stripes.max(1);
                let ss2 = old.stripe_size.saturating_sub(ss1);
                for &(devid, phys) in &old.stripes {
                    set(devid, phys, Some(ss1));
                    set(devid, phys + ss1, Some(ss2));
                }
                let first = ChunkPlan { length: at - logical, stripe_size: ss1, ..old.clone() };
                let second = ChunkPlan {
                    logical: *at,
                    length: old.length - (at - logical),
                    stripe_size: ss2,
                    stripes: old.stripes.iter().map(|&(d, p)| (d, p + ss1)).collect(),
                    ..old
                };
                now.insert(*logical, first);
                now.insert(*at, second);
            }
            Step::Drop(logical) => {
                if let Some(old) = now.remove(logical) {
                    for &(devid, phys) in &old.stripes {
                        set(devid, phys, None);
                    }
                }
            }
        }
    }
}

/// An error after some chunks moved says so: they stay moved.
fn stopped(e: Error, report: &MoveReport) -> Error {
    if report.chunks_moved == 0 {
        return e;
    }
    e.within(format!("after {} chunks moved and committed (they stay moved; run it again to go on)", report.chunks_moved))
}

/// `btrs balance IMAGE --convert ...`: give every chunk of each named kind
/// the named profile.
pub fn convert(opts: &OpenOptions, to: &Convert, progress: &mut dyn FnMut(MoveEvent<'_>)) -> Result<MoveReport> {
    if to.data.is_none() && to.metadata.is_none() && to.system.is_none() {
        return Err(Error::Invalid("nothing to convert: give data=, metadata= or system=".into()));
    }
    let tx = Transaction::begin(Filesystem::open(&OpenOptions { writable: true, ..opts.clone() })?)?;
    let ndevs = tx.dev_items().len();
    let mixed = tx.store.groups.values().any(|g| g.flags & BLOCK_GROUP_DATA != 0 && g.flags & BLOCK_GROUP_METADATA != 0);
    if mixed && to.data.is_some() && to.metadata.is_some() && to.data != to.metadata {
        return Err(Error::Invalid(
            "the filesystem has mixed data and metadata block groups: data and metadata must get one profile".into(),
        ));
    }
    for (kind, p) in [("data", to.data), ("metadata", to.metadata), ("system", to.system)] {
        if let Some(p) = p {
            let need = p.min_devices();
            if ndevs < need {
                return Err(Error::Invalid(format!(
                    "{kind} cannot become {p}: it needs at least {need} devices, the filesystem has {ndevs} (add some with `btrs device add`)"
                )));
            }
        }
    }
    let want = |flags: u64| to.target(flags);
    let moves = Moves { want: &want, place: Placement::default(), misplaced: false };
    let (tx, report) = moves.run(tx, progress)?;
    drop(tx);
    Ok(report)
}

/// The profiles each kind of chunk has (for messages).
pub(crate) fn profiles_in_use(fs: &Filesystem) -> BTreeMap<&'static str, Vec<Profile>> {
    let mut out: BTreeMap<&'static str, Vec<Profile>> = BTreeMap::new();
    for e in fs.volume().chunks.entries() {
        let t = e.chunk.chunk_type;
        let kind = if t & BLOCK_GROUP_SYSTEM != 0 {
            "system"
        } else if t & BLOCK_GROUP_DATA != 0 {
            "data"
        } else {
            "metadata"
        };
        let v = out.entry(kind).or_default();
        if !v.contains(&e.profile) {
            v.push(e.profile);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::InodeId;
    use crate::ops::scrub::{scrub, ScrubOptions};
    use crate::volumes::fault::{arm_for_writers, Fault, FaultPlan};
    use std::sync::Arc;

    fn files() -> Vec<(&'static [u8], Vec<u8>, bool)> {
        vec![
            (b"a", (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect(), false),
            (b"nosum", (0..700_000u32).map(|i| (i % 13) as u8).collect(), true),
            (b"small", vec![5u8; 900], false),
        ]
    }

    /// The set opens, every file reads back, scrub finds nothing, and the
    /// tree blocks keep the format's rules: what a crash must leave.
    /// A fault between the superblock writes of a commit leaves a device
    /// one commit behind, which btrs takes as current only when told
    /// (--accept-lagging, as its error says): the options that open the set.
    fn whole(opts: &OpenOptions, what: &str) -> OpenOptions {
        let mut ro = OpenOptions { writable: false, ..opts.clone() };
        match Filesystem::open(&ro) {
            Err(e) => {
                assert!(e.to_string().contains("one commit behind"), "{what}: open: {e}");
                ro.accept_lagging = true;
            }
            Ok(fs) if !fs.volume().lagging.is_empty() => ro.accept_lagging = true,
            Ok(_) => {}
        }
        let fs = Filesystem::open(&ro).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        for (name, want, _) in files() {
            let id = fs.resolve(std::str::from_utf8(name).unwrap()).unwrap().id;
            assert!(fs.read_file_bytes(id).unwrap() == want, "{what}: {} differs", String::from_utf8_lossy(name));
        }
        let problems = crate::fs::check::check_filesystem(&fs).unwrap();
        assert!(problems.is_empty(), "{what}: {problems:?}");
        drop(fs);
        let r = scrub(&ro, &ScrubOptions { repair: false, prefer_mirror: None, threads: 1, progress: false, fix_csum: false }).unwrap();
        // Superblock copies a torn commit did not reach are all it may leave
        // (`scrub --repair` rewrites them).
        let other: Vec<_> = r.findings.iter().filter(|f| !f.detail.contains("is not the newest")).collect();
        assert!(other.is_empty(), "{what}: scrub: {other:?}");
        OpenOptions { writable: true, ..ro }
    }

    /// A write failure or a torn write at I/O k of a conversion (every
    /// k-th, and every one of the first commit): the set is whole, with
    /// each chunk in its old layout or its new one; running it again
    /// finishes the conversion. Then the same for `device remove` and for
    /// `resize` shrinking and growing.
    #[test]
    fn a_fault_at_any_io_leaves_each_chunk_old_or_new() {
        let Some((_tmp, imgs)) = crate::fs::testutil::mkfs_btrfs(3, &["-d", "single", "-m", "dup"]) else { return };
        // The set as its directory holds it (a removed image is no device of it).
        let all = OpenOptions { image: imgs[0].clone(), writable: true, ..Default::default() };
        let mut tx = Transaction::begin(Filesystem::open(&all).unwrap()).unwrap();
        let top = InodeId { subvol: FS_TREE_OBJECTID, ino: FIRST_FREE_OBJECTID };
        for (name, data, nosum) in files() {
            let flags = if nosum { INODE_NODATASUM | INODE_NODATACOW } else { 0 };
            let id = tx.create(top, name, S_IFREG | 0o644, flags).unwrap();
            tx.write_at(id, 0, &data, &Default::default(), &mut Default::default()).unwrap();
        }
        tx.commit().unwrap();
        whole(&all, "before");
        let to: Convert = "data=raid1,metadata=raid1".parse().unwrap();
        type Op<'a> = Box<dyn Fn(&OpenOptions) -> Result<()> + 'a>;
        let new = imgs[0].with_file_name("added.img");
        let ops: Vec<(&str, Op)> = vec![
            ("add", Box::new(|o| crate::ops::device::add(o, std::slice::from_ref(&new), Some(200 << 20)).map(drop))),
            ("convert", Box::new(|o| convert(o, &to, &mut |_| {}).map(drop))),
            ("remove", Box::new(|o| crate::ops::device::remove(o, "3", &mut |_| {}).map(drop))),
            // `btrs resize`: stripes moved down, the size committed, the file cut.
            ("shrink", Box::new(|o| crate::ops::resize::resize(o, &"2:min".parse().unwrap(), &mut |_| {}).map(drop))),
            ("grow", Box::new(|o| crate::ops::resize::resize(o, &"1:+64M".parse().unwrap(), &mut |_| {}).map(drop))),
        ];
        for (name, op) in &ops {
            // Count its I/Os, then undo them.
            let counter = Arc::new(FaultPlan::new(u64::MAX, Fault::Fail));
            arm_for_writers(Some(counter.clone()));
            op(&all).unwrap();
            arm_for_writers(None);
            let total = counter.count();
            whole(&all, &format!("{name} without a fault"));
            counter.restore().unwrap();
            let _ = std::fs::remove_file(&new);
            assert!(total > 10, "{name}: only {total} I/Os counted");
            let stride = (total / 40).max(1);
            let mut failed = 0;
            for fault in [Fault::Fail, Fault::Torn] {
                for k in (0..total).filter(|k| k % stride == 0 || *k < 40) {
                    let what = format!("{name}: {fault:?} at I/O {k} of {total}");
                    let plan = Arc::new(FaultPlan::new(k, fault));
                    arm_for_writers(Some(plan.clone()));
                    let r = op(&all);
                    arm_for_writers(None);
                    if r.is_err() {
                        failed += 1;
                    }
                    let after = whole(&all, &what);
                    // Once in a while: running it again finishes it (an
                    // add that signed its image is done or refused: its
                    // image is not new any more).
                    if k % (stride * 8) == 0 && *name != "add" {
                        let again = Arc::new(FaultPlan::new(u64::MAX, Fault::Fail));
                        arm_for_writers(Some(again.clone()));
                        let r = op(&after);
                        arm_for_writers(None);
                        // A remove that had committed the set without
                        // devid 3 has nothing left to remove.
                        if let Err(e) = &r {
                            assert!(e.to_string().contains("no devid 3") && *name == "remove", "{what}: again: {e}");
                        }
                        whole(&all, &format!("{what}, run again"));
                        again.restore().unwrap();
                    }
                    plan.restore().unwrap();
                    let _ = std::fs::remove_file(&new);
                }
            }
            assert!(failed > 0, "{name}: no fault made it fail");
            eprintln!("{name}: {total} I/Os, {failed} faults failed it");
        }
    }

    #[test]
    fn convert_specs_parse_like_balance_filters() {
        let c: Convert = "data=raid1,metadata=raid1c3".parse().unwrap();
        assert_eq!(c, Convert { data: Some(Profile::Raid1), metadata: Some(Profile::Raid1C3), system: Some(Profile::Raid1C3) });
        let c: Convert = "d=single,s=dup".parse().unwrap();
        assert_eq!(c, Convert { data: Some(Profile::Single), metadata: None, system: Some(Profile::Dup) });
        for bad in ["", "data", "data=", "data=raid5", "data=raid7", "x=raid1", "data=raid1,data=dup", "data=raid1,"] {
            assert!(bad.parse::<Convert>().is_err(), "{bad:?} parsed");
        }
    }
}
