//! The directory as last read, and the blocking I/O that refreshes it: listing with cheap fingerprints, reading only
//! the files named by events or whose fingerprint changed, and turning what was read into changes via the store.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::parse::{Format, parse};
use super::store::Store;
use super::{ManifestError, report};
use crate::core::Change;
use crate::model::ObjectKey;

/// How long a file that became empty while it defined objects may stay so before it is believed: a writer that
/// truncates and then rewrites in place must not delete every service in between.
const EMPTY_GRACE: Duration = Duration::from_millis(250);

/// Whether a directory entry is a manifest: `*.yaml`, `*.yml` or `*.json`, not hidden. Hidden names cover editors'
/// swap files and the `..data` links of a mounted ConfigMap.
pub(super) fn format_of(name: &OsStr) -> Option<Format> {
    if name.as_encoded_bytes().first() == Some(&b'.') {
        return None;
    }
    let ext = std::path::Path::new(name).extension()?;
    if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
        Some(Format::Yaml)
    } else if ext.eq_ignore_ascii_case("json") {
        Some(Format::Json)
    } else {
        None
    }
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Fingerprint { len: meta.len(), mtime: meta.modified().ok(), dev: meta.dev(), ino: meta.ino() }
    }
}

/// What is known about one manifest file.
#[derive(Debug, Default)]
struct Tracked {
    /// Of the version last read; `None` while it cannot be read, so every rescan tries again.
    fingerprint: Option<Fingerprint>,
    /// Hash of the content last parsed: the same content is neither parsed nor complained about twice.
    content: Option<u64>,
    /// The read error last logged, so a file that stays unreadable is logged once.
    error: Option<String>,
    /// When the file was first read empty while it still defined objects.
    empty_since: Option<Instant>,
    /// When the last read started: an event received before then is already accounted for.
    last_read: Option<Instant>,
}

enum Outcome {
    /// The file does not exist (or is not a regular file): its objects are gone.
    Gone,
    /// Nothing to change: same content, unreadable, unparseable or not yet believed empty.
    Keep,
    /// New content, to be parsed (the file's objects become what it holds).
    Parse(PathBuf, Vec<u8>),
}

/// The manifest directory's files and objects.
#[derive(Debug)]
pub(super) struct DirReader {
    dir: PathBuf,
    files: BTreeMap<OsString, Tracked>,
    store: Store,
    /// Files waiting out `EMPTY_GRACE`, with when to read them again.
    due: BTreeMap<OsString, Instant>,
    /// The directory listing error last logged.
    dir_error: Option<String>,
    /// Files read so far (tests check that a replaced file is read once).
    reads: Arc<AtomicU64>,
}

impl DirReader {
    pub fn new(dir: PathBuf, reads: Arc<AtomicU64>) -> Self {
        DirReader {
            store: Store::new(dir.clone()),
            dir,
            files: BTreeMap::new(),
            due: BTreeMap::new(),
            dir_error: None,
            reads,
        }
    }

    /// When a file waiting out its grace must be read again.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Read the whole directory for the first time. Fails only if it cannot be listed.
    pub fn load(&mut self, now: Instant) -> Result<Vec<Change>, ManifestError> {
        let names = self.listing()?;
        Ok(self.read(names, now))
    }

    /// Re-read the files `named` by events (unless read since the event), the files whose grace is over and, if
    /// `rescan`, every file whose fingerprint changed or that appeared or disappeared. A directory that cannot be
    /// listed is logged (once) and skipped. `now` must be taken before any of the reads.
    pub fn refresh(&mut self, named: BTreeMap<OsString, Instant>, rescan: bool, now: Instant) -> Vec<Change> {
        // Skipping is what keeps a file that a rescan happened to read between its event and the end of the
        // debounce from being read twice.
        let mut names: BTreeSet<OsString> = named
            .into_iter()
            .filter(|(name, at)| self.files.get(name).and_then(|t| t.last_read).is_none_or(|read| read <= *at))
            .map(|(name, _)| name)
            .collect();
        if rescan {
            match self.listing() {
                Ok(stale) => {
                    self.dir_error = None;
                    names.extend(stale);
                }
                Err(e) => {
                    let message = report(&e);
                    if self.dir_error.as_ref() != Some(&message) {
                        tracing::warn!("{message}; retrying at the next rescan");
                        self.dir_error = Some(message);
                    }
                }
            }
        }
        names.extend(self.due.iter().filter(|(_, at)| **at <= now).map(|(name, _)| name.clone()));
        self.read(names, now)
    }

