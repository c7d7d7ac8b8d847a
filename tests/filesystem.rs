//! `btrs filesystem show` against `btrfs filesystem show` of the same
//! unmounted image, and `btrs filesystem df` against `btrfs filesystem df`
//! of a kernel mount (its GlobalReserve line aside), on btrs-made,
//! mkfs.btrfs-made and multi-device filesystems.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::interop::{interop_enabled, must, progs_for, Mounted};
use common::{btrs, ok, s};

fn kernel_df(imgs: &[PathBuf], mnt: &Path) -> String {
    let m = Mounted::mount(mnt, imgs, "ro").unwrap();
    let df = must(Command::new("btrfs").args(["filesystem", "df"]).arg(mnt));
    let raw = must(Command::new("btrfs").args(["filesystem", "df", "--raw"]).arg(mnt));
    m.unmount().unwrap();
    let drop_reserve = |t: &str| t.lines().filter(|l| !l.starts_with("GlobalReserve")).map(|l| format!("{l}\n")).collect::<String>();
    format!("{}{}", drop_reserve(&df), drop_reserve(&raw))
}

/// `btrfs filesystem usage` (and --raw) of a read-only mount, the two
/// lines only the running kernel knows dropped, device names as `DEV`.
fn kernel_usage(imgs: &[PathBuf], mnt: &Path) -> String {
    let m = Mounted::mount(mnt, imgs, "ro").unwrap();
    let u = must(Command::new("btrfs").args(["filesystem", "usage"]).arg(mnt));
    let raw = must(Command::new("btrfs").args(["filesystem", "usage", "--raw"]).arg(mnt));
    m.unmount().unwrap();
    normal_usage(&format!("{u}{raw}"))
}

fn normal_usage(t: &str) -> String {
    t.lines()
        .filter(|l| !l.contains("Free (statfs, df):") && !l.contains("Global reserve:"))
        .map(|l| match l.strip_prefix("   ").and_then(|r| r.split_once('\t')) {
            Some((_, size)) => format!("   DEV\t{size}\n"),
            None => format!("{l}\n"),
        })
        .collect()
}

fn btrs_usage(img: &Path) -> String {
    normal_usage(&format!("{}{}", ok(&["filesystem", "usage", s(img)]), ok(&["fi", "usage", "--raw", s(img)])))
}

fn btrs_df(img: &Path) -> String {
    format!("{}{}", ok(&["filesystem", "df", s(img)]), ok(&["fi", "df", "--raw", s(img)]))
}

#[test]
fn show_and_df_print_what_progs_prints() {
    let test = "show_and_df_print_what_progs_prints";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let one = d.join("one.img");
    ok(&["mkfs", "-b", "300M", "-L", "a label", s(&one)]);
    let src = d.join("src");
    std::fs::write(&src, common::pseudo(5 << 20, 3)).unwrap();
    ok(&["write", s(&one), "/f", "--from", s(&src)]);
    let three: Vec<PathBuf> = (1..=3).map(|i| d.join(format!("m{i}.img"))).collect();
    let mut args = vec!["mkfs", "-b", "300M", "-d", "raid1", "-m", "raid1c3"];
    args.extend(three.iter().map(|p| s(p)));
    ok(&args);
    ok(&["write", s(&three[0]), "/f", "--from", s(&src)]);

    // What btrs reads, before any judge: bytes and shapes.
    let j: serde_json::Value = serde_json::from_str(&ok(&["filesystem", "show", "--json", s(&three[0])])).unwrap();
    assert_eq!(j["total_devices"], 3);
    assert_eq!(j["devices"].as_array().unwrap().len(), 3);
    assert_eq!(j["missing"], false);
    let rows: serde_json::Value = serde_json::from_str(&ok(&["filesystem", "df", "--json", s(&three[0])])).unwrap();
    let data = rows.as_array().unwrap().iter().find(|r| r["kind"] == "Data").unwrap();
    assert_eq!(data["profile"], "RAID1");
    assert_eq!(data["used"], 5 << 20, "the file's 5 MiB, counted once (logical)");
    // A missing device is named as progs names it.
    let lone = d.join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(&three[0], lone.join("m1.img")).unwrap();
    std::fs::copy(&three[1], lone.join("m2.img")).unwrap();
    let shown = ok(&["--degraded", "fi", "show", s(&lone.join("m1.img"))]);
    assert!(shown.contains("\t*** Some devices missing\n") && !shown.contains("devid    3"), "{shown}");

    if !progs_for(test, false) {
        return;
    }
    // progs reads a single unmounted image itself (it crashes on this
    // machine's multi-image sets: progs 6.2 scans loop devices).
    let mkfs_made = d.join("progs.img");
    std::fs::write(&mkfs_made, b"").unwrap();
    std::fs::File::options().write(true).open(&mkfs_made).unwrap().set_len(300 << 20).unwrap();
    must(Command::new("mkfs.btrfs").args(["-q", "-f", "-L", "made by progs"]).arg(&mkfs_made));
    for img in [&one, &mkfs_made] {
        let progs = must(Command::new("btrfs").args(["filesystem", "show"]).arg(img));
        assert_eq!(ok(&["filesystem", "show", s(img)]), progs, "show of {}", img.display());
        let progs = must(Command::new("btrfs").args(["filesystem", "show", "--raw"]).arg(img));
        assert_eq!(ok(&["fi", "show", "--raw", s(img)]), progs, "show --raw of {}", img.display());
    }
    if !interop_enabled(test) {
        return;
    }
    let mnt = d.join("mnt");
    for set in [vec![one.clone()], vec![mkfs_made.clone()], three.clone()] {
        let want = kernel_df(&set, &mnt);
        assert_eq!(btrs_df(&set[0]), want, "df of {}", set[0].display());
        let want = kernel_usage(&set, &mnt);
        assert_eq!(btrs_usage(&set[0]), want, "usage of {}", set[0].display());
    }
}

#[test]
fn filesystem_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let junk = d.join("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let (c, _, err) = btrs(&["fi", "show", s(&junk)]);
    assert_eq!(c, 1, "{err}");
    assert!(err.contains("junk.img"), "{err}");
    let (c, _, err) = btrs(&["fi", "frob", s(&junk)]);
    assert_eq!(c, 2, "{err}");
    let (c, _, err) = btrs(&["filesystem", "df"]);
    assert_eq!(c, 2, "{err}");
}
