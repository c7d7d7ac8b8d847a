//! Reading fixed structures out of item bodies; a body too short is an
//! error naming the item.

use zerocopy::FromBytes;

use crate::error::{CorruptKind, Error, Result};
use crate::format::items;

pub(super) fn need<T: FromBytes>(data: &[u8], what: &str) -> Result<T> {
    Ok(items::read_prefix::<T>(data, what)?.0)
}

/// Read a struct that older kernels stored shorter: missing tail bytes read as zero.
pub(super) fn padded<T: FromBytes>(data: &[u8], min: usize, what: &str) -> Result<T> {
    let size = std::mem::size_of::<T>();
    if data.len() < min {
        return Err(Error::corrupt(CorruptKind::ItemSize, what, format!("item too short: {} bytes, need {min}", data.len())));
    }
    let mut v = vec![0u8; size];
    let n = data.len().min(size);
    v[..n].copy_from_slice(&data[..n]);
    need::<T>(&v, what)
}

pub(super) fn u64_at(data: &[u8], pos: usize, what: &str) -> Result<u64> {
    data.get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| Error::corrupt(CorruptKind::ItemSize, what, format!("item too short: {} bytes, need {}", data.len(), pos + 8)))
}
