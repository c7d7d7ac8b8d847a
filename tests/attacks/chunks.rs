//! Chunk maps that lie: a stripe on top of another chunk's stripe, a stripe past the end
//! of its device, dev extents that disagree with the chunks. Open refuses them with a
//! `corrupt` error naming both chunks, before any command reads or repairs through them.
//! (On e7a4f9a a data chunk whose second stripe lay on a metadata stripe was accepted,
//! and `scrub --repair` "corrected" 7680 sectors by writing over live metadata.)

use std::path::PathBuf;

use btrs::format::{BLOCK_GROUP_DATA, BLOCK_GROUP_METADATA, CHUNK_ITEM_KEY, CHUNK_TREE_OBJECTID, DEV_EXTENT_KEY, DEV_TREE_OBJECTID};

use crate::util::*;

/// (logical, stripe offsets) of the first chunk with type bits `kind`.
fn chunk_of(imgs: &[PathBuf], kind: u64) -> (u64, Vec<(u64, u64)>) {
    let opts = btrs::volumes::OpenOptions { image: imgs[0].clone(), devices: imgs.to_vec(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let e = fs.volume().chunks.entries().into_iter().find(|e| e.chunk.chunk_type & kind != 0).unwrap();
    (e.logical, e.chunk.stripes.iter().map(|s| (s.devid, s.offset)).collect())
}

/// Every command that opens the set fails with a corrupt error containing `words`,
/// and no image changes.
fn all_refuse(imgs: &[PathBuf], words: &[&str]) {
    let before = fingerprints(imgs);
    let img = s(&imgs[0]);
    let dest = imgs[0].parent().unwrap().join("out");
    let src = imgs[0].parent().unwrap().join("x.bin");
    std::fs::write(&src, b"x").unwrap();
    for args in [
        vec!["ls", img, "/"],
        vec!["cat", img, "/f"],
        vec!["extract", img, "/", s(&dest)],
        vec!["scrub", img],
        vec!["scrub", img, "--repair"],
        vec!["write", img, "/g", "--from", s(&src)],
        vec!["dump-tree", img],
    ] {
        let err = fails(&args, 1);
        assert!(err.contains("corrupt"), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: error does not name {w:?}: {err}");
        }
        assert_eq!(fingerprints(imgs), before, "{args:?} changed an image");
    }
    assert!(!dest.exists() || std::fs::read_dir(&dest).unwrap().next().is_none());
}

fn pair(dir: &std::path::Path) -> Vec<PathBuf> {
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    let src = dir.join("f.bin");
    std::fs::write(&src, pseudo(300_000, 1)).unwrap();
    ok(&["write", s(&imgs[0]), "/f", "--from", s(&src)]);
    imgs
}

#[test]
fn data_stripe_on_top_of_a_metadata_stripe_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = pair(tmp.path());
    let (data, _) = chunk_of(&imgs, BLOCK_GROUP_DATA);
    let (meta, mstripes) = chunk_of(&imgs, BLOCK_GROUP_METADATA);
    let on_dev2 = mstripes.iter().find(|(d, _)| *d == 2).unwrap().1;
    patch_item(
        &imgs,
        CHUNK_TREE_OBJECTID,
        |k, _| k.item_type == CHUNK_ITEM_KEY && k.offset == data,
        |b, r| {
            // Stripe 1 (devid 2): chunk header 48 bytes, stripe 32 bytes, offset after devid.
            let at = r.start + 48 + 32 + 8;
            b[at..at + 8].copy_from_slice(&on_dev2.to_le_bytes());
        },
    );
    all_refuse(&imgs, &[&format!("chunk {meta}"), &data.to_string()]);
}

#[test]
fn stripe_past_the_device_end_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = pair(tmp.path());
    let (data, _) = chunk_of(&imgs, BLOCK_GROUP_DATA);
    patch_item(
        &imgs,
        CHUNK_TREE_OBJECTID,
        |k, _| k.item_type == CHUNK_ITEM_KEY && k.offset == data,
        |b, r| {
            let at = r.start + 48 + 32 + 8;
            b[at..at + 8].copy_from_slice(&(120u64 << 20).to_le_bytes());
        },
    );
    all_refuse(&imgs, &["past the device"]);
}

#[test]
fn dev_extent_over_another_chunks_stripe_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = pair(tmp.path());
    // The first dev extent of devid 1 claims 1 TiB: it reaches over the next chunk's stripe.
    let key = patch_item(
        &imgs,
        DEV_TREE_OBJECTID,
        |k, _| k.item_type == DEV_EXTENT_KEY && k.objectid == 1,
        |b, r| {
            // struct btrfs_dev_extent: chunk_tree, chunk_objectid, chunk_offset, length.
            let at = r.start + 24;
            b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        },
    );
    all_refuse(&imgs, &["dev extent", &format!("at {}", key.offset), "overlaps"]);
}

