//! The device set: which image files form the filesystem, the chunk map from
//! logical addresses to stripes on them, and reading/writing copies. This is
//! the only layer that touches image files.

// Bytes here come from images and users: every sum, index and cast is
// checked, or allowed where it cannot fail with the reason beside it.
#![warn(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]

pub(crate) mod alloc;
pub(crate) mod bio;
pub mod chunks;
pub(crate) mod create;
pub(crate) mod device;
#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
pub(crate) mod fault;
pub mod guard;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use chunks::{ChunkMap, MapEntry, PhysAddr};
pub use device::{has_btrfs_magic, Device};

use crate::error::{CorruptKind, Error, Result};
use crate::format::types::uuid_string;
use crate::format::u64_of;
use crate::format::SuperBlock;
use crate::format::UUID_SIZE;

/// How to find the devices of a filesystem.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Any one device of the filesystem.
    pub image: PathBuf,
    /// The other devices; when empty, the image's directory is searched for
    /// regular files carrying the same fsid.
    pub devices: Vec<PathBuf>,
    /// Read from the remaining copies when devices are missing.
    pub degraded: bool,
    pub writable: bool,
    /// Read-only: read the last committed state even while a btrs writer
    /// holds the images (see [`guard::Lock::SharedIfFree`]).
    pub alongside_writer: bool,
    /// Take a device one commit behind that nothing proves stale or current
    /// (see `Volume::lagging`) as current: right after a crash between the
    /// superblock writes of a commit, wrong for an older copy of the image.
    pub accept_lagging: bool,
    /// Open even when the current devices hold two histories (see
    /// `fs::divergent_histories`): for scrub, which reports every
    /// difference; anything else would serve one history as if it were
    /// the only one.
    pub divergent_ok: bool,
    /// `btrs replace`: an image that stands in for a missing device (see
    /// [`Replacement`]).
    pub replacement: Option<Replacement>,
    /// `btrs device add`: new images joining the set (see [`Added`]).
    pub added: Vec<Added>,
}

/// A new image joining the device set: its dev item (a devid the set does
/// not have), nothing on it yet. It is opened with the newest superblock
/// and its own dev item, in memory only; the transaction that adds its dev
/// item to the chunk tree writes its superblocks at the commit. Until then
/// the file carries no btrfs signature.
#[derive(Clone, Debug)]
pub struct Added {
    pub path: PathBuf,
    pub dev_item: crate::format::DevItem,
}

/// A new image file taking the place of a missing device: same devid and
/// device uuid (its dev item from the chunk tree), nothing on it yet. It is
/// opened with a superblock made in memory from the newest one, with its own
/// dev item and generation 0, so the set sees it as a stale device whose
/// every copy `scrub --repair` rebuilds from the current ones, superblocks
/// last. Until then the file carries no btrfs signature: a crash leaves the
/// set as it was, and nothing takes the file for a device of it.
#[derive(Clone, Debug)]
pub struct Replacement {
    pub devid: u64,
    pub path: PathBuf,
    pub dev_item: crate::format::DevItem,
    /// A stale image of the same devid that the replace supersedes (and
    /// wipes once the new image is the device): (image, its superblock
    /// generation). It is no device of the set while the new one is built,
    /// and not the "second device" the open otherwise refuses.
    pub superseded: Option<(PathBuf, u64)>,
}

impl OpenOptions {
    fn lock(&self) -> guard::Lock {
        match (self.writable, self.alongside_writer) {
            (true, _) => guard::Lock::Exclusive,
            (false, false) => guard::Lock::Shared,
            (false, true) => guard::Lock::SharedIfFree,
        }
    }
}