    /// Manifest files that are new, gone, or whose fingerprint differs from the version last read.
    fn listing(&self) -> Result<BTreeSet<OsString>, ManifestError> {
        let fail = |source| ManifestError::ReadDir { dir: self.dir.clone(), source };
        let mut stale = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for entry in fs::read_dir(&self.dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            let name = entry.file_name();
            if format_of(&name).is_none() {
                continue;
            }
            // metadata follows symlinks, as reading does: a swapped link target is a change.
            let fingerprint = match fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() => Some(Fingerprint::of(&meta)),
                Ok(_) => None,
                // Let the read find out and report what is wrong (a dangling link is simply absent).
                Err(_) => {
                    stale.insert(name);
                    continue;
                }
            };
            let known = self.files.get(&name);
            let changed = match fingerprint {
                Some(_) => known.and_then(|t| t.fingerprint) != fingerprint,
                // Not a regular file (a directory, a FIFO): absent, which matters only if it was a file before.
                None => known.is_some(),
            };
            if changed {
                stale.insert(name.clone());
            }
            seen.insert(name);
        }
        stale.extend(self.files.keys().filter(|name| !seen.contains(*name)).cloned());
        Ok(stale)
    }

    fn read(&mut self, names: BTreeSet<OsString>, now: Instant) -> Vec<Change> {
        let mut affected: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut to_parse = Vec::new();
        for name in names {
            let Some(format) = format_of(&name) else { continue };
            match self.read_one(&name, now) {
                Outcome::Gone => {
                    self.files.remove(&name);
                    self.due.remove(&name);
                    self.store.remove_file(&name, &mut affected);
                }
                Outcome::Keep => {}
                Outcome::Parse(path, bytes) => to_parse.push((name, path, format, bytes)),
            }
        }
        for (name, result) in parse_all(to_parse) {
            match result {
                Ok(parsed) => {
                    for problem in &parsed.problems {
                        tracing::warn!("{}; skipped", report(problem));
                    }
                    self.store.set_file(&name, parsed.objects, &mut affected);
                }
                Err(e) => tracing::warn!("{}; the file's previous objects are kept", report(&e)),
            }
        }
        self.store.changes(affected)
    }

    fn read_one(&mut self, name: &OsString, now: Instant) -> Outcome {
        let path = self.dir.join(name);
        let (fingerprint, bytes) = match read_file(&path) {
            Ok(Some(read)) => read,
            Ok(None) => return Outcome::Gone,
            Err(source) => {
                let message = report(&ManifestError::ReadFile { path, source });
                // No fingerprint and no grace timer: the next rescan tries again, and not before.
                self.due.remove(name);
                let tracked = self.files.entry(name.clone()).or_default();
                tracked.fingerprint = None;
                if tracked.error.as_ref() != Some(&message) {
                    tracing::warn!("{message}; its objects are kept");
                    tracked.error = Some(message);
                }
                return Outcome::Keep;
            }
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let content = hasher.finish();
        let defines_any = self.store.defines_any(name);
        let tracked = self.files.entry(name.clone()).or_default();
        tracked.last_read = Some(now);
        tracked.error = None;
        if tracked.content == Some(content) {
            tracked.fingerprint = Some(fingerprint);
            tracked.empty_since = None;
            self.due.remove(name);
            return Outcome::Keep;
        }
        if bytes.is_empty() && defines_any {
            let since = *tracked.empty_since.get_or_insert(now);
            if now < since + EMPTY_GRACE {
                // Leave the fingerprint stale too, so nothing believes this version was taken in.
                self.due.insert(name.clone(), since + EMPTY_GRACE);
                return Outcome::Keep;
            }
        }
        self.due.remove(name);
        tracked.empty_since = None;
        tracked.fingerprint = Some(fingerprint);
        tracked.content = Some(content);
        Outcome::Parse(path, bytes)
    }
}

/// Parse files, on every CPU when there are many (the first read of a big directory is dominated by YAML
/// parsing), in the given order.
fn parse_all(
    files: Vec<(OsString, PathBuf, Format, Vec<u8>)>,
) -> Vec<(OsString, Result<super::parse::Parsed, ManifestError>)> {
    let parse_one = |(name, path, format, bytes): (OsString, PathBuf, Format, Vec<u8>)| {
        let result = parse(&path, format, &bytes);
        (name, result)
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len());
    if workers <= 1 {
        return files.into_iter().map(parse_one).collect();
    }
    let chunk = files.len().div_ceil(workers);
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut files = files.into_iter().peekable();
    while files.peek().is_some() {
        chunks.push(files.by_ref().take(chunk).collect());
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            chunks.into_iter().map(|c| scope.spawn(move || c.into_iter().map(parse_one).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("parsing does not panic")).collect()
    })
}

/// The fingerprint and content of a regular file; `None` if there is no regular file at `path`. The fingerprint is
/// taken from the open file before reading, so a write racing the read leaves it stale and the next rescan re-reads.
fn read_file(path: &std::path::Path) -> io::Result<Option<(Fingerprint, Vec<u8>)>> {
    // O_NONBLOCK so that a FIFO named like a manifest cannot hang the source; it changes nothing for regular files.
    let mut file: File = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(Some((Fingerprint::of(&meta), bytes)))
}
