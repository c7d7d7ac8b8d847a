//! Bounded memory for `--rootdir` at any size: records kept in memory up to
//! a budget and spilled beyond it to unlinked temporary files (in `TMPDIR`),
//! and the sort of a subvolume tree's items made of such records (sorted
//! runs, merged on the way into the tree's leaves).

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::format::Key;

/// Bytes of records held in memory before they go to a temporary file.
/// A buffer is reserved at this size once (its pages count only as they
/// are filled) and never grows past it.
pub const SPILL_BUDGET: usize = 24 << 20;

/// Bytes read ahead from a temporary file; a merge of many runs reads less
/// from each (all its runs together at most [`SPILL_BUDGET`]): a million
/// small files make some fifty runs.
const READ_AHEAD: usize = 256 << 10;

fn spill_error(op: &str, e: std::io::Error) -> Error {
    Error::io(std::env::temp_dir(), format!("{op} a temporary file of --rootdir's items (TMPDIR)"), e)
}

/// Records appended one after another, read back in the same order (as
/// often as wanted): in memory while small, else in an unlinked temporary
/// file, so nothing is left behind whatever happens to the process.
pub(super) struct Spill {
    mem: Vec<u8>,
    file: Option<File>,
    /// Bytes already in the file.
    flushed: u64,
    budget: usize,
}

impl Default for Spill {
    fn default() -> Self {
        Spill::with_budget(SPILL_BUDGET)
    }
}

impl Spill {
    pub(super) fn with_budget(budget: usize) -> Self {
        Spill { mem: Vec::new(), file: None, flushed: 0, budget }
    }

    /// Append one record.
    pub(super) fn push(&mut self, record: &[u8]) -> Result<()> {
        let len = u32::try_from(record.len()).map_err(|_| Error::Invalid("a --rootdir record past 4 GiB (internal)".into()))?;
        if self.mem.len() + 4 + record.len() > self.budget && !self.mem.is_empty() {
            self.flush()?;
        }
        if self.mem.capacity() == 0 {
            self.mem.reserve_exact(self.budget.min(SPILL_BUDGET).max(4 + record.len()));
        }
        self.mem.extend_from_slice(&len.to_le_bytes());
        self.mem.extend_from_slice(record);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.mem.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile().map_err(|e| spill_error("create", e))?),
        };
        file.write_all(&self.mem).map_err(|e| spill_error("write", e))?;
        self.flushed += self.mem.len() as u64;
        self.mem.clear();
        Ok(())
    }

    /// Done appending: what is still in memory stays there when nothing was
    /// spilled, else joins the file (and the memory is given back).
    pub(super) fn seal(&mut self) -> Result<()> {
        if self.file.is_some() {
            self.flush()?;
            self.mem = Vec::new();
        } else {
            self.mem.shrink_to_fit();
        }
        Ok(())
    }

    /// The records from the first, in order (after [`Self::seal`]).
    pub(super) fn reader(&self) -> SpillReader<'_> {
        self.reader_with(READ_AHEAD)
    }

    fn reader_with(&self, read_ahead: usize) -> SpillReader<'_> {
        SpillReader { spill: self, pos: 0, buf: Vec::new(), at: 0, read_ahead }
    }
}

/// Reads a [`Spill`]'s records in order.
pub(super) struct SpillReader<'a> {
    spill: &'a Spill,
    /// Next file offset to read into `buf`.
    pos: u64,
    buf: Vec<u8>,
    /// Next unread byte of `buf`.
    at: usize,
    read_ahead: usize,
}

impl SpillReader<'_> {
    /// The next record, or None after the last.
    pub(super) fn next_record(&mut self) -> Result<Option<&[u8]>> {
        let Some(file) = &self.spill.file else {
            // All in memory.
            let mem = &self.spill.mem;
            if self.at >= mem.len() {
                return Ok(None);
            }
            let (rec, next) = record_at(mem, self.at)?;
            self.at = next;
            return Ok(Some(rec));
        };
        if !self.has(file, 4)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[self.at..self.at + 4].try_into().unwrap_or_default()) as usize;
        if !self.has(file, 4 + len)? {
            return Err(Error::Invalid("a temporary file of --rootdir's items ends inside a record (internal)".into()));
        }
        let rec = &self.buf[self.at + 4..self.at + 4 + len];
        self.at += 4 + len;
        Ok(Some(rec))
    }

    /// Whether `n` bytes from `at` are in the buffer, reading more when not;
    /// false only at the very end.
    fn has(&mut self, file: &File, n: usize) -> Result<bool> {
        if self.buf.len() - self.at >= n {
            return Ok(true);
        }
        let read = self.read_ahead;
        self.buf.drain(..self.at);
        self.at = 0;
        while self.buf.len() < n && self.pos < self.spill.flushed {
            let want = (self.spill.flushed - self.pos).min(read.max(n) as u64) as usize;
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            file.read_exact_at(&mut self.buf[old..], self.pos).map_err(|e| spill_error("read", e))?;
            self.pos += want as u64;
        }
        Ok(self.buf.len() >= n)
    }
}