/// How long a reader waits for the commit of a writer's in-place overwrites.
const IN_PLACE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug)]
pub struct Volume {
    pub devices: BTreeMap<u64, Device>,
    /// The newest valid superblock across the devices; it names the roots.
    pub(crate) sb: SuperBlock,
    pub chunks: ChunkMap,
    /// Devids the filesystem has (from the chunk tree's dev items) that were not found.
    pub(crate) missing: BTreeSet<u64>,
    pub(crate) degraded: bool,
    /// Devices whose superblock is older than the newest (unless
    /// `--accept-lagging` took one only a commit behind as current): devid ->
    /// their generation. An image swapped for an older copy of itself lacks
    /// every write since: its copies are never served unless a checksum (for
    /// tree blocks: nothing) vouches for them,
    /// never outvote or repair a current copy, and writing is refused until
    /// `scrub --repair` rebuilds it.
    pub(crate) stale: BTreeMap<u64, u64>,
    /// Stale devices one generation behind whose copies of the newest
    /// commit's tree blocks were not shown to differ from a current device's:
    /// a crash between that commit's superblock writes, or an older copy of
    /// the image. They are stale (in [`Volume::stale`] too), their copies
    /// tried before other stale ones; `--accept-lagging` takes them as current.
    pub(crate) lagging: BTreeSet<u64>,
    /// [`OpenOptions::accept_lagging`].
    pub(crate) accept_lagging: bool,
    /// Stale devices `--degraded` left out (in [`Volume::missing`] too):
    /// devid → (image, superblock generation), so that they are named as
    /// what they are rather than as missing.
    pub(crate) left_out: BTreeMap<u64, (PathBuf, u64)>,
    /// Devices joining the set ([`OpenOptions::added`]): no dev item yet.
    pub(crate) added: BTreeSet<u64>,
    /// The caller named the devices ([`OpenOptions::devices`]).
    explicit: bool,
    /// Images beside the set with its fsid that the chunk tree does not
    /// list (left out; see `expect_devices`): (image, superblock generation).
    pub(crate) not_members: Vec<(PathBuf, u64)>,
}

