//! The host side of the walk of a host directory, found ahead of it on a
//! helper thread: for each entry of the directory being walked, its lstat
//! (relative to the directory held open, as the walk would), its xattrs and
//! a regular file's data ranges, the calls that are most of the walk's
//! time on a tree of small files.
//!
//! Whoever comes first to an entry finds its facts: the helper, which goes
//! through the entries of the directory the walk is in, in order, a few
//! entries ahead of the walk, or the walk itself, which takes them in that
//! order too and finds on its own an entry the helper has not claimed (so
//! the two share the work rather than wait on each other). The facts are
//! those the walk would have found (the same calls, only sooner), so the
//! image does not depend on which found them; an error among them is the
//! walk's when it gets to it. A budget bounds how many are found and not taken yet, whatever the
//! size or depth of the tree. The helper holds the directory's descriptor
//! only while it looks at one of its entries: below a directory, the walk
//! closes it (one descriptor at a time, whatever the depth), and the
//! helper looks at the entries of the directory the walk is in.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fd::OwnedFd;

use super::source::SourceFile;
use crate::error::Result;

/// What the walk finds of one entry on the host. As found by the helper,
/// it holds no memory the helper allocated but for xattrs and errors, which
/// few entries have: glibc locks the arena of the thread that allocated a
/// block to free it, and the walk freeing the helper's blocks while it
/// allocated made the two wait on each other's locks (see `ordered_map`).
pub(super) struct Facts {
    pub(super) stat: Result<SourceFile>,
    /// Found after a stat that worked.
    pub(super) found: Found,
}

/// What is found of an entry after its stat: the xattrs, then, if they
/// could be read, a regular file's data ranges (a file of some bytes only).
#[derive(Default)]
pub(super) struct Found {
    pub(super) xattrs: Option<Result<Xattrs>>,
    pub(super) ranges: Option<Result<Ranges>>,
}

/// Extended attributes, (name, value) sorted by name.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A regular file's sector-aligned data ranges.
pub(super) enum Ranges {
    /// All of it, up to this end: (0, end).
    Whole(u64),
    Some(Vec<(u64, u64)>),
}

impl Facts {
    /// About the memory it holds.
    fn weight(&self) -> usize {
        let xattrs = match &self.found.xattrs {
            Some(Ok(x)) => x.iter().map(|(n, v)| n.len() + v.len() + 48).sum(),
            _ => 0,
        };
        let ranges = match &self.found.ranges {
            Some(Ok(Ranges::Some(v))) => v.len() * 16,
            _ => 0,
        };
        std::mem::size_of::<Facts>() + xattrs + ranges
    }
}

impl Ranges {
    pub(super) fn of(v: Vec<(u64, u64)>) -> Ranges {
        match v.as_slice() {
            [(0, end)] => Ranges::Whole(*end),
            _ => Ranges::Some(v),
        }
    }

    pub(super) fn into_vec(self) -> Vec<(u64, u64)> {
        match self {
            Ranges::Whole(end) => vec![(0, end)],
            Ranges::Some(v) => v,
        }
    }
}

/// How to find the facts of entry `name` of the directory open as `fd`,
/// whose path from the root is `dir` (the walk's own functions).
pub(super) type Find<'a> = dyn Fn(&OwnedFd, &Path, &[u8]) -> Facts + Sync + 'a;

/// Facts found and not taken yet, all directories together, and the bytes
/// they hold (an entry's xattrs may be hundreds of KiB, a sparse file's
/// data ranges many): memory does not grow with the tree.
const BUDGET: usize = 1024;
const BYTES_BUDGET: usize = 4 << 20;

/// How far ahead of the walk the helper claims entries: the walk finds
/// those between on its own instead of waiting for the helper's next.
const GAP: usize = 16;

/// Whether the helper holds all it may.
fn over_budget(st: &State) -> bool {
    st.outstanding >= BUDGET || st.bytes >= BYTES_BUDGET
}

/// A directory the walk has listed and not left.
struct DirState {
    fd: Option<Arc<OwnedFd>>,
    rel: Arc<PathBuf>,
    names: Arc<Vec<Vec<u8>>>,
    /// The first entry the helper may claim, and the walk's next.
    next: usize,
    walk: usize,
    /// The entry the helper is looking at.
    busy: Option<usize>,
    /// Entries `walk..`: their facts and weight, when the helper found them.
    found: VecDeque<Option<(Facts, usize)>>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<u64, DirState>,
    /// The directory the walk is in, whose entries the helper looks at.
    current: Option<u64>,
    outstanding: usize,
    bytes: usize,
    stop: bool,
    /// The helper ended (a panic outside its finding, which it catches):
    /// the walk no longer waits for it.
    gone: bool,
    walk_waits: bool,
    helper_waits: bool,
}

