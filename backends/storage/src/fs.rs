//! The local filesystem as a [`Storage`].

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{validate_key, Capabilities, ListResult, ObjectMeta, ObjectWriter, PutMode, Result, Storage, StorageError};

/// A directory of the local filesystem; keys are paths relative to it.
///
/// Whole-object writes go to a temporary file in the same directory and are
/// then renamed (or hard-linked, for [`PutMode::Create`]) into place, so a
/// reader never sees half an object. Prefix renames are directory renames.
#[derive(Debug, Clone)]
pub struct LocalFileSystem {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalFileSystem {
    /// A store rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalFileSystem { root: root.into() }
    }

    /// The directory this store is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn dir_path(&self, prefix: &str) -> Result<PathBuf> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            Ok(self.root.clone())
        } else {
            self.path(prefix)
        }
    }
}

fn io_error(key: &str, source: std::io::Error) -> StorageError {
    if source.kind() == IoKind::NotFound {
        StorageError::NotFound { key: key.to_string() }
    } else {
        StorageError::Io { key: key.to_string(), source }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

fn read_range(path: &Path, key: &str, range: Range<u64>) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| io_error(key, e))?;
    let size = file.metadata().map_err(|e| io_error(key, e))?.len();
    if range.end > size || range.start > range.end {
        return Err(StorageError::OutOfRange { key: key.to_string(), start: range.start, end: range.end, size });
    }
    let len = (range.end - range.start) as usize;
    let mut buf = crate::buffer::zeroed(len).ok_or_else(|| {
        io_error(key, std::io::Error::new(IoKind::OutOfMemory, format!("cannot allocate {len} bytes")))
    })?;
    file.read_exact_at(&mut buf, range.start).map_err(|e| io_error(key, e))?;
    Ok(Bytes::from(buf))
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == IoKind::NotFound || e.kind() == IoKind::NotADirectory => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Renamed or deleted since read_dir (e.g. another writer's temporary file).
            Err(e) if e.kind() == IoKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if meta.is_file() {
            out.push(ObjectMeta { key, size: meta.len(), last_modified: meta.modified().ok() });
        }
    }
    Ok(())
}

/// Streams into a temporary file beside the target and renames it into place.
struct FileWriter {
    key: String,
    tmp: PathBuf,
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates the parent directories of `path` and a new temporary file beside it.
fn create_temp(path: &Path, key: &str) -> Result<(PathBuf, File)> {
    let dir = path.parent().expect("a validated key has a parent");
    fs::create_dir_all(dir).map_err(|e| io_error(key, e))?;
    let tmp = temp_path(path);
    let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| io_error(key, e))?;
    Ok((tmp, file))
}

fn temp_path(path: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[async_trait]
impl ObjectWriter for FileWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let mut file = self.file.take().expect("writer used after finish");
        let key = self.key.clone();
        let len = data.len() as u64;
        let (file, result) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data);
            (file, r)
        })
        .await
        .expect("write task");
        self.file = Some(file);
        result.map_err(|e| io_error(&key, e))?;
        self.written += len;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let file = self.file.take().expect("writer used after finish");
        let (tmp, path, key) = (self.tmp.clone(), self.path.clone(), self.key.clone());
        blocking(move || {
            let placed = file.sync_data().and_then(|_| fs::rename(&tmp, &path));
            placed.map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_error(&key, e)
            })
        })
        .await
    }

    fn written(&self) -> u64 {
        self.written
    }
}

#[async_trait]
impl Storage for LocalFileSystem {
    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let mut file = File::open(&path).map_err(|e| io_error(&key, e))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(|e| io_error(&key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || read_range(&path, &key, range)).await
    }