fn record_at(mem: &[u8], at: usize) -> Result<(&[u8], usize)> {
    let bad = || Error::Invalid("a --rootdir record is cut short (internal)".into());
    let len = u32::from_le_bytes(mem.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let rec = mem.get(at + 4..at + 4 + len).ok_or_else(bad)?;
    Ok((rec, at + 4 + len))
}

/// Little-endian fields one after another: the records of a [`Spill`].
#[derive(Default)]
pub(super) struct RecordWriter {
    pub(super) buf: Vec<u8>,
}

impl RecordWriter {
    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A length (u32) and the bytes.
    pub(super) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
}

/// Reads back what a [`RecordWriter`] wrote.
pub(super) struct RecordReader<'a> {
    rec: &'a [u8],
}

impl<'a> RecordReader<'a> {
    pub(super) fn new(rec: &'a [u8]) -> Self {
        RecordReader { rec }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rec.len() < n {
            return Err(Error::Invalid("a --rootdir record is cut short (internal)".into()));
        }
        let (a, b) = self.rec.split_at(n);
        self.rec = b;
        Ok(a)
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Where an item sorts: its subvolume tree, its key, and the order it was
/// pushed in (items with one key are joined in that order).
type SortKey = (u64, Key, u64);

/// Items of the subvolume trees pushed in any order and read back sorted by
/// (tree, key), items with equal keys joined (a DIR_ITEM of names whose
/// hashes collide, the names of a hard-linked inode). Sorted runs of up to
/// [`SPILL_BUDGET`] bytes go to temporary files and are merged when read.
pub(super) struct ItemSorter {
    /// The data of the items held, one after another.
    arena: Vec<u8>,
    /// Where each sorts, and its place in `arena`.
    index: Vec<(SortKey, u32, u32)>,
    /// Sorted runs so far, each with its level: a run of level L+1 is
    /// [`FAN_IN`] runs of level L merged.
    runs: Vec<(u32, Spill)>,
    seq: u64,
    budget: usize,
}

/// Runs merged into one as soon as there are this many of one level, so a
/// tree of any size is merged from a bounded number of temporary files
/// (each item is rewritten once per level: a million small files make some
/// fifty runs and no merge of merges).
const FAN_IN: usize = 64;

/// Write one sorted record (the layout [`read_head`] reads) to `file`.
fn write_record(file: &mut impl Write, w: &mut RecordWriter, (tree, key, seq): SortKey, data: &[u8]) -> Result<u64> {
    w.buf.clear();
    w.u32(0).u64(tree).u64(key.objectid).u8(key.item_type).u64(key.offset).u64(seq).bytes(data);
    let len = (w.buf.len() - 4) as u32;
    w.buf[..4].copy_from_slice(&len.to_le_bytes());
    file.write_all(&w.buf).map_err(|e| spill_error("write", e))?;
    Ok(w.buf.len() as u64)
}

/// A new temporary file of sorted records, through a small buffer.
fn run_file() -> Result<std::io::BufWriter<File>> {
    Ok(std::io::BufWriter::with_capacity(READ_AHEAD, tempfile::tempfile().map_err(|e| spill_error("create", e))?))
}

fn sealed_run(file: std::io::BufWriter<File>, flushed: u64, budget: usize) -> Result<Spill> {
    let file = file.into_inner().map_err(|e| spill_error("write", e.into_error()))?;
    Ok(Spill { mem: Vec::new(), file: Some(file), flushed, budget })
}

/// One entry of [`ItemSorter::index`].
type IndexEntry = (SortKey, u32, u32);

impl Default for ItemSorter {
    fn default() -> Self {
        ItemSorter::with_budget(SPILL_BUDGET)
    }
}

impl ItemSorter {
    pub(super) fn with_budget(budget: usize) -> Self {
        ItemSorter { arena: Vec::new(), index: Vec::new(), runs: Vec::new(), seq: 0, budget }
    }

    /// One item of tree `tree`.
    pub(super) fn push(&mut self, tree: u64, key: Key, data: &[u8]) -> Result<()> {
        // Three quarters of the budget for item data, a quarter for the index;
        // both reserved once, a run spilled before either would grow.
        let entries = (self.budget / 4 / std::mem::size_of::<IndexEntry>()).max(1);
        let arena = self.budget - self.budget / 4;
        if !self.index.is_empty() && (self.index.len() == entries || self.arena.len() + data.len() > arena) {
            self.spill_run(true)?;
        }
        if self.index.capacity() == 0 {
            self.index.reserve_exact(entries);
            self.arena.reserve_exact(arena.max(data.len()));
        }
        let too_big = || Error::Invalid("an item of --rootdir past 4 GiB (internal)".into());
        let at = u32::try_from(self.arena.len()).map_err(|_| too_big())?;
        self.index.push(((tree, key, self.seq), at, u32::try_from(data.len()).map_err(|_| too_big())?));
        self.arena.extend_from_slice(data);
        self.seq += 1;
        Ok(())
    }

    /// The items held so far as one sorted run: in a temporary file when
    /// `spill`, else in memory.
    fn spill_run(&mut self, spill: bool) -> Result<()> {
        if self.index.is_empty() {
            return Ok(());
        }
        self.index.sort_unstable_by_key(|e| e.0);
        let mut w = RecordWriter::default();
        let run = if spill {
            let mut file = run_file()?;
            let mut flushed = 0u64;
            for &(k, at, len) in &self.index {
                flushed += write_record(&mut file, &mut w, k, &self.arena[at as usize..at as usize + len as usize])?;
            }
            sealed_run(file, flushed, self.budget)?
        } else {
            // A last run that never left memory: as big as it has to be.
            let mut run = Spill::with_budget(usize::MAX);
            run.mem.reserve_exact(self.arena.len() + self.index.len() * 41);
            for &((tree, key, seq), at, len) in &self.index {
                w.buf.clear();
                w.u64(tree).u64(key.objectid).u8(key.item_type).u64(key.offset).u64(seq);
                w.bytes(&self.arena[at as usize..at as usize + len as usize]);
                run.push(&w.buf)?;
            }
            run.seal()?;
            run
        };
        self.runs.push((0, run));
        self.index.clear();
        self.arena.clear();
        // The last FAN_IN runs of one level become one of the next.
        while let Some(&(level, _)) = self.runs.last() {
            let n = self.runs.len();
            if n < FAN_IN || self.runs[n - FAN_IN..].iter().any(|r| r.0 != level) {
                break;
            }
            let group = self.runs.split_off(n - FAN_IN);
            let mut m = merge(group.iter().map(|r| &r.1))?;
            let mut file = run_file()?;
            let mut flushed = 0u64;
            while let Some((k, data)) = m.next_entry()? {
                flushed += write_record(&mut file, &mut w, k, &data)?;
            }
            drop(m);
            self.runs.push((level + 1, sealed_run(file, flushed, self.budget)?));
        }
        Ok(())
    }

    /// Done pushing: the sorted runs, to be merged (with other sorters'
    /// runs) by [`merge`].
    pub(super) fn finish(mut self) -> Result<Vec<Spill>> {
        let spilled = !self.runs.is_empty();
        self.spill_run(spilled)?;
        Ok(self.runs.into_iter().map(|r| r.1).collect())
    }
}

/// The head of one run in a merge.
struct Head<'a> {
    key: SortKey,
    data: Vec<u8>,
    reader: SpillReader<'a>,
}

impl PartialEq for Head<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Head<'_> {}
impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head<'_> {
    // Reversed: BinaryHeap pops the greatest, the merge wants the least.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.key.cmp(&self.key)
    }
}

