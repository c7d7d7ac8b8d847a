//! Direct writes that never trust the caller's pages (the kernel series "btrfs:
//! do not trust direct IO page at all"): the caller's bytes are copied once
//! into 4096-aligned bounce pages the engine owns, the checksum is computed
//! from those pages, and every mirror is written from the same pages. A caller
//! that keeps changing its buffer during the write can therefore only change
//! *which* bytes get written, never make mirrors or checksums disagree.
//!
//! The pages go to the bios of every copy ([`crate::volumes::bio`]); every
//! write is waited for before its transaction may read that data back or
//! commit. One failed bio fails the write it belongs to; the transaction then
//! commits nothing (the superblocks are never written), so the file keeps its
//! previous contents.
//!
//! Unaligned heads and tails are read-modify-written into the bounce pages
//! from the file's current content (the kernel falls back to buffered IO for
//! them; the effect on disk is the same: whole sectors from engine-owned memory).

use std::sync::atomic::Ordering;

pub(crate) use crate::volumes::bio::{Bounce, PagePool, PAGE};

/// Where a direct write takes its bytes from: something other threads may be
/// changing while the write runs (a shared buffer).
pub trait Source: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `dst.len()` bytes starting at `off` as they are right now.
    fn copy_to(&self, off: usize, dst: &mut [u8]);
}

/// An ordinary byte slice nobody else changes.
pub struct Plain<'a>(pub &'a [u8]);

impl Source for Plain<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn copy_to(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.0[off..off + dst.len()]);
    }
}

/// A buffer several threads may read and write at once (for callers that
/// share memory with a writer, and for the tests that prove bounce copies).
pub struct SharedBuf(pub Vec<std::sync::atomic::AtomicU8>);

impl SharedBuf {
    pub fn new(init: &[u8]) -> Self {
        SharedBuf(init.iter().map(|&b| std::sync::atomic::AtomicU8::new(b)).collect())
    }
}

impl Source for SharedBuf {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn copy_to(&self, off: usize, dst: &mut [u8]) {
        for (d, s) in dst.iter_mut().zip(&self.0[off..]) {
            *d = s.load(Ordering::Relaxed);
        }
    }
}
