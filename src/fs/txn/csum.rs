//! Data checksums in the csum tree: computed, inserted, found, deleted
//! (the checksum half of the kernel's file-item.c).

use crate::error::{Error, Result};
use crate::format::encode;
use crate::format::*;

use super::Transaction;

impl Transaction {
    pub(super) fn compute_csums(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.store.fs.csum.compute_sectors(data, self.store.fs.sectorsize as usize, &mut out);
        out
    }

    /// Insert checksum items for the sectors at `logical` (`sums` as from
    /// [`Self::compute_csums`]).
    pub(super) fn insert_csums(&mut self, logical: u64, sums: &[u8]) -> Result<()> {
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size();
        // Keep each csum item well under a leaf.
        let per_item = ((self.store.fs.sb.nodesize.get() as usize - 101) / 2 / cs).max(1);
        for (i, body) in sums.chunks(per_item * cs).enumerate() {
            let at = logical + (i * per_item) as u64 * ss;
            let body = encode::csum_item(body.to_vec(), self.store.fs.csum)?;
            self.insert(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, at), body)?;
        }
        Ok(())
    }

    /// Remove data checksums for [start, start+len), splitting items at the edges.
    pub(crate) fn delete_csums(&mut self, start: u64, len: u64) -> Result<()> {
        let end = start + len;
        let ss = self.store.fs.sectorsize as u64;
        let cs = self.store.fs.csum.size() as u64;
        for (k, d) in self.csum_items_from(start, end)? {
            let s = k.offset;
            let e = s + d.len() as u64 / cs * ss;
            if e <= start || s >= end {
                continue;
            }
            self.delete(CSUM_TREE_OBJECTID, k)?;
            if s < start {
                let n = ((start - s) / ss * cs) as usize;
                self.insert(CSUM_TREE_OBJECTID, k, d.get(..n).unwrap_or_default().to_vec())?;
            }
            if e > end {
                let n = ((end - s) / ss * cs) as usize;
                self.insert(
                    CSUM_TREE_OBJECTID,
                    Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end),
                    d.get(n..).unwrap_or_default().to_vec(),
                )?;
            }
        }
        Ok(())
    }

    /// Checksums of each sector of [start, start+len) as this transaction's
    /// csum tree holds them (`None` where it has none).
    pub(crate) fn data_csums(&mut self, start: u64, len: u64) -> Result<Vec<Option<CsumBytes>>> {
        let ss = u64::from(self.store.fs.sectorsize);
        let cs = self.store.fs.csum.size();
        let nsect = usize::try_from(len.div_ceil(ss)).map_err(|_| Error::Invalid("range too large".into()))?;
        let mut out = vec![None; nsect];
        let end = start.saturating_add(len);
        for (k, d) in self.csum_items_from(start, end)? {
            for (i, c) in d.chunks_exact(cs).enumerate() {
                let Some(s) = k.offset.checked_add(i as u64 * ss) else { break };
                if s >= end {
                    break;
                }
                if s >= start && (s - start) % ss == 0 {
                    let mut v = [0u8; CSUM_SIZE];
                    v[..cs].copy_from_slice(c);
                    if let Some(slot) = out.get_mut(((s - start) / ss) as usize) {
                        *slot = Some(v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The csum items that may cover [start, end): the last one starting
    /// before `start`, then every one starting inside.
    fn csum_items_from(&mut self, start: u64, end: u64) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut found = Vec::new();
        if let Some((k, d)) = self.last_le(CSUM_TREE_OBJECTID, Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start))? {
            if k.objectid == EXTENT_CSUM_OBJECTID && k.item_type == EXTENT_CSUM_KEY && k.offset < start {
                found.push((k, d));
            }
        }
        if end > start {
            found.extend(self.range(
                CSUM_TREE_OBJECTID,
                Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, start),
                Key::new(EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, end - 1),
            )?);
        }
        Ok(found)
    }
}