impl Volume {
    /// Open the device set. A read-only open also registers as a reader of
    /// the generation it found (see [`guard::register_reader`]), then checks
    /// the superblocks did not move on meanwhile: a writer that committed
    /// before seeing the registration may already reuse blocks of the
    /// generation found, so the open starts again at the new one.
    ///
    /// A writer that has overwritten committed NODATACOW bytes in place and
    /// not yet committed (see [`guard::mark_in_place`]) makes the open wait
    /// for that commit and start again: the generation found no longer
    /// describes those bytes.
    pub fn open(opts: &OpenOptions) -> Result<Volume> {
        const TRIES: usize = 20;
        let started = std::time::Instant::now();
        let mut tries = 0;
        while tries < TRIES {
            let vol = Volume::open_once(opts)?;
            if opts.writable {
                return Ok(vol);
            }
            let generation = vol.sb.generation.get();
            // On every device: --degraded may leave some out later.
            for d in vol.devices.values() {
                guard::register_reader(&d.file, &d.path, generation)?;
            }
            let mut in_place = false;
            for d in vol.devices.values() {
                in_place |= guard::in_place_pending(&d.file, &d.path)?;
            }
            if in_place {
                if started.elapsed() >= IN_PLACE_PATIENCE {
                    return Err(Error::Devices(format!(
                        "{}: a writer is overwriting NODATACOW data in place and has not committed for {} s; try again",
                        opts.image.display(),
                        IN_PLACE_PATIENCE.as_secs()
                    )));
                }
                drop(vol);
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            tries = tries.saturating_add(1);
            let mut newest = generation;
            for d in vol.devices.values() {
                newest = newest.max(d.current_generation()?);
            }
            if newest == generation {
                return Ok(vol);
            }
        }
        Err(Error::Devices(format!(
            "{}: a writer committed {TRIES} times while the filesystem was being opened; try again",
            opts.image.display()
        )))
    }

    /// Mark (or unmark) this writer's in-place overwrites on every device
    /// (see [`guard::mark_in_place`]).
    pub(crate) fn mark_in_place(&self, on: bool) -> Result<()> {
        self.devices.values().try_for_each(|d| guard::mark_in_place(&d.file, &d.path, on))
    }

    /// The oldest generation below `below` that a registered reader reads
    /// (any process, any device of the set), if any.
    pub(crate) fn oldest_reader(&self, below: u64) -> Result<Option<u64>> {
        let mut oldest: Option<u64> = None;
        for d in self.devices.values() {
            if let Some(g) = guard::oldest_reader(&d.file, &d.path, below)? {
                oldest = Some(oldest.map_or(g, |o| o.min(g)));
            }
        }
        Ok(oldest)
    }

    fn open_once(opts: &OpenOptions) -> Result<Volume> {
        // Under `replace`, the devices of the set are only read: their files
        // are opened read-only (the replacement alone is written).
        let write = opts.lock() == guard::Lock::Exclusive && opts.replacement.is_none();
        let first = Device::open_locked_for(&opts.image, opts.lock(), write)?;
        let fsid = first.sb.fsid;
        let first_canon = canonical(&opts.image);
        let mut devices: BTreeMap<u64, Device> = BTreeMap::new();
        devices.insert(first.devid, first);

        let explicit = !opts.devices.is_empty();
        let candidates: Vec<PathBuf> = if explicit {
            opts.devices.clone()
        } else if devices.values().next().is_some_and(|d| d.sb.num_devices.get() > 1) {
            sibling_files(&opts.image)
        } else {
            Vec::new()
        };
        let mut seen = BTreeSet::new();
        seen.insert(first_canon);
        for path in candidates {
            if !seen.insert(canonical(&path)) {
                continue;
            }
            let dev = match Device::open_locked_for(&path, opts.lock(), write) {
                Ok(d) => d,
                Err(e) if explicit => return Err(e),
                // A sibling of this filesystem that cannot be used (in use,
                // attached to a loop device, unreadable) is the error to
                // report, not a device to call missing later.
                Err(e) if Device::open_raw(&path).is_ok_and(|d| d.sb.fsid == fsid) => return Err(e),
                Err(_) => continue,
            };
            if dev.sb.fsid != fsid {
                if explicit {
                    return Err(Error::Devices(format!(
                        "{} belongs to another filesystem (fsid {}, expected {})",
                        path.display(),
                        uuid_string(&dev.sb.fsid),
                        uuid_string(&fsid)
                    )));
                }
                continue;
            }
            if let Some(other) = devices.get(&dev.devid) {
                let (a, b) = (other.sb.generation.get(), dev.sb.generation.get());
                // Older and newer: an image a replace superseded, left
                // behind when it stopped before wiping it, or a copy kept
                // beside the set. Which is which is said; nothing is chosen.
                let older = match a.cmp(&b) {
                    std::cmp::Ordering::Less => Some((&other.path, a)),
                    std::cmp::Ordering::Greater => Some((&path, b)),
                    std::cmp::Ordering::Equal => None,
                };
                return Err(Error::Devices(format!(
                    "{} (generation {a}) and {} (generation {b}) both claim to be devid {} of filesystem {}{}",
                    other.path.display(),
                    path.display(),
                    dev.devid,
                    uuid_string(&fsid),
                    older.map_or(String::new(), |(p, g)| format!(
                        "; {} is older (generation {g}): if a `btrs replace` superseded it, move it out of this directory \
                         (or name the devices with --device)",
                        p.display()
                    ))
                )));
            }
            devices.insert(dev.devid, dev);
        }
        let sb = devices.values().max_by_key(|d| d.sb.generation.get()).map(|d| d.sb).ok_or_else(|| Error::Devices("no devices".into()))?;
        if let Some(r) = &opts.replacement {
            if let Some(d) = devices.get(&r.devid) {
                return Err(Error::Devices(format!(
                    "devid {} is present ({}): replace rebuilds a missing device; move that image out of the set first, \
                     or rebuild it in place with `btrs scrub --repair`",
                    r.devid,
                    d.path.display()
                )));
            }
            if !seen.insert(canonical(&r.path)) {
                return Err(Error::Invalid(format!("{} is already a device of the set", r.path.display())));
            }
            // Another image beside the set (or beside the new one) that
            // already is this devid: a replace that finished meanwhile, or
            // the old device put back. Two images would then claim it.
            let mut beside = sibling_files(&opts.image);
            beside.extend(sibling_files(&r.path));
            let mut read = seen.clone();
            for p in beside {
                // Each file once (the two directories may be one).
                if !read.insert(canonical(&p)) {
                    continue;
                }
                if let Ok(d) = Device::open_raw(&p) {
                    let superseded = r.superseded.as_ref().is_some_and(|(old, generation)| {
                        canonical(old) == canonical(&p) && d.sb.generation.get() == *generation && *generation < sb.generation.get()
                    });
                    if d.sb.fsid == fsid && d.devid == r.devid && d.sb.magic == crate::format::BTRFS_MAGIC && !superseded {
                        return Err(Error::Devices(format!(
                            "{} already is devid {} of filesystem {}: a second device for it would make the set ambiguous",
                            p.display(),
                            r.devid,
                            uuid_string(&fsid)
                        )));
                    }
                }
            }
            devices.insert(r.devid, Device::open_replacement(&r.path, &sb, r.dev_item)?);
        }
        same_filesystem(&devices, &sb)?;
        let mut added = BTreeSet::new();
        let opened: BTreeSet<PathBuf> = devices.values().map(|d| canonical(&d.path)).collect();
        for a in &opts.added {
            let devid = a.dev_item.devid.get();
            if opened.contains(&canonical(&a.path)) {
                return Err(Error::Invalid(format!("{} is already a device of the set", a.path.display())));
            }
            if devices.contains_key(&devid) || !added.insert(devid) {
                return Err(Error::Internal(format!("devid {devid} added twice")));
            }
            devices.insert(devid, Device::open_added(&a.path, &sb, a.dev_item)?);
        }
        let vol = Volume {
            devices,
            sb,
            chunks: ChunkMap::default(),
            missing: BTreeSet::new(),
            degraded: opts.degraded,
            accept_lagging: opts.accept_lagging,
            stale: BTreeMap::new(),
            lagging: BTreeSet::new(),
            left_out: BTreeMap::new(),
            added,
            explicit,
            not_members: Vec::new(),
        };
        #[cfg(test)]
        if opts.writable {
            if let Some(plan) = fault::for_writers() {
                vol.set_fault(plan);
            }
        }
        Ok(vol)
    }

    /// Record the devices the chunk tree lists (devid → device uuid); fail on
    /// missing ones unless degraded, and on an image whose device uuid is not
    /// the one the chunk tree gives its devid: a device of another filesystem
    /// with the same fsid (made with the same `-U`), whose extents would be
    /// read as this one's.
    pub(crate) fn expect_devices(&mut self, devs: &BTreeMap<u64, [u8; UUID_SIZE]>) -> Result<()> {
        for (devid, uuid) in devs {
            if let Some(d) = self.devices.get(devid).filter(|d| d.sb.dev_item.uuid != *uuid) {
                // Which image the chunk tree was read by: the newest superblock's.
                let newest = self.sb.generation.get();
                let by = self
                    .devices
                    .values()
                    .find(|o| o.devid != *devid && o.sb.generation.get() == newest)
                    .map(|o| format!("devid {} ({}, generation {newest})", o.devid, o.path.display()))
                    .unwrap_or_else(|| format!("generation {newest}"));
                return Err(two_filesystems(
                    format!(
                        "devid {devid} ({}) has device uuid {}, but the chunk tree of {by} gives devid {devid} device uuid {}",
                        d.path.display(),
                        uuid_string(&d.sb.dev_item.uuid),
                        uuid_string(uuid),
                    ),
                    &self.sb.fsid,
                ));
            }
        }
        let devids: BTreeSet<u64> = devs.keys().copied().collect();
        self.missing = devids.iter().copied().filter(|d| !self.devices.contains_key(d)).collect();
        // An image found beside the set whose devid the chunk tree does not
        // list is no device of it: one `device remove` took out and was
        // stopped before wiping, or one `device add` signed and was stopped
        // before the commit that lists it. (Named by the caller, it is an
        // error below.)
        if !self.explicit {
            let gone: Vec<u64> = self.devices.keys().copied().filter(|d| !devids.contains(d) && !self.added.contains(d)).collect();
            for d in gone {
                if let Some(dev) = self.devices.remove(&d) {
                    self.not_members.push((dev.path.clone(), dev.sb.generation.get()));
                }
            }
        }
        let extra: Vec<u64> = self.devices.keys().copied().filter(|d| !devids.contains(d) && !self.added.contains(d)).collect();
        if !extra.is_empty() {
            return Err(Error::Devices(format!(
                "devid(s) {} are not part of filesystem {} any more",
                join(&extra),
                uuid_string(&self.sb.fsid)
            )));
        }
        if !self.missing.is_empty() && !self.degraded {
            let present: Vec<String> = self.devices.values().map(|d| format!("devid {} = {}", d.devid, d.path.display())).collect();
            return Err(Error::Devices(format!(
                "filesystem {} is missing devid(s) {} (found {}); name them with --device PATH, or use --degraded",
                uuid_string(&self.sb.fsid),
                join(&self.missing.iter().copied().collect::<Vec<_>>()),
                present.join(", ")
            )));
        }
        Ok(())
    }

    pub(crate) fn device(&self, devid: u64) -> Result<&Device> {
        self.devices.get(&devid).ok_or_else(|| Error::Devices(format!("devid {devid} is missing")))
    }

    pub fn num_copies(&self, logical: u64) -> Result<usize> {
        Ok(self.chunks.lookup(logical)?.num_copies())
    }

    /// The copies of `logical` a read may use, in the order to try them:
    /// copies on current devices first, then those on stale devices (the
    /// caller serves a stale copy only when something vouches for it);
    /// copies on missing devices are left out.
    pub(crate) fn read_order(&self, logical: u64) -> Result<Vec<ReadCopy>> {
        let entry = self.chunks.lookup(logical)?;
        let (locs, _) = entry.map(logical)?;
        let mut out: Vec<ReadCopy> = locs
            .iter()
            .take(entry.num_copies())
            .enumerate()
            .filter(|(_, l)| self.devices.contains_key(&l.devid))
            .map(|(mirror, l)| ReadCopy {
                mirror,
                devid: l.devid,
                stale: self.stale.contains_key(&l.devid),
                lagging: self.lagging.contains(&l.devid),
            })
            .collect();
        // Stable: mirror order within current, lagging and stale copies.
        out.sort_by_key(|c| (c.stale, !c.lagging));
        Ok(out)
    }

    /// Whether devid is stale (see [`Volume::stale`]).
    pub(crate) fn is_stale(&self, devid: u64) -> bool {
        self.stale.contains_key(&devid)
    }

    /// Words for a stale device: which image, how old, what to do.
    pub(crate) fn stale_text(&self, devid: u64) -> String {
        let path = self.devices.get(&devid).map(|d| d.path.display().to_string()).unwrap_or_else(|| "?".into());
        let gen = self.stale.get(&devid).copied().unwrap_or(0);
        if self.lagging.contains(&devid) {
            return format!(
                "devid {devid} ({path}) is stale: its superblock generation {gen} is one behind the filesystem's {} \
                 (a crash between a commit's superblock writes leaves this, and so does an older copy of the image)",
                self.sb.generation.get()
            );
        }
        format!(
            "devid {devid} ({path}) is stale: its superblock generation {gen} is older than the filesystem's {} \
             (an older copy of the image?)",
            self.sb.generation.get()
        )
    }

    /// Split `len` bytes at `logical` into pieces that are contiguous on copy
    /// `mirror`: (offset into the range, where it lives, length). Pieces end at
    /// stripe-unit and chunk boundaries.
    pub(crate) fn copy_segments(&self, logical: u64, len: usize, mirror: usize) -> Result<Vec<(usize, PhysAddr, usize)>> {
        self.segments_on(None, logical, len, mirror)
    }

    /// [`Self::copy_segments`] through `entry` when given (a chunk's new
    /// mapping, before it replaces the old one in the map).
    pub(crate) fn segments_on(
        &self,
        entry: Option<&MapEntry>,
        logical: u64,
        len: usize,
        mirror: usize,
    ) -> Result<Vec<(usize, PhysAddr, usize)>> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while let Some(left) = len.checked_sub(done).filter(|l| *l > 0) {
            let pos = logical.checked_add(u64_of(done)).ok_or_else(|| {
                Error::corrupt(CorruptKind::Overflow, format!("logical {logical}"), format!("range of {len} bytes overflows"))
            })?;
            let (copies, contiguous) = match entry {
                Some(e) => e.map(pos)?,
                None => self.chunks.lookup(pos)?.map(pos)?,
            };
            let addr = copies.get(mirror).copied().ok_or_else(|| {
                Error::Invalid(format!("logical {pos}: no copy {} (chunk has {})", mirror.saturating_add(1), copies.len()))
            })?;
            // map() never says 0 bytes: a piece always makes progress.
            let n = usize::try_from(contiguous).unwrap_or(usize::MAX).min(left).max(1);
            out.push((done, addr, n));
            done = done.saturating_add(n);
        }
        Ok(out)
    }

