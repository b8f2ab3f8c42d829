//! Backups and restores of the store, and the control socket through which
//! `onboard-server backup` asks a running server for one.
//!
//! File format (all integers big-endian):
//! `MAGIC` (8 bytes) · format version (u32) · schema version (u32) ·
//! records: `0x01` tree (u32 length, name) | `0x02` entry (u32 length, key,
//! u32 length, value) · `0x00` end · SHA-256 of everything before it (32 bytes).
//!
//! A backup is taken under [`Guarded::snapshot`] (writers wait, readers
//! continue), so it is one point in time across every tree. It holds sealed
//! cookies and blinded points but no key files: `server.key`, `pepper.key`
//! and `audit.key` are backed up separately, and a restored store needs the
//! same ones. Only the store's trees are exported; nothing else in the data
//! dir is read.

use crate::storage::{AuditRepo, ExportRepo, Guarded, StoreError, SCHEMA_VERSION};
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"ONBDBKUP";
/// This build's backup format.
pub const FORMAT_VERSION: u32 = 1;
/// The control socket's file name inside the data dir.
pub const CONTROL_SOCKET: &str = "control.sock";

const TAG_END: u8 = 0;
const TAG_TREE: u8 = 1;
const TAG_ENTRY: u8 = 2;
const HEADER_LEN: u64 = 16;
const IMPORT_BATCH: usize = 10_000;
/// Longest tree name, key or value accepted from a file (sled's own limit is far below).
const MAX_FIELD: u32 = 1 << 30;

/// A backup or restore that could not be done.
#[derive(Debug, Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The file is not a backup, or is cut short.
    #[error("{0} is not an onboard backup file ({1})")]
    NotABackup(PathBuf, String),
    /// The checksum does not match: the file is damaged.
    #[error("{0}: checksum mismatch (SHA-256 of the contents differs from the one recorded): the backup is damaged; nothing was restored")]
    Checksum(PathBuf),
    /// Made by a build with another format or schema version.
    #[error("{path}: backup format {format}, schema {schema}; this build reads format {FORMAT_VERSION}, schema {SCHEMA_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format version.
        format: u32,
        /// Its schema version.
        schema: u32,
    },
    /// The target database is held by a running server.
    #[error("the database in {0} is in use (is a server running on it?); stop it first")]
    InUse(PathBuf),
    /// The target already holds data.
    #[error("the database in {0} is not empty; pass --force to replace it")]
    NotEmpty(PathBuf),
    /// An earlier restore stopped between its two renames.
    #[error("an earlier restore was interrupted: {0} is missing and {1} holds the previous store; rename it back to {0} (or remove it) and retry")]
    Interrupted(PathBuf, PathBuf),
    /// The running server refused or failed.
    #[error("the running server: {0}")]
    Server(String),
    /// Bad argument.
    #[error("{0}")]
    Usage(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn field(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "record too long"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

/// Write the store's contents (under the caller's snapshot) to `w`.
fn export(store: &dyn ExportRepo, w: &mut impl Write) -> Result<(), StoreError> {
    let ioe = |e: std::io::Error| StoreError::Backend(format!("writing the backup: {e}"));
    w.write_all(MAGIC).map_err(ioe)?;
    w.write_all(&FORMAT_VERSION.to_be_bytes()).map_err(ioe)?;
    w.write_all(&SCHEMA_VERSION.to_be_bytes()).map_err(ioe)?;
    for name in store.tree_names()? {
        w.write_all(&[TAG_TREE]).map_err(ioe)?;
        field(w, &name).map_err(ioe)?;
        store.export_tree(&name, &mut |k, v| {
            w.write_all(&[TAG_ENTRY]).map_err(ioe)?;
            field(w, k).map_err(ioe)?;
            field(w, v).map_err(ioe)
        })?;
    }
    w.write_all(&[TAG_END]).map_err(ioe)
}

/// Write a point-in-time backup of `store` to `out` (via `out.tmp`, fsynced,
/// renamed; mode 0600). Returns the file's size.
pub fn write_backup<R: ExportRepo>(store: &Guarded<R>, out: &Path) -> Result<u64, BackupError> {
    let file_name = out
        .file_name()
        .ok_or_else(|| BackupError::Usage(format!("{} is not a file name", out.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // An existing file keeps its mode on open: force 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(&tmp))?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let result = store.snapshot(|s| export(s, &mut w));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let digest = w.hash.finalize();
    let mut inner = w.inner;
    let finish = inner
        .write_all(&digest)
        .and_then(|()| inner.flush())
        .and_then(|()| inner.get_ref().sync_all());
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    drop(inner);
    std::fs::rename(&tmp, out).map_err(io(out))?;
    sync_parent(out);
    Ok(w.bytes + digest.len() as u64)
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            BackupError::NotABackup(path.to_path_buf(), "cut short".into())
        } else {
            io(path)(e)
        }
    })
}

/// Check a backup file's header and checksum without writing anything.
pub fn verify(path: &Path) -> Result<(), BackupError> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len < HEADER_LEN + 1 + 32 {
        return Err(BackupError::NotABackup(
            path.to_path_buf(),
            "too short".into(),
        ));
    }
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    read_exact(&mut r, &mut header, path)?;
    if &header[..8] != MAGIC {
        return Err(BackupError::NotABackup(
            path.to_path_buf(),
            "wrong magic bytes".into(),
        ));
    }
    let mut hash = Sha256::new();
    hash.update(header);
    let mut body = (&mut r).take(len - HEADER_LEN - 32);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut recorded = [0u8; 32];
    read_exact(&mut r, &mut recorded, path)?;
    let digest = hash.finalize();
    if digest.as_slice() != recorded {
        return Err(BackupError::Checksum(path.to_path_buf()));
    }
    let format = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    let schema = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    if format != FORMAT_VERSION || schema != SCHEMA_VERSION {
        return Err(BackupError::Version {
            path: path.to_path_buf(),
            format,
            schema,
        });
    }
    Ok(())
}

fn read_field(r: &mut impl Read, path: &Path) -> Result<Vec<u8>, BackupError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, path)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(BackupError::NotABackup(
            path.to_path_buf(),
            "record too long".into(),
        ));
    }
    let mut v = Vec::new();
    r.take(u64::from(len))
        .read_to_end(&mut v)
        .map_err(io(path))?;
    if v.len() != len as usize {
        return Err(BackupError::NotABackup(
            path.to_path_buf(),
            "cut short".into(),
        ));
    }
    Ok(v)
}

