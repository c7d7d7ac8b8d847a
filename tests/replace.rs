//! `btrs replace`: a missing device rebuilt onto a new image file, judged by
//! btrfs check, btrs scrub (identical mirrors) and the kernel (mounted
//! without `degraded`, read, written, scrubbed), on sets made by btrs and by
//! mkfs.btrfs; and every refusal leaves the images as they were.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::interop::{btrfs_check, interop_enabled, progs_for};
use common::interop::{root_for, Tmpfs};
use common::{btrs, ok, pseudo, reads_back, s, scrubs_clean};

/// The files a set holds: (path in the image, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Write checksummed, NODATASUM, small (inline) and directory content.
fn fill(dir: &Path, img: &Path) -> Files {
    let mut files = Vec::new();
    for (i, (path, len, extra)) in
        [("/big", 3_000_000usize, &[][..]), ("/nosum", 1_200_000, &["--nodatasum"][..]), ("/d/small", 300, &["-p"][..])].iter().enumerate()
    {
        let data = pseudo(*len, i as u64 + 1);
        let src = dir.join(format!("src{i}"));
        std::fs::write(&src, &data).unwrap();
        let mut args = vec!["write", s(img), path, "--from", s(&src)];
        args.extend_from_slice(extra);
        ok(&args);
        files.push((path.to_string(), data));
    }
    files
}

fn fingerprint(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// `n` images of a `profile` set made by btrs (256 MiB each), filled; then
/// the image of devid `gone` moved to `dir/lost`. Returns the images (the
/// moved one at its old path, now absent) and the files.
fn set_losing(dir: &Path, n: usize, profile: &str, gone: usize) -> (Vec<PathBuf>, Files) {
    let imgs: Vec<PathBuf> = (1..=n).map(|i| dir.join(format!("dev{i}.img"))).collect();
    let mut args = vec!["mkfs", "-f", "-b", "256M", "-d", profile, "-m", profile];
    args.extend(imgs.iter().map(|p| s(p)));
    ok(&args);
    let files = fill(dir, &imgs[0]);
    let lost = dir.join("lost");
    std::fs::create_dir_all(&lost).unwrap();
    std::fs::rename(&imgs[gone - 1], lost.join(format!("dev{gone}.img"))).unwrap();
    (imgs, files)
}

/// A RAID1 pair made by btrs loses devid 2; replace rebuilds it onto a new
/// image: check-clean, scrub-clean, same bytes, and the kernel mounts it
/// without `degraded`, reads it, writes more, scrubs clean and balances;
/// btrs reads the result.
#[test]
fn a_lost_raid1_mirror_is_rebuilt_and_the_kernel_mounts_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (imgs, files) = set_losing(d, 2, "raid1", 2);
    let lost = d.join("lost");
    let new = d.join("new2.img");
    let out = ok(&["replace", s(&imgs[0]), "2", s(&new)]);
    assert!(out.contains("rebuilt devid 2"), "{out}");
    // The same size and device uuid as the lost image.
    assert_eq!(std::fs::metadata(&new).unwrap().len(), std::fs::metadata(lost.join("dev2.img")).unwrap().len());
    let uuid = |p: &Path| {
        let mut sb = vec![0u8; 4096];
        std::fs::File::open(p).unwrap().read_exact_at(&mut sb, 65536).unwrap();
        (sb[0xc9..0xc9 + 8].to_vec(), sb[0xc9 + 66..0xc9 + 82].to_vec())
    };
    assert_eq!(uuid(&new), uuid(&lost.join("dev2.img")), "devid and device uuid of the replaced device");
    let set = vec![imgs[0].clone(), new.clone()];
    if progs_for("a_lost_raid1_mirror_is_rebuilt_and_the_kernel_mounts_it_whole", true) {
        btrfs_check(&set, &[]).unwrap_or_else(|e| panic!("btrfs check after replace: {e}"));
    }
    scrubs_clean(&imgs[0], "after replace");
    reads_back(&imgs[0], &files, &[], "after replace");
    // Each copy alone holds everything: read with only the new image.
    std::fs::rename(&imgs[0], lost.join("dev1.img")).unwrap();
    let (c, _, err) = btrs(&["cat", "--degraded", s(&new), "/big"]);
    assert_eq!(c, 0, "the new image alone: {err}");
    std::fs::rename(lost.join("dev1.img"), &imgs[0]).unwrap();
    // The kernel mounts it without `degraded`, reads, writes, scrubs and
    // runs a full balance; btrs reads the result.
    common::judged("a_lost_raid1_mirror_is_rebuilt_and_the_kernel_mounts_it_whole", &set, &files, "after replace");
}