    /// Read `buf.len()` bytes at `logical` from copy `mirror` (0-based),
    /// following the stripes across stripe-unit and chunk boundaries.
    pub(crate) fn read_copy(&self, logical: u64, buf: &mut [u8], mirror: usize) -> Result<()> {
        for (off, addr, n) in self.copy_segments(logical, buf.len(), mirror)? {
            let piece = off.checked_add(n).and_then(|end| buf.get_mut(off..end)).ok_or_else(|| Error::Invalid("segment".into()))?;
            self.device(addr.devid)?.read_exact_at(addr.physical, piece)?;
        }
        Ok(())
    }

    /// Write `data` at `logical` to copy `mirror` only (repairs write one bad copy).
    pub(crate) fn write_copy(&self, logical: u64, data: &[u8], mirror: usize) -> Result<()> {
        for (off, addr, n) in self.copy_segments(logical, data.len(), mirror)? {
            let piece = off.checked_add(n).and_then(|end| data.get(off..end)).ok_or_else(|| Error::Invalid("segment".into()))?;
            self.device(addr.devid)?.write_all_at(addr.physical, piece)?;
        }
        Ok(())
    }

    /// Write `data` at `logical` to copy `mirror` of `entry`, a chunk's new
    /// mapping that is not in the map yet (see `Transaction::restripe`).
    pub(crate) fn write_copy_on(&self, entry: &MapEntry, logical: u64, data: &[u8], mirror: usize) -> Result<()> {
        for (off, addr, n) in self.segments_on(Some(entry), logical, data.len(), mirror)? {
            let piece = off.checked_add(n).and_then(|end| data.get(off..end)).ok_or_else(|| Error::Invalid("segment".into()))?;
            self.device(addr.devid)?.write_all_at(addr.physical, piece)?;
        }
        Ok(())
    }

