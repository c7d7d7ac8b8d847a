//! Threads that fail as errors: a thread the host refuses to start, or one
//! that panicked, comes back as an [`Error`] that says so, never as a panic
//! of the caller (`std::thread::scope`'s `spawn` panics when the host has no
//! thread to give).

use std::any::Any;
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, Result};

/// Most worker threads any option may ask for: more only exhausts the host
/// (each thread reserves a stack) without going faster.
pub(crate) const MAX_THREADS: usize = 1024;

/// Start `f` on a thread of scope `s`, named `name`.
pub fn spawn_scoped<'s, 'e, T, F>(s: &'s Scope<'s, 'e>, name: &str, f: F) -> Result<ScopedJoinHandle<'s, T>>
where
    F: FnOnce() -> T + Send + 's,
    T: Send + 's,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(s, f)
        .map_err(|e| Error::io("<threads>", format!("start a {name} thread"), e))
}

/// Wait for a thread started by [`spawn_scoped`]; its panic as an error.
pub fn join<T>(h: ScopedJoinHandle<'_, Result<T>>, what: &str) -> Result<T> {
    h.join().unwrap_or_else(|p| Err(panicked(what, p.as_ref())))
}

/// The error for a thread that panicked, with the panic's message when it has one.
pub(crate) fn panicked(what: &str, payload: &(dyn Any + Send)) -> Error {
    let msg = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    match msg {
        Some(m) => Error::Internal(format!("a {what} thread panicked: {m}")),
        None => Error::Internal(format!("a {what} thread panicked")),
    }
}