/// The superblock's copy of the system chunks (what the kernel maps the chunk tree
/// with, and what every commit writes back) must be the chunk tree's. A primary
/// superblock whose system stripe was moved onto the metadata stripe, resealed, was
/// taken without a word on fa2b09d, scrub found nothing, and the next write copied it
/// into every superblock (an attacker's pass).
#[test]
fn a_sys_chunk_array_that_differs_from_the_chunk_tree_is_refused() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let imgs = pair(tmp.path());
    let (_, meta) = chunk_of(&imgs, btrs::format::BLOCK_GROUP_METADATA);
    let (_, sys) = chunk_of(&imgs, btrs::format::BLOCK_GROUP_SYSTEM);
    for img in &imgs {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
        let mut sb = vec![0u8; 4096];
        f.read_exact_at(&mut sb, 65536).unwrap();
        // sys_chunk_array at 0x32b: key (17 bytes), chunk (48), stripe 0: devid (8), offset.
        let at = 0x32b + 17 + 48 + 8;
        assert_eq!(u64::from_le_bytes(sb[at..at + 8].try_into().unwrap()), sys[0].1, "not the system chunk's stripe");
        let devid = u64::from_le_bytes(sb[at - 8..at].try_into().unwrap());
        let onto = meta.iter().find(|m| m.0 == devid).unwrap().1;
        sb[at..at + 8].copy_from_slice(&onto.to_le_bytes());
        reseal(btrs::format::CsumType::Crc32c, &mut sb);
        f.write_all_at(&sb, 65536).unwrap();
    }
    all_refuse(&imgs, &["sys_chunk_array", "differs from the chunk tree"]);
}

/// The other way round: a chunk-tree copy of the system chunk whose sub_stripes
/// differs (0 on a DUP chunk, which no read or write looks at) maps the same bytes,
/// and is taken. `btrfs-image -r` leaves exactly this when its chunk-tree fixup
/// runs before it has read the superblock (a race in its restore threads): CI's
/// restore of btrfs-progs' fsck-tests/064 image came out so, btrfs check accepted
/// it, and btrs refused every command on it.
#[test]
fn a_chunk_tree_copy_differing_only_in_unused_fields_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 1, "128M", "dup", &[]);
    let data = pseudo(200_000, 3);
    write_file(tmp.path(), &imgs[0], "/f", &data, &[]);
    let (sys, _) = chunk_of(&imgs, btrs::format::BLOCK_GROUP_SYSTEM);
    patch_item(
        &imgs,
        CHUNK_TREE_OBJECTID,
        |k, _| k.item_type == CHUNK_ITEM_KEY && k.offset == sys,
        |b, r| {
            // struct btrfs_chunk: ... num_stripes (u16) at 44, sub_stripes (u16) at 46.
            let at = r.start + 46;
            assert_eq!(u16::from_le_bytes([b[at], b[at + 1]]), 1, "not the chunk's sub_stripes");
            b[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
            // io_align and io_width (at 32, 36) steer nothing either.
            b[r.start + 32..r.start + 40].copy_from_slice(&[0, 16, 0, 0, 0, 16, 0, 0]);
        },
    );
    progs_check("a_chunk_tree_copy_differing_only_in_unused_fields_is_taken", &imgs, &[]);
    let img = s(&imgs[0]);
    assert_eq!(ok(&["cat", img, "/f"]), data);
    let out = String::from_utf8(ok(&["scrub", img, "--readonly", "--no-progress"])).unwrap();
    assert!(out.contains("no errors"), "{out}");
    let more = pseudo(100_000, 4);
    write_file(tmp.path(), &imgs[0], "/g", &more, &[]);
    assert_eq!(ok(&["cat", img, "/g"]), more);
    assert_eq!(ok(&["cat", img, "/f"]), data);
    progs_check("a_chunk_tree_copy_differing_only_in_unused_fields_is_taken", &imgs, &[]);
}