/// Load a verified backup into an (empty) store.
fn import(path: &Path, store: &dyn ExportRepo) -> Result<u64, BackupError> {
    let file = File::open(path).map_err(io(path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    read_exact(&mut r, &mut header, path)?;
    let mut tree: Option<Vec<u8>> = None;
    let mut batch = Vec::new();
    let mut entries = 0u64;
    loop {
        let mut tag = [0u8; 1];
        read_exact(&mut r, &mut tag, path)?;
        if tag[0] != TAG_ENTRY || batch.len() >= IMPORT_BATCH {
            if let Some(t) = &tree {
                store.import_entries(t, &batch)?;
            }
            batch.clear();
        }
        match tag[0] {
            TAG_END => break,
            TAG_TREE => tree = Some(read_field(&mut r, path)?),
            TAG_ENTRY if tree.is_some() => {
                let k = read_field(&mut r, path)?;
                let v = read_field(&mut r, path)?;
                batch.push((k, v));
                entries += 1;
            }
            _ => {
                return Err(BackupError::NotABackup(
                    path.to_path_buf(),
                    "unknown record".into(),
                ))
            }
        }
    }
    Ok(entries)
}

/// What a restore did.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// Entries written.
    pub entries: u64,
    /// An existing store was replaced.
    pub replaced: bool,
}

/// Restore `from` into `data_dir`: verify first, refuse a running or (without
/// `force`) non-empty store, write a fresh database beside the old one and
/// swap it in by rename, so a failure before the swap leaves the old store.
pub fn restore(data_dir: &Path, from: &Path, force: bool) -> Result<Restored, BackupError> {
    verify(from)?;
    let db = crate::storage::db_dir(data_dir);
    let parent = db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.to_path_buf());
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "v1".into());
    let replaced_dir = parent.join(format!("{name}.replaced"));
    let fresh = parent.join(format!("{name}.restoring"));
    if !db.exists() && replaced_dir.exists() {
        return Err(BackupError::Interrupted(db, replaced_dir));
    }
    let existing = db.exists();
    if existing {
        match crate::storage::try_open_at(&db)? {
            None => return Err(BackupError::InUse(data_dir.to_path_buf())),
            Some(store) => {
                if store.has_data()? && !force {
                    return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
                }
            }
        }
    }
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    let entries = {
        let store = crate::storage::try_open_at(&fresh)?
            .ok_or_else(|| BackupError::InUse(fresh.clone()))?;
        let entries = match import(from, store.as_ref()) {
            Ok(n) => n,
            Err(e) => {
                drop(store);
                let _ = std::fs::remove_dir_all(&fresh);
                return Err(e);
            }
        };
        crate::storage::MetaRepo::flush(store.as_ref())?;
        entries
    };
    if existing {
        // Between these two renames the store sits in `.replaced`; the next
        // restore says so rather than guessing.
        if replaced_dir.exists() {
            std::fs::remove_dir_all(&replaced_dir).map_err(io(&replaced_dir))?;
        }
        std::fs::rename(&db, &replaced_dir).map_err(io(&db))?;
    }
    std::fs::rename(&fresh, &db).map_err(io(&db))?;
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    if existing {
        std::fs::remove_dir_all(&replaced_dir).map_err(io(&replaced_dir))?;
    }
    Ok(Restored {
        entries,
        replaced: existing,
    })
}