    async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Local reads are cheap per call; read each range with one pread so
        // no bytes between ranges are copied.
        let path = self.path(key)?;
        let key = key.to_string();
        let ranges = ranges.to_vec();
        blocking(move || ranges.into_iter().map(|r| read_range(&path, &key, r)).collect()).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| io_error(key, e))?;
        if !meta.is_file() {
            return Err(StorageError::NotFound { key: key.to_string() });
        }
        Ok(ObjectMeta { key: key.to_string(), size: meta.len(), last_modified: meta.modified().ok() })
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let (tmp, mut file) = create_temp(&path, &key)?;
            let written = file.write_all(&data).and_then(|_| file.sync_data());
            drop(file);
            let placed = written.and_then(|_| match mode {
                PutMode::Overwrite => fs::rename(&tmp, &path),
                PutMode::Create => fs::hard_link(&tmp, &path).and_then(|_| fs::remove_file(&tmp)),
            });
            placed.map_err(|e| {
                let _ = fs::remove_file(&tmp);
                if e.kind() == IoKind::AlreadyExists {
                    StorageError::AlreadyExists { key: key.clone() }
                } else {
                    io_error(&key, e)
                }
            })
        })
        .await
    }

    async fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let (tmp, file) = create_temp(&path, &key)?;
            Ok(Box::new(FileWriter { key, tmp, path, file: Some(file), written: 0 }) as Box<dyn ObjectWriter>)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io_error(key, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let dir = self.dir_path(prefix)?;
        if dir == self.root {
            return Err(StorageError::InvalidKey {
                key: prefix.to_string(),
                reason: "refusing to delete the store's root",
            });
        }
        let key = prefix.to_string();
        blocking(move || match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) if e.kind() == IoKind::NotADirectory => Ok(()),
            Err(e) => Err(io_error(&key, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let dir = self.dir_path(prefix)?;
        let rel = prefix.trim_end_matches('/').to_string();
        blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &rel, &mut out).map_err(|e| io_error(&rel, e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn list_with_delimiter(&self, prefix: &str) -> Result<ListResult> {
        let dir = self.dir_path(prefix)?;
        let rel = prefix.trim_end_matches('/').to_string();
        blocking(move || {
            let mut result = ListResult::default();
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == IoKind::NotFound || e.kind() == IoKind::NotADirectory => return Ok(result),
                Err(e) => return Err(io_error(&rel, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&rel, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let key = super::join_key(&rel, &name);
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Renamed or deleted since read_dir (e.g. another writer's temporary file).
                    Err(e) if e.kind() == IoKind::NotFound => continue,
                    Err(e) => return Err(io_error(&key, e)),
                };
                if meta.is_dir() {
                    result.prefixes.push(key);
                } else if meta.is_file() {
                    result.objects.push(ObjectMeta { key, size: meta.len(), last_modified: meta.modified().ok() });
                }
            }
            result.objects.sort_by(|a, b| a.key.cmp(&b.key));
            result.prefixes.sort();
            Ok(result)
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { atomic_rename: true, conditional_create: true, atomic_replace: cfg!(target_os = "linux") }
    }

    #[cfg(target_os = "linux")]
    async fn replace_prefix(&self, from: &str, to: &str) -> Result<()> {
        let from_path = self.dir_path(from)?;
        let to_path = self.dir_path(to)?;
        let key = to.to_string();
        blocking(move || {
            // renameat2(RENAME_EXCHANGE) swaps the two directories in one
            // step; the old contents then sit at `from` and are removed.
            use std::os::unix::ffi::OsStrExt;
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL");
            let (a, b) = (c(&from_path), c(&to_path));
            // SAFETY: both arguments are valid NUL-terminated paths for the duration of the call.
            let rc = unsafe {
                libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
            };
            if rc != 0 {
                return Err(io_error(&key, std::io::Error::last_os_error()));
            }
            fs::remove_dir_all(&from_path).map_err(|e| io_error(&key, e))
        })
        .await
    }

    async fn rename_prefix(&self, from: &str, to: &str) -> Result<()> {
        let from_path = self.dir_path(from)?;
        let to_path = self.dir_path(to)?;
        let to_key = to.to_string();
        blocking(move || {
            if let Some(parent) = to_path.parent() {
                fs::create_dir_all(parent).map_err(|e| io_error(&to_key, e))?;
            }
            fs::rename(&from_path, &to_path).map_err(|e| io_error(&to_key, e))
        })
        .await
    }
}
