//! [`BufferConfig`]: plain data with a `Default`, serde support and a `validate` that names the
//! offending parameter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What a committed append survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a committed append survives a crash or `kill -9` of the
    /// process (the commit is in the OS page cache); the last commits before a power loss or
    /// kernel crash may be lost. No `fsync` per commit, so this is the fast mode.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: the WAL is `fsync`ed before every commit returns, so a
    /// committed append also survives power loss. Group commit shares one `fsync` among every
    /// append waiting at that moment.
    Full,
}

/// What an append does when the records would not fit under `quota_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the append with [`Error::QuotaExceeded`]; nothing already stored is lost. The
    /// collector answers its agents with back-pressure (503 + `Retry-After`).
    #[default]
    RejectNewest,
    /// Evict the oldest records that are not leased until the append fits; every evicted record
    /// is counted (reason `quota`), logged and reported in metrics. Fails with
    /// [`Error::QuotaExceeded`] only when leased records alone leave no room.
    DropOldest,
}

/// Configuration of a [`Buffer`](crate::Buffer). Every field has a default; in serde formats
/// durations are strings such as `"30s"`, `"7d"`, `"250ms"` (units `ms`, `s`, `m`, `h`, `d`).
///
/// ```
/// use gateway_buffer::{BufferConfig, OverflowPolicy};
/// let config: BufferConfig = serde_json::from_str(
///     r#"{"quota_bytes": 1073741824, "retention": "3d", "overflow": "drop_oldest"}"#,
/// ).unwrap();
/// assert_eq!(config.overflow, OverflowPolicy::DropOldest);
/// assert_eq!(config.retention.as_secs(), 3 * 86_400);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// What a committed append survives. Default [`Durability::Normal`].
    pub durability: Durability,
    /// Most encoded record bytes the queue holds (the protobuf size of the records; SQLite's own
    /// overhead on disk comes on top, typically 10–20 %). Default 1 GiB.
    pub quota_bytes: u64,
    /// Records older than this (since they were appended) are evicted, reason `age`. Default
    /// 7 days.
    #[serde(with = "duration_text")]
    pub retention: Duration,
    /// Fraction of `quota_bytes` at which pressure becomes `Warning`. Default 0.80.
    pub warning_threshold: f64,
    /// Fraction of `quota_bytes` at which pressure becomes `Critical`. Default 0.95.
    pub critical_threshold: f64,
    /// What an append does at the quota. Default [`OverflowPolicy::RejectNewest`].
    pub overflow: OverflowPolicy,
    /// How long a lease stays live without `ack`/`release`; then its records return to the
    /// queue by themselves. Default 30 s.
    #[serde(with = "duration_text")]
    pub lease_timeout: Duration,
    /// Cap on the database file size (SQLite `max_page_count`); a write beyond it fails with
    /// [`Error::DiskFull`] like a full disk would. `None` (default): only the disk limits it.
    pub max_file_bytes: Option<u64>,
    /// Most dead letters kept; beyond it the oldest are dropped (counted in stats). Default 10,000.
    pub max_dead_letters: u64,
    /// Most records one group commit takes (many appends, one transaction). Default 65,536.
    pub max_group_records: usize,
    /// How often the writer runs maintenance (retention, expired leases, giving space back to
    /// the file system) when it is otherwise idle. Default 1 s.
    #[serde(with = "duration_text")]
    pub maintenance_interval: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            durability: Durability::Normal,
            quota_bytes: 1 << 30,
            retention: Duration::from_secs(7 * 86_400),
            warning_threshold: 0.80,
            critical_threshold: 0.95,
            overflow: OverflowPolicy::RejectNewest,
            lease_timeout: Duration::from_secs(30),
            max_file_bytes: None,
            max_dead_letters: 10_000,
            max_group_records: 65_536,
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

/// Smallest `max_file_bytes` accepted: room for the schema and a few pages of records.
pub const MIN_FILE_BYTES: u64 = 64 * 1024;