fn read_head<'a>(mut reader: SpillReader<'a>) -> Result<Option<Head<'a>>> {
    let Some(rec) = reader.next_record()? else { return Ok(None) };
    let mut r = RecordReader::new(rec);
    let key = (r.u64()?, Key::new(r.u64()?, r.u8()?, r.u64()?), r.u64()?);
    let data = r.bytes()?.to_vec();
    Ok(Some(Head { key, data, reader }))
}

/// Every item of `runs`, sorted by (tree, key), equal keys joined.
pub(super) struct Merge<'a> {
    heap: BinaryHeap<Head<'a>>,
}

pub(super) fn merge<'a>(runs: impl IntoIterator<Item = &'a Spill>) -> Result<Merge<'a>> {
    let runs: Vec<&Spill> = runs.into_iter().collect();
    let read_ahead = (SPILL_BUDGET / runs.len().max(1)).clamp(16 << 10, READ_AHEAD);
    let mut heap = BinaryHeap::new();
    for run in runs {
        if let Some(h) = read_head(run.reader_with(read_ahead))? {
            heap.push(h);
        }
    }
    Ok(Merge { heap })
}

impl Merge<'_> {
    /// The next (tree, key, data), or None after the last.
    pub(super) fn next_item(&mut self) -> Result<Option<(u64, Key, Vec<u8>)>> {
        Ok(self.next_entry()?.map(|((tree, key, _), data)| (tree, key, data)))
    }

    /// The next item with where it sorts (its first piece's push order).
    fn next_entry(&mut self) -> Result<Option<(SortKey, Vec<u8>)>> {
        let Some(first) = self.heap.pop() else { return Ok(None) };
        let (tree, key, seq) = first.key;
        let mut data = first.data;
        let mut next = read_head(first.reader)?;
        loop {
            // The run just read from may hold the next piece of this key too.
            if let Some(h) = next.take() {
                self.heap.push(h);
            }
            match self.heap.peek() {
                Some(h) if (h.key.0, h.key.1) == (tree, key) => {}
                _ => break,
            }
            let Some(h) = self.heap.pop() else { break };
            data.extend_from_slice(&h.data);
            next = read_head(h.reader)?;
        }
        Ok(Some(((tree, key, seq), data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_from_memory_and_from_files() {
        for n in [0usize, 3, 4000] {
            let mut s = Spill::with_budget(1 << 20);
            for i in 0..n {
                s.push(&vec![i as u8; i % 3000]).unwrap();
            }
            s.seal().unwrap();
            assert_eq!(s.file.is_some(), n * 1500 > 1 << 20, "{n}");
            for _ in 0..2 {
                let mut r = s.reader();
                for i in 0..n {
                    assert_eq!(r.next_record().unwrap().unwrap(), &vec![i as u8; i % 3000][..], "{n}: record {i}");
                }
                assert!(r.next_record().unwrap().is_none());
            }
        }
    }

    /// Past FAN_IN runs of one level, runs are merged into fewer: the
    /// output is the same, pieces of one key pushed early, midway and last
    /// still join in push order.
    #[test]
    fn many_runs_are_merged_in_levels() {
        let mut a = ItemSorter::with_budget(16 << 10);
        let n = 20_000u64;
        for i in 0..n {
            if i % 9_000 == 0 {
                a.push(5, Key::new(u64::MAX, 1, 0), &[(i / 9_000) as u8]).unwrap();
            }
            let k = (i * 7919) % n;
            a.push(5, Key::new(k, 1, 0), &k.to_le_bytes()).unwrap();
        }
        a.push(5, Key::new(u64::MAX, 1, 0), b"end").unwrap();
        assert!(a.runs.iter().any(|r| r.0 >= 1), "no merge of runs happened");
        let runs = a.finish().unwrap();
        assert!(runs.len() < FAN_IN, "{} runs left", runs.len());
        let mut m = merge(&runs).unwrap();
        for k in 0..n {
            assert_eq!(m.next_item().unwrap(), Some((5, Key::new(k, 1, 0), k.to_le_bytes().to_vec())));
        }
        assert_eq!(m.next_item().unwrap(), Some((5, Key::new(u64::MAX, 1, 0), [0, 1, 2].iter().copied().chain(*b"end").collect())));
        assert_eq!(m.next_item().unwrap(), None);
    }

    #[test]
    fn items_merge_sorted_and_equal_keys_join_in_push_order() {
        // Enough to spill several runs; keys pushed in a scrambled order.
        let mut a = ItemSorter::with_budget(1 << 20);
        let mut b = ItemSorter::default();
        let n = 100_000u64;
        for i in 0..n {
            let k = (i * 7919) % n;
            a.push(5 + k % 2, Key::new(k / 2, 1, 0), &k.to_le_bytes()).unwrap();
        }
        // Pieces of one key pushed at different times join in push order.
        for j in 0..3u8 {
            a.push(5, Key::new(7, 1, 0), &[j]).unwrap();
        }
        b.push(6, Key::new(u64::MAX, 255, u64::MAX), b"last").unwrap();
        let (ra, rb) = (a.finish().unwrap(), b.finish().unwrap());
        assert!(ra.len() > 2 && ra.iter().all(|r| r.file.is_some()), "{} runs", ra.len());
        assert!(rb.len() == 1 && rb[0].file.is_none(), "a small sorter stays in memory");
        let mut m = merge(ra.iter().chain(&rb)).unwrap();
        let mut prev: Option<(u64, Key)> = None;
        let mut count = 0;
        while let Some((tree, key, data)) = m.next_item().unwrap() {
            assert!(prev.is_none_or(|p| p < (tree, key)), "{prev:?} then {tree} {key}");
            prev = Some((tree, key));
            if (tree, key) == (5, Key::new(7, 1, 0)) {
                assert_eq!(data, [14u64.to_le_bytes().as_slice(), &[0, 1, 2]].concat());
            } else if tree == 6 && key.objectid == u64::MAX {
                assert_eq!(data, b"last");
            } else {
                assert_eq!(data, (key.objectid * 2 + tree - 5).to_le_bytes());
            }
            count += 1;
        }
        assert_eq!(count, n + 1);
    }
}
