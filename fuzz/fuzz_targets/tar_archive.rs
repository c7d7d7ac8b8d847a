//! `mkfs --rootdir-tar`'s archive reader: headers, PAX records (times, ids,
//! xattrs, POSIX ACL text, LIBARCHIVE xattrs), sparse maps (old GNU and PAX
//! 0.0/0.1/1.0), hard links, implied directories. `--print-size` with zstd
//! makes the data pass read every member through its sparse map.
#![no_main]

use btrs::format::compress::Compression;
use btrs::ops::mkfs::{print_size, MkfsOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let tar = dir.path().join("t.tar");
    if std::fs::write(&tar, data).is_err() {
        return;
    }
    let mut o = MkfsOptions::new(vec![dir.path().join("img")]);
    o.rootdir_tar = Some(tar);
    o.compress = Some((Compression::Zstd, Some(1)));
    o.shrink = true;
    o.timestamp = Some(0);
    let _ = print_size(&o);
});