/// `onboard-server backup`: open the store directly when no server holds it,
/// otherwise ask the running server over its control socket.
pub fn backup(data_dir: &Path, out: &Path) -> Result<u64, BackupError> {
    let db = crate::storage::db_dir(data_dir);
    if !db.exists() {
        return Err(BackupError::Usage(format!(
            "{} has no database (not a data dir made by `init`?)",
            data_dir.display()
        )));
    }
    let out = absolute(out)?;
    match crate::storage::try_open_at(&db)? {
        Some(store) => write_backup(store.as_ref(), &out),
        None => ask_server(data_dir, &out),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, BackupError> {
    std::path::absolute(path).map_err(io(path))
}

fn ask_server(data_dir: &Path, out: &Path) -> Result<u64, BackupError> {
    let out_str = out.to_str().filter(|s| !s.contains('\n')).ok_or_else(|| {
        BackupError::Usage("the output path must be UTF-8 without newlines".into())
    })?;
    let reply = control_request(data_dir, &format!("backup {out_str}"))?;
    reply
        .parse()
        .map_err(|_| BackupError::Server(format!("unexpected reply {reply:?}")))
}

/// Send one request line to the running server's control socket; the text
/// after `ok ` of its reply.
fn control_request(data_dir: &Path, request: &str) -> Result<String, BackupError> {
    use std::io::BufRead as _;
    let socket = data_dir.join(CONTROL_SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
        BackupError::Server(format!(
            "the database is in use but the control socket {} cannot be reached: {e}",
            socket.display()
        ))
    })?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io(&socket))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(4096)
        .read_line(&mut line)
        .map_err(io(&socket))?;
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ok ") {
        Ok(rest.to_string())
    } else if let Some(m) = line.strip_prefix("error ") {
        Err(BackupError::Server(m.to_string()))
    } else {
        Err(BackupError::Server(format!("unexpected reply {line:?}")))
    }
}

/// The head of the audit chain: seq, hash, time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditHead {
    /// The last entry's seq.
    pub seq: u64,
    /// Its hash (64 hex).
    pub hash: String,
    /// Its time (RFC 3339).
    pub time: String,
}

impl AuditHead {
    /// The head of a chain ending at `e`.
    pub fn of(e: &crate::storage::AuditEntry) -> Self {
        Self {
            seq: e.seq,
            hash: e.hash.clone(),
            time: e.time.clone(),
        }
    }

    /// The control socket's form: `<seq> <hash> <time>`.
    fn to_line(&self) -> String {
        format!("{} {} {}", self.seq, self.hash, one_line(&self.time))
    }

    fn from_line(line: &str) -> Option<Self> {
        let mut words = line.split(' ');
        let head = Self {
            seq: words.next()?.parse().ok()?,
            hash: words.next()?.to_string(),
            time: words.next()?.to_string(),
        };
        words.next().is_none().then_some(head)
    }
}

/// `onboard-server audit head`: the last audit entry, read from the store
/// when no server holds it, otherwise from the running server over its
/// control socket. `None` for an empty log.
pub fn audit_head(data_dir: &Path) -> Result<Option<AuditHead>, BackupError> {
    let db = crate::storage::db_dir(data_dir);
    if !db.exists() {
        return Err(BackupError::Usage(format!(
            "{} has no database (not a data dir made by `init`?)",
            data_dir.display()
        )));
    }
    if let Some(store) = crate::storage::try_open_at(&db)? {
        return Ok(store.last_audit()?.as_ref().map(AuditHead::of));
    }
    let reply = control_request(data_dir, "audit-head")?;
    if reply == "none" {
        return Ok(None);
    }
    AuditHead::from_line(&reply)
        .map(Some)
        .ok_or_else(|| BackupError::Server(format!("unexpected reply {reply:?}")))
}

