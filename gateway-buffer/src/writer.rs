//! The writer thread: owns the [`Store`], takes requests from a channel, and group-commits.
//!
//! Each wake-up drains every request already queued. Consecutive write requests (appends, acks,
//! dead-letters, purges) share one transaction; each caller gets its answer only after the
//! `COMMIT` returned, so `Ok` always means durable. A request that does not write (lease,
//! release, stats, ...) first commits the group before it, so it sees every earlier write.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::codec::EncodedBatch;
use crate::store::{Failure, RawLease, Store};
use crate::telemetry;
use crate::{BufferStats, DeadLetter, Error, LeaseId, StoredDeadLetter};

/// Where a request's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request to the writer.
pub(crate) enum Command {
    /// Changes the file; grouped with its neighbours into one transaction.
    Write(Write),
    /// Reads, or changes only memory; runs after the writes before it committed.
    Read(Read),
    /// Close the file and stop.
    Close { reply: Reply<()> },
}

/// A request that changes the file.
pub(crate) enum Write {
    /// Store records. A large append streams: `batch` holds its first chunk and `rest` the
    /// others, which the caller encodes while the writer inserts the ones before.
    Append {
        batch: EncodedBatch,
        rest: Option<Receiver<Chunk>>,
        /// Gets the (complete) batch back after the commit: its ids make the receipt, and its
        /// memory is freed by the thread that allocated it.
        reply: Reply<EncodedBatch>,
    },
    /// Remove a lease's records.
    Ack { lease: LeaseId, reply: Reply<()> },
    /// Dead-letter some records of a lease, ack the rest.
    DeadLetter {
        lease: LeaseId,
        rejected: Vec<DeadLetter>,
        reply: Reply<()>,
    },
    /// Delete every dead letter.
    PurgeDeadLetters { reply: Reply<u64> },
}

/// A later part of a streamed append.
pub(crate) enum Chunk {
    /// More encoded records.
    Records(EncodedBatch),
    /// The append is complete. A stream that ends without it was abandoned by its caller.
    Done,
}

/// A request that does not write records.
pub(crate) enum Read {
    /// Lease the oldest available records.
    Lease {
        max_records: usize,
        max_bytes: u64,
        reply: Reply<Option<RawLease>>,
    },
    /// Move records of a lease that do not decode to the dead letters.
    Quarantine {
        lease: LeaseId,
        bad: Vec<(usize, String)>,
        reply: Reply<()>,
    },
    /// Return a lease's records.
    Release { lease: LeaseId, reply: Reply<()> },
    /// Read dead letters.
    DeadLetters {
        limit: usize,
        reply: Reply<Vec<StoredDeadLetter>>,
    },
    /// Read the statistics.
    Stats { reply: Reply<BufferStats> },
    /// Run maintenance now.
    Maintenance { reply: Reply<()> },
}

impl Write {
    fn records(&self) -> usize {
        match self {
            Write::Append { batch, .. } => batch.len(),
            _ => 1,
        }
    }
}

/// The answer of one write, sent after the commit.
enum Answer {
    Unit,
    Count(u64),
}

