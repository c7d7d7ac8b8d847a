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
            CsumType::Crc32c => out[..4].copy_from_slice(&crc32c::crc32c(data).to_le_bytes()),
            CsumType::Xxhash64 => {
                out[..8].copy_from_slice(&xxhash_rust::xxh64::xxh64(data, 0).to_le_bytes())
            }
            CsumType::Sha256 => out.copy_from_slice(&sha2::Sha256::digest(data)),
            CsumType::Blake2b256 => {
                let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
                h.update(data);
                out.copy_from_slice(&h.finalize());
            }
        }
        out
    }

    /// Compare a computed checksum with a stored one, looking only at the significant bytes.
    pub fn matches(self, computed: &CsumBytes, stored: &[u8]) -> bool {
        stored.len() >= self.size() && computed[..self.size()] == stored[..self.size()]
    }
}

impl std::fmt::Display for CsumType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
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
    fn raw_round_trip_and_unknown() {
        for t in CsumType::ALL {
            assert_eq!(CsumType::from_raw(t.raw()), Some(t));
            assert_eq!(CsumType::from_name(t.name()), Some(t));
        }
        assert_eq!(CsumType::from_raw(4), None);
        assert_eq!(CsumType::from_raw(0xffff), None);
    }
}
