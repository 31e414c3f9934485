//! A [`RecordSink`] into a gateway's [`Buffer`]: the collector agents post to.

use std::time::Duration;

use gateway_buffer::Buffer;
use gateway_proto::{BufferPressure, ErrorCode, Record};
use serde::{Deserialize, Serialize};

use super::sink::{IngestContext, RecordSink, SinkError, SinkOutcome};

/// Settings of a [`BufferSink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BufferSinkConfig {
    /// `Retry-After` sent while the buffer is critical or over its quota, ms. Default 5,000.
    pub retry_after_ms: u64,
}

impl Default for BufferSinkConfig {
    fn default() -> Self {
        BufferSinkConfig {
            retry_after_ms: 5_000,
        }
    }
}

/// Appends received records to a [`Buffer`].
///
/// * While the buffer's pressure is `Critical`, every request is refused before its body is
///   read: 503 `buffer_critical` with `Retry-After` (back-pressure to the agents instead of
///   growing past the quota).
/// * An append refused for the quota ([`gateway_buffer::Error::QuotaExceeded`]) gets the same
///   answer, unless the batch alone is larger than the whole quota: 413, which no wait fixes.
/// * A full disk or a closed buffer is 503 `unavailable`.
///
/// The buffer does not deduplicate: every record counts as accepted, and an agent's re-sent
/// batch travels upstream twice, where the server's store (keyed by tenant and record id)
/// keeps one copy. Records reach the sink with ids (the receiver assigns missing ones), so
/// the copies share their id.
#[derive(Debug, Clone)]
pub struct BufferSink {
    buffer: Buffer,
    config: BufferSinkConfig,
}

impl BufferSink {
    /// A sink appending to `buffer`.
    pub fn new(buffer: Buffer, config: BufferSinkConfig) -> Self {
        BufferSink { buffer, config }
    }

    /// The buffer records go to.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    fn critical(&self, message: String) -> SinkError {
        SinkError::Backpressure {
            code: ErrorCode::BufferCritical,
            message,
            retry_after: Duration::from_millis(self.config.retry_after_ms),
        }
    }
}

impl RecordSink for BufferSink {
    fn admit(&self) -> Result<(), SinkError> {
        if self.buffer.pressure() == BufferPressure::Critical {
            return Err(
                self.critical("the gateway's buffer is critically full; retry later".to_owned())
            );
        }
        Ok(())
    }

    async fn store(
        &self,
        _context: &IngestContext,
        records: Vec<Record>,
    ) -> Result<SinkOutcome, SinkError> {
        let count = records.len() as u32;
        match self.buffer.append(records).await {
            Ok(_) => Ok(SinkOutcome {
                accepted: count,
                duplicates: 0,
            }),
            Err(gateway_buffer::Error::QuotaExceeded { needed, quota, .. }) if needed > quota => {
                Err(SinkError::TooLarge {
                    message: format!(
                        "the batch takes {needed} bytes, more than the gateway's whole buffer \
                         ({quota} bytes); send smaller batches"
                    ),
                })
            }
            Err(e @ gateway_buffer::Error::QuotaExceeded { .. }) => Err(self.critical(format!(
                "the gateway's buffer has no room for this batch now: {e}"
            ))),
            Err(e @ (gateway_buffer::Error::DiskFull { .. } | gateway_buffer::Error::Closed)) => {
                Err(SinkError::Unavailable {
                    message: format!("the gateway cannot store records now: {e}"),
                    retry_after: Some(Duration::from_millis(self.config.retry_after_ms)),
                })
            }
            Err(e) => Err(SinkError::Unavailable {
                message: format!("the gateway's buffer failed: {e}"),
                retry_after: None,
            }),
        }
    }
}