/// A three-device RAID1C3 set made by mkfs.btrfs and written by btrs loses
/// devid 3 (named by --device for the rest of the set).
#[test]
fn a_mkfs_btrfs_raid1c3_set_gets_its_third_device_back() {
    let test = "a_mkfs_btrfs_raid1c3_set_gets_its_third_device_back";
    if !progs_for(test, true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs = common::interop::mkfs_btrfs_set(d, "p", 3, "raid1c3");
    let files = fill(d, &imgs[0]);
    let lost = d.join("lost");
    std::fs::create_dir(&lost).unwrap();
    std::fs::rename(&imgs[2], lost.join("p3.img")).unwrap();
    let new = d.join("other-name.img");
    ok(&["replace", s(&imgs[0]), "3", s(&new), "--device", s(&imgs[1])]);
    let set = vec![imgs[0].clone(), imgs[1].clone(), new.clone()];
    btrfs_check(&set, &[]).unwrap_or_else(|e| panic!("btrfs check after replace: {e}"));
    scrubs_clean(&imgs[0], "raid1c3 after replace");
    reads_back(&imgs[0], &files, &[], "raid1c3 after replace");
}

/// Refused before anything is written, naming why, and no image changes:
/// a device that is present, a devid the filesystem does not have, a NEW
/// that exists, chunks with no copy outside the device (SINGLE data on a
/// two-device set), two devices missing.
#[test]
fn replace_refuses_what_it_cannot_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-f", "-b", "256M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    fill(d, &imgs[0]);
    let before: Vec<Vec<u8>> = imgs.iter().map(|p| fingerprint(p)).collect();
    let new = d.join("new.img");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["replace", s(&imgs[0]), "2", s(&new)], 1, "is present"),
        (vec!["replace", s(&imgs[0]), "7", s(&new)], 1, "no devid 7"),
        (vec!["replace", s(&imgs[0]), "0", s(&new)], 2, "0"),
        (vec!["replace", s(&imgs[0]), "2", s(&imgs[1])], 1, "exists"),
    ];
    for (args, code, says) in &cases {
        let (c, _, err) = btrs(args);
        assert_eq!(c, *code, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!new.exists(), "{args:?} left {}", new.display());
    }
    let after: Vec<Vec<u8>> = imgs.iter().map(|p| fingerprint(p)).collect();
    assert!(before == after, "a refused replace changed an image");

    // SINGLE data spread over two devices: what devid 2 held is lost.
    let single: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("s{i}.img"))).collect();
    ok(&["mkfs", "-f", "-b", "256M", "-d", "raid0", "-m", "raid1", s(&single[0]), s(&single[1])]);
    fill(d, &single[0]);
    let aside = d.join("aside");
    std::fs::create_dir(&aside).unwrap();
    std::fs::rename(&single[1], aside.join("s2.img")).unwrap();
    let keep = fingerprint(&single[0]);
    let (c, _, err) = btrs(&["replace", s(&single[0]), "2", s(&new)]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("no copy outside devid 2") && err.to_lowercase().contains("raid0"), "{err}");
    assert!(!new.exists());
    assert!(keep == fingerprint(&single[0]), "a refused replace changed the remaining image");
}

