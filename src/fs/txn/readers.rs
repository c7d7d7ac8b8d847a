//! Readers beside the writer: a read-only open registers the generation it
//! reads (an OFD byte-range lock, `volumes::guard::register_reader`). Space
//! a transaction freed stays unused by this process's later transactions
//! while a reader of an older generation is registered (`Held`), and a
//! writer whose process did not see what was freed since a registered
//! reader's generation waits for it, then refuses. NODATACOW overwrites are
//! copied on write while any reader is registered; a writer that overwrote in
//! place holds a mark until its commit, and a reader that comes meanwhile
//! waits for that commit (`volumes::guard::mark_in_place`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::fs::Filesystem;

/// Space freed by this process's earlier transactions that readers of older
/// generations may still be reading. A reader registers the generation it
/// reads (`volumes::guard::register_reader`); an extent freed by transaction
/// T is reachable from generations before T, so it stays unused while a
/// reader of a generation below T is registered, as the kernel keeps freed
/// extents pinned until no one can see them.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// start -> length, of every range still held.
    pub(super) ranges: BTreeMap<u64, u64>,
    /// start -> the transaction that freed it.
    pub(super) freed_in: BTreeMap<u64, u64>,
    /// The committed generation when this process started writing: frees
    /// before it are unknown here.
    pub(super) since: Option<u64>,
}

impl Held {
    /// Keep only what a reader of generation `oldest` (None: no reader)
    /// can still reach.
    pub(super) fn release(&mut self, oldest: Option<u64>) {
        let keep: BTreeMap<u64, u64> = match oldest {
            None => BTreeMap::new(),
            Some(r) => self.freed_in.iter().filter(|&(_, &t)| t > r).map(|(&s, &t)| (s, t)).collect(),
        };
        self.ranges.retain(|s, _| keep.contains_key(s));
        self.freed_in = keep;
    }
}

/// How long a writer waits for readers of generations it cannot protect.
const READER_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Wait, up to READER_PATIENCE, while a reader of a generation older than
/// `since` (the committed generation when this process started writing)
/// is registered; the oldest generation read (None: no reader).
pub(super) fn wait_for_readers(fs: &Filesystem, committed: u64, since: u64) -> Result<Option<u64>> {
    let started = std::time::Instant::now();
    let oldest = loop {
        let oldest = fs.volume().oldest_reader(committed)?;
        match oldest {
            Some(r) if r < since => {
                if started.elapsed() >= READER_PATIENCE {
                    return Err(Error::Devices(format!(
                        "a reader still reads generation {r} of this filesystem (now at {committed}); writing now could \
                         overwrite what it reads: try again when it is done"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => break oldest,
        }
    };
    Ok(oldest)
}

/// Where a transaction stands with NODATACOW overwrites in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum InPlace {
    #[default]
    Unmarked,
    /// Marked before looking for readers; nothing overwritten yet.
    Marked,
    /// Committed bytes overwritten: marked until the commit is on the images.
    Written,
}