/// The control socket of a running server: `DIR/control.sock`, mode 0600,
/// one request per connection (`backup <absolute path>\n` →
/// `ok <bytes>\n`; `audit-head\n` → `ok <seq> <hash> <time>\n` | `ok none\n`;
/// failures `error <message>\n`). Removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl ControlSocket {
    /// Create it (replacing a stale one): bound under a temporary name, made
    /// 0600, then renamed into place, so it is never reachable by others.
    pub fn bind(data_dir: &Path) -> Result<Self, BackupError> {
        let path = data_dir.join(CONTROL_SOCKET);
        let tmp = data_dir.join(format!("{CONTROL_SOCKET}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        listener.set_nonblocking(true).map_err(io(&path))?;
        Ok(Self {
            path,
            listener: Some(listener),
        })
    }

    /// Serve requests on the current tokio runtime until the task is dropped.
    /// Without a sled `store` (PostgreSQL) only key rotation requests are
    /// served.
    pub fn serve<R>(
        mut self,
        store: Option<std::sync::Arc<Guarded<R>>>,
        services: std::sync::Arc<crate::services::Services>,
    ) -> Result<(), BackupError>
    where
        R: ExportRepo + AuditRepo + Send + Sync + 'static,
    {
        let std_listener = self
            .listener
            .take()
            .ok_or_else(|| BackupError::Usage("control socket already served".into()))?;
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io(&self.path))?;
        actix_web::rt::spawn(async move {
            // Keeps the socket file until the runtime drops this task.
            let _socket = self;
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "control socket accept failed");
                        continue;
                    }
                };
                let store = store.clone();
                let services = services.clone();
                actix_web::rt::spawn(async move {
                    if let Err(e) = handle(stream, store, services).await {
                        tracing::warn!(error = %e, "control request failed");
                    }
                });
            }
        });
        Ok(())
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle<R>(
    stream: tokio::net::UnixStream,
    store: Option<std::sync::Arc<Guarded<R>>>,
    services: std::sync::Arc<crate::services::Services>,
) -> std::io::Result<()>
where
    R: ExportRepo + AuditRepo + Send + Sync + 'static,
{
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(4096));
    reader.read_line(&mut line).await?;
    let request = line.trim_end_matches('\n');
    if RotationRequest::ALL.iter().any(|r| r.line() == request) {
        let reply = rotation_reply(request, services).await;
        write.write_all(reply.as_bytes()).await?;
        return write.shutdown().await;
    }
    let Some(store) = store else {
        let reply = "error this server's state is in PostgreSQL: back it up with pg_dump, read the audit head with `onboard-server audit head`\n";
        write.write_all(reply.as_bytes()).await?;
        return write.shutdown().await;
    };
    if request == "audit-head" {
        let reply = match store.last_audit() {
            Ok(Some(e)) => format!("ok {}\n", AuditHead::of(&e).to_line()),
            Ok(None) => "ok none\n".to_string(),
            Err(e) => format!("error {}\n", one_line(&e.to_string())),
        };
        write.write_all(reply.as_bytes()).await?;
        return write.shutdown().await;
    }
    let reply = match request.strip_prefix("backup ") {
        Some(p) if Path::new(p).is_absolute() => {
            let out = PathBuf::from(p);
            tracing::info!("backup requested over the control socket");
            let result =
                tokio::task::spawn_blocking(move || write_backup(store.as_ref(), &out)).await;
            match result {
                Ok(Ok(n)) => format!("ok {n}\n"),
                Ok(Err(e)) => format!("error {}\n", one_line(&e.to_string())),
                Err(e) => format!("error backup task: {}\n", one_line(&e.to_string())),
            }
        }
        Some(_) => "error the backup path must be absolute\n".to_string(),
        None => "error unknown request (expected `backup <absolute path>`, `audit-head`, `rotate`, `rotate-seal`, `rotate-status`, `pepper-rotate`, `pepper-status` or `pepper-finish`)\n"
            .to_string(),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

/// What `keys rotate` asks the running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationRequest {
    /// Start rotating the server key `b`.
    ServerKey,
    /// Start rotating the sealing key.
    SealKey,
    /// How the running (or last) server-key or sealing-key rotation goes.
    Status,
    /// Make a new pepper current, keeping the old one to verify older keys.
    Pepper,
    /// How many keys still need the old pepper.
    PepperStatus,
    /// Remove the old pepper.
    PepperFinish,
}

impl RotationRequest {
    const ALL: [Self; 6] = [
        Self::ServerKey,
        Self::SealKey,
        Self::Status,
        Self::Pepper,
        Self::PepperStatus,
        Self::PepperFinish,
    ];

    fn line(self) -> &'static str {
        match self {
            Self::ServerKey => "rotate",
            Self::SealKey => "rotate-seal",
            Self::Status => "rotate-status",
            Self::Pepper => "pepper-rotate",
            Self::PepperStatus => "pepper-status",
            Self::PepperFinish => "pepper-finish",
        }
    }
}

