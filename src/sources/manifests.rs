//! The manifest-directory source (`--manifests DIR`): Services, EndpointSlices and Nodes read from `*.yaml`, `*.yml`
//! and `*.json` files in one directory, kept up to date by a filesystem watcher plus a periodic rescan.
//!
//! Files are re-read only when an event names them or their (len, mtime, inode) fingerprint changes, and a
//! re-read emits only the objects whose effective value changed, so one edited file among hundreds costs work
//! proportional to that file. When several files define one object, the lexically-first file wins. Bad input never
//! stops the source: a file that does not parse keeps its previous objects (it is probably being written), an
//! invalid object is treated as absent, and each problem is logged once per file content.

mod dir;
mod parse;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use self::dir::DirReader;
use self::watch::{Notice, Watch};
use super::SourceEvent;
use crate::core::Change;
use crate::model::{ConvertError, ObjectKey};

/// Events for one file are gathered until it has been quiet this long, so a burst of writes is read once.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// …but never longer than this after the first event, so a file written continuously is still picked up.
const MAX_DELAY: Duration = Duration::from_millis(250);
const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// What can go wrong with the manifest directory or a file in it. Only the first four are returned (by `check`
/// and `run`); the rest are logged and skipped, since bad input must not stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory does not exist.
    #[error("manifest directory {} does not exist", dir.display())]
    NotFound { dir: PathBuf },
    /// The path exists but is not a directory.
    #[error("manifest path {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// The directory cannot be inspected or listed.
    #[error("cannot read manifest directory {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory cannot be watched (changes then arrive with the periodic rescan only).
    #[error("cannot watch manifest directory {}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// A manifest file cannot be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest file is not UTF-8.
    #[error("{} is not UTF-8 text", path.display())]
    Encoding {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },
    /// A `.yaml`/`.yml` file is not valid YAML (boxed: the parser's error is large).
    #[error("{}: invalid YAML", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A `.json` file is not valid JSON.
    #[error("{}: invalid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A document is not a Kubernetes object at all.
    #[error("{}: {object}: {reason}", path.display())]
    NotAnObject { path: PathBuf, object: String, reason: &'static str },
    /// An object of a kind the proxy uses, but with an apiVersion it does not read.
    #[error("{}: {object}: {reason}", path.display())]
    Unsupported { path: PathBuf, object: String, reason: String },
    /// An object does not fit its Kubernetes schema (wrong field type, missing required field).
    #[error("{}: {object}: does not match the Kubernetes schema", path.display())]
    Decode {
        path: PathBuf,
        object: String,
        #[source]
        source: serde_json::Error,
    },
    /// An object fits the schema but holds an invalid value (bad IP, port out of range, unknown protocol…).
    #[error("{}: {object} is invalid", path.display())]
    Convert {
        path: PathBuf,
        object: String,
        #[source]
        source: ConvertError,
    },
    /// One file defines the same object twice; the first definition is used.
    #[error("{}: {key} is defined twice in this file; using the first definition", path.display())]
    DuplicateInFile { path: PathBuf, key: ObjectKey },
}