    /// Sign each added device ([`OpenOptions::added`]) before the commit
    /// that lists it: its superblocks at the committed generation, with its
    /// own dev item (an image no chunk tree lists yet, which opening the set
    /// leaves out). The commit then writes the new devices' superblocks
    /// last, so a crash between leaves them one commit behind, holding
    /// nothing, rather than the set missing a device without a signature.
    pub(crate) fn sign_added(&self, csum: crate::format::CsumType) -> Result<()> {
        use zerocopy::IntoBytes;
        for devid in &self.added {
            let dev = self.device(*devid)?;
            let mut s = dev.sb;
            for &off in crate::format::SUPER_MIRROR_OFFSETS.iter() {
                if !device::super_copy_in_use(off, s.dev_item.total_bytes.get()) {
                    break;
                }
                s.bytenr = off.into();
                crate::format::superblock::seal_super(&mut s, csum);
                dev.write_all_at(off, s.as_bytes())?;
            }
            dev.sync()?;
        }
        Ok(())
    }

    /// Test builds: route every device's I/O through `plan`.
    #[cfg(test)]
    pub(crate) fn set_fault(&self, plan: std::sync::Arc<fault::FaultPlan>) {
        for d in self.devices.values() {
            let _ = d.fault.set(plan.clone());
        }
    }

