//! Readers beside a writer. `cat` started while `write --commit-every` commits again and
//! again must print one committed state of the file, or fail with a clear error: never
//! bytes the file never held. The writer keeps what it frees unused while a reader of an
//! older generation is registered. (On e7a4f9a a slow `cat` printed 16 MiB pieces that
//! were never in the file, or failed with "stale or misdirected write" for a checksummed
//! file: a later commit reused space the reader's committed state still pointed at.)

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::util::*;

const MIB: usize = 1 << 20;

fn run(nodatasum: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Room for both versions, but the allocator wraps around to freed space before it
    // adds a chunk: the old file's extents are the first reused.
    let imgs = mkfs(dir, 1, "256M", "single", &[]);
    let img = &imgs[0];
    let old = pseudo(64 * MIB, 1);
    let new = pseudo(64 * MIB, 2);
    let src = dir.join("old.bin");
    std::fs::write(&src, &old).unwrap();
    let mut args = vec!["write", s(img), "/f", "--from", s(&src)];
    if nodatasum {
        args.push("--nodatasum");
    }
    ok(&args);
    let mut writer = btrs_cmd()
        .args(["write", s(img), "/f", "--truncate", "--commit-every", "16M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    let mut pieces = new.chunks(4 * MIB);
    // The writer holds the images once it reads its input.
    stdin.write_all(pieces.next().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A slow reader of the committed state (the old file), started beside the writer.
    let mut cat = btrs_cmd().args(["cat", s(img), "/f"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut cat_out = cat.stdout.take().unwrap();
    let slow = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; MIB];
        loop {
            match cat_out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        got
    });
    for piece in pieces {
        stdin.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    drop(stdin);
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "writer: {}", String::from_utf8_lossy(&out.stderr));
    let got = slow.join().unwrap();
    let status = cat.wait().unwrap();
    let mut err = String::new();
    cat.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    if status.success() {
        let is_old = got == old;
        let is_prefix = got.len() <= new.len() && got[..] == new[..got.len()];
        assert!(is_old || is_prefix, "cat beside a writer printed bytes the file never held ({} bytes; stderr {err})", got.len());
    } else {
        assert!(err.starts_with("btrs: error:") && !err.contains("csum mismatch") && !err.contains("stale"), "cat failed unclearly: {err}");
    }
    assert!(status.success(), "the reader was refused: {err}");
    assert!(ok(&["cat", s(img), "/f"]) == new);
    progs_check("readers_beside_a_writer", &imgs, &["--check-data-csum"]);
}

#[test]
fn slow_reader_beside_a_committing_writer_sees_one_committed_state_nodatasum() {
    run(true);
}

#[test]
fn slow_reader_beside_a_committing_writer_sees_one_committed_state_checksummed() {
    run(false);
}

/// A `cat` of `path` whose output nobody reads yet: it stays open, registered as a
/// reader of the generation it found, until `finish` drains it.
struct StuckReader {
    child: std::process::Child,
}

impl StuckReader {
    fn start(img: &std::path::Path, path: &str) -> StuckReader {
        let child = btrs_cmd().args(["cat", s(img), path]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Long enough to open the images and fill the pipe.
        std::thread::sleep(Duration::from_millis(500));
        StuckReader { child }
    }

    fn finish(mut self) -> (bool, Vec<u8>, String) {
        let mut got = Vec::new();
        self.child.stdout.take().unwrap().read_to_end(&mut got).unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.success(), got, err)
    }
}

/// A new writer cannot know what an earlier writer freed: while a reader of an older
/// generation remains, it waits, then refuses without changing anything.
#[test]
fn new_writer_refuses_while_a_reader_of_an_older_generation_remains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 1, "128M", "single", &[]);
    let img = &imgs[0];
    let old = pseudo(8 * MIB, 3);
    let src = dir.join("old.bin");
    std::fs::write(&src, &old).unwrap();
    ok(&["write", s(img), "/f", "--from", s(&src)]);
    // Writer A holds the images; a reader starts beside it (generation of the old file).
    let mut a =
        btrs_cmd().args(["write", s(img), "/g", "--commit-every", "16M"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = a.stdin.take().unwrap();
    stdin.write_all(&pseudo(MIB, 4)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reader = StuckReader::start(img, "/f");
    stdin.write_all(&pseudo(20 * MIB, 5)).unwrap();
    drop(stdin);
    assert!(a.wait().unwrap().success());
    // Writer B: the reader still reads an older generation.
    let before = fingerprint(img);
    let src2 = dir.join("new.bin");
    std::fs::write(&src2, pseudo(MIB, 6)).unwrap();
    let err = fails(&["write", s(img), "/f", "--from", s(&src2), "--truncate"], 1);
    assert!(err.contains("reader") && err.contains("generation"), "{err}");
    assert_eq!(fingerprint(img), before, "the refused writer changed the image");
    let (ok_, got, err) = reader.finish();
    assert!(ok_ && got == old, "the reader: {err}");
    // With the reader gone, the writer goes ahead.
    ok(&["write", s(img), "/f", "--from", s(&src2), "--truncate"]);
}

/// NODATACOW overwrites go in place, changing committed bytes: with a reader
/// registered, they are copied on write instead, so the reader sees its generation.
#[test]
fn nodatacow_overwrite_beside_a_reader_is_copied_on_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 1, "128M", "single", &[]);
    let img = &imgs[0];
    let old = pseudo(8 * MIB, 7);
    let new = pseudo(8 * MIB, 8);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    std::fs::write(dir.join("new.bin"), &new).unwrap();
    ok(&["write", s(img), "/n", "--from", s(&dir.join("old.bin")), "--nodatacow"]);
    let mut w = btrs_cmd()
        .args(["write", s(img), "/n", "--from", "-", "--commit-every", "16M"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = w.stdin.take().unwrap();
    stdin.write_all(&new[..MIB]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reader = StuckReader::start(img, "/n");
    stdin.write_all(&new[MIB..]).unwrap();
    drop(stdin);
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok_, got, err) = reader.finish();
    assert!(ok_, "{err}");
    assert!(got == old, "the reader saw bytes written in place after its generation");
    assert!(ok(&["cat", s(img), "/n"]) == new);
    progs_check("nodatacow_overwrite_beside_a_reader_is_copied_on_write", &imgs, &[]);
}

/// Regression (attacker's pass on 5c11694): a reader that starts after a writer has
/// begun overwriting a NODATACOW file in place read the old generation's trees over
/// sectors already rewritten: the new bytes up to where the writer was, the old after,
/// exit 0, a state the file never had. The writer now marks its in-place overwrites
/// before it looks for readers and until its commit is on the images; a reader that
/// comes meanwhile waits for that commit and reads it.
#[test]
fn reader_arriving_during_an_in_place_overwrite_waits_for_its_commit() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs = mkfs(dir, 1, "128M", "single", &[]);
    let img = &imgs[0];
    let old = pseudo(24 * MIB, 17);
    let new = pseudo(24 * MIB, 18);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    ok(&["write", s(img), "/n", "--from", s(&dir.join("old.bin")), "--nodatacow"]);
    // Where /n's first sector lies in the image: the writer's in-place bytes land there.
    let first = {
        let fs = btrs::Filesystem::open(&btrs::volumes::OpenOptions { image: img.clone(), ..Default::default() }).unwrap();
        let ent = fs.resolve("/n").unwrap();
        let logical = fs
            .file_extents(ent.id)
            .unwrap()
            .iter()
            .find_map(|(off, e)| match e.kind {
                btrs::format::items::FileExtentKind::Regular { disk_bytenr, offset, .. } if *off == 0 => Some(disk_bytenr + offset),
                _ => None,
            })
            .expect("/n starts with a regular extent");
        fs.volume().locate(logical, 0).unwrap().physical
    };
    let mut w = btrs_cmd()
        .args(["write", s(img), "/n", "--from", "-", "--commit-every", "64M"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = w.stdin.take().unwrap();
    // Feed the first 16 MiB step (write reads its input in such steps), then wait until
    // its first sector is overwritten in place.
    stdin.write_all(&new[..16 * MIB]).unwrap();
    let f = std::fs::File::open(img).unwrap();
    let mut sector = vec![0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        f.read_exact_at(&mut sector, first).unwrap();
        if sector[..] == new[..4096] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the writer never overwrote /n in place");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A reader now: the committed trees are the old ones, the first sectors already new.
    let mut cat = btrs_cmd().args(["cat", s(img), "/n"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(&new[16 * MIB..]).unwrap();
    drop(stdin);
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "writer: {}", String::from_utf8_lossy(&out.stderr));
    let mut got = Vec::new();
    cat.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    let status = cat.wait().unwrap();
    let mut err = String::new();
    cat.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "the reader failed: {err}");
    let torn = got != old && got != new;
    assert!(
        !torn,
        "the reader printed a state /n never had ({} bytes, first difference from new at {:?}, from old at {:?})",
        got.len(),
        first_diff(&got, &new),
        first_diff(&got, &old)
    );
    assert!(got == new, "the reader came after the in-place overwrite began: it reads the commit that holds it");
    progs_check("reader_arriving_during_an_in_place_overwrite_waits_for_its_commit", &imgs, &[]);
}
