//! Value separation for the sled backend: bulk values (graph chunks, cache
//! runs, graph-pass pages, uploads) live in append-only blob files beside the
//! database and sled keeps a 20-byte [`BlobRef`] to each.
//!
//! Why: sled keeps what it writes resident (measured: 1.5 GB written as
//! 128 KiB values gave 1.5 GB of RSS, whatever its cache setting), and the
//! server's budget is 1 GiB at ten million graph identifiers. Blob bytes are
//! read with `pread` and left to the OS page cache.
//!
//! Files are named `<base>.<generation>`; a base belongs to one owner (a graph
//! version, a cache namespace, a job), so deleting the owner deletes its
//! files. Rewriting an owner (erasure) writes generation `g + 1`, switches
//! the pointers in one sled batch, then deletes generation `g`.
//!
//! Crash safety: bytes are synced before a pointer to them is written, so a
//! pointer never outlives its bytes; bytes without a pointer (a crash between
//! the two) are dead space, gone with their file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a value lives: file generation, offset, length, CRC-32 of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// Generation of the owner's file.
    pub generation: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// CRC-32 (IEEE) of the bytes.
    pub crc: u32,
}

impl BlobRef {
    /// Encoded length.
    pub const LEN: usize = 20;

    /// Fixed 20-byte encoding, big-endian.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.generation.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out[16..].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// Decode; `None` if `bytes` is not 20 bytes long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = bytes.try_into().ok()?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Self {
            generation: u32_at(0),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32_at(12),
            crc: u32_at(16),
        })
    }
}

/// A blob failure: I/O, or bytes that do not match their pointer.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file system failed.
    #[error("blob file {file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: io::Error,
    },
    /// Checksum or length mismatch.
    #[error("blob file {0}: stored bytes do not match their checksum")]
    Corrupt(String),
    /// A value too large for one blob (4 GiB).
    #[error("a value of {0} bytes is too large for one blob")]
    TooLarge(usize),
}

struct Handle {
    file: File,
    /// Appends are serialised per file; the value is the file's length.
    end: Mutex<u64>,
}

/// The blob files of one store.
pub struct Blobs {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Handle>>>,
}

fn file_name(base: &str, generation: u32) -> String {
    format!("{base}.{generation}")
}

impl Blobs {
    /// Blob files under `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle on a file that must exist (reads never create files).
    fn existing(&self, name: &str) -> Result<Arc<Handle>, BlobError> {
        if !self.handles().contains_key(name) && !self.dir.join(name).exists() {
            return Err(BlobError::Io {
                file: name.to_string(),
                source: io::ErrorKind::NotFound.into(),
            });
        }
        self.handle(name)
    }

