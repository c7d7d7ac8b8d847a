//! The four checksum algorithms btrfs uses for tree blocks, data sectors and superblocks.

use sha2::Digest;

use super::ondisk::{CSUM_SIZE, CSUM_TYPE_BLAKE2, CSUM_TYPE_CRC32, CSUM_TYPE_SHA256, CSUM_TYPE_XXHASH};

/// A checksum algorithm, as named by the superblock's `csum_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CsumType {
    Crc32c,
    Xxhash64,
    Sha256,
    Blake2b256,
}

/// A checksum value padded to the 32 bytes the on-disk fields reserve.
pub type CsumBytes = [u8; CSUM_SIZE];

impl CsumType {
    pub const ALL: [CsumType; 4] = [CsumType::Crc32c, CsumType::Xxhash64, CsumType::Sha256, CsumType::Blake2b256];

    /// `None` for a value btrs does not know: the caller reports it as incompatible.
    pub fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            CSUM_TYPE_CRC32 => Some(CsumType::Crc32c),
            CSUM_TYPE_XXHASH => Some(CsumType::Xxhash64),
            CSUM_TYPE_SHA256 => Some(CsumType::Sha256),
            CSUM_TYPE_BLAKE2 => Some(CsumType::Blake2b256),
            _ => None,
        }
    }

    pub fn raw(self) -> u16 {
        match self {
            CsumType::Crc32c => CSUM_TYPE_CRC32,
            CsumType::Xxhash64 => CSUM_TYPE_XXHASH,
            CsumType::Sha256 => CSUM_TYPE_SHA256,
            CsumType::Blake2b256 => CSUM_TYPE_BLAKE2,
        }
    }

    /// Bytes of the checksum that are significant (the rest of the 32-byte field is zero).
    pub fn size(self) -> usize {
        match self {
            CsumType::Crc32c => 4,
            CsumType::Xxhash64 => 8,
            CsumType::Sha256 | CsumType::Blake2b256 => 32,
        }
    }

    /// The name btrfs-progs prints and accepts.
    pub fn name(self) -> &'static str {
        match self {
            CsumType::Crc32c => "crc32c",
            CsumType::Xxhash64 => "xxhash64",
            CsumType::Sha256 => "sha256",
            CsumType::Blake2b256 => "blake2",
        }
    }

    /// Accepts the spellings mkfs.btrfs accepts.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "crc32c" | "crc32" => Some(CsumType::Crc32c),
            "xxhash" | "xxhash64" => Some(CsumType::Xxhash64),
            "sha256" => Some(CsumType::Sha256),
            "blake2" | "blake2b" | "blake2b256" => Some(CsumType::Blake2b256),
            _ => None,
        }
    }

    /// Checksum `data`; the result is zero-padded to 32 bytes like the on-disk field.
    pub fn compute(self, data: &[u8]) -> CsumBytes {
        let mut out = [0u8; CSUM_SIZE];
        match self {
            // OK to index: CSUM_SIZE (32) holds every digest.
            #[allow(clippy::indexing_slicing)]
            CsumType::Crc32c => out[..4].copy_from_slice(&crc32c::crc32c(data).to_le_bytes()),
            #[allow(clippy::indexing_slicing)]
            CsumType::Xxhash64 => out[..8].copy_from_slice(&xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes()),
            CsumType::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(data)),
            CsumType::Blake2b256 => out.copy_from_slice(blake2b_256().hash(data).as_bytes()),
        }
        out
    }

    /// The significant checksum bytes of every `sectorsize` piece of `data`
    /// (the last may be shorter), back to back, appended to `out`: the layout
    /// of a csum item's body. BLAKE2b hashes several sectors at once in SIMD
    /// lanes (`hash_many`), which is where most of its cost for file data goes.
    pub fn compute_sectors(self, data: &[u8], sectorsize: usize, out: &mut Vec<u8>) {
        let n = self.size();
        let sectorsize = sectorsize.max(1);
        out.reserve(data.len().div_ceil(sectorsize).saturating_mul(n));
        match self {
            CsumType::Blake2b256 => {
                let params = blake2b_256();
                // A bounded group at a time: the jobs live on the stack.
                for group in data.chunks(sectorsize.saturating_mul(32)) {
                    let mut jobs: Vec<_> = group.chunks(sectorsize).map(|s| blake2b_simd::many::HashManyJob::new(&params, s)).collect();
                    blake2b_simd::many::hash_many(jobs.iter_mut());
                    for j in &jobs {
                        out.extend_from_slice(j.to_hash().as_bytes());
                    }
                }
            }
            _ => {
                for sector in data.chunks(sectorsize) {
                    out.extend_from_slice(self.compute(sector).get(..n).unwrap_or_default());
                }
            }
        }
    }

    /// Compare a computed checksum with a stored one, looking only at the significant bytes.
    pub fn matches(self, computed: &CsumBytes, stored: &[u8]) -> bool {
        let n = self.size();
        stored.len() >= n && computed.get(..n) == stored.get(..n)
    }
}

/// BLAKE2b with a 32-byte digest (the digest length is a parameter of the
/// hash, not a truncation), as btrfs's "blake2b-256".
fn blake2b_256() -> blake2b_simd::Params {
    let mut p = blake2b_simd::Params::new();
    p.hash_length(32);
    p
}

impl std::fmt::Display for CsumType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
// Tests may index and cast freely: a panic there is a failing test.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::as_conversions)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // crc32c("123456789") is the classic check value 0xe3069283.
        let c = CsumType::Crc32c.compute(b"123456789");
        assert_eq!(&c[..4], &0xe306_9283u32.to_le_bytes());
        assert!(c[4..].iter().all(|&b| b == 0));
        // xxh64("", seed 0) = 0xef46db3751d8e999.
        let x = CsumType::Xxhash64.compute(b"");
        assert_eq!(&x[..8], &0xef46_db37_51d8_e999u64.to_le_bytes());
        let s = CsumType::Sha256.compute(b"abc");
        assert_eq!(s[0], 0xba);
        assert_eq!(s[31], 0xad);
        // BLAKE2b-256("abc") starts with bd dd 81 3c.
        let b = CsumType::Blake2b256.compute(b"abc");
        assert_eq!(&b[..4], &[0xbd, 0xdd, 0x81, 0x3c]);
    }

    #[test]
    fn blake2b_256_full_vector() {
        // BLAKE2b-256("abc"), RFC 7693's parameters with a 32-byte digest.
        let want = "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319";
        let got: String = CsumType::Blake2b256.compute(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sectors_at_once_equal_one_by_one() {
        // 70 sectors and a short tail: more than one hash_many group, and a
        // piece shorter than a sector.
        let data: Vec<u8> = (0..70 * 4096 + 100).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for t in CsumType::ALL {
            let mut many = vec![0xaa];
            t.compute_sectors(&data, 4096, &mut many);
            let mut one = vec![0xaa];
            for s in data.chunks(4096) {
                one.extend_from_slice(&t.compute(s)[..t.size()]);
            }
            assert_eq!(many.len(), 1 + 71 * t.size(), "{t}");
            assert_eq!(many, one, "{t}");
        }
    }

    #[test]
    fn raw_round_trip_and_unknown() {
        for t in CsumType::ALL {
            assert_eq!(CsumType::from_raw(t.raw()), Some(t));
            assert_eq!(CsumType::from_name(t.name()), Some(t));
        }
        assert_eq!(CsumType::from_raw(4), None);
        assert_eq!(CsumType::from_raw(0xffff), None);
    }
}