/// The reply to a rotation request.
async fn rotation_reply(
    request: &str,
    services: std::sync::Arc<crate::services::Services>,
) -> String {
    use crate::storage::RotationKind;
    if request == "rotate-status" {
        return format!("ok {}\n", one_line(&services.rotation_status()));
    }
    tracing::info!(request, "key rotation request over the control socket");
    let request = request.to_string();
    let result = tokio::task::spawn_blocking(move || match request.as_str() {
        "rotate" => services
            .start_rotation(RotationKind::ServerKey)
            .map(|()| "started".to_string()),
        "rotate-seal" => services
            .start_rotation(RotationKind::SealKey)
            .map(|()| "started".to_string()),
        "pepper-rotate" => services.start_pepper_rotation(),
        "pepper-finish" => services.finish_pepper_rotation(),
        _ => services.pepper_status(),
    })
    .await;
    match result {
        Ok(Ok(line)) => format!("ok {}\n", one_line(&line)),
        Ok(Err(e)) => format!("error {}\n", one_line(&e.to_string())),
        Err(e) => format!("error rotation task: {}\n", one_line(&e.to_string())),
    }
}

/// `onboard-server keys rotate`: ask the running server to rotate a key or
/// how a rotation goes; the server's reply line.
/// Only the control socket is tried (never the store, which a server still
/// starting may be about to open).
pub fn rotate_key(data_dir: &Path, request: RotationRequest) -> Result<String, BackupError> {
    control_request(data_dir, request.line()).map_err(|e| match e {
        BackupError::Server(m) if m.contains("cannot be reached") => BackupError::Server(format!(
            "{m}; a key rotation runs in the server: start it (`onboard-server serve`) and run this again"
        )),
        other => other,
    })
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MetaRepo as _, PrincipalRepo as _, Role};

    fn principal(name: &str) -> crate::storage::Principal {
        crate::storage::Principal {
            name: name.into(),
            role: Role::Advertiser,
            created: "2026-01-01T00:00:00Z".into(),
            webhook_url: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bak = dir.path().join("b.bak");
        {
            let store = crate::storage::open_store(&src).unwrap();
            store.create_principal(&principal("acme")).unwrap().unwrap();
            write_backup(store.as_ref(), &bak).unwrap();
            // The store is held: a second open sees it locked.
            assert!(crate::storage::try_open_at(&crate::storage::db_dir(&src))
                .unwrap()
                .is_none());
            assert!(matches!(
                restore(&src, &bak, true),
                Err(BackupError::InUse(_))
            ));
        }
        verify(&bak).unwrap();
        let dst = dir.path().join("dst");
        let r = restore(&dst, &bak, false).unwrap();
        assert!(!r.replaced);
        {
            let store = crate::storage::open_store(&dst).unwrap();
            assert_eq!(store.principals().unwrap().len(), 1);
            assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));
        }
        assert!(matches!(
            restore(&dst, &bak, false),
            Err(BackupError::NotEmpty(_))
        ));

        // Another schema version, correctly checksummed, is refused by version.
        let mut bytes = std::fs::read(&bak).unwrap();
        let body = bytes.len() - 32;
        bytes[15] = bytes[15].wrapping_add(1);
        let digest = Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&digest);
        let other = dir.path().join("other.bak");
        std::fs::write(&other, &bytes).unwrap();
        assert!(matches!(verify(&other), Err(BackupError::Version { .. })));
        // Cut short.
        let bytes = std::fs::read(&bak).unwrap();
        std::fs::write(&other, &bytes[..bytes.len() - 40]).unwrap();
        assert!(verify(&other).is_err());

        // A restore interrupted between its renames is named, not guessed.
        let db = crate::storage::db_dir(&dst);
        std::fs::rename(
            &db,
            db.with_file_name(format!("v{SCHEMA_VERSION}.replaced")),
        )
        .unwrap();
        assert!(matches!(
            restore(&dst, &bak, true),
            Err(BackupError::Interrupted(..))
        ));
    }

    #[test]
    fn a_snapshot_holds_writers_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::open_store(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        store.snapshot(|_| {
            let writer = store.clone();
            std::thread::spawn(move || {
                writer
                    .create_principal(&principal("late"))
                    .unwrap()
                    .unwrap();
                let _ = tx.send(());
            });
            // The writer cannot land while the snapshot runs.
            assert!(rx
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err());
            assert!(store.principal("late").unwrap().is_none());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(store.principal("late").unwrap().is_some());
    }
}
