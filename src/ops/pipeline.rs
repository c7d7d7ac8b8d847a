//! An ordered parallel map: jobs are done on worker threads and handed to
//! the caller strictly in job order, with a bounded number in flight.
//!
//! `mkfs --rootdir` uses it for file data: reading, compressing and
//! checksumming run on every core, while placing the results (which depends
//! on every earlier result: compressed sizes decide addresses) stays in one
//! thread, in order — so the image does not depend on the number of workers
//! or on which finished first.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;

/// Run `work` on each job on `workers` threads (inline, in order, for zero
/// or one worker) and pass every job with its result to `consume` in the
/// order `jobs` yields them. At most `window` jobs are read ahead of the one
/// `consume` waits for, which bounds memory. The first error from `consume`
/// stops the run (jobs in flight are finished and dropped) and is returned.
pub fn ordered_map<J, R, E>(
    jobs: impl Iterator<Item = J> + Send,
    workers: usize,
    window: usize,
    work: impl Fn(&J) -> R + Sync,
    mut consume: impl FnMut(J, R) -> Result<(), E>,
) -> Result<(), E>
where
    J: Send,
    R: Send,
{
    if workers <= 1 {
        for j in jobs {
            let r = work(&j);
            consume(j, r)?;
        }
        return Ok(());
    }
    let window = window.max(workers);
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, J)>(workers);
    let job_rx = Mutex::new(job_rx);
    let work = &work;
    std::thread::scope(|s| {
        let (res_tx, res_rx) = mpsc::channel::<(u64, J, R)>();
        // A credit per job in flight: the reader takes one before each job,
        // the consumer gives one back for each job it is handed.
        let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(window);
        for _ in 0..window {
            let _ = credit_tx.send(());
        }
        s.spawn(move || {
            for (seq, j) in jobs.enumerate() {
                if credit_rx.recv().is_err() || job_tx.send((seq as u64, j)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..workers {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            s.spawn(move || loop {
                let next = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok((seq, j)) = next else { break };
                let r = work(&j);
                if res_tx.send((seq, j, r)).is_err() {
                    break;
                }
            });
        }
        drop(res_tx);
        let mut pending: BTreeMap<u64, (J, R)> = BTreeMap::new();
        let mut next = 0u64;
        let mut run = || -> Result<(), E> {
            loop {
                while let Some((j, r)) = pending.remove(&next) {
                    next += 1;
                    let _ = credit_tx.send(());
                    consume(j, r)?;
                }
                match res_rx.recv() {
                    Ok((seq, j, r)) => {
                        pending.insert(seq, (j, r));
                    }
                    // Every worker is done: all jobs were handed over.
                    Err(_) => return Ok(()),
                }
            }
        };
        let result = run();
        // On an error: the reader stops for want of credits, the workers for
        // want of jobs or of someone to take their results.
        drop(credit_tx);
        drop(res_rx);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results arrive in job order whatever the order workers finish in.
    #[test]
    fn results_come_in_job_order() {
        for workers in [1, 2, 4, 8] {
            let mut seen = Vec::new();
            let r: Result<(), ()> = ordered_map(
                0..200u64,
                workers,
                6,
                |&j| {
                    // Later jobs often finish first.
                    std::thread::sleep(std::time::Duration::from_micros((200 - j) % 7 * 50));
                    j * j
                },
                |j, r| {
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
        let r = ordered_map(0..10_000u64, 4, 8, |&j| j, |j, _| {
            seen += 1;
            if j == 37 {
                Err(format!("job {j}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("job 37".to_string()));
        assert_eq!(seen, 38);
    }

    /// No more than `window` jobs are read ahead of the consumer.
    #[test]
    fn read_ahead_is_bounded() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let produced = AtomicU64::new(0);
        let jobs = (0..100u64).inspect(|_| {
            produced.fetch_add(1, Ordering::SeqCst);
        });
        let r: Result<(), ()> = ordered_map(jobs, 3, 5, |&j| j, |j, _| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            // The reader may hold one job it took a credit for plus the window.
            assert!(produced.load(Ordering::SeqCst) <= j + 1 + 5 + 1, "read {} ahead of {j}", produced.load(Ordering::SeqCst));
            Ok(())
        });
        assert!(r.is_ok());
    }
}