/// A replace whose new image cannot be written (its disk fills up: a 2 MiB
/// tmpfs) fails, removes the partial image, and leaves the set as it was:
/// still readable degraded, and a later replace elsewhere succeeds.
#[test]
fn a_failed_replace_leaves_the_set_as_it_was() {
    if !root_for("a_failed_replace_leaves_the_set_as_it_was", "a small tmpfs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (imgs, files) = set_losing(d, 2, "raid1", 2);
    let keep = fingerprint(&imgs[0]);
    let small = d.join("small");
    let guard = Tmpfs::mount(&small, "2M");
    let new = small.join("new2.img");
    let (c, _, err) = btrs(&["replace", s(&imgs[0]), "2", s(&new), "--no-progress"]);
    assert_eq!(c, 1, "replace onto a full disk: {err}");
    assert!(!err.contains("panicked") && err.contains("new2.img"), "{err}");
    assert!(!new.exists(), "the partial image was left behind");
    drop(guard);
    assert!(keep == fingerprint(&imgs[0]), "a failed replace changed the remaining image");
    let (c, _, e) = btrs(&["cat", "--degraded", s(&imgs[0]), "/big"]);
    assert_eq!(c, 0, "degraded read after a failed replace: {e}");
    let new = d.join("new2.img");
    ok(&["replace", s(&imgs[0]), "2", s(&new), "--no-progress"]);
    scrubs_clean(&imgs[0], "after the second replace");
    reads_back(&imgs[0], &files, &[], "after the second replace");
}

/// Damage on a remaining device that has a good copy elsewhere: replace
/// rebuilds from the good copy, leaves the damaged image byte-identical (it
/// only reads the other images: they are opened read-only) and says so; a
/// sector bad on every copy is counted, not written as good. (Attacker's pass
/// on 44f9fec: replace repaired the remaining image, and counted 0.)
#[test]
fn replace_only_reads_the_other_images_and_counts_what_it_cannot_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-f", "-b", "256M", "-d", "raid1c3", "-m", "raid1c3", s(&imgs[0]), s(&imgs[1]), s(&imgs[2])]);
    let files = fill(d, &imgs[0]);
    // Garbage over the first data sector of /big on devid 1 (devid 2 keeps a good copy).
    let opts = btrs::OpenOptions { image: imgs[0].clone(), devices: imgs.clone(), ..Default::default() };
    let fs = btrs::Filesystem::open(&opts).unwrap();
    let ent = fs.resolve("/big").unwrap();
    let (_, fe) = fs.file_extents(ent.id).unwrap().into_iter().next().unwrap();
    let btrs::format::items::FileExtentKind::Regular { disk_bytenr, .. } = fe.kind else { panic!("not a regular extent") };
    let at = (0..3).map(|m| fs.volume().locate(disk_bytenr, m).unwrap()).find(|p| p.devid == 1).unwrap();
    drop(fs);
    std::fs::OpenOptions::new().write(true).open(&imgs[0]).unwrap().write_all_at(&pseudo(4096, 77), at.physical).unwrap();
    let lost = d.join("lost");
    std::fs::create_dir(&lost).unwrap();
    std::fs::rename(&imgs[2], lost.join("dev3.img")).unwrap();
    let before: Vec<Vec<u8>> = imgs[..2].iter().map(|p| fingerprint(p)).collect();
    let new = d.join("new3.img");
    let (c, out, err) = btrs(&["replace", s(&imgs[0]), "3", s(&new), "--json", "--no-progress"]);
    assert_eq!(c, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["unreadable_sectors"], 0, "{out}");
    assert_eq!(r["other_device_findings"], 1, "{out}");
    assert!(err.contains("left as they are"), "{err}");
    let after: Vec<Vec<u8>> = imgs[..2].iter().map(|p| fingerprint(p)).collect();
    assert!(before == after, "replace wrote to an image it should only read");
    reads_back(&imgs[0], &files, &[], "after replace beside a damaged copy");
    // The new image holds the good copy: with devid 1 away, /big reads from 2 and 3.
    std::fs::rename(&imgs[0], lost.join("dev1.img")).unwrap();
    let out = common::btrs_cmd().args(["--degraded", "cat", s(&imgs[1]), "/big"]).output().unwrap();
    assert!(out.status.success() && out.stdout == files[0].1, "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(lost.join("dev1.img"), &imgs[0]).unwrap();

    // Now also devid 2's copy bad: no good copy anywhere once devid 3 is gone again.
    std::fs::rename(&new, lost.join("new3.img")).unwrap();
    let fs = btrs::Filesystem::open(&btrs::OpenOptions { image: imgs[0].clone(), degraded: true, ..Default::default() }).unwrap();
    let at2 = (0..3).filter_map(|m| fs.volume().locate(disk_bytenr, m).ok()).find(|p| p.devid == 2).unwrap();
    drop(fs);
    std::fs::OpenOptions::new().write(true).open(&imgs[1]).unwrap().write_all_at(&pseudo(4096, 78), at2.physical).unwrap();
    let new = d.join("again3.img");
    let (c, out, err) = btrs(&["replace", s(&imgs[0]), "3", s(&new), "--json", "--no-progress"]);
    assert_eq!(c, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["unreadable_sectors"], 1, "{out}");
}

/// A replace that finished leaves its image beside the set; a second replace
/// of the same devid is then refused, naming it (attacker's pass on 44f9fec:
/// two replaces at once both succeeded, and nothing opened the set after).
#[test]
fn a_second_replace_of_the_same_device_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (imgs, _) = set_losing(d, 2, "raid1", 2);
    let a = d.join("a.img");
    // As if two ran at once: the second opened the set while the first
    // was still rebuilding (its image had no signature yet), then waited for
    // the lock; it must still see the first's image once it gets in.
    ok(&["replace", s(&imgs[0]), "2", s(&a), "--no-progress"]);
    let before = (fingerprint(&imgs[0]), fingerprint(&a));
    let b = d.join("b.img");
    let (c, _, err) = btrs(&["replace", "--device", s(&imgs[0]), s(&imgs[0]), "2", s(&b), "--no-progress"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("is present") || err.contains("already is devid 2"), "{err}");
    assert!(!b.exists());
    assert!(before == (fingerprint(&imgs[0]), fingerprint(&a)));
    ok(&["ls", s(&imgs[0]), "/"]);
}

/// Make devid 2 of a set stale: a copy of its image taken now is put back
/// after `more` has written to the set.
fn staled(d: &Path, img2: &Path, more: impl FnOnce()) {
    // Out of the set's directory meanwhile: beside it, it would be a
    // second devid 2.
    std::fs::create_dir_all(d.join("aside")).unwrap();
    let old = d.join("aside").join("stale-copy");
    std::fs::copy(img2, &old).unwrap();
    more();
    std::fs::rename(&old, img2).unwrap();
}

/// Replace over a stale image of the device: the new image is built
/// without it, the stale image's superblocks are wiped (nothing takes it
/// for a device of the set again), and the set is judged whole.
fn supersede(test: &str, first: &Path, stale: &Path, new: &Path, files: &Files) {
    let (c, out, err) = btrs(&["scrub", s(first), "--no-progress"]);
    assert!(c != 0 && (out.contains("stale") || err.contains("stale")), "devid 2 must read as stale first: {out}{err}");
    // A generation cannot tell an older copy from another history: without
    // --wipe-stale it is refused, nothing written.
    let before = (fingerprint(first), fingerprint(stale));
    let (c, _, err) = btrs(&["replace", s(first), "2", s(new), "--no-progress"]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("--wipe-stale") && err.contains("anything else"), "{err}");
    assert!(!new.exists() && before == (fingerprint(first), fingerprint(stale)), "a refused replace changed something");
    let out = ok(&["replace", s(first), "2", s(new), "--wipe-stale", "--no-progress"]);
    assert!(out.contains("rebuilt devid 2") && out.contains("superblocks were wiped"), "{out}");
    let (c, _, err) = btrs(&["ls", s(stale), "/"]);
    assert!(c != 0, "the superseded image still opens: {err}");
    common::judged(test, &[first.to_path_buf(), new.to_path_buf()], files, "after replacing a stale device");
}

/// A RAID1 pair made by btrs whose devid 2 is an older copy of itself.
#[test]
fn a_stale_mirror_is_superseded_by_a_new_image() {
    let test = "a_stale_mirror_is_superseded_by_a_new_image";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-f", "-b", "256M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let mut files = fill(d, &imgs[0]);
    let later = pseudo(2_500_000, 21);
    staled(d, &imgs[1], || {
        let src = d.join("later");
        std::fs::write(&src, &later).unwrap();
        ok(&["write", s(&imgs[0]), "/later", "--from", s(&src)]);
    });
    files.push(("/later".into(), later));
    supersede(test, &imgs[0], &imgs[1], &d.join("new2.img"), &files);
}

/// A RAID1 pair made by mkfs.btrfs and filled by the kernel (and btrs):
/// devid 2 lost and replaced, then the new image made stale by more
/// kernel writes and replaced again.
#[test]
fn a_kernel_filled_raid1_pair_gets_a_lost_and_a_stale_mirror_back() {
    let test = "a_kernel_filled_raid1_pair_gets_a_lost_and_a_stale_mirror_back";
    if !progs_for(test, true) || !interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs = common::interop::mkfs_btrfs_set(d, "k", 2, "raid1");
    let mut files = vec![common::kernel_writes(d, &imgs, "kernel", 41)];
    files.extend(fill(d, &imgs[0]));
    let lost = d.join("lost");
    std::fs::create_dir(&lost).unwrap();
    std::fs::rename(&imgs[1], lost.join("k2.img")).unwrap();
    let new = d.join("new2.img");
    let out = ok(&["replace", s(&imgs[0]), "2", s(&new), "--no-progress"]);
    assert!(out.contains("rebuilt devid 2") && !out.contains("wiped"), "{out}");
    let set = vec![imgs[0].clone(), new.clone()];
    common::judged(test, &set, &files, "kernel-filled pair after replacing a lost device");
    // What judged's kernel wrote.
    files.push(("/more".into(), pseudo(3_000_000, 77)));
    staled(d, &new, || files.push(common::kernel_writes(d, &set, "kernel2", 42)));
    supersede(test, &imgs[0], &new, &d.join("new3.img"), &files);
}

/// Two images claiming one devid at different generations (what a replace
/// that stopped before wiping the stale image leaves): every command
/// refuses, naming the older image, and nothing is written.
#[test]
fn two_images_of_one_devid_are_named_with_their_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let imgs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("dev{i}.img"))).collect();
    ok(&["mkfs", "-f", "-b", "256M", "-d", "raid1", "-m", "raid1", s(&imgs[0]), s(&imgs[1])]);
    let old = d.join("old2.img");
    let aside = d.join("aside");
    std::fs::create_dir(&aside).unwrap();
    std::fs::copy(&imgs[1], aside.join("old2.img")).unwrap();
    fill(d, &imgs[0]);
    std::fs::rename(aside.join("old2.img"), &old).unwrap();
    let before: Vec<Vec<u8>> = [&imgs[0], &imgs[1], &old].iter().map(|p| fingerprint(p)).collect();
    for args in [vec!["ls", s(&imgs[0]), "/"], vec!["scrub", s(&imgs[0]), "--repair", "--no-progress"], vec!["rm", s(&imgs[0]), "/big"]] {
        let (c, _, err) = btrs(&args);
        assert_eq!(c, 1, "{args:?}: {err}");
        assert!(err.contains("both claim to be devid 2") && err.contains("old2.img is older (generation 1)"), "{args:?}: {err}");
    }
    let after: Vec<Vec<u8>> = [&imgs[0], &imgs[1], &old].iter().map(|p| fingerprint(p)).collect();
    assert!(before == after, "a refused command changed an image");
    // Named apart, the set opens.
    ok(&["ls", s(&imgs[0]), "--device", s(&imgs[1]), "/"]);
}
