//! [`Buffer`]: the async handle. Every call sends a request to the writer thread and awaits its
//! answer, so no call blocks the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{BufferPressure, Bytes, Record};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use crate::codec::{Encoder, decode_record};
use crate::store::{RawLease, Signals, Store};
use crate::writer::{self, Chunk, Command, Read, Write};

/// Records per chunk of a streamed append; appends up to twice this go in one piece.
const STREAM_CHUNK: usize = 256;
use crate::{
    AppendReceipt, BufferConfig, BufferStats, DeadLetter, EncodedLease, Error, Lease, LeaseId,
    StoredDeadLetter,
};

/// A durable store-and-forward queue of records in one SQLite file.
///
/// Cheap to clone (an `Arc`); every clone talks to the same writer thread. See the
/// [crate documentation](crate) for the guarantees.
///
/// **Shutdown**: [`close`](Buffer::close) commits what is queued, closes the file and waits until
/// it is released, and makes every clone answer [`Error::Closed`]. Dropping the last clone
/// instead is safe too — every append that returned `Ok` is already committed — but the file is
/// released by the writer thread a moment later, so reopen only after `close`.
#[derive(Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
    signals: Signals,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("path", &self.inner.path)
            .field("pressure", &self.pressure())
            .finish_non_exhaustive()
    }
}

impl Buffer {
    /// Open the buffer file at `path`, creating it if it does not exist, with the system clock.
    ///
    /// Fails with [`Error::NotABuffer`], [`Error::NewerFormat`] or [`Error::Corrupt`] for a file
    /// it must not touch (and leaves it untouched), [`Error::Locked`] if another buffer has it
    /// open, [`Error::InvalidConfig`] for a bad config.
    pub async fn open(path: impl AsRef<Path>, config: BufferConfig) -> Result<Buffer, Error> {
        Buffer::open_with_clock(path, config, Arc::new(SystemClock)).await
    }

