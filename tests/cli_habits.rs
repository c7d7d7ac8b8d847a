//! Command lines a btrfs-progs, coreutils or attr user types by habit,
//! each with the exit status it must give and a check of what it prints
//! (issue 19's table). Run in order on one image: some change it. The
//! outputs that progs or the kernel also print are compared with them in
//! their own tests (dump_super, filesystem, subvol, inode_cmds).

mod common;

use common::interop::{btrfs_check, progs_for};
use common::{ok, s, BIN};

/// What a row's output must show.
enum Want {
    /// stdout contains this.
    Out(&'static str),
    /// stdout is exactly this.
    OutIs(&'static str),
    /// stderr contains this.
    Err(&'static str),
    /// Only the exit status.
    Any,
}
use Want::*;

#[test]
fn habits_give_the_exit_status_and_output_users_expect() {
    let test = "habits_give_the_exit_status_and_output_users_expect";
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = d.join("a.img");
    ok(&["mkfs", "-b", "300M", "-L", "habits", s(&img)]);
    let hello = d.join("hello");
    std::fs::write(&hello, b"hello\n").unwrap();
    let big = d.join("big");
    std::fs::write(&big, vec![7u8; 1 << 20]).unwrap();
    ok(&["write", s(&img), "/f1", "--from", s(&hello)]);
    ok(&["write", s(&img), "/big", "--from", s(&big)]);
    ok(&["mkdir", s(&img), "/d"]);
    ok(&["ln", "-s", s(&img), "f1", "/l"]);
    ok(&["setfattr", s(&img), "/f1", "-n", "user.k", "-v", "v"]);
    ok(&["subvolume", "create", s(&img), "/sv"]);
    let junk = d.join("junk.img");
    std::fs::write(&junk, vec![0x5a; 1 << 20]).unwrap();
    let new = d.join("new.img");
    let (i, j, n, h) = (s(&img), s(&junk), s(&new), s(&hello));

    let rows: Vec<(Vec<&str>, i32, Want)> = vec![
        (vec!["--version"], 0, Out("btrs ")),
        (vec!["--help"], 0, Out("Usage: btrs")),
        (vec!["ls", i], 0, OutIs("big\nd\nf1\nl\nsv\n")),
        (vec!["ls", "-U", i], 0, OutIs("f1\nbig\nd\nl\nsv\n")),
        (vec!["ls", "-l", i, "/f1"], 0, Out("-rw-r--r--   1     0     0          6 ")),
        (vec!["ls", "-lh", i, "/big"], 0, Out(" 1.0M ")),
        (vec!["ls", "--help"], 0, Out("--human-readable")),
        (vec!["ls", i, "/missing"], 1, Err("missing")),
        (vec!["ls", i, "/", "extra"], 2, Err("unexpected argument")),
        (vec!["cat", i, "/f1"], 0, OutIs("hello\n")),
        (vec!["cat", i, "/d"], 1, Err("not a regular file")),
        (vec!["stat", i, "/f1"], 0, Out("  Size: 6         \tBlocks: 8          IO Block: 4096   regular file\n")),
        (vec!["stat", "--json", i, "/f1"], 0, Out("\"size\": 6,")),
        (vec!["stat", i, "/f1/"], 1, Err("not a directory")),
        (vec!["readlink", i, "/l"], 0, OutIs("f1\n")),
        (vec!["readlink", i, "/f1"], 1, Err("not a symbolic link")),
        // Each path on its own, as coreutils: the good ones printed, exit 1.
        (vec!["readlink", i, "/f1", "/l"], 1, OutIs("f1\n")),
        (vec!["stat", i, "/missing", "/f1"], 1, Out("  File: /f1\n")),
        (vec!["getfattr", "-d", i, "/f1"], 0, OutIs("# file: f1\nuser.k=\"v\"\n\n")),
        (vec!["getfattr", "-n", "user.k", "-e", "hex", i, "/f1"], 0, OutIs("# file: f1\nuser.k=0x76\n\n")),
        (vec!["getfattr", "--only-values", "-n", "user.k", i, "/f1"], 0, OutIs("v")),
        (vec!["getfattr", "-n", "user.nope", i, "/f1"], 1, Err("user.nope: No such attribute")),
        (vec!["getfattr", "-e", "rot13", i, "/f1"], 2, Err("unknown encoding")),
        (vec!["lsattr", "-d", i, "/f1"], 0, OutIs("---------------------- /f1\n")),
        (vec!["dump-super", i], 0, Out("magic\t\t\t_BHRfS_M [match]\n")),
        (vec!["dump-super", "-f", i], 0, Out("label\t\t\thabits\n")),
        (vec!["dump-super", "-s", "1", i], 0, Out("superblock: bytenr=67108864, device=")),
        (vec!["dump-super", "-a", i], 0, Out("superblock: bytenr=67108864, device=")),
        (vec!["dump-super", "-s", "3", i], 2, Err("0..=2")),
        (vec!["dump-super", "--full", "--all", i], 0, Out("dev_item.devid\t\t1\n")),
        (vec!["dump-super", j], 1, Err("bad magic on superblock")),
        (vec!["dump-super", "--force", j], 0, Out("[DON'T MATCH]")),
        (vec!["dump-tree", "-t", "root", i], 0, Out("root tree")),
        (vec!["dump-tree", "-t", "bogus", i], 2, Err("bogus")),
        (vec!["fi", "show", i], 0, Out("Label: 'habits'  uuid: ")),
        (vec!["filesystem", "show", "--raw", i], 0, Out("\tdevid    1 size 314572800 used ")),
        (vec!["filesystem", "df", i], 0, Out("Data, single: total=")),
        (vec!["fi", "df", "--json", i], 0, Out("\"profile\": \"DUP\"")),
        (vec!["fi", "usage", i], 0, Out("    Data ratio:\t\t\t      1.00\n")),
        (vec!["fi", "frob", i], 2, Err("unrecognized subcommand")),
        (vec!["subvolume", "list", i], 0, Out(" top level 5 path sv\n")),
        (vec!["subvol", "show", i, "/sv"], 0, Out("Name: \t\t\tsv\n")),
        (vec!["subvolume", "get-default", i], 0, OutIs("ID 5 (FS_TREE)\n")),
        (vec!["property", "get", i, "/", "label"], 0, OutIs("label=habits\n")),
        (vec!["scrub", i], 0, Out("no errors found")),
        (vec!["scrub", "start", "-B", i], 0, Out("no errors found")),
        (vec!["scrub", "start", "-r", i], 0, Out("no errors found")),
        (vec!["scrub", "status", i], 1, Err("keeps no state")),
        (vec!["scrub", "start", "-r", "--repair", i], 2, Err("cannot be used with")),
        (vec!["scrub", "--prefer-mirror", "5", i], 2, Err("5")),
        (vec!["scrub", "--threads", "0", i], 2, Any),
        (vec!["mkfs", "--csum", "md5", n], 2, Err("md5")),
        (vec!["mkfs", "-d", "bogus", n], 2, Err("bogus")),
        (vec!["mkfs", "-b", "1.5G", n], 2, Err("1.5G")),
        (vec!["mkfs", "-r", "/nonexistent-btrs-dir", n], 2, Err("/nonexistent-btrs-dir")),
        (vec!["mkfs", i], 1, Err("--force")),
        (vec!["mkfs", "-R", "quota", "-b", "256M", n], 1, Err("quota")),
        (vec!["mkfs", "-R", "bogus", "-b", "256M", n], 2, Err("unknown runtime feature")),
        (vec!["mkfs", "-M", "-b", "256M", n], 1, Err("mixed block groups")),
        (vec!["chmod", i, "u+x", "/f1"], 0, OutIs("")),
        (vec!["chmod", i, "999", "/f1"], 2, Err("invalid mode")),
        (vec!["chmod", i, "600", "/l"], 1, Err("symbolic link's mode")),
        (vec!["chown", i, "1:2", "/f1"], 0, OutIs("")),
        (vec!["chown", i, "root", "/f1"], 2, Err("numeric")),
        (vec!["touch", i, "/t"], 0, OutIs("")),
        (vec!["touch", "-c", i, "/none"], 0, OutIs("")),
        (vec!["touch", "-d", "bogus", i, "/t"], 2, Err("invalid date")),
        (vec!["truncate", "-s", "10K", i, "/t"], 0, OutIs("")),
        (vec!["truncate", "-s", "+1", i, "/d"], 1, Err("not a regular file")),
        (vec!["mkdir", "-p", i, "/a/b/c"], 0, OutIs("")),
        (vec!["mkdir", "-m", "700", i, "/m"], 0, OutIs("")),
        (vec!["mkdir", i, "/a"], 1, Err("exists")),
        (vec!["mkdir", "-p", i, "/a/b"], 0, OutIs("")),
        (vec!["rm", "-f", i, "/none", "/no/such"], 0, OutIs("")),
        (vec!["rm", i, "/none"], 1, Err("none")),
        (vec!["rm", i, "/a"], 1, Err("not empty")),
        (vec!["rm", "-r", i, "/a"], 0, OutIs("")),
        (vec!["mv", i, "/t", "/t2"], 0, OutIs("")),
        (vec!["ln", "-s", i, "t2", "/l2"], 0, OutIs("")),
        (vec!["setfattr", i, "/f1", "-n", "user.h", "-v", "0x6869"], 0, OutIs("")),
        (vec!["setfattr", i, "/f1", "-n", "user.h", "-v", "0xzz"], 2, Err("bad input encoding")),
        (vec!["write", i, "/w", "--from", h], 0, Any),
        (vec!["write", i, "/w", "--offset", "-1", "--from", h], 2, Any),
        (vec!["write", i, "/w", "--offset", "0x1000", "--from", h], 0, Out("at offset 4096")),
        (vec!["write", i, "/w", "--offset", "1M", "--from", h], 0, Out("at offset 1048576")),
        (vec!["write", i, "/w", "--offset", "8E", "--from", h], 2, Err("past the largest file size")),
        (vec!["completions", "bash"], 0, Out("btrs")),
        (vec!["completions", "nosuchshell"], 2, Err("nosuchshell")),
        (vec!["fixture", "list"], 0, Out("raid1-clean")),
        (vec!["frobnicate"], 2, Err("unrecognized subcommand")),
        // Last: makes new.img (mkfs.btrfs's flags: quiet, no discard, --byte-count, -R).
        (vec!["mkfs", "-q", "-K", "--byte-count", "256M", "-R", "free-space-tree", n], 0, OutIs("")),
        (vec!["fi", "show", n], 0, Out("\tdevid    1 size 256.00MiB used ")),
    ];
    assert!(rows.len() >= 60, "the issue asks for at least 60 lines");
    for (args, code, want) in &rows {
        // Every refused mkfs before the last rows left nothing behind.
        if args.first() == Some(&"mkfs") && args.contains(&"-q") {
            assert!(!new.exists(), "a refused mkfs left {}", new.display());
        }
        let o = std::process::Command::new(BIN).args(args).output().unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(*code), "btrs {args:?}\nstdout: {out}\nstderr: {err}");
        assert!(!err.contains("panicked"), "btrs {args:?} panicked: {err}");
        match want {
            Out(t) => assert!(out.contains(t), "btrs {args:?}: stdout lacks {t:?}:\n{out}"),
            OutIs(t) => assert_eq!(out, *t, "btrs {args:?}"),
            Err(t) => assert!(err.contains(t), "btrs {args:?}: stderr lacks {t:?}:\n{err}"),
            Any => {}
        }
    }
    if progs_for(test, false) {
        btrfs_check(std::slice::from_ref(&img), &[]).unwrap_or_else(|e| panic!("btrfs check after the table: {e}"));
    }
}
