//! The on-disk format: opening, recognising, creating and migrating a buffer file.
//!
//! Nothing is written to a file before it is recognised as ours (or as new and empty): the
//! header is read with plain file I/O first, and SQLite only reads until the application id and
//! the schema version say the file is a buffer this release understands.

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{BufferConfig, Durability, Error};

/// `PRAGMA application_id` of every buffer file: ASCII `GWBF`.
pub(crate) const APPLICATION_ID: i32 = 0x4757_4246;

/// The format version this release writes, and the newest it reads.
pub(crate) const FORMAT_VERSION: i64 = 1;

/// Page size of new files.
const PAGE_SIZE: u64 = 4096;

/// SQLite's page cache for the writer connection, in KiB.
const CACHE_KIB: i64 = 16 * 1024;

/// Checkpoint the WAL into the database every this many pages (16 MiB with 4 KiB pages).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4096;

/// Truncate the WAL back to this size after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

const CREATE_V1: &str = "
    CREATE TABLE buffer_schema (
        version    INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE buffer_meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE records (
        seq         INTEGER PRIMARY KEY,
        appended_ms INTEGER NOT NULL,
        data        BLOB NOT NULL
    );
    CREATE TABLE dead_letters (
        id     INTEGER PRIMARY KEY,
        record BLOB NOT NULL,
        code   TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms  INTEGER NOT NULL
    );
    INSERT INTO buffer_meta (key, value) VALUES ('generation', 0);
";

/// Migrations from version `n` to `n + 1`, indexed by `n - 1`. Empty while version 1 is the
/// only format; a future format adds its step here and bumps [`FORMAT_VERSION`].
const MIGRATIONS: &[&str] = &[];

/// An open, recognised, up-to-date buffer file, locked for this process.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    /// Number of this open (1 for the first), for lease ids.
    pub(crate) generation: u64,
    /// Whether the file was created by this open.
    pub(crate) created: bool,
}

/// Open (or create) the buffer file at `path`.
pub(crate) fn open(path: &Path, config: &BufferConfig, now_ms: i64) -> Result<Opened, Error> {
    let is_new = check_header(path)?;
    let sql = |context: &'static str| move |e| Error::sqlite(path, context, e);

    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sql("opening the file"))?;
    conn.busy_timeout(std::time::Duration::from_millis(250))
        .map_err(sql("configuring the connection"))?;
    // One owner per file: leases live in this process's memory. Exclusive locking also keeps
    // the WAL index in heap memory instead of a `-shm` file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(sql("configuring the connection"))?;

    let (app_id, objects) = read_identity(&conn).map_err(|e| identity_error(path, e))?;
    let created = if objects == 0 && app_id == 0 {
        create(&conn, now_ms).map_err(sql("creating the buffer schema"))?;
        true
    } else if app_id != APPLICATION_ID {
        return Err(Error::NotABuffer {
            path: path.to_path_buf(),
            reason: format!(
                "a SQLite database of another application: application_id {app_id:#x}, \
                 {objects} schema objects"
            ),
        });
    } else {
        migrate(&conn, path)?;
        false
    };
    debug_assert!(!is_new || created);

    configure(&conn, config).map_err(sql("configuring the connection"))?;
    let generation: i64 = conn
        .query_row(
            "UPDATE buffer_meta SET value = value + 1 WHERE key = 'generation' RETURNING value",
            [],
            |row| row.get(0),
        )
        .map_err(sql("recording this open"))?;
    Ok(Opened {
        conn,
        generation: u64::try_from(generation).unwrap_or(0),
        created,
    })
}

/// `Ok(true)` if the file is missing or empty; `Ok(false)` if it starts with the SQLite header;
/// `NotABuffer` otherwise. Reads with plain I/O so a foreign file is never handed to SQLite.
fn check_header(path: &Path) -> Result<bool, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(Error::NotABuffer {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    if meta.len() == 0 {
        return Ok(true);
    }
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]).map_err(io)? {
            0 => break,
            n => read += n,
        }
    }
    if read < header.len() || &header != SQLITE_HEADER {
        return Err(Error::NotABuffer {
            path: path.to_path_buf(),
            reason: "it does not start with the SQLite file header".into(),
        });
    }
    Ok(false)
}

fn read_identity(conn: &Connection) -> rusqlite::Result<(i32, i64)> {
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok((app_id, objects))
}

/// Errors while reading a file's identity: a damaged header reads as "not a database".
fn identity_error(path: &Path, e: rusqlite::Error) -> Error {
    match Error::sqlite(path, "reading the file header", e) {
        Error::NotABuffer { path, reason } => Error::Corrupt {
            path,
            detail: format!("it has a SQLite header but SQLite cannot read it: {reason}"),
        },
        other => other,
    }
}

fn create(conn: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    // Both must be set before the first table exists.
    conn.pragma_update(None, "page_size", PAGE_SIZE as i64)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        conn.execute_batch(CREATE_V1)?;
        conn.execute(
            "INSERT INTO buffer_schema (version, created_ms, created_by) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                FORMAT_VERSION,
                now_ms,
                concat!("gateway-buffer ", env!("CARGO_PKG_VERSION"))
            ],
        )?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.execute_batch("COMMIT")
    })();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Check the format version and bring an older file up to date.
fn migrate(conn: &Connection, path: &Path) -> Result<(), Error> {
    let version: Option<i64> = conn
        .query_row("SELECT max(version) FROM buffer_schema", [], |r| r.get(0))
        .optional()
        .map_err(
            |e| match Error::sqlite(path, "reading the format version", e) {
                Error::Storage { message, .. } => Error::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("it carries the buffer application id but {message}"),
                },
                other => other,
            },
        )?
        .flatten();
    let Some(version) = version else {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "its schema version table is empty".into(),
        });
    };
    if version > FORMAT_VERSION {
        return Err(Error::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < 1 {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("its format version {version} was never written by any release"),
        });
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip((version - 1) as usize) {
        let to = index as i64 + 2;
        let sql = |e| Error::sqlite(path, "migrating the buffer format", e);
        conn.execute_batch("BEGIN").map_err(sql)?;
        let result = conn.execute_batch(step).and_then(|()| {
            conn.execute(
                "INSERT INTO buffer_schema (version, created_ms, created_by) VALUES (?1, 0, ?2)",
                rusqlite::params![to, concat!("gateway-buffer ", env!("CARGO_PKG_VERSION"))],
            )
            .map(|_| ())
        });
        match result.and_then(|()| conn.execute_batch("COMMIT")) {
            Ok(()) => tracing::info!(path = %path.display(), to, "migrated buffer format"),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(sql(e));
            }
        }
    }
    Ok(())
}

fn configure(conn: &Connection, config: &BufferConfig) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match config.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    if let Some(max) = config.max_file_bytes {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages = i64::try_from(max).unwrap_or(i64::MAX) / page_size.max(512);
        conn.pragma_update(None, "max_page_count", pages)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    // Take the exclusive lock now, so a second opener fails here and not on its first write.
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
    Ok(())
}