    /// [`open`](Buffer::open) with an injected wall clock: append times, retention and lease
    /// expiry all read it (tests use `gateway_proto::clock::ManualClock`).
    pub async fn open_with_clock(
        path: impl AsRef<Path>,
        config: BufferConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Buffer, Error> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let span = tracing::info_span!("gateway_buffer.open", path = %path.display());
        let signals = Signals::new();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_path = path.clone();
        let thread_signals = signals.clone();
        std::thread::Builder::new()
            .name("gateway-buffer".into())
            .spawn(move || {
                let _entered = span.enter();
                let max_group = config.max_group_records;
                let interval = config.maintenance_interval;
                match Store::open(&thread_path, config, clock, thread_signals) {
                    Ok(store) => {
                        let _ = ready_tx.send(Ok(()));
                        drop(_entered);
                        writer::run(store, rx, max_group, interval);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        ready_rx.await.map_err(|_| Error::Closed)??;
        Ok(Buffer {
            inner: Arc::new(Inner { tx, path, signals }),
        })
    }

    /// The buffer file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn call<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.inner.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Append records, assigning a UUIDv7 to each record without an id. When this returns `Ok`
    /// the records are committed (see [`Durability`](crate::Durability) for what that survives);
    /// the receipt lists their ids in order. All or nothing: on `Err` none was stored.
    ///
    /// Appends from many tasks at once share transactions (group commit).
    pub async fn append(&self, mut records: Vec<Record>) -> Result<AppendReceipt, Error> {
        if records.is_empty() {
            return Ok(AppendReceipt {
                ids: Vec::new(),
                bytes: 0,
            });
        }
        let span = tracing::debug_span!("gateway_buffer.append", records = records.len());
        let mut encoder = Encoder::default();
        let (reply, answer) = oneshot::channel();
        if records.len() <= 2 * STREAM_CHUNK {
            let batch = encoder.encode(&mut records);
            let append = Write::Append {
                batch,
                rest: None,
                reply,
            };
            self.inner
                .tx
                .send(Command::Write(append))
                .map_err(|_| Error::Closed)?;
        } else {
            // Stream it: the writer inserts each chunk while this task encodes the next.
            let (first, others) = records.split_at_mut(STREAM_CHUNK);
            let batch = encoder.encode(first);
            let (chunks, rest) = mpsc::channel();
            let append = Write::Append {
                batch,
                rest: Some(rest),
                reply,
            };
            self.inner
                .tx
                .send(Command::Write(append))
                .map_err(|_| Error::Closed)?;
            for part in others.chunks_mut(STREAM_CHUNK) {
                if chunks.send(Chunk::Records(encoder.encode(part))).is_err() {
                    break;
                }
            }
            let _ = chunks.send(Chunk::Done);
        }
        // Free the records while the writer stores them, not after.
        drop(records);
        let batch = answer.instrument(span).await.map_err(|_| Error::Closed)??;
        let bytes = batch.bytes();
        let ids = batch.ids;
        Ok(AppendReceipt { ids, bytes })
    }

    /// Lease the oldest records nobody holds: at most `max_records`, and at most `max_bytes`
    /// of encoded records — except that a lease always holds at least one record when any is
    /// available, even one bigger than `max_bytes`. `None` when nothing is available.
    ///
    /// The lease lasts `lease_timeout`; then its records return to the queue by themselves.
    /// Records are decoded in the calling task, not on the writer thread. A stored record that
    /// no longer decodes is moved to the dead letters (code `undecodable_record`) and left out.
    pub async fn lease(&self, max_records: usize, max_bytes: u64) -> Result<Option<Lease>, Error> {
        loop {
            let Some(raw) = self.lease_raw(max_records, max_bytes).await? else {
                return Ok(None);
            };
            let Decoded {
                records,
                bad,
                bad_bytes,
            } = decode_lease(&raw);
            if !bad.is_empty() {
                let lease = raw.id;
                let quarantined = self
                    .call(|reply| Command::Read(Read::Quarantine { lease, bad, reply }))
                    .await;
                if let Err(e) = quarantined {
                    let _ = self.release(lease).await;
                    return Err(e);
                }
                if records.is_empty() {
                    // Nothing left in it; look again.
                    let _ = self.release(lease).await;
                    continue;
                }
            }
            return Ok(Some(Lease {
                id: raw.id,
                records,
                bytes: raw.bytes - bad_bytes,
                expires_at_ms: raw.expires_at_ms,
            }));
        }
    }

    /// Like [`lease`](Buffer::lease), but the records come as stored: each a protobuf
    /// `gateway.v1.Record` message (id set), ready to be framed into a `gateway.v1.Batch`
    /// (field 3) without decoding and re-encoding. They are not validated here; a damaged one
    /// goes out as is, and the far end's per-record refusal lets the caller dead-letter it.
    /// `ack`, `release` and `dead_letter` work the same (indices into `records`).
    pub async fn lease_encoded(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<EncodedLease>, Error> {
        let Some(raw) = self.lease_raw(max_records, max_bytes).await? else {
            return Ok(None);
        };
        let data = Bytes::from(raw.data);
        let mut start = 0;
        let records = raw
            .ends
            .iter()
            .map(|&end| {
                let record = data.slice(start..end);
                start = end;
                record
            })
            .collect();
        Ok(Some(EncodedLease {
            id: raw.id,
            records,
            bytes: raw.bytes,
            expires_at_ms: raw.expires_at_ms,
        }))
    }

    async fn lease_raw(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<RawLease>, Error> {
        if max_records == 0 {
            return Err(Error::InvalidArgument {
                param: "max_records",
                reason: "must be at least 1".into(),
            });
        }
        self.call(|reply| {
            Command::Read(Read::Lease {
                max_records,
                max_bytes,
                reply,
            })
        })
        .await
    }

    /// Remove a lease's records: the far end has them. [`Error::LeaseNotFound`] if the lease is
    /// not live (then its records are still queued and will be delivered again).
    pub async fn ack(&self, lease: LeaseId) -> Result<(), Error> {
        self.call(|reply| Command::Write(Write::Ack { lease, reply }))
            .await
    }

    /// Return a lease's records to the queue, in their order, ahead of newer records.
    pub async fn release(&self, lease: LeaseId) -> Result<(), Error> {
        self.call(|reply| Command::Read(Read::Release { lease, reply }))
            .await
    }

    /// In one transaction: move the listed records of the lease to the dead-letter table with
    /// their code and reason, and remove the others (acked). An index out of range or listed
    /// twice is an [`Error::InvalidArgument`] and changes nothing.
    pub async fn dead_letter(
        &self,
        lease: LeaseId,
        rejected: Vec<DeadLetter>,
    ) -> Result<(), Error> {
        self.call(|reply| {
            Command::Write(Write::DeadLetter {
                lease,
                rejected,
                reply,
            })
        })
        .await
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<StoredDeadLetter>, Error> {
        self.call(|reply| Command::Read(Read::DeadLetters { limit, reply }))
            .await
    }

    /// Delete every dead letter; returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<u64, Error> {
        self.call(|reply| Command::Write(Write::PurgeDeadLetters { reply }))
            .await
    }

    /// The current pressure level (no I/O).
    pub fn pressure(&self) -> BufferPressure {
        *self.inner.signals.pressure.borrow()
    }

    /// Watch the pressure level; the receiver sees each change of level.
    pub fn subscribe_pressure(&self) -> watch::Receiver<BufferPressure> {
        self.inner.signals.pressure.subscribe()
    }

    /// Watch the number of records appended since open; it changes after every committed
    /// append, so a consumer can wait for work without polling.
    pub fn subscribe_appended(&self) -> watch::Receiver<u64> {
        self.inner.signals.appended.subscribe()
    }

    /// Watch a counter that changes whenever records may have become available to
    /// [`lease`](Buffer::lease): after committed appends, releases and lease expiries.
    pub fn subscribe_available(&self) -> watch::Receiver<u64> {
        self.inner.signals.available.subscribe()
    }

    /// A snapshot of the queue's state and totals.
    pub async fn stats(&self) -> Result<BufferStats, Error> {
        self.call(|reply| Command::Read(Read::Stats { reply }))
            .await
    }

    /// Run maintenance now instead of waiting for `maintenance_interval`: return expired
    /// leases, evict records older than `retention`, give free space back to the file system.
    pub async fn run_maintenance(&self) -> Result<(), Error> {
        self.call(|reply| Command::Read(Read::Maintenance { reply }))
            .await
    }

    /// Commit what is queued, close the file and wait until it is released. Every other clone
    /// of this buffer answers [`Error::Closed`] from then on.
    pub async fn close(self) -> Result<(), Error> {
        self.call(|reply| Command::Close { reply }).await
    }
}

/// The decoded records of a lease, and the ones that did not decode (index, reason).
#[derive(Default)]
struct Decoded {
    records: Vec<Record>,
    bad: Vec<(usize, String)>,
    bad_bytes: u64,
}

/// Decode a lease's records. (Splitting a large lease over a second thread was measured
/// slower here: the copy, the hand-off and freeing records allocated in another arena cost more
/// than the decoding it shares.)
fn decode_lease(raw: &RawLease) -> Decoded {
    let mut decoded = Decoded::default();
    decoded.records.reserve(raw.ends.len());
    for (index, stored) in raw.iter().enumerate() {
        match decode_record(stored) {
            Ok(record) => decoded.records.push(record),
            Err(e) => {
                decoded.bad.push((index, e.0));
                decoded.bad_bytes += stored.len() as u64;
            }
        }
    }
    decoded
}