    fn handle(&self, name: &str) -> Result<Arc<Handle>, BlobError> {
        let io = |source| BlobError::Io {
            file: name.to_string(),
            source,
        };
        if let Some(h) = self.handles().get(name) {
            return Ok(h.clone());
        }
        let path = self.dir.join(name);
        let created = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if created {
            // The new directory entry must survive a crash like its bytes.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let end = file.metadata().map_err(io)?.len();
        let h = Arc::new(Handle {
            file,
            end: Mutex::new(end),
        });
        Ok(self.handles().entry(name.to_string()).or_insert(h).clone())
    }

    /// Append `bytes` to `base`'s file of `generation`, synced to disk.
    pub fn append(&self, base: &str, generation: u32, bytes: &[u8]) -> Result<BlobRef, BlobError> {
        let r = self.append_unsynced(base, generation, bytes)?;
        self.sync(base, generation)?;
        Ok(r)
    }

    /// Append without syncing; call [`Blobs::sync`] before publishing the pointer.
    pub fn append_unsynced(
        &self,
        base: &str,
        generation: u32,
        bytes: &[u8],
    ) -> Result<BlobRef, BlobError> {
        let name = file_name(base, generation);
        let len = u32::try_from(bytes.len()).map_err(|_| BlobError::TooLarge(bytes.len()))?;
        let h = self.handle(&name)?;
        let mut end = h.end.lock().unwrap_or_else(|p| p.into_inner());
        let offset = *end;
        h.file
            .write_all_at(bytes, offset)
            .map_err(|source| BlobError::Io {
                file: name.clone(),
                source,
            })?;
        *end += u64::from(len);
        Ok(BlobRef {
            generation,
            offset,
            len,
            crc: crc32fast::hash(bytes),
        })
    }

    /// Make every append to `base`'s file of `generation` durable.
    pub fn sync(&self, base: &str, generation: u32) -> Result<(), BlobError> {
        let name = file_name(base, generation);
        self.handle(&name)?
            .file
            .sync_data()
            .map_err(|source| BlobError::Io { file: name, source })
    }

    /// Read a value back, checking its checksum.
    pub fn read(&self, base: &str, r: &BlobRef) -> Result<Vec<u8>, BlobError> {
        let name = file_name(base, r.generation);
        let h = self.existing(&name)?;
        let mut buf = vec![0u8; r.len as usize];
        h.file
            .read_exact_at(&mut buf, r.offset)
            .map_err(|source| BlobError::Io {
                file: name.clone(),
                source,
            })?;
        if crc32fast::hash(&buf) != r.crc {
            return Err(BlobError::Corrupt(name));
        }
        Ok(buf)
    }

    /// Read a value as a stream of `window`-byte reads (for values too
    /// large to hold whole); the checksum is checked when the last window
    /// arrives, before its bytes are handed out.
    pub fn stream(&self, base: &str, r: &BlobRef, window: usize) -> Result<BlobStream, BlobError> {
        let name = file_name(base, r.generation);
        Ok(BlobStream {
            handle: self.existing(&name)?,
            name,
            blob: *r,
            read: 0,
            buf: Vec::with_capacity(window),
            pos: 0,
            crc: crc32fast::Hasher::new(),
            window: window.max(1),
        })
    }

    /// Delete every generation of `base`'s files.
    pub fn remove(&self, base: &str) -> Result<(), BlobError> {
        self.remove_where(|name| {
            name.rsplit_once('.')
                .is_some_and(|(b, g)| b == base && g.parse::<u32>().is_ok())
        })
    }

    /// Delete one generation of `base`'s files.
    pub fn remove_generation(&self, base: &str, generation: u32) -> Result<(), BlobError> {
        let target = file_name(base, generation);
        self.remove_where(|name| name == target)
    }

    /// Delete every generation of `base`'s files except those in `keep`:
    /// after a rewrite, the files no pointer refers to any more (also those a
    /// crash between the pointer switch and the deletion left behind).
    pub fn remove_generations_except(&self, base: &str, keep: &[u32]) -> Result<(), BlobError> {
        self.remove_where(|name| {
            name.rsplit_once('.').is_some_and(|(b, g)| {
                b == base && g.parse::<u32>().is_ok_and(|g| !keep.contains(&g))
            })
        })
    }

    /// The bases with at least one file whose base starts with `prefix`.
    pub fn bases_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeSet<String>, BlobError> {
        let io = |source| BlobError::Io {
            file: self.dir.display().to_string(),
            source,
        };
        let mut out = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some((base, generation)) = name.to_str().and_then(|n| n.rsplit_once('.')) else {
                continue;
            };
            if base.starts_with(prefix) && generation.parse::<u32>().is_ok() {
                out.insert(base.to_string());
            }
        }
        Ok(out)
    }

    fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<(), BlobError> {
        let io = |source| BlobError::Io {
            file: self.dir.display().to_string(),
            source,
        };
        self.handles().retain(|name, _| !matches(name));
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_str().is_some_and(&matches) {
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// A blob read front to back in windows: [`BlobStream::fill`] then
/// [`BlobStream::peek`] and [`BlobStream::advance`].
pub struct BlobStream {
    handle: Arc<Handle>,
    name: String,
    blob: BlobRef,
    /// Bytes of the blob read from the file so far.
    read: u64,
    buf: Vec<u8>,
    pos: usize,
    crc: crc32fast::Hasher,
    window: usize,
}

impl BlobStream {
    /// The blob's length in bytes.
    pub fn blob_len(&self) -> u64 {
        u64::from(self.blob.len)
    }

    /// Make `n` bytes available at the read position: `Ok(false)` at the
    /// blob's clean end, an error if the blob ends inside them.
    pub fn fill(&mut self, n: usize) -> Result<bool, BlobError> {
        while self.buf.len() - self.pos < n {
            let total = u64::from(self.blob.len);
            if self.read == total {
                return if self.buf.len() == self.pos {
                    Ok(false)
                } else {
                    Err(BlobError::Corrupt(self.name.clone()))
                };
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            let take = (total - self.read).min(self.window.max(n) as u64) as usize;
            let start = self.buf.len();
            self.buf.resize(start + take, 0);
            self.handle
                .file
                .read_exact_at(&mut self.buf[start..], self.blob.offset + self.read)
                .map_err(|source| BlobError::Io {
                    file: self.name.clone(),
                    source,
                })?;
            self.crc.update(&self.buf[start..]);
            self.read += take as u64;
            if self.read == total && self.crc.clone().finalize() != self.blob.crc {
                return Err(BlobError::Corrupt(self.name.clone()));
            }
        }
        Ok(true)
    }

    /// The buffered bytes at the read position.
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Consume `n` buffered bytes.
    pub fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let a = blobs.append("job-1", 0, b"first value").unwrap();
        let b = blobs.append("job-1", 0, b"second").unwrap();
        let c = blobs.append("job-2", 3, b"other owner").unwrap();
        assert_eq!(b.offset, 11);
        assert_eq!(BlobRef::decode(&a.encode()), Some(a));
        assert_eq!(blobs.read("job-1", &a).unwrap(), b"first value");
        assert_eq!(blobs.read("job-1", &b).unwrap(), b"second");
        assert_eq!(blobs.read("job-2", &c).unwrap(), b"other owner");
        let wrong = BlobRef {
            crc: a.crc ^ 1,
            ..a
        };
        assert!(matches!(
            blobs.read("job-1", &wrong),
            Err(BlobError::Corrupt(_))
        ));
        blobs.remove("job-1").unwrap();
        assert!(!dir.path().join("job-1.0").exists());
        assert!(dir.path().join("job-2.3").exists());
        // A reopened store appends after what is there.
        drop(blobs);
        let blobs = Blobs::open(dir.path()).unwrap();
        let d = blobs.append("job-2", 3, b"more").unwrap();
        assert_eq!(d.offset, 11);
        blobs.append("job-2", 5, b"newer").unwrap();
        blobs.append("job-2-runs", 0, b"another base").unwrap();
        blobs.remove_generations_except("job-2", &[3]).unwrap();
        assert!(!dir.path().join("job-2.5").exists());
        assert!(
            dir.path().join("job-2-runs.0").exists(),
            "another base is kept"
        );
        blobs.remove_generation("job-2", 3).unwrap();
        assert!(!dir.path().join("job-2.3").exists());
        assert!(blobs.read("job-2", &c).is_err());
        assert!(!dir.path().join("job-2.3").exists(), "reads create nothing");
    }

    #[test]
    fn streams_in_windows_and_checks_the_sum() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        blobs.append("b", 0, b"xx").unwrap();
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let r = blobs.append("b", 0, &bytes).unwrap();
        let mut s = blobs.stream("b", &r, 64).unwrap();
        let mut got = Vec::new();
        while s.fill(10).unwrap() {
            got.extend_from_slice(&s.peek()[..10]);
            s.advance(10);
        }
        assert_eq!(got, bytes);
        let mut s = blobs.stream("b", &r, 64).unwrap();
        assert!(s.fill(999).unwrap());
        s.advance(999);
        assert!(s.fill(2).is_err(), "the blob ends inside the record");
        let bad = BlobRef {
            crc: r.crc ^ 1,
            ..r
        };
        let mut s = blobs.stream("b", &bad, 64).unwrap();
        let mut failed = false;
        for _ in 0..200 {
            match s.fill(10) {
                Ok(true) => s.advance(10),
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "a bad checksum is reported");
    }
}
