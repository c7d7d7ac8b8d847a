//! An ordered parallel map: jobs are done on worker threads and handed to
//! the caller strictly in job order, with a bounded number in flight.
//!
//! `mkfs --rootdir` uses it for file data: reading, compressing and
//! checksumming run on every core, while placing the results (which depends
//! on every earlier result: compressed sizes decide addresses) stays in one
//! thread, in order — so the image does not depend on the number of workers
//! or on which finished first. `put` uses it for the host side of a copy
//! (stat, xattrs, small files read) while one thread changes the trees.
//!
//! What the consumer leaves of a job and of its result goes back to the
//! thread that made it (the job reader, the worker) to be dropped there:
//! glibc's allocator locks the arena of the thread that allocated a block
//! to free it, and a consumer freeing the others' blocks while they
//! allocated made every thread wait on the others' locks (mkfs -r of 100k
//! small files: the consumer slept some 3,000 times on them, and the data
//! pass kept 1.5 of 2 cores busy).
//!
//! Whichever thread fails first — the reader (the job iterator), a worker or
//! the consumer — every other one stops: nothing waits on a channel whose
//! other end is gone, and a thread that panicked comes back as an error.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::threads::{panicked, spawn_scoped};

/// Run `work` on each job on `workers` threads (inline, in order, for zero
/// or one worker) and pass every job with its result to `consume` in the
/// order `jobs` yields them; what `consume` leaves in them is dropped by the
/// thread that made it. At most `window` jobs are read ahead of the one
/// `consume` waits for, which bounds memory. The first error from `consume`
/// stops the run (jobs in flight are finished and dropped) and is returned;
/// so is a thread that could not be started or that panicked.
pub(crate) fn ordered_map<J, R, E>(
    jobs: impl Iterator<Item = J> + Send,
    workers: usize,
    window: usize,
    work: impl Fn(&J) -> R + Sync,
    mut consume: impl FnMut(&mut J, &mut R) -> Result<(), E>,
) -> Result<(), E>
where
    J: Send,
    R: Send,
    E: From<Error>,
{
    if workers <= 1 {
        for mut j in jobs {
            let mut r = work(&j);
            consume(&mut j, &mut r)?;
        }
        return Ok(());
    }
    let window = window.max(workers);
    // Set when the run ends early: the reader and the workers stop at their next job.
    let stop = AtomicBool::new(false);
    // How the reader ended: the count of jobs when it got to the end of
    // them, its panic, or None when it was stopped.
    let total: Mutex<Option<Result<u64, Error>>> = Mutex::new(None);
    let work = &work;
    let (stop, total) = (&stop, &total);
    std::thread::scope(|s| {
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, J)>(workers);
        // Shared by the workers only: when the last one ends, the reader's
        // next send fails instead of waiting for a taker forever.
        let job_rx = Arc::new(Mutex::new(job_rx));
        // A result with the worker that made it, or the panic of the work on it.
        let (res_tx, res_rx) = mpsc::channel::<(u64, Result<(J, R, usize), Error>)>();
        // Jobs consumed, back to the reader to be dropped there (results go
        // back to their workers through `handed_back`).
        let (spent_tx, spent_rx) = mpsc::channel::<J>();
        let mut handed_back = Vec::with_capacity(workers);
        // A credit per job in flight: the reader takes one before each job,
        // the consumer gives one back for each job it is handed.
        let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(window);
        for _ in 0..window {
            let _ = credit_tx.send(());
        }
        let mut started = Ok(());
        for i in 0..workers {
            let (res_tx, job_rx) = (res_tx.clone(), job_rx.clone());
            let (back_tx, back_rx) = mpsc::channel::<R>();
            handed_back.push(back_tx);
            let worker = move || loop {
                while back_rx.try_recv().is_ok() {}
                let next = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok((seq, j)) = next else { break };
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let done = match catch_unwind(AssertUnwindSafe(|| work(&j))) {
                    Ok(r) => Ok((j, r, i)),
                    Err(p) => Err(panicked("worker", p.as_ref())),
                };
                let failed = done.is_err();
                if res_tx.send((seq, done)).is_err() || failed {
                    break;
                }
            };
            if let Err(e) = spawn_scoped(s, &format!("worker-{i}"), worker) {
                started = Err(e);
                break;
            }
        }
        drop((res_tx, job_rx));
        if started.is_ok() {
            let reader = move || {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let mut n = 0u64;
                    for j in jobs {
                        while spent_rx.try_recv().is_ok() {}
                        if stop.load(Ordering::Relaxed) || credit_rx.recv().is_err() || job_tx.send((n, j)).is_err() {
                            return None;
                        }
                        n += 1;
                    }
                    Some(n)
                }));
                let end = match r {
                    Ok(n) => n.map(Ok),
                    Err(p) => Some(Err(panicked("job reader", p.as_ref()))),
                };
                if let Ok(mut t) = total.lock() {
                    *t = end;
                }
            };
            started = spawn_scoped(s, "job-reader", reader).map(drop);
        }
        let result = match started {
            Err(e) => Err(E::from(e)),
            Ok(()) => {
                let mut pending: BTreeMap<u64, (J, R, usize)> = BTreeMap::new();
                let mut next = 0u64;
                let mut run = || -> Result<(), E> {
                    loop {
                        while let Some((mut j, mut r, worker)) = pending.remove(&next) {
                            next += 1;
                            let _ = credit_tx.send(());
                            consume(&mut j, &mut r)?;
                            // Past its end, a thread's leftovers are dropped here.
                            let _ = spent_tx.send(j);
                            if let Some(back) = handed_back.get(worker) {
                                let _ = back.send(r);
                            }
                        }
                        match res_rx.recv() {
                            Ok((seq, Ok(done))) => {
                                pending.insert(seq, done);
                            }
                            Ok((_, Err(e))) => return Err(E::from(e)),
                            // Every worker is done, so the reader is too: all
                            // its jobs were handed over, unless it failed.
                            Err(_) => {
                                let end = total.lock().map(|mut t| t.take()).unwrap_or(None);
                                return match end {
                                    Some(Ok(n)) if n == next => Ok(()),
                                    Some(Ok(n)) => {
                                        Err(E::from(Error::Internal(format!("{next} of {n} jobs came back (a worker thread ended early)"))))
                                    }
                                    Some(Err(e)) => Err(E::from(e)),
                                    None => Err(E::from(Error::Internal("the job reader thread stopped early".into()))),
                                };
                            }
                        }
                    }
                };
                run()
            }
        };
        // On an error: the reader and the workers stop at their next job;
        // the reader also for want of credits or of workers, the workers for
        // want of jobs or of someone to take their results.
        stop.store(true, Ordering::Relaxed);
        drop(credit_tx);
        drop(res_rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    enum TestErr {
        Job(u64),
        Lib(String),
    }

    impl From<Error> for TestErr {
        fn from(e: Error) -> Self {
            TestErr::Lib(e.to_string())
        }
    }

    /// `f` on a thread of its own, failed if it does not return within a minute
    /// (a deadlock would otherwise hang the test run).
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("ordered_map did not return within 60 s (deadlock)")
    }

    /// Results arrive in job order whatever the order workers finish in.
    #[test]
    fn results_come_in_job_order() {
        for workers in [1, 2, 4, 8] {
            let mut seen = Vec::new();
            let r: Result<(), TestErr> = ordered_map(
                0..200u64,
                workers,
                6,
                |&j| {
                    // Later jobs often finish first.
                    std::thread::sleep(Duration::from_micros((200 - j) % 7 * 50));
                    j * j
                },
                |&mut j, &mut r| {
                    assert_eq!(r, j * j);
                    seen.push(j);
                    Ok(())
                },
            );
            assert!(r.is_ok());
            assert_eq!(seen, (0..200).collect::<Vec<_>>(), "{workers} workers");
        }
    }

    /// The first error stops the run and is returned; nothing after it is consumed.
    #[test]
    fn an_error_stops_the_run() {
        let mut seen = 0;
        let r = ordered_map(
            0..10_000u64,
            4,
            8,
            |&j| j,
            |&mut j, _| {
                seen += 1;
                if j == 37 {
                    Err(TestErr::Job(j))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r, Err(TestErr::Job(37)));
        assert_eq!(seen, 38);
    }

    /// A consumer error ends every thread, however many workers and however
    /// many jobs remain (an endless job list here): the reader must not wait
    /// forever on a full job queue once the workers are gone (it did: `mkfs
    /// -r` with two threads hung when an image write failed).
    #[test]
    fn an_error_stops_every_thread() {
        for workers in [2, 3, 8, 64] {
            for fail_at in [0u64, 1, 5, 100] {
                let r = bounded(move || {
                    ordered_map(0u64.., workers, 4 * workers, |&j| j, |&mut j, _| if j == fail_at { Err(TestErr::Job(j)) } else { Ok(()) })
                });
                assert_eq!(r, Err(TestErr::Job(fail_at)), "{workers} workers");
            }
        }
    }

    /// A worker that panics fails the run with an error that says so; the
    /// others stop.
    #[test]
    fn a_worker_panic_is_an_error() {
        for workers in [2, 8] {
            let r = bounded(move || {
                ordered_map(
                    0u64..,
                    workers,
                    4 * workers,
                    |&j| {
                        if j == 7 {
                            panic!("boom at {j}");
                        }
                        j
                    },
                    |_, _| Ok::<(), TestErr>(()),
                )
            });
            match r {
                Err(TestErr::Lib(m)) => assert!(m.contains("panicked") && m.contains("boom at 7"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A job iterator (the reader) that panics fails the run: its jobs are
    /// not taken for all there were.
    #[test]
    fn a_reader_panic_is_an_error() {
        for workers in [2, 8] {
            let r = bounded(move || {
                let jobs = (0u64..).map(|j| if j == 50 { panic!("reader boom") } else { j });
                ordered_map(jobs, workers, 4 * workers, |&j| j, |_, _| Ok::<(), TestErr>(()))
            });
            match r {
                Err(TestErr::Lib(m)) => assert!(m.contains("panicked") && m.contains("reader boom"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    /// No more than `window` jobs are read ahead of the consumer.
    #[test]
    fn read_ahead_is_bounded() {
        use std::sync::atomic::AtomicU64;
        let produced = AtomicU64::new(0);
        let jobs = (0..100u64).inspect(|_| {
            produced.fetch_add(1, Ordering::SeqCst);
        });
        let r: Result<(), TestErr> = ordered_map(
            jobs,
            3,
            5,
            |&j| j,
            |&mut j, _| {
                std::thread::sleep(Duration::from_micros(200));
                // The reader may hold one job it took a credit for plus the window.
                assert!(produced.load(Ordering::SeqCst) <= j + 1 + 5 + 1, "read {} ahead of {j}", produced.load(Ordering::SeqCst));
                Ok(())
            },
        );
        assert!(r.is_ok());
    }
}