/// The walk's side of the helper (see the module's comment).
pub(super) struct Ahead {
    state: Mutex<State>,
    cv: Condvar,
}

impl Ahead {
    pub(super) fn new() -> Ahead {
        Ahead { state: Mutex::new(State::default()), cv: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held ends the walk anyway (the helper
        // catches its own); what the state holds is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, st: &mut State, helper: bool) {
        let waits = if helper { &mut st.helper_waits } else { &mut st.walk_waits };
        if std::mem::take(waits) {
            self.cv.notify_all();
        }
    }

    /// The walk enters directory `id` (a key of its own choosing) at `rel`,
    /// listed as `names`, open as `fd` (a host directory is).
    pub(super) fn open(&self, id: u64, rel: &Path, names: Arc<Vec<Vec<u8>>>, fd: Option<Arc<OwnedFd>>) {
        let d = DirState { fd, rel: Arc::new(rel.to_path_buf()), names, next: 0, walk: 0, busy: None, found: VecDeque::new() };
        let mut st = self.lock();
        st.dirs.insert(id, d);
        st.current = Some(id);
        self.wake(&mut st, true);
    }

    /// The walk is back in directory `id`, open again as `fd` if it is.
    pub(super) fn resume(&self, id: u64, fd: Option<Arc<OwnedFd>>) {
        let mut st = self.lock();
        if let Some(d) = st.dirs.get_mut(&id) {
            if fd.is_some() {
                d.fd = fd;
            }
        }
        st.current = Some(id);
        self.wake(&mut st, true);
    }

    /// The walk goes below directory `id`: its descriptor is closed.
    pub(super) fn close(&self, id: u64) {
        let mut st = self.lock();
        if let Some(d) = st.dirs.get_mut(&id) {
            d.fd = None;
        }
        if st.current == Some(id) {
            st.current = None;
        }
    }

    /// The walk is done with directory `id`.
    pub(super) fn leave(&self, id: u64) {
        let mut st = self.lock();
        if let Some(d) = st.dirs.remove(&id) {
            st.outstanding -= d.found.iter().flatten().count();
            st.bytes -= d.found.iter().flatten().map(|f| f.1).sum::<usize>();
        }
        if st.current == Some(id) {
            st.current = None;
        }
    }

    /// The facts of entry `index` of directory `id`, when the helper found
    /// them (waiting for it if it is looking at that entry); None: the walk
    /// finds them itself (the entry is now claimed).
    pub(super) fn take(&self, id: u64, index: usize) -> Option<Facts> {
        let mut st = self.lock();
        let mut spins = 0;
        loop {
            let gone = st.gone;
            let d = st.dirs.get_mut(&id)?;
            if d.walk != index {
                // Entries are taken in order, each once.
                return None;
            }
            if let Some((f, weight)) = d.found.front_mut().and_then(Option::take) {
                d.found.pop_front();
                d.walk += 1;
                let was_over = over_budget(&st);
                st.outstanding -= 1;
                st.bytes -= weight;
                // Wake a helper that stopped for the budget (not one at the
                // end of the directory: it has nothing to do).
                if was_over && !over_budget(&st) {
                    self.wake(&mut st, true);
                }
                return Some(f);
            }
            if d.busy != Some(index) || gone {
                // The helper claims only entries GAP past the walk's: this
                // one is the walk's to find.
                d.found.pop_front();
                d.walk += 1;
                return None;
            }
            // The helper is at it and done within microseconds: spin a
            // little before sleeping (a wakeup costs more).
            if spins < 200 {
                spins += 1;
                drop(st);
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                st = self.lock();
                continue;
            }
            st.walk_waits = true;
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The helper's loop, until [`Self::stop`].
    pub(super) fn help(&self, find: &Find<'_>) {
        struct Gone<'a>(&'a Ahead);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.gone = true;
                self.0.cv.notify_all();
            }
        }
        let _gone = Gone(self);
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            let job = match st.current {
                Some(id) if !over_budget(&st) => st.dirs.get_mut(&id).and_then(|d| {
                    let fd = d.fd.clone()?;
                    let at = d.next.max(d.walk + GAP);
                    d.names.get(at)?;
                    let job = (id, at, fd, d.rel.clone(), d.names.clone());
                    d.busy = Some(at);
                    d.next = at + 1;
                    Some(job)
                }),
                _ => None,
            };
            let Some((id, index, fd, rel, names)) = job else {
                st.helper_waits = true;
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            drop(st);
            let name = names.get(index).map_or(&[][..], Vec::as_slice);
            let facts = catch_unwind(AssertUnwindSafe(|| find(&fd, &rel, name)))
                .unwrap_or_else(|p| Facts { stat: Err(crate::threads::panicked("scan helper", p.as_ref())), found: Found::default() });
            drop((fd, rel, names));
            st = self.lock();
            if let Some(d) = st.dirs.get_mut(&id) {
                d.busy = None;
                // The walk cannot pass an entry the helper is at.
                if let Some(at) = index.checked_sub(d.walk) {
                    if d.found.len() <= at {
                        d.found.resize_with(at + 1, || None);
                    }
                    if let Some(slot) = d.found.get_mut(at) {
                        let weight = facts.weight();
                        *slot = Some((facts, weight));
                        st.outstanding += 1;
                        st.bytes += weight;
                    }
                }
            }
            self.wake(&mut st, false);
        }
    }

    /// Ends [`Self::help`].
    pub(super) fn stop(&self) {
        let mut st = self.lock();
        st.stop = true;
        self.cv.notify_all();
    }
}

/// Run `walk` with a helper finding facts ahead of it (see the module's
/// comment); the helper ends with the walk, however it ends.
pub(super) fn with_helper<T>(find: &Find<'_>, walk: impl FnOnce(&Ahead) -> Result<T>) -> Result<T> {
    /// Stops the helper however the walk ends (a panic too: the scope
    /// would otherwise wait for the helper forever).
    struct Stop<'a>(&'a Ahead);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let ahead = Ahead::new();
    std::thread::scope(|s| {
        let helper = crate::threads::spawn_scoped(s, "scan-helper", || {
            ahead.help(find);
            Ok(())
        })?;
        let r = {
            let _stop = Stop(&ahead);
            walk(&ahead)
        };
        let helped = crate::threads::join(helper, "scan helper");
        r.and_then(|t| helped.map(|()| t))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::time::{Duration, Instant};

    /// Facts naming the entry they were found for, holding `size` bytes.
    fn fake(size: usize) -> impl Fn(&OwnedFd, &Path, &[u8]) -> Facts + Sync {
        move |_, _, name| Facts {
            stat: Err(Error::Internal(String::new())),
            found: Found { xattrs: Some(Ok(vec![(name.to_vec(), vec![0; size])])), ranges: None },
        }
    }

    /// Run a walk of `n` entries that first lets the helper run ahead,
    /// checks what it holds, then takes every entry in order: each once,
    /// its own facts when the helper found them.
    fn walk(n: usize, size: usize, check: impl Fn(&State)) -> usize {
        let fd =
            Arc::new(rustix::fs::open("/", rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap());
        let names: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| format!("{i:06}").into_bytes()).collect());
        let find = fake(size);
        let mut helped = 0;
        with_helper(&find, |ahead| {
            ahead.open(7, Path::new("d"), names.clone(), Some(fd.clone()));
            let t0 = Instant::now();
            while ahead.lock().outstanding == 0 && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
            check(&ahead.lock());
            for (i, name) in names.iter().enumerate() {
                if let Some(f) = ahead.take(7, i) {
                    helped += 1;
                    let x = f.found.xattrs.unwrap().unwrap();
                    assert_eq!(x[0].0, *name, "entry {i} got another entry's facts");
                }
            }
            ahead.leave(7);
            let st = ahead.lock();
            assert_eq!((st.outstanding, st.bytes), (0, 0), "all taken");
            Ok(())
        })
        .unwrap();
        helped
    }

    /// The helper stops at its budgets: so many facts, so many bytes.
    #[test]
    fn the_helper_holds_at_most_its_budgets() {
        let one = std::mem::size_of::<Facts>() + 6 + 48;
        let helped = walk(5000, 0, |st| {
            // Of 5000, while the walk takes none: not all.
            assert!(st.outstanding > 0 && st.outstanding <= 2048, "{} facts held", st.outstanding);
        });
        assert!(helped > 0, "the walk took none of what the helper found");
        // 500 entries of 100 KB: 50 MB if it held them all.
        let big = 100_000;
        walk(500, big, |st| {
            assert!(st.outstanding > 0 && st.bytes < (8 << 20) + one + big, "{} bytes held", st.bytes);
        });
    }
}