    /// Flush every device to stable storage, all at once (one thread each).
    pub(crate) fn sync_all(&self) -> Result<()> {
        let devices: Vec<&Device> = self.devices.values().collect();
        in_parallel(&devices, "fsync", |d| d.sync())
    }

    /// Where copy `mirror` of `logical` lives.
    pub fn locate(&self, logical: u64, mirror: usize) -> Result<PhysAddr> {
        let (copies, _) = self.chunks.lookup(logical)?.map(logical)?;
        copies.get(mirror).copied().ok_or_else(|| Error::Invalid(format!("logical {logical}: no copy {}", mirror.saturating_add(1))))
    }
}

/// One copy a read may use (see [`Volume::read_order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadCopy {
    /// 0-based copy number, as `read_copy` takes it.
    pub(crate) mirror: usize,
    pub(crate) devid: u64,
    /// The copy lives on a stale device: served only where a checksum vouches
    /// for it, and never a tree block: the device may hold another history
    /// of this filesystem (a copy of the set written apart from it, or a
    /// split brain), whose blocks carry the same addresses, generations and
    /// valid checksums as the current ones, so nothing in a block tells which
    /// history it is from. Not even on a lagging device that holds the newest
    /// commit's blocks: an older copy given those blocks looks the same.
    /// `--accept-lagging` is the caller's word that a lagging one was left by
    /// a crash.
    pub(crate) stale: bool,
    /// The copy lives on a lagging device (see [`Volume::lagging`], `stale`
    /// too): tried before other stale copies.
    pub(crate) lagging: bool,
}

