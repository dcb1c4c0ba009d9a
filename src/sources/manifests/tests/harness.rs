//! Temp directories, log capture and a running source with helpers to await its events.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::{env, fs, process};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::super::{ManifestError, ManifestSource};
use crate::core::Change;
use crate::model::Object;
use crate::sources::SourceEvent;

pub(super) const WITHIN: Duration = Duration::from_secs(1);
pub(super) const QUIET: Duration = Duration::from_millis(500);
pub(super) const FAST_RESCAN: Duration = Duration::from_millis(100);

pub(super) fn svc(name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: ns\n\
         spec:\n  clusterIP: 10.0.0.1\n  ports:\n  - port: {port}\n    protocol: TCP\n"
    )
}

pub(super) fn docs(docs: &[String]) -> String {
    docs.join("---\n")
}

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("kube-proxy-rs-manifests-{}-{}", process::id(), N.fetch_add(1, Ordering::Relaxed));
        let path = env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub(super) fn write(&self, name: &str, text: &str) {
        fs::write(self.path(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Warnings logged by the source, captured per test (the tests run on current-thread runtimes, and the source
/// carries the caller's subscriber into its blocking reads).
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub(super) fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|l| l.contains(needle)).count()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) struct Harness {
    pub(super) dir: TempDir,
    pub(super) rx: mpsc::Receiver<SourceEvent>,
    reads: Arc<AtomicU64>,
    pub(super) logs: Logs,
    pub(super) task: JoinHandle<Result<(), ManifestError>>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

pub(super) fn summary(event: &SourceEvent) -> String {
    match event {
        SourceEvent::Change(Change::Upsert(o)) => format!("upsert {}", o.key()),
        SourceEvent::Change(Change::Delete(k)) => format!("delete {k}"),
        SourceEvent::Synced => "synced".to_string(),
    }
}

pub(super) fn port_of(event: &SourceEvent) -> u16 {
    match event {
        SourceEvent::Change(Change::Upsert(Object::Service(s))) => s.ports[0].port,
        other => panic!("not a service upsert: {other:?}"),
    }
}

impl Harness {
    /// Start a source on a directory holding `files`, and wait for its initial state.
    pub(super) async fn start(files: &[(&str, String)], rescan: Duration) -> (Self, BTreeSet<String>) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let dir = TempDir::new();
        for (name, text) in files {
            dir.write(name, text);
        }
        let source = ManifestSource::new(&dir.0).with_rescan_interval(rescan);
        let reads = source.reads.clone();
        let (tx, rx) = mpsc::channel(10_000);
        let task = tokio::spawn(source.run(tx));
        let mut harness = Harness { dir, rx, reads, logs, task, _log_guard: log_guard };
        let mut initial = BTreeSet::new();
        loop {
            let event = harness.next().await;
            if let SourceEvent::Synced = event {
                break;
            }
            assert!(initial.insert(summary(&event)), "emitted twice: {event:?}");
        }
        (harness, initial)
    }

    pub(super) async fn next(&mut self) -> SourceEvent {
        timeout(WITHIN, self.rx.recv()).await.expect("an event within 1 s").expect("the source is running")
    }

    /// The next `n` events, in order.
    pub(super) async fn changes(&mut self, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(summary(&self.next().await));
        }
        got
    }

    pub(super) async fn quiet(&mut self) {
        if let Ok(event) = timeout(QUIET, self.rx.recv()).await {
            panic!("expected no event, got {:?}", event.as_ref().map(summary));
        }
    }

    pub(super) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

pub(super) fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}
