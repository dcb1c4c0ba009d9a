//! The `notify` watcher on the manifest directory, bridged into tokio. Events are boiled down on notify's thread to
//! the names of manifest files worth re-reading, or to "rescan"; the periodic rescan covers anything missed, so a
//! watcher that cannot be created or is lost only makes changes slower to arrive, never lost.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::dir::format_of;
use super::{ManifestError, report};

/// Notices queued before the source falls back to a full rescan.
const QUEUE: usize = 1024;

/// What a batch of filesystem events means for the source.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Notice {
    /// These manifest files may have changed, appeared or disappeared, as of `at` (when the event was received).
    Names { names: Vec<OsString>, at: Instant },
    /// Anything may have changed: list the directory.
    Rescan,
    /// The directory itself was removed or moved away: the watch is useless and must be re-created.
    Lost,
}

/// The watcher, re-created when lost, and the channel its notices arrive on.
pub(super) struct Watch {
    dir: PathBuf,
    watcher: Option<RecommendedWatcher>,
    tx: mpsc::Sender<Notice>,
    /// Set when a notice could not be queued; the source then rescans instead.
    overflow: Arc<AtomicBool>,
    /// The failure last logged, so a directory that stays unwatchable is logged once.
    error: Option<String>,
}

impl Watch {
    /// A watch on `dir` (absolute), not started yet.
    pub fn new(dir: PathBuf) -> (Self, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Watch { dir, watcher: None, tx, overflow: Arc::new(AtomicBool::new(false)), error: None }, rx)
    }

    /// Start watching if not watching yet; on failure log once and rely on rescans.
    pub fn ensure(&mut self) {
        if self.watcher.is_some() {
            return;
        }
        match self.start() {
            Ok(watcher) => {
                if self.error.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "watching the manifest directory again");
                }
                self.watcher = Some(watcher);
            }
            Err(e) => {
                let message = report(&e);
                if self.error.as_ref() != Some(&message) {
                    tracing::warn!("{message}; changes are picked up by the periodic rescan only");
                    self.error = Some(message);
                }
            }
        }
    }

    /// Drop a watch that no longer watches the directory (it followed the directory's old inode).
    pub fn lost(&mut self) {
        self.watcher = None;
    }

    /// Whether notices were dropped since the last call.
    pub fn take_overflow(&self) -> bool {
        self.overflow.swap(false, Ordering::Relaxed)
    }

    fn start(&self) -> Result<RecommendedWatcher, ManifestError> {
        let (dir, tx, overflow) = (self.dir.clone(), self.tx.clone(), self.overflow.clone());
        let handler = move |event: notify::Result<Event>| {
            if let Some(notice) = classify(&dir, event) {
                // Never block notify's thread; a full queue means "too much happened", which a rescan settles.
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(notice) {
                    overflow.store(true, Ordering::Relaxed);
                }
            }
        };
        let fail = |source| ManifestError::Watch { dir: self.dir.clone(), source };
        let mut watcher = notify::recommended_watcher(handler).map_err(fail)?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive).map_err(fail)?;
        Ok(watcher)
    }
}

/// What one notify event means. Runs on notify's thread, so it only looks at names.
fn classify(dir: &Path, event: notify::Result<Event>) -> Option<Notice> {
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "watching the manifest directory: {e}; rescanning");
            return Some(Notice::Rescan);
        }
    };
    if event.need_rescan() {
        return Some(Notice::Rescan);
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        // Opening and reading change nothing, and our own reads would otherwise trigger themselves.
        EventKind::Access(_) => return None,
        _ => {}
    }
    let mut names = Vec::new();
    let mut rescan = false;
    for path in &event.paths {
        if path == dir {
            return Some(match event.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => Notice::Lost,
                _ => Notice::Rescan,
            });
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
        if parent != dir {
            continue;
        }
        if format_of(name).is_some() {
            names.push(name.to_owned());
        } else if name.as_encoded_bytes().starts_with(b"..") {
            // A mounted ConfigMap is updated by swapping its hidden `..data` link: the visible files are links
            // through it, so their own names never appear in an event.
            rescan = true;
        }
    }
    if rescan {
        Some(Notice::Rescan)
    } else if names.is_empty() {
        None
    } else {
        Some(Notice::Names { names, at: Instant::now() })
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    use super::*;

    const DIR: &str = "/m";

    fn event(kind: EventKind, paths: &[&str]) -> Option<Notice> {
        let event = paths.iter().fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)));
        classify(Path::new(DIR), Ok(event))
    }

    fn names(notice: Option<Notice>) -> Vec<String> {
        match notice {
            Some(Notice::Names { names, .. }) => names.iter().map(|n| n.to_string_lossy().into_owned()).collect(),
            other => panic!("expected names, got {other:?}"),
        }
    }

    #[test]
    fn manifest_names_are_passed_on_and_others_dropped() {
        let modify = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(names(event(modify, &["/m/a.yaml"])), ["a.yaml"]);
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(names(event(rename, &["/m/a.yaml.tmp", "/m/a.yaml"])), ["a.yaml"]);
        assert_eq!(event(EventKind::Create(CreateKind::File), &["/m/a.yaml.tmp", "/m/.a.yaml.swp"]), None);
        assert_eq!(event(modify, &["/elsewhere/a.yaml"]), None);
    }

    #[test]
    fn our_own_reads_are_not_events() {
        assert_eq!(event(EventKind::Access(AccessKind::Open(AccessMode::Any)), &["/m/a.yaml"]), None);
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(names(event(closed, &["/m/a.yaml"])), ["a.yaml"]);
    }

    #[test]
    fn a_swapped_configmap_link_or_a_lost_directory_means_rescan() {
        assert_eq!(event(EventKind::Create(CreateKind::Other), &["/m/..data_tmp"]), Some(Notice::Rescan));
        assert_eq!(event(EventKind::Remove(RemoveKind::Folder), &[DIR]), Some(Notice::Lost));
        let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(Path::new(DIR), Ok(rescan)), Some(Notice::Rescan));
        assert_eq!(classify(Path::new(DIR), Err(notify::Error::generic("boom"))), Some(Notice::Rescan));
    }
}
