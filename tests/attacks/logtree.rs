//! Images with a log tree: what was fsynced after the last commit, which the kernel
//! replays at its next mount. btrs does not replay it: reading commands say that they
//! show the last commit, and writing commands refuse, because the log's blocks (and the
//! data it logged) are in no extent tree: a commit could allocate over them, and the
//! kernel's replay would then read what btrs wrote there. (On aaed467 btrs listed such
//! an image without a word and wrote to it.)

use std::path::{Path, PathBuf};

use zerocopy::{FromBytes, IntoBytes};

use crate::util::*;

/// Point every superblock copy of `img` at a log tree rooted at the root tree's root
/// block (any valid block will do: nothing here reads it) and reseal it.
fn set_log_root(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    for at in [65536u64, 64 << 20] {
        let mut buf = vec![0u8; 4096];
        if f.read_exact_at(&mut buf, at).is_err() {
            continue;
        }
        let mut sb = btrs::format::SuperBlock::read_from_bytes(&buf).unwrap();
        if sb.magic != btrs::format::BTRFS_MAGIC {
            continue;
        }
        sb.log_root = sb.root;
        sb.log_root_level = sb.root_level;
        buf.copy_from_slice(sb.as_bytes());
        reseal(sb.csum_kind().unwrap(), &mut buf);
        f.write_all_at(&buf, at).unwrap();
    }
}

/// The write commands, each against `img` (`src` a host file to put).
fn writers<'a>(img: &'a str, src: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["write", img, "/g", "--from", src],
        vec!["write", img, "/g", "--from", src, "--direct"],
        vec!["mkdir", img, "/d"],
        vec!["rm", img, "/f"],
        vec!["mv", img, "/f", "/f2"],
        vec!["ln", img, "/f", "/f3"],
        vec!["setfattr", img, "/f", "-n", "user.a", "-v", "1"],
        vec!["put", img, src, "/"],
    ]
}

#[test]
fn a_log_tree_is_named_by_readers_and_refused_by_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    write_file(dir, &imgs[0], "/f", b"committed\n", &[]);
    for img in &imgs {
        set_log_root(img);
    }
    let (code, out, err) = btrs(&["cat", s(&imgs[0]), "/f"]);
    assert_eq!((code, out.as_slice()), (0, &b"committed\n"[..]), "{err}");
    assert!(err.contains("log tree") && err.contains("replays"), "cat does not say it shows the last commit only: {err}");
    let src = dir.join("src.bin");
    std::fs::write(&src, pseudo(70_000, 1)).unwrap();
    let before = fingerprints(&imgs);
    for args in writers(s(&imgs[0]), s(&src)) {
        let err = fails(&args, 1);
        assert!(err.contains("log tree") && err.contains("zero-log"), "{args:?}: {err}");
    }
    assert_eq!(fingerprints(&imgs), before, "a writing command wrote to an image with a log tree");
    // Scrub says so too (it said nothing, an attacker's pass on ca23275), in its
    // JSON as well, and finds nothing wrong.
    let (code, out, err) = btrs(&["scrub", s(&imgs[0]), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("log tree"), "scrub does not say the fsynced changes are not scrubbed: {err}");
    let rep: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(rep["warnings"].as_array().is_some_and(|w| w.iter().any(|w| w.as_str().is_some_and(|w| w.contains("log tree")))), "{rep}");
}

/// A log tree on one device's superblock only: the devices of one generation name
/// different trees, two histories. Every command but scrub refuses; scrub --repair repairs nothing; scrub
/// reported the set clean (exit 0) and now reports `two_histories` (exit 3).
#[test]
fn a_log_tree_on_one_device_only_is_two_histories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 2, "128M", "raid1", &[]);
    write_file(dir, &imgs[0], "/f", b"committed\n", &[]);
    set_log_root(&imgs[1]);
    let err = fails(&["ls", s(&imgs[0]), "/"], 1);
    assert!(err.contains("two histories"), "{err}");
    let before = fingerprints(&imgs);
    let (code, out, err) = btrs(&["scrub", s(&imgs[0]), "--json"]);
    assert_eq!(code, 3, "{err}");
    let rep: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let f = rep["findings"].as_array().unwrap();
    assert!(f.iter().any(|f| f["kind"] == "two_histories" && f["repaired"] == false), "{rep}");
    let err = fails(&["scrub", s(&imgs[0]), "--repair"], 3);
    assert!(err.contains("repaired nothing"), "{err}");
    assert_eq!(fingerprints(&imgs), before, "a command wrote to a set of two histories");
}

