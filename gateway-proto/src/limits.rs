//! Validation rules and size limits, in one place.
//!
//! Decoding checks structure (a field is present, an id is 16 bytes); [`Limits`] checks what a
//! deployment may tune (sizes, counts, clock skew). Receivers call both.

use serde::{Deserialize, Serialize};

use crate::{Batch, ControlFrame, Error, ErrorCode, PolicyContent, Record, Rejection};

/// 2000-01-01T00:00:00Z in milliseconds: the default lower bound for record timestamps.
pub const DEFAULT_MIN_TIMESTAMP_MS: i64 = 946_684_800_000;

/// Size and sanity limits. `Limits::default()` is what the reference gateway and server use.
///
/// Every limit is inclusive: a value equal to the limit passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Records in one batch. Default 10,000.
    pub max_records_per_batch: usize,
    /// Bytes of one encoded batch after gzip decompression. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Bytes of one encoded control frame. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Bytes of one record body (JSON text or raw bytes). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Characters of a stream name. Default 64.
    pub max_stream_len: usize,
    /// Bytes of a source, agent id or gateway id. Default 128.
    pub max_id_len: usize,
    /// Attributes on one record. Default 64.
    pub max_attributes: usize,
    /// Bytes of one attribute key. Default 128.
    pub max_attribute_key_len: usize,
    /// Bytes of one attribute value. Default 4,096.
    pub max_attribute_value_len: usize,
    /// Earliest accepted record timestamp, ms since the epoch. Default 2000-01-01.
    pub min_timestamp_ms: i64,
    /// How far a record timestamp may lie in the receiver's future, ms. Default 1 day.
    pub max_future_skew_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records_per_batch: 10_000,
            max_batch_bytes: 16 * 1024 * 1024,
            max_frame_bytes: 1024 * 1024,
            max_body_bytes: 1024 * 1024,
            max_stream_len: 64,
            max_id_len: 128,
            max_attributes: 64,
            max_attribute_key_len: 128,
            max_attribute_value_len: 4096,
            min_timestamp_ms: DEFAULT_MIN_TIMESTAMP_MS,
            max_future_skew_ms: 24 * 60 * 60 * 1000,
        }
    }
}

impl Limits {
    /// Check the encoded size of a batch before decoding it.
    pub fn check_batch_size(&self, encoded_len: usize) -> Result<(), Error> {
        check_size("batch", encoded_len, self.max_batch_bytes)
    }

    /// Check the encoded size of a control frame before decoding it.
    pub fn check_frame_size(&self, encoded_len: usize) -> Result<(), Error> {
        check_size("control frame", encoded_len, self.max_frame_bytes)
    }

    /// Batch-level rules: record count and the gateway id. A batch that fails them is refused
    /// whole (413 for the count, 400 otherwise).
    pub fn check_batch(&self, batch: &Batch) -> Result<(), Error> {
        if batch.records.len() > self.max_records_per_batch {
            return Err(Error::TooManyRecords {
                count: batch.records.len(),
                limit: self.max_records_per_batch,
            });
        }
        if !batch.gateway_id.is_empty() {
            self.check_id("gateway_id", &batch.gateway_id, ErrorCode::InvalidRequest)?;
        }
        Ok(())
    }

