//! What the uplink drains: the [`RecordSource`] trait, implemented for
//! [`gateway_buffer::Buffer`].
//!
//! The trait is the buffer's lease protocol reduced to what the uplink calls, so the
//! uplink's logic can also be exercised against an in-memory source in unit tests, and an
//! integrator with another durable queue can plug it in.

use std::fmt;
use std::future::Future;

use gateway_buffer::DeadLetter;
use gateway_proto::{Bytes, Record, pb};
use prost::Message as _;
use tokio::sync::watch;

use crate::error::BoxError;

/// Records handed out by a [`RecordSource`] until acked, released or dead-lettered: decoded
/// ([`Record`]) from [`RecordSource::lease`], or each a protobuf `gateway.v1.Record` message
/// ([`Bytes`]) from [`RecordSource::lease_encoded`].
#[derive(Debug, Clone, PartialEq)]
pub struct SourceLease<L, R = Record> {
    /// The lease's id.
    pub id: L,
    /// The records, oldest first; each with an id.
    pub records: Vec<R>,
    /// Encoded bytes of the records, as the source counts them.
    pub bytes: u64,
}

/// A durable queue the uplink drains with leases.
///
/// Contract: a leased record is not handed out again until its lease is released or
/// expires; `ack` removes a lease's records for good; `release` returns them to the front of
/// the queue; `dead_letter` moves the listed records (by index into the lease) to a
/// dead-letter store with their reasons and removes the rest, atomically.
pub trait RecordSource: Send + Sync + 'static {
    /// Identifies a lease.
    type LeaseId: Copy + Send + Sync + fmt::Debug + 'static;

    /// Lease up to `max_records` records and `max_bytes` bytes (at least one record when
    /// any is waiting); `None` when the queue has nothing to lease.
    fn lease(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<SourceLease<Self::LeaseId>>, BoxError>> + Send;

    /// Like [`lease`](RecordSource::lease), but each record comes as the protobuf encoding of
    /// a `gateway.v1.Record` (`gateway_proto::pb::Record`), which the uplink frames into a
    /// protobuf batch without decoding it. The default leases decoded records and encodes
    /// them; a source that stores records in that encoding (the [`Buffer`](gateway_buffer::Buffer))
    /// hands them out as stored.
    fn lease_encoded(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<SourceLease<Self::LeaseId, Bytes>>, BoxError>> + Send
    {
        async move {
            let lease = self.lease(max_records, max_bytes).await?;
            Ok(lease.map(|l| SourceLease {
                id: l.id,
                records: l
                    .records
                    .iter()
                    .map(|r| Bytes::from(pb::Record::from(r).encode_to_vec()))
                    .collect(),
                bytes: l.bytes,
            }))
        }
    }

    /// The records were delivered: remove them.
    fn ack(&self, lease: Self::LeaseId) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The records were not delivered: make them leasable again.
    fn release(&self, lease: Self::LeaseId) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Move the listed records to the dead-letter store, ack the rest.
    fn dead_letter(
        &self,
        lease: Self::LeaseId,
        letters: Vec<DeadLetter>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Records in the queue, leased or not (0: everything was delivered or dead-lettered).
    fn queued_records(&self) -> impl Future<Output = Result<u64, BoxError>> + Send;

    /// A channel whose value changes whenever records may have become leasable (an append,
    /// a release, an expired lease), so the uplink waits for work without polling.
    fn subscribe_available(&self) -> watch::Receiver<u64>;
}

impl RecordSource for gateway_buffer::Buffer {
    type LeaseId = gateway_buffer::LeaseId;

    async fn lease(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<SourceLease<Self::LeaseId>>, BoxError> {
        let lease = gateway_buffer::Buffer::lease(self, max_records, max_bytes).await?;
        Ok(lease.map(|l| SourceLease {
            id: l.id,
            records: l.records,
            bytes: l.bytes,
        }))
    }

    /// The stored records as they are ([`Buffer::lease_encoded`](gateway_buffer::Buffer::lease_encoded)):
    /// no decoding, no copy.
    async fn lease_encoded(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Option<SourceLease<Self::LeaseId, Bytes>>, BoxError> {
        let lease = gateway_buffer::Buffer::lease_encoded(self, max_records, max_bytes).await?;
        Ok(lease.map(|l| SourceLease {
            id: l.id,
            records: l.records,
            bytes: l.bytes,
        }))
    }

    async fn ack(&self, lease: Self::LeaseId) -> Result<(), BoxError> {
        Ok(gateway_buffer::Buffer::ack(self, lease).await?)
    }

    async fn release(&self, lease: Self::LeaseId) -> Result<(), BoxError> {
        Ok(gateway_buffer::Buffer::release(self, lease).await?)
    }

    async fn dead_letter(
        &self,
        lease: Self::LeaseId,
        letters: Vec<DeadLetter>,
    ) -> Result<(), BoxError> {
        Ok(gateway_buffer::Buffer::dead_letter(self, lease, letters).await?)
    }

    async fn queued_records(&self) -> Result<u64, BoxError> {
        Ok(gateway_buffer::Buffer::stats(self).await?.records)
    }

    fn subscribe_available(&self) -> watch::Receiver<u64> {
        gateway_buffer::Buffer::subscribe_available(self)
    }
}