/// A log tree the kernel wrote (a file fsynced with no commit after it, the image
/// copied before the unmount as a crash would leave it): btrs shows the last commit
/// and says so, refuses to write; the kernel then replays the log, and btrs reads and
/// writes what it committed.
#[test]
fn a_kernel_log_tree_is_left_for_the_kernel_to_replay() {
    let test = "a_kernel_log_tree_is_left_for_the_kernel_to_replay";
    if !crate::common::interop::interop_enabled(test) {
        return;
    }
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs_progs(dir, 256 << 20, &[]);
    let crash = dir.join("crash");
    std::fs::create_dir_all(&crash).unwrap();
    let copy: Vec<PathBuf> = vec![crash.join("progs.img")];
    let logged = pseudo(100_000, 7);
    {
        let mnt = dir.join("mnt");
        let m = crate::common::interop::Mounted::mount(&mnt, &imgs, "commit=600").expect("mount");
        std::fs::write(mnt.join("committed"), b"committed\n").unwrap();
        crate::common::interop::must(std::process::Command::new("sync").arg("-f").arg(mnt.join("committed")));
        let mut f = std::fs::File::create(mnt.join("logged")).unwrap();
        f.write_all(&logged).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::copy(&imgs[0], &copy[0]).unwrap();
        m.unmount().expect("umount");
    }
    let sb = ok(&["dump-super", s(&copy[0])]);
    let sb = String::from_utf8_lossy(&sb);
    let log_root = sb.lines().find(|l| l.starts_with("log_root\t")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("0");
    assert_ne!(log_root, "0", "the kernel committed instead of logging the fsync: no log tree to test\n{sb}");
    progs_check(test, &copy, &[]);
    let (code, out, err) = btrs(&["ls", s(&copy[0]), "/"]);
    let listing = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{err}");
    assert!(listing.lines().any(|l| l == "committed") && !listing.lines().any(|l| l == "logged"), "{listing}");
    assert!(err.contains("log tree"), "ls does not say the fsynced changes are not shown: {err}");
    let src = dir.join("src.bin");
    std::fs::write(&src, pseudo(5000, 2)).unwrap();
    let before = fingerprints(&copy);
    for args in writers(s(&copy[0]), s(&src)) {
        let err = fails(&args, 1);
        assert!(err.contains("zero-log"), "{args:?}: {err}");
    }
    assert_eq!(fingerprints(&copy), before, "a writing command wrote to an image with a log tree");
    // The kernel replays it; then btrs reads what it committed, and writes.
    {
        let mnt = dir.join("mnt2");
        let m = crate::common::interop::Mounted::mount(&mnt, &copy, "").expect("mount the crashed copy");
        assert!(std::fs::read(mnt.join("logged")).unwrap() == logged, "the kernel did not replay the log");
        m.unmount().expect("umount");
    }
    let (code, out, err) = btrs(&["cat", s(&copy[0]), "/logged"]);
    assert!(code == 0 && out == logged, "after the replay: exit {code}: {err}");
    assert!(!err.contains("log tree"), "{err}");
    write_file(&crash, &copy[0], "/after", b"after\n", &[]);
    progs_check(test, &copy, &[]);
}

/// `replace` copies what the extent tree lists; a log tree's blocks are in none,
/// so the new image would lack them (attacker's pass on 44f9fec: exit 0, the
/// new device zeros at the log root). It refuses, naming the log tree, and the
/// remaining image is unchanged.
#[test]
fn replace_refuses_a_set_with_a_log_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs(tmp.path(), 2, "128M", "raid1", &[]);
    ok(&["mkdir", s(&imgs[0]), "/d"]);
    let aside = tmp.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    std::fs::rename(&imgs[1], aside.join("dev2.img")).unwrap();
    set_log_root(&imgs[0]);
    let before = fingerprint(&imgs[0]);
    let new = tmp.path().join("new.img");
    let err = fails(&["replace", s(&imgs[0]), "2", s(&new)], 1);
    assert!(err.contains("log tree"), "{err}");
    assert!(!new.exists());
    assert_eq!(fingerprint(&imgs[0]), before);
}
