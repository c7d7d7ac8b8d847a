//! The value of the system.posix_acl_access and system.posix_acl_default
//! xattrs (include/uapi/linux/posix_acl_xattr.h): a 4-byte version (2), then
//! 8-byte entries of tag, permissions and id, little endian. Decoded, checked
//! as the kernel's posix_acl_valid checks it, and encoded here only.

// Tags (include/uapi/linux/posix_acl.h).
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;
/// The id of an entry that names no user or group.
pub const ACL_UNDEFINED_ID: u32 = u32::MAX;
pub const POSIX_ACL_XATTR_VERSION: u32 = 2;

const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;

/// One entry: tag, permissions (read 4, write 2, execute 1), id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// The entries of an ACL value, or why it is not one. An empty value and a
/// header without entries are no ACL (no entries), as the kernel takes them.
pub fn decode(value: &[u8]) -> Result<Vec<AclEntry>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let (Some(header), Some(body)) = (value.get(..HEADER_LEN), value.get(HEADER_LEN..)) else {
        return Err(format!("an ACL of {} bytes is shorter than its 4-byte header", value.len()));
    };
    if header != POSIX_ACL_XATTR_VERSION.to_le_bytes() {
        return Err("not a version 2 POSIX ACL".into());
    }
    if body.len() % ENTRY_LEN != 0 {
        return Err(format!("ACL entries of {} bytes: not a whole number of 8-byte entries", body.len()));
    }
    Ok(body
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let word = |b: Option<&[u8]>| b.and_then(|b| b.try_into().ok()).map_or(0, u16::from_le_bytes);
            let id = e.get(4..8).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
            AclEntry { tag: word(e.get(..2)), perm: word(e.get(2..4)), id }
        })
        .collect())
}

/// The value holding `entries` (in the order given).
pub fn encode(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = POSIX_ACL_XATTR_VERSION.to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// The kernel's posix_acl_valid on decoded entries: USER_OBJ, USER...,
/// GROUP_OBJ, GROUP..., MASK (needed with USER or GROUP entries), OTHER, in
/// that order, permissions only read, write and execute. No entries is valid
/// (no ACL).
pub fn validate(entries: &[AclEntry]) -> Result<(), String> {
    #[derive(PartialEq)]
    enum State {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    if entries.is_empty() {
        return Ok(());
    }
    let mut state = State::UserObj;
    let mut needs_mask = false;
    for &AclEntry { tag, perm, id } in entries {
        if perm & !7 != 0 {
            return Err(format!("ACL entry permissions {perm:#o}: only read, write and execute"));
        }
        state = match (tag, state) {
            (ACL_USER_OBJ, State::UserObj) => State::User,
            (ACL_USER, State::User) | (ACL_GROUP, State::Group) if id != ACL_UNDEFINED_ID => {
                needs_mask = true;
                if tag == ACL_USER {
                    State::User
                } else {
                    State::Group
                }
            }
            (ACL_GROUP_OBJ, State::User) => State::Group,
            (ACL_MASK, State::Group) => State::Other,
            (ACL_OTHER, State::Other) => State::Done,
            (ACL_OTHER, State::Group) if !needs_mask => State::Done,
            _ => return Err(format!("ACL entry with tag {tag:#x} out of order, repeated, unknown or without a mask")),
        };
    }
    if state != State::Done {
        return Err("ACL without the owner, group and other entries".into());
    }
    Ok(())
}

/// The kernel's posix_acl_chmod (__posix_acl_chmod): the owner, the mask
/// (the owning group when there is no mask) and other entries take the
/// permission bits of `mode`.
pub fn chmod(entries: &mut [AclEntry], mode: u32) {
    let bits = |shift: u32| u16::try_from((mode >> shift) & 7).unwrap_or(0);
    let has_mask = entries.iter().any(|e| e.tag == ACL_MASK);
    for e in entries.iter_mut() {
        match e.tag {
            ACL_USER_OBJ => e.perm = bits(6),
            ACL_MASK => e.perm = bits(3),
            ACL_GROUP_OBJ if !has_mask => e.perm = bits(3),
            ACL_OTHER => e.perm = bits(0),
            _ => {}
        }
    }
}

/// The kernel's posix_acl_equiv_mode: the permission bits the ACL stands
/// for (the mask's as the group's when it has one), and whether the mode
/// says all of it (only owner, group and other entries).
pub fn mode_of(entries: &[AclEntry]) -> (u32, bool) {
    let mut mode = 0u32;
    let mut equiv = true;
    for e in entries {
        let p = u32::from(e.perm & 7);
        match e.tag {
            ACL_USER_OBJ => mode = (mode & !0o700) | p << 6,
            ACL_GROUP_OBJ => mode = (mode & !0o070) | p << 3,
            ACL_OTHER => mode = (mode & !0o007) | p,
            ACL_MASK => {
                mode = (mode & !0o070) | p << 3;
                equiv = false;
            }
            _ => equiv = false,
        }
    }
    (mode, equiv)
}

/// The kernel's posix_acl_create_masq: a new inode's ACL from its
/// directory's default ACL and the mode asked for; the mode is limited by
/// the ACL and the ACL by the mode. The new mode's permission bits, and
/// whether an access ACL is needed (false: the mode says it all).
pub fn create_masq(entries: &mut [AclEntry], mode: u32) -> (u32, bool) {
    let mut mode = mode & 0o777;
    let mut equiv = true;
    let mut group_obj = None;
    let mut mask = None;
    for (i, e) in entries.iter_mut().enumerate() {
        match e.tag {
            ACL_USER_OBJ => {
                e.perm &= u16::try_from((mode >> 6) & 7).unwrap_or(0);
                mode &= (u32::from(e.perm) << 6) | !0o700;
            }
            ACL_USER | ACL_GROUP => equiv = false,
            ACL_GROUP_OBJ => group_obj = Some(i),
            ACL_OTHER => {
                e.perm &= u16::try_from(mode & 7).unwrap_or(0);
                mode &= u32::from(e.perm) | !0o007;
            }
            ACL_MASK => {
                mask = Some(i);
                equiv = false;
            }
            _ => {}
        }
    }
    if let Some(i) = mask.or(group_obj) {
        if let Some(e) = entries.get_mut(i) {
            e.perm &= u16::try_from((mode >> 3) & 7).unwrap_or(0);
            mode &= (u32::from(e.perm) << 3) | !0o070;
        }
    }
    (mode & 0o777, !equiv)
}

#[cfg(test)]
// Tests may index freely: a panic there is a failing test.
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_decode_are_inverse() {
        let entries = [
            AclEntry { tag: ACL_USER_OBJ, perm: 6, id: ACL_UNDEFINED_ID },
            AclEntry { tag: ACL_USER, perm: 4, id: 1000 },
            AclEntry { tag: ACL_GROUP_OBJ, perm: 4, id: ACL_UNDEFINED_ID },
            AclEntry { tag: ACL_MASK, perm: 4, id: ACL_UNDEFINED_ID },
            AclEntry { tag: ACL_OTHER, perm: 0, id: ACL_UNDEFINED_ID },
        ];
        let value = encode(&entries);
        assert_eq!(value.len(), 4 + 5 * 8);
        assert_eq!(decode(&value).unwrap(), entries);
        assert_eq!(validate(&entries), Ok(()));
        assert!(validate(&entries[..3]).is_err(), "no OTHER entry");
        assert!(validate(&[entries[0], entries[1], entries[2], entries[4]]).is_err(), "named entry without a mask");
        assert!(decode(&value[..11]).is_err());
        assert_eq!(decode(&value[..4]).unwrap(), Vec::new());
    }
}
