//! Hard links past the INODE_REF item: once one directory's names of one
//! inode fill a leaf item (about 325 names of 40 bytes on 16 KiB nodes, 79
//! on 4 KiB), the kernel keeps the next ones in INODE_EXTREF items keyed by
//! a hash of (directory, name). btrs `ln`, `rm` and `mv` add, find and
//! remove names in both kinds of item, on images it made and on images the
//! kernel filled; `btrfs check`, btrs and the kernel see the same names and
//! link counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::util::*;

fn name(i: usize) -> String {
    format!("a-rather-long-hard-link-name-number-{i:04}")
}

/// Directory -> names, as they should be listed.
type Names = BTreeMap<String, BTreeSet<String>>;

fn listed(img: &Path, dir: &str) -> BTreeSet<String> {
    String::from_utf8(ok(&["ls", s(img), dir])).unwrap().lines().map(str::to_string).collect()
}

/// Link count of a file, from `btrs ls -l` of its directory.
fn links(img: &Path, dir: &str, file: &str) -> u64 {
    let out = String::from_utf8(ok(&["ls", "-l", s(img), dir])).unwrap();
    let line = out.lines().find(|l| l.ends_with(&format!(" {file}"))).unwrap_or_else(|| panic!("{file} not in {dir}: {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn count(dump: &str, what: &str) -> usize {
    dump.lines().filter(|l| l.contains(&format!(" {what} "))).count()
}

/// btrs and `btrfs check` agree with the model of names, and `f` has `nlink` links.
fn judge_names(test: &str, imgs: &[PathBuf], names: &Names, nlink: u64) {
    progs_check(test, imgs, &[]);
    for (dir, want) in names {
        assert_eq!(&listed(&imgs[0], dir), want, "{test}: names in {dir}");
    }
    assert_eq!(links(&imgs[0], "/", "f"), nlink, "{test}: link count of /f");
}

/// 600 links of /f in /d (by btrs or by the kernel before), then btrs removes
/// half, moves some to /e and some over existing names, renames some in place.
fn btrs_edits(test: &str, img: &Path, names: &mut Names, n: usize) -> u64 {
    // Half of them go, from the INODE_REF item and from extrefs alike.
    let gone: Vec<String> = (0..n).step_by(2).map(|i| format!("/d/{}", name(i))).collect();
    for batch in gone.chunks(50) {
        let mut args = vec!["rm", s(img)];
        args.extend(batch.iter().map(String::as_str));
        ok(&args);
    }
    for p in &gone {
        names.get_mut("/d").unwrap().remove(&p[3..]);
    }
    // Some move to /e (extref names and ref names), some are renamed in /d.
    for i in (1..n).step_by(10) {
        ok(&["mv", s(img), &format!("/d/{}", name(i)), &format!("/e/moved-{i}")]);
        names.get_mut("/d").unwrap().remove(&name(i));
        names.get_mut("/e").unwrap().insert(format!("moved-{i}"));
    }
    for i in (3..n).step_by(20) {
        ok(&["mv", s(img), &format!("/d/{}", name(i)), &format!("/d/renamed-{i}")]);
        names.get_mut("/d").unwrap().remove(&name(i));
        names.get_mut("/d").unwrap().insert(format!("renamed-{i}"));
    }
    // Over an existing name of another file: /g loses its only link in /e.
    ok(&["mv", s(img), &format!("/d/{}", name(n - 1)), "/e/g-link"]);
    names.get_mut("/d").unwrap().remove(&name(n - 1));
    // Over another name of the same file: nothing changes (rename(2)).
    ok(&["mv", s(img), &format!("/d/{}", name(n - 3)), &format!("/d/{}", name(n - 5))]);
    // New links after removals reuse room in the INODE_REF item or go to extrefs.
    for i in n..n + 20 {
        ok(&["ln", s(img), "/f", &format!("/d/{}", name(i))]);
        names.get_mut("/d").unwrap().insert(name(i));
    }
    let _ = test;
    // Removed names are the only ones /f lost; it gained the new ones.
    (1 + n - gone.len() + 20) as u64
}

/// `f` with `n` hard links in /d made by `btrs ln`, on a btrs image with `nodesize` nodes.
fn btrs_made(dir: &Path, nodesize: &str, n: usize) -> (Vec<PathBuf>, Names) {
    let imgs = mkfs(dir, 1, "128M", "single", &["-n", nodesize]);
    let img = &imgs[0];
    for f in ["f", "g"] {
        let src = dir.join(f);
        std::fs::write(&src, format!("file {f}\n")).unwrap();
        ok(&["put", s(img), s(&src), &format!("/{f}")]);
    }
    ok(&["mkdir", s(img), "/d"]);
    ok(&["mkdir", s(img), "/e"]);
    ok(&["ln", s(img), "/g", "/e/g-link"]);
    for i in 0..n {
        ok(&["ln", s(img), "/f", &format!("/d/{}", name(i))]);
    }
    let mut names = Names::new();
    names.insert("/".into(), ["f", "g", "d", "e"].map(String::from).into());
    names.insert("/d".into(), (0..n).map(name).collect());
    names.insert("/e".into(), ["g-link".to_string()].into());
    (imgs, names)
}

fn kernel_sees_and_removes(test: &str, dir: &Path, imgs: &[PathBuf], names: &Names, nlink: u64) {
    let mut m = Model::new();
    m.insert("/f".into(), b"file f\n".to_vec());
    let names = names.clone();
    kernel_judge(test, dir, imgs, &mut m, |mnt, _| {
        use std::os::unix::fs::MetadataExt;
        for (d, want) in &names {
            let got: BTreeSet<String> = std::fs::read_dir(mnt.join(d.trim_start_matches('/')))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(&got, want, "{test}: the kernel lists {d}");
        }
        assert_eq!(std::fs::metadata(mnt.join("f")).unwrap().nlink(), nlink, "{test}: the kernel's link count");
        // The kernel finds and removes every name btrs left.
        for d in ["d", "e"] {
            for e in std::fs::read_dir(mnt.join(d)).unwrap() {
                std::fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        assert_eq!(std::fs::metadata(mnt.join("f")).unwrap().nlink(), 1);
    });
    let dump = progs_dump(&imgs[0], "5");
    assert_eq!(count(&dump, "INODE_EXTREF"), 0, "{test}: extrefs left after every link went");
}

#[test]
fn hard_links_past_the_inode_ref_item() {
    let test = "hard_links_past_the_inode_ref_item";
    for (nodesize, n) in [("16384", 600), ("4096", 200)] {
        let tmp = tempfile::tempdir().unwrap();
        let (imgs, mut names) = btrs_made(tmp.path(), nodesize, n);
        let dump = progs_dump(&imgs[0], "5");
        assert!(count(&dump, "INODE_EXTREF") > 10, "{nodesize}: no extrefs made:\n{dump}");
        judge_names(test, &imgs, &names, 1 + n as u64);
        let nlink = btrs_edits(test, &imgs[0], &mut names, n);
        judge_names(test, &imgs, &names, nlink);
        kernel_sees_and_removes(test, tmp.path(), &imgs, &names, nlink);
    }
}

/// The kernel makes the links; btrs removes and renames them.
#[test]
fn extrefs_made_by_the_kernel() {
    let test = "extrefs_made_by_the_kernel";
    if !crate::common::interop::interop_enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 256 << 20, &[]);
    let mnt = tmp.path().join("mnt");
    let n = 600;
    {
        let m = crate::common::interop::Mounted::mount(&mnt, &imgs, "").unwrap();
        std::fs::write(mnt.join("f"), b"file f\n").unwrap();
        std::fs::write(mnt.join("g"), b"file g\n").unwrap();
        std::fs::create_dir(mnt.join("d")).unwrap();
        std::fs::create_dir(mnt.join("e")).unwrap();
        std::fs::hard_link(mnt.join("g"), mnt.join("e/g-link")).unwrap();
        for i in 0..n {
            std::fs::hard_link(mnt.join("f"), mnt.join("d").join(name(i))).unwrap();
        }
        m.unmount().unwrap();
    }
    let mut names = Names::new();
    names.insert("/".into(), ["f", "g", "d", "e"].map(String::from).into());
    names.insert("/d".into(), (0..n).map(name).collect());
    names.insert("/e".into(), ["g-link".to_string()].into());
    assert!(count(&progs_dump(&imgs[0], "5"), "INODE_EXTREF") > 10, "the kernel made no extrefs");
    judge_names(test, &imgs, &names, 1 + n as u64);
    let nlink = btrs_edits(test, &imgs[0], &mut names, n);
    judge_names(test, &imgs, &names, nlink);
    kernel_sees_and_removes(test, tmp.path(), &imgs, &names, nlink);
}

/// A filesystem made without the extref feature gets it when btrs first
/// needs an extref (the kernel lists it among the features that may be
/// turned on while mounted); the kernel then mounts it with the links.
#[test]
fn extref_feature_is_turned_on_when_first_needed() {
    let test = "extref_feature_is_turned_on_when_first_needed";
    if !crate::common::interop::progs_for(test, false) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let imgs = mkfs_progs(tmp.path(), 256 << 20, &["-O", "^extref"]);
    let img = &imgs[0];
    let flags = || String::from_utf8(ok(&["dump-super", s(img)])).unwrap();
    assert!(!flags().contains("EXTENDED_IREF"), "{}", flags());
    let src = tmp.path().join("f");
    std::fs::write(&src, b"file f\n").unwrap();
    ok(&["put", s(img), s(&src), "/f"]);
    ok(&["mkdir", s(img), "/d"]);
    let n = 400;
    for i in 0..n {
        ok(&["ln", s(img), "/f", &format!("/d/{}", name(i))]);
    }
    assert!(flags().contains("EXTENDED_IREF"), "{}", flags());
    let mut names = Names::new();
    names.insert("/d".into(), (0..n).map(name).collect());
    names.insert("/e".into(), BTreeSet::new());
    names.insert("/".into(), ["f", "d"].map(String::from).into());
    progs_check(test, &imgs, &[]);
    assert_eq!(links(img, "/", "f"), 1 + n as u64);
    ok(&["mkdir", s(img), "/e"]);
    names.get_mut("/").unwrap().insert("e".into());
    kernel_sees_and_removes(test, tmp.path(), &imgs, &names, 1 + n as u64);
}