    /// Check every record of a batch; returns one [`Rejection`] per bad record, in index order.
    /// `now_ms` is the receiver's clock, for the future-skew rule.
    pub fn reject_invalid_records(&self, batch: &Batch, now_ms: i64) -> Vec<Rejection> {
        batch
            .records
            .iter()
            .enumerate()
            .filter_map(|(index, record)| {
                self.validate_record(record, now_ms)
                    .err()
                    .map(|e| Rejection {
                        index: index as u32,
                        code: e.code(),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// Check one record against every rule. Field names in the error are relative to the
    /// record (`stream`, `attributes["k"]`).
    pub fn validate_record(&self, record: &Record, now_ms: i64) -> Result<(), Error> {
        self.validate_stream(&record.stream)?;
        self.check_id("source", &record.source, ErrorCode::InvalidSource)?;
        if record.timestamp_ms < self.min_timestamp_ms {
            return Err(Error::invalid(
                "timestamp_ms",
                ErrorCode::InvalidTimestamp,
                format!(
                    "{} is before the earliest accepted timestamp {} (ms since the epoch)",
                    record.timestamp_ms, self.min_timestamp_ms
                ),
            ));
        }
        let latest = now_ms.saturating_add(self.max_future_skew_ms);
        if record.timestamp_ms > latest {
            return Err(Error::invalid(
                "timestamp_ms",
                ErrorCode::InvalidTimestamp,
                format!(
                    "{} is more than {} ms ahead of the receiver's clock ({now_ms})",
                    record.timestamp_ms, self.max_future_skew_ms
                ),
            ));
        }
        if record.attributes.len() > self.max_attributes {
            return Err(Error::invalid(
                "attributes",
                ErrorCode::TooManyAttributes,
                format!(
                    "{} attributes, more than the limit of {}",
                    record.attributes.len(),
                    self.max_attributes
                ),
            ));
        }
        for (key, value) in &record.attributes {
            if key.is_empty() || key.len() > self.max_attribute_key_len {
                return Err(Error::invalid(
                    format!("attributes[{key:?}]"),
                    ErrorCode::InvalidAttribute,
                    format!(
                        "attribute keys must be 1 to {} bytes, this one is {}",
                        self.max_attribute_key_len,
                        key.len()
                    ),
                ));
            }
            if value.len() > self.max_attribute_value_len {
                return Err(Error::invalid(
                    format!("attributes[{key:?}]"),
                    ErrorCode::InvalidAttribute,
                    format!(
                        "attribute values must be at most {} bytes, this one is {}",
                        self.max_attribute_value_len,
                        value.len()
                    ),
                ));
            }
        }
        let body_len = record.body.wire_len();
        if body_len > self.max_body_bytes {
            return Err(Error::invalid(
                "body",
                ErrorCode::BodyTooLarge,
                format!(
                    "{body_len} bytes, more than the limit of {} bytes",
                    self.max_body_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A stream name: 1 to `max_stream_len` characters from `[a-z0-9._-]`, starting with a
    /// letter or digit.
    pub fn validate_stream(&self, stream: &str) -> Result<(), Error> {
        let fail = |why: String| Err(Error::invalid("stream", ErrorCode::InvalidStream, why));
        if stream.is_empty() {
            return fail("the stream name is empty".into());
        }
        if stream.len() > self.max_stream_len {
            return fail(format!(
                "{} characters, more than the limit of {}",
                stream.len(),
                self.max_stream_len
            ));
        }
        let mut chars = stream.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if !(first_ok && rest_ok) {
            return fail(format!(
                "{stream:?} must use only a-z, 0-9, '.', '_' and '-', and start with a letter or digit"
            ));
        }
        Ok(())
    }

    /// An id-like string (source, agent id, gateway id): 1 to `max_id_len` bytes, no control
    /// characters. `field` and `code` go into the error.
    pub fn check_id(&self, field: &str, value: &str, code: ErrorCode) -> Result<(), Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, code, "must not be empty"));
        }
        if value.len() > self.max_id_len {
            return Err(Error::invalid(
                field,
                code,
                format!(
                    "{} bytes, more than the limit of {}",
                    value.len(),
                    self.max_id_len
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::invalid(
                field,
                code,
                "must not contain control characters",
            ));
        }
        Ok(())
    }
}

impl Limits {
    /// Rules for control frames beyond their structure: ids and names are well formed, version
    /// ranges are ordered, intervals are positive, checksums are 64 lowercase hex digits, patches
    /// are arrays, signatures are 64 bytes. Field names are relative to the frame.
    pub fn validate_frame(&self, frame: &ControlFrame) -> Result<(), Error> {
        self.validate_frame_fields(frame)
            .map_err(|e| e.within(frame.frame_type()))
    }

    fn validate_frame_fields(&self, frame: &ControlFrame) -> Result<(), Error> {
        let code = ErrorCode::MalformedFrame;
        match frame {
            ControlFrame::Hello(h) => {
                self.check_id("gateway_id", &h.gateway_id, code.clone())?;
                if h.min_protocol_version == 0 || h.min_protocol_version > h.protocol_version {
                    return Err(Error::invalid(
                        "min_protocol_version",
                        code,
                        format!(
                            "the version range {}..={} is empty or starts at 0",
                            h.min_protocol_version, h.protocol_version
                        ),
                    ));
                }
                h.applied_policies
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, p)| {
                        self.check_id("name", &p.name, code.clone())
                            .and_then(|()| check_checksum("checksum", &p.checksum))
                            .map_err(|e| e.within(&format!("applied_policies[{i}]")))
                    })
            }
            ControlFrame::Welcome(w) if w.heartbeat_interval_ms == 0 => Err(Error::invalid(
                "heartbeat_interval_ms",
                code,
                "the heartbeat interval must be at least 1 ms",
            )),
            ControlFrame::Welcome(w) if w.protocol_version == 0 => Err(Error::invalid(
                "protocol_version",
                code,
                "protocol versions start at 1",
            )),
            ControlFrame::Command(c) => self.check_id("kind", &c.kind, code),
            ControlFrame::PolicyUpdate(u) => {
                self.check_id("name", &u.name, code.clone())?;
                check_checksum("checksum", &u.checksum)?;
                if let PolicyContent::Patch { operations, .. } = &u.content
                    && !operations.is_array()
                {
                    return Err(Error::invalid(
                        "content.patch.operations",
                        code,
                        "a JSON Patch is an array of operations",
                    ));
                }
                match &u.signature {
                    Some(sig) if sig.len() != 64 => Err(Error::invalid(
                        "signature",
                        code,
                        format!("an Ed25519 signature is 64 bytes, got {}", sig.len()),
                    )),
                    _ => Ok(()),
                }
            }
            ControlFrame::PolicyStatus(s) => self.check_id("name", &s.name, code),
            _ => Ok(()),
        }
    }
}

/// True when `text` is a policy checksum: 64 lowercase hexadecimal digits (SHA-256).
pub fn is_checksum(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_checksum(field: &str, text: &str) -> Result<(), Error> {
    if is_checksum(text) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            ErrorCode::MalformedFrame,
            format!("a checksum is 64 lowercase hex digits (SHA-256), got {text:?}"),
        ))
    }
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), Error> {
    if size > limit {
        Err(Error::TooLarge { what, size, limit })
    } else {
        Ok(())
    }
}