/// Every device must agree with the newest superblock on what no commit
/// changes: checksum type, node, sector and stripe size, metadata uuid. A
/// device that does not is of another filesystem with the same fsid (made
/// with the same `-U`): its blocks fail this filesystem's checks as if
/// damaged, and a repair would write the other filesystem's over them.
fn same_filesystem(devices: &BTreeMap<u64, Device>, sb: &SuperBlock) -> Result<()> {
    let newest = devices.values().rev().find(|d| d.sb.generation.get() == sb.generation.get());
    for d in devices.values() {
        let differs = [
            ("checksum type", u64::from(d.sb.csum_type.get()), u64::from(sb.csum_type.get())),
            ("nodesize", u64::from(d.sb.nodesize.get()), u64::from(sb.nodesize.get())),
            ("sectorsize", u64::from(d.sb.sectorsize.get()), u64::from(sb.sectorsize.get())),
            ("stripesize", u64::from(d.sb.stripesize.get()), u64::from(sb.stripesize.get())),
        ]
        .into_iter()
        .find(|(_, a, b)| a != b)
        .map(|(what, a, b)| format!("{what} {a} against {b}"))
        .or_else(|| (d.sb.metadata_fsid() != sb.metadata_fsid()).then(|| "metadata uuid".to_string()));
        if let (Some(what), Some(n)) = (differs, newest) {
            return Err(two_filesystems(
                format!("devid {} ({}) and devid {} ({}) differ in {what}", d.devid, d.path.display(), n.devid, n.path.display()),
                &sb.fsid,
            ));
        }
    }
    Ok(())
}

fn join(v: &[u64]) -> String {
    v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Regular files next to `image`, in name order (so discovery is deterministic).
fn sibling_files(image: &Path) -> Vec<PathBuf> {
    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false)).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Devices that carry one filesystem UUID but cannot be one filesystem: `what` says how.
fn two_filesystems(what: String, fsid: &[u8; UUID_SIZE]) -> Error {
    Error::Devices(format!(
        "{what}: images of two filesystems with the same UUID {} (made with the same -U?); move away the one that \
         does not belong (--degraded reads without it)",
        uuid_string(fsid)
    ))
}

/// Run `f` on every item at once, the first on this thread and each other on
/// a thread of its own (an fsync per image: each waits on its own disk
/// flush). Every call finishes; the first error in item order is returned.
pub(crate) fn in_parallel<T: Sync>(items: &[T], what: &str, f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let Some((first, rest)) = items.split_first() else { return Ok(()) };
    if rest.is_empty() {
        return f(first);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = rest.iter().map(|item| crate::threads::spawn_scoped(s, what, move || f(item))).collect();
        let mine = f(first);
        handles.into_iter().map(|h| h.and_then(|h| crate::threads::join(h, what))).fold(mine, |acc, r| acc.and(r))
    })
}