/// A device of another filesystem made with the same `-U` put in a set: its devid is
/// one the chunk tree knows, so it was taken as that device. Made by mkfs.btrfs, open
/// failed on "dev extent overlaps" or "sys_chunk_array differs" naming one image; made
/// by `btrs mkfs -U` (which derived every device uuid from the fsid), it was taken
/// whole and `cat` served the other filesystem's bytes with exit 0 (an attacker's
/// pass). Now device uuids are random unless SOURCE_DATE_EPOCH asks for a
/// reproducible image, and open names both images and the device uuids that differ,
/// whichever of the two filesystems made more commits; every command refuses the set
/// without touching it; with the image moved away, `--degraded` reads.
#[test]
fn a_device_of_another_filesystem_with_the_same_uuid_is_named() {
    let test = "a_device_of_another_filesystem_with_the_same_uuid_is_named";
    if !crate::common::interop::progs_for(test, false) {
        return;
    }
    let uuid = "11111111-2222-3333-4444-555555555555";
    for maker in ["btrs", "mkfs.btrfs"] {
        for theirs_newer in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let imgs = mkfs(dir, 2, "128M", "raid1", &["-U", uuid]);
            write_file(dir, &imgs[0], "/f", b"ours\n", &[]);
            let other = dir.join("other");
            std::fs::create_dir_all(&other).unwrap();
            let theirs: Vec<PathBuf> = (1..=2).map(|i| other.join(format!("dev{i}.img"))).collect();
            for p in &theirs {
                std::fs::File::create(p).unwrap().set_len(128 << 20).unwrap();
            }
            if maker == "btrs" {
                ok(&["mkfs", "-f", "-U", uuid, "-d", "raid1", "-m", "raid1", s(&theirs[0]), s(&theirs[1])]);
            } else {
                crate::common::interop::must(
                    std::process::Command::new("mkfs.btrfs").args(["-q", "-f", "-U", uuid, "-d", "raid1", "-m", "raid1"]).args(&theirs),
                );
            }
            let commits = if theirs_newer { 8 } else { 0 };
            for i in 0..commits {
                ok(&["mkdir", s(&theirs[0]), &format!("/d{i}")]);
            }
            write_file(&other, &theirs[0], "/f", b"theirs\n", &[]);
            std::fs::copy(&theirs[1], &imgs[1]).unwrap();
            let before = fingerprints(&imgs);
            for args in [
                &["ls", s(&imgs[0]), "/"][..],
                &["cat", s(&imgs[0]), "/f"],
                &["scrub", s(&imgs[0]), "--repair"],
                &["mkdir", s(&imgs[0]), "/d"],
            ] {
                let (code, out, err) = btrs(args);
                assert_eq!(
                    code,
                    1,
                    "{maker}, theirs newer {theirs_newer}: {args:?} exit {code}, out {:?}: {err}",
                    String::from_utf8_lossy(&out)
                );
                assert!(
                    err.contains("device uuid") && err.contains("same UUID") && err.contains("dev1.img") && err.contains("dev2.img"),
                    "{maker}, theirs newer {theirs_newer}: {args:?}: the error does not name the images and what differs: {err}"
                );
            }
            assert_eq!(fingerprints(&imgs), before, "{maker}: a command wrote to the mixed set");
            std::fs::rename(&imgs[1], other.join("foreign.img")).unwrap();
            assert_eq!(ok(&["--degraded", "cat", s(&imgs[0]), "/f"]), b"ours\n");
        }
    }
}

/// Two filesystems made with the same `-U` and SOURCE_DATE_EPOCH (so with the same
/// device uuids too) but different checksum types, one device of each put together.
/// The other's tree blocks failed this one's checksums as if damaged, so the set
/// opened, and `scrub --repair` wrote the other filesystem's blocks over the only
/// good copies, exit 0 (an attacker's pass on ca23275). Devices must agree on what
/// no commit changes (checksum type, node, sector and stripe size, metadata uuid);
/// either way round, every command refuses naming both images.
#[test]
fn a_device_of_another_filesystem_with_another_checksum_is_refused() {
    for (ours, theirs) in [("crc32c", "xxhash"), ("xxhash", "crc32c")] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("big"), pseudo(200_000, 5)).unwrap();
        let make = |sub: &str, csum: &str| -> Vec<PathBuf> {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
            let out = std::process::Command::new(BIN)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args([
                    "mkfs",
                    "-f",
                    "-U",
                    "11111111-2222-3333-4444-555555555555",
                    "-d",
                    "raid1",
                    "-m",
                    "raid1",
                    "-b",
                    "128M",
                    "--csum",
                    csum,
                    "-r",
                ])
                .arg(&src)
                .args(&imgs)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            imgs
        };
        let imgs = make("x", ours);
        let other = make("y", theirs);
        std::fs::copy(&other[1], &imgs[1]).unwrap();
        let before = fingerprints(&imgs);
        for img in &imgs {
            for args in [
                &["ls", s(img), "/"][..],
                &["cat", s(img), "/big"],
                &["scrub", s(img)],
                &["scrub", s(img), "--repair"],
                &["mkdir", s(img), "/d"],
            ] {
                let (code, _, err) = btrs(args);
                assert_eq!(code, 1, "{ours} set with a {theirs} device: {args:?}: {err}");
                assert!(
                    err.contains("checksum type") && err.contains("dev1.img") && err.contains("dev2.img") && err.contains("same UUID"),
                    "{args:?}: the error does not name both images and what differs: {err}"
                );
            }
        }
        assert_eq!(fingerprints(&imgs), before, "a command wrote to the mixed set");
        std::fs::rename(&imgs[1], dir.join("foreign.img")).unwrap();
        assert_eq!(ok(&["--degraded", "cat", s(&imgs[0]), "/big"]), pseudo(200_000, 5));
    }
}