impl BufferConfig {
    /// Check every parameter; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), Error> {
        fn bad(param: &'static str, reason: impl Into<String>) -> Result<(), Error> {
            Err(Error::InvalidConfig {
                param,
                reason: reason.into(),
            })
        }
        if self.quota_bytes == 0 {
            return bad("quota_bytes", "must be greater than 0");
        }
        if self.quota_bytes > i64::MAX as u64 {
            return bad("quota_bytes", "must be at most i64::MAX");
        }
        if self.retention.is_zero() {
            return bad("retention", "must be greater than 0");
        }
        if self.retention.as_millis() > i64::MAX as u128 {
            return bad("retention", "is too large");
        }
        let fraction = |t: f64| t.is_finite() && t > 0.0 && t <= 1.0;
        if !fraction(self.warning_threshold) {
            return bad(
                "warning_threshold",
                format!("must be in (0, 1], got {}", self.warning_threshold),
            );
        }
        if !fraction(self.critical_threshold) {
            return bad(
                "critical_threshold",
                format!("must be in (0, 1], got {}", self.critical_threshold),
            );
        }
        if self.warning_threshold >= self.critical_threshold {
            return bad(
                "warning_threshold",
                format!(
                    "must be below critical_threshold ({} >= {})",
                    self.warning_threshold, self.critical_threshold
                ),
            );
        }
        if self.lease_timeout.is_zero() || self.lease_timeout.as_millis() > i64::MAX as u128 {
            return bad("lease_timeout", "must be greater than 0 and finite");
        }
        if let Some(max) = self.max_file_bytes
            && max < MIN_FILE_BYTES
        {
            return bad(
                "max_file_bytes",
                format!("must be at least {MIN_FILE_BYTES} bytes, got {max}"),
            );
        }
        if self.max_group_records == 0 {
            return bad("max_group_records", "must be at least 1");
        }
        if self.maintenance_interval.is_zero() {
            return bad("maintenance_interval", "must be greater than 0");
        }
        Ok(())
    }

    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn lease_timeout_ms(&self) -> i64 {
        i64::try_from(self.lease_timeout.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Durations as human text (`"30s"`, `"7d"`); integers are read as seconds.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        let text = if ms.is_multiple_of(86_400_000) && ms > 0 {
            format!("{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        s.serialize_str(&text)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Text::deserialize(d)? {
            Text::Seconds(s) => Ok(Duration::from_secs(s)),
            Text::Text(t) => parse(&t).map_err(de::Error::custom),
        }
    }

    pub(super) fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like \"30s\" or \"7d\""))?;
        let ms_per_unit: u64 = match unit.trim() {
            "ms" => 1,
            "s" | "" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}` (use ms, s, m, h or d)"
                ));
            }
        };
        n.checked_mul(ms_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("duration `{text}` is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_matches_the_documentation() {
        let c = BufferConfig::default();
        c.validate().unwrap();
        assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
        assert_eq!((c.warning_threshold, c.critical_threshold), (0.80, 0.95));
        assert_eq!(c.overflow, OverflowPolicy::RejectNewest);
        assert_eq!(c.durability, Durability::Normal);
    }

    #[test]
    fn validation_names_the_parameter() {
        let cases: Vec<(&str, BufferConfig)> = vec![
            (
                "quota_bytes",
                BufferConfig {
                    quota_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "retention",
                BufferConfig {
                    retention: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "warning_threshold",
                BufferConfig {
                    warning_threshold: 0.97,
                    ..Default::default()
                },
            ),
            (
                "critical_threshold",
                BufferConfig {
                    critical_threshold: f64::NAN,
                    ..Default::default()
                },
            ),
            (
                "lease_timeout",
                BufferConfig {
                    lease_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "max_file_bytes",
                BufferConfig {
                    max_file_bytes: Some(10),
                    ..Default::default()
                },
            ),
            (
                "max_group_records",
                BufferConfig {
                    max_group_records: 0,
                    ..Default::default()
                },
            ),
        ];
        for (param, config) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{param}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn serde_round_trips_with_human_durations() {
        let c = BufferConfig {
            lease_timeout: Duration::from_millis(1500),
            retention: Duration::from_secs(3 * 3600),
            ..Default::default()
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["lease_timeout"], "1500ms");
        assert_eq!(json["retention"], "3h");
        let back: BufferConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let from_int: BufferConfig = serde_json::from_str(r#"{"lease_timeout": 45}"#).unwrap();
        assert_eq!(from_int.lease_timeout, Duration::from_secs(45));
        assert!(serde_json::from_str::<BufferConfig>(r#"{"retention": "7 weeks"}"#).is_err());
        assert!(serde_json::from_str::<BufferConfig>(r#"{"quota": 1}"#).is_err());
    }

    #[test]
    fn duration_parser_refuses_garbage() {
        assert_eq!(
            duration_text::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration_text::parse("2m").unwrap(),
            Duration::from_secs(120)
        );
        assert!(duration_text::parse("").is_err());
        assert!(duration_text::parse("s").is_err());
        assert!(duration_text::parse("99999999999999999999d").is_err());
    }
}
