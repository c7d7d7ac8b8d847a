//! Attacks on btrs's promises: crafted images (bytes patched, checksums resealed),
//! devices swapped for older copies, readers beside writers, hostile command lines.
//! Each module is one class of attack; each test names the promise it tries to break
//! and fails on the commit where that promise was broken (e7a4f9a).

#[path = "../common/mod.rs"]
mod common;

mod limits;
mod util;

mod chunks;
mod compressed_rewrite;
mod compressed_write;
mod extract;
mod extrefs;
mod items;
mod logtree;
mod readers;
mod stale;
mod verified;