/// An error with its causes, on one line, for the log.
pub(super) fn report(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Fail with a clear message unless `dir` is a directory the proxy can list; the binary calls this at start-up.
pub fn check(dir: impl AsRef<Path>) -> Result<(), ManifestError> {
    let dir = dir.as_ref();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(ManifestError::NotADirectory { dir: dir.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ManifestError::NotFound { dir: dir.into() }),
        Err(source) => return Err(ManifestError::ReadDir { dir: dir.into(), source }),
    }
    std::fs::read_dir(dir).map(drop).map_err(|source| ManifestError::ReadDir { dir: dir.into(), source })
}

/// The manifest-directory source.
#[derive(Debug)]
pub struct ManifestSource {
    dir: PathBuf,
    rescan_interval: Duration,
    /// Files read so far, for tests.
    reads: Arc<AtomicU64>,
}

impl ManifestSource {
    /// A source reading `dir`; nothing happens until `run`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestSource { dir: dir.into(), rescan_interval: DEFAULT_RESCAN_INTERVAL, reads: Arc::default() }
    }

    /// How often the directory is listed to catch what the watcher missed (default 5 s; at least 10 ms).
    pub fn with_rescan_interval(mut self, d: Duration) -> Self {
        self.rescan_interval = d.max(Duration::from_millis(10));
        self
    }

    /// Same as the module's [`check`].
    pub fn check(dir: impl AsRef<Path>) -> Result<(), ManifestError> {
        check(dir)
    }

    /// Send every object of the directory, then `Synced`, then every change, until the receiver is dropped.
    /// Fails only if the directory cannot be listed at start-up.
    pub async fn run(self, tx: mpsc::Sender<SourceEvent>) -> Result<(), ManifestError> {
        let dir = std::path::absolute(&self.dir).map_err(|source| ManifestError::ReadDir { dir: self.dir, source })?;
        let (mut watch, mut notices) = Watch::new(dir.clone());
        // Watch before the first listing, so that nothing written in between is missed.
        watch.ensure();
        let reader = DirReader::new(dir, self.reads);
        let Some((mut reader, loaded)) = blocking(reader, |r| r.load(Instant::now())).await else { return Ok(()) };
        if !send(&tx, loaded?).await || tx.send(SourceEvent::Synced).await.is_err() {
            return Ok(());
        }

        let mut rescan = tokio::time::interval_at(Instant::now() + self.rescan_interval, self.rescan_interval);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending = Pending::default();
        loop {
            let wake = [pending.deadline(), reader.next_due()].into_iter().flatten().min();
            let (names, full) = tokio::select! {
                () = tx.closed() => return Ok(()),
                Some(notice) = notices.recv() => {
                    match notice {
                        Notice::Names { names, at } => pending.names.extend(names.into_iter().map(|n| (n, at))),
                        Notice::Rescan => pending.rescan = true,
                        Notice::Lost => {
                            watch.lost();
                            pending.rescan = true;
                        }
                    }
                    pending.touch(Instant::now());
                    continue;
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => pending.take(),
                _ = rescan.tick() => (BTreeMap::new(), true),
            };
            let full = full || watch.take_overflow();
            if full {
                watch.ensure();
            }
            let Some((next, changes)) = blocking(reader, move |r| r.refresh(names, full, Instant::now())).await else {
                return Ok(());
            };
            reader = next;
            if !send(&tx, changes).await {
                return Ok(());
            }
        }
    }
}

/// Events gathered for the next batch.
#[derive(Debug, Default)]
struct Pending {
    /// Files named by events, with when the last of those events was received.
    names: BTreeMap<OsString, Instant>,
    rescan: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Pending {
    fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn deadline(&self) -> Option<Instant> {
        Some((self.last? + DEBOUNCE).min(self.first? + MAX_DELAY))
    }

    fn take(&mut self) -> (BTreeMap<OsString, Instant>, bool) {
        let Pending { names, rescan, .. } = std::mem::take(self);
        (names, rescan)
    }
}

/// Run `f` on the reader on a blocking thread (file I/O must not stall the runtime), under the caller's tracing
/// subscriber. `None` if the runtime is shutting down.
async fn blocking<T: Send + 'static>(
    mut reader: DirReader,
    f: impl FnOnce(&mut DirReader) -> T + Send + 'static,
) -> Option<(DirReader, T)> {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let task = tokio::task::spawn_blocking(move || {
        let result = tracing::dispatcher::with_default(&dispatch, || f(&mut reader));
        (reader, result)
    });
    match task.await {
        Ok(done) => Some(done),
        // A panic while reading is a bug: let it surface where the source is awaited.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Send changes in order; false once the receiver is gone.
async fn send(tx: &mpsc::Sender<SourceEvent>, changes: Vec<Change>) -> bool {
    for change in changes {
        if tx.send(SourceEvent::Change(change)).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