/// Run the writer until the channel closes or a `Close` arrives.
pub(crate) fn run(
    mut store: Store,
    rx: Receiver<Command>,
    max_group_records: usize,
    interval: Duration,
) {
    let mut next_maintenance = Instant::now() + interval;
    let mut pending: Vec<Command> = Vec::new();
    let mut group: Vec<Write> = Vec::new();
    loop {
        let timeout = sleep_for(&store, next_maintenance);
        match rx.recv_timeout(timeout) {
            Ok(command) => pending.push(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(command) = rx.try_recv() {
            pending.push(command);
        }
        let now = store.now_ms();
        store.expire_leases(now);

        let mut group_records = 0;
        for command in pending.drain(..) {
            match command {
                Command::Write(write) => {
                    if group_records + write.records() > max_group_records {
                        commit_group(&mut store, &mut group);
                        group_records = 0;
                    }
                    group_records += write.records();
                    group.push(write);
                }
                Command::Read(read) => {
                    commit_group(&mut store, &mut group);
                    group_records = 0;
                    serve_read(&mut store, read, &mut next_maintenance, interval);
                }
                Command::Close { reply } => {
                    commit_group(&mut store, &mut group);
                    // Anything queued behind the close is dropped with the channel: its callers
                    // see `Error::Closed`.
                    drop(rx);
                    let _ = reply.send(store.close());
                    return;
                }
            }
        }
        commit_group(&mut store, &mut group);
        if Instant::now() >= next_maintenance {
            let _ = maintain(&mut store);
            next_maintenance = Instant::now() + interval;
        }
    }
    if let Err(e) = store.close() {
        tracing::error!(error = %e, "closing the buffer after the last handle was dropped");
    }
}

/// How long to wait for requests: until maintenance is due or the next lease expires.
fn sleep_for(store: &Store, next_maintenance: Instant) -> Duration {
    let mut timeout = next_maintenance.saturating_duration_since(Instant::now());
    if let Some(expiry) = store.next_expiry_ms() {
        let ms = expiry.saturating_sub(store.now_ms()).max(0);
        timeout = timeout.min(Duration::from_millis(ms as u64 + 1));
    }
    timeout
}

fn serve_read(store: &mut Store, read: Read, next_maintenance: &mut Instant, interval: Duration) {
    let now = store.now_ms();
    match read {
        Read::Lease {
            max_records,
            max_bytes,
            reply,
        } => {
            let _span =
                tracing::debug_span!("gateway_buffer.lease", max_records, max_bytes).entered();
            let _ = reply.send(store.lease(max_records, max_bytes, now));
        }
        Read::Quarantine { lease, bad, reply } => {
            let _ = reply.send(store.quarantine(lease, &bad, now));
        }
        Read::Release { lease, reply } => {
            let _ = reply.send(store.release(lease));
        }
        Read::DeadLetters { limit, reply } => {
            let _ = reply.send(store.dead_letters(limit));
        }
        Read::Stats { reply } => {
            let _ = reply.send(store.stats());
        }
        Read::Maintenance { reply } => {
            let _ = reply.send(maintain(store));
            *next_maintenance = Instant::now() + interval;
        }
    }
}

/// Expired leases, retention, then space back to the file system.
fn maintain(store: &mut Store) -> Result<(), Error> {
    let _span = tracing::debug_span!("gateway_buffer.maintenance").entered();
    let now = store.now_ms();
    store.expire_leases(now);
    store.begin()?;
    match store.evict_expired(now) {
        Ok(_) => store.commit()?,
        Err(Failure::Refused(e) | Failure::Storage(e)) => {
            store.rollback();
            tracing::error!(error = %e, "retention pass failed");
            return Err(e);
        }
    }
    store.vacuum().inspect_err(|e| {
        tracing::error!(error = %e, "giving space back failed");
    })
}

/// Run the writes of `group` (emptying it) in one transaction; on a storage failure, roll
/// back and run each on its own so only the one that hit the problem fails.
fn commit_group(store: &mut Store, group: &mut Vec<Write>) {
    if group.is_empty() {
        return;
    }
    let mut group = std::mem::take(group);
    let records: usize = group.iter().map(Write::records).sum();
    let span = tracing::debug_span!("gateway_buffer.commit", requests = group.len(), records);
    let _entered = span.enter();
    let started = Instant::now();
    if group.len() > 1 {
        match run_in_one_transaction(store, &mut group) {
            Ok(answers) => {
                telemetry::group(records as u64, started.elapsed().as_secs_f64());
                for (write, answer) in group.into_iter().zip(answers) {
                    send(write, answer);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "group commit failed; retrying each request alone");
            }
        }
    }
    for mut write in group {
        let answer = match run_in_one_transaction(store, std::slice::from_mut(&mut write)) {
            Ok(mut answers) => answers.pop().unwrap_or(Ok(Answer::Unit)),
            Err(e) => Err(e),
        };
        send(write, answer);
    }
    telemetry::group(records as u64, started.elapsed().as_secs_f64());
}

/// Apply `group` in one transaction. `Err` when storage failed (everything rolled back);
/// otherwise one answer per write (refusals are answers too).
fn run_in_one_transaction(
    store: &mut Store,
    group: &mut [Write],
) -> Result<Vec<Result<Answer, Error>>, Error> {
    store.begin()?;
    let now = store.now_ms();
    let mut answers = Vec::with_capacity(group.len());
    for write in group.iter_mut() {
        let outcome = match write {
            Write::Append { batch, rest, .. } => match rest.take() {
                // Once streamed, the batch is complete: a replay appends it whole.
                Some(rest) => store.append_streamed(batch, rest, now),
                None => store.append(batch, now),
            }
            .map(|()| Answer::Unit),
            Write::Ack { lease, .. } => store.ack(*lease).map(|()| Answer::Unit),
            Write::DeadLetter {
                lease, rejected, ..
            } => store
                .dead_letter(*lease, rejected, now)
                .map(|()| Answer::Unit),
            Write::PurgeDeadLetters { .. } => store.purge_dead_letters().map(Answer::Count),
        };
        match outcome {
            Ok(answer) => answers.push(Ok(answer)),
            Err(Failure::Refused(e)) => answers.push(Err(e)),
            Err(Failure::Storage(e)) => {
                store.rollback();
                return Err(e);
            }
        }
    }
    store.commit()?;
    Ok(answers)
}

fn send(write: Write, answer: Result<Answer, Error>) {
    if let Err(e) = &answer {
        telemetry::write_failed(e);
    }
    match write {
        Write::Append { batch, reply, .. } => {
            let _ = reply.send(answer.map(|_| batch));
        }
        Write::Ack { reply, .. } | Write::DeadLetter { reply, .. } => {
            let _ = reply.send(answer.map(|_| ()));
        }
        Write::PurgeDeadLetters { reply } => {
            let _ = reply.send(answer.map(|a| match a {
                Answer::Count(n) => n,
                Answer::Unit => 0,
            }));
        }
    }
}
