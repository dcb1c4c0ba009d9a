//! Which file defines which object, and what was last emitted for each key. Pure bookkeeping: replacing one file
//! touches only that file's keys, so a change among hundreds of files costs work proportional to that one file.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;

use crate::core::Change;
use crate::model::{Object, ObjectKey};

/// The objects of every file, and the effective object of every key as last emitted.
#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
    files: HashMap<OsString, HashMap<ObjectKey, Object>>,
    /// Files defining each key, sorted so the first is the lexically-first file, whose object wins. Nearly always
    /// one: a shared name in a vector costs far less than a set per key.
    defined_by: HashMap<ObjectKey, Vec<Arc<OsStr>>>,
    emitted: HashMap<ObjectKey, Object>,
    /// Keys already warned about as defined by several files, so the warning is not repeated on every change.
    warned_duplicates: HashSet<ObjectKey>,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Store {
            dir,
            files: HashMap::new(),
            defined_by: HashMap::new(),
            emitted: HashMap::new(),
            warned_duplicates: HashSet::new(),
        }
    }

    /// Whether a file currently contributes any object.
    pub fn defines_any(&self, file: &OsString) -> bool {
        self.files.get(file).is_some_and(|objects| !objects.is_empty())
    }

    /// Replace the objects of `file` (each key at most once), recording the keys that may have changed.
    pub fn set_file(&mut self, file: &OsString, objects: Vec<Object>, affected: &mut BTreeSet<ObjectKey>) {
        let new: HashMap<ObjectKey, Object> = objects.into_iter().map(|o| (o.key(), o)).collect();
        let name: Arc<OsStr> = Arc::from(file.as_os_str());
        for key in new.keys() {
            let files = self.defined_by.entry(key.clone()).or_default();
            if let Err(at) = files.binary_search(&name) {
                files.insert(at, name.clone());
            }
            affected.insert(key.clone());
        }
        if let Some(old) = self.files.insert(file.clone(), new) {
            self.forget(file, old, affected);
        }
    }

    /// Forget a file that is gone.
    pub fn remove_file(&mut self, file: &OsString, affected: &mut BTreeSet<ObjectKey>) {
        if let Some(old) = self.files.remove(file) {
            self.forget(file, old, affected);
        }
    }

    /// Unlink the old keys of `file` that it no longer defines.
    fn forget(&mut self, file: &OsString, old: HashMap<ObjectKey, Object>, affected: &mut BTreeSet<ObjectKey>) {
        let current = self.files.get(file);
        for key in old.into_keys() {
            if current.is_some_and(|objects| objects.contains_key(&key)) {
                continue;
            }
            if let Some(files) = self.defined_by.get_mut(&key) {
                files.retain(|f| **f != **file);
                if files.is_empty() {
                    self.defined_by.remove(&key);
                }
            }
            affected.insert(key);
        }
    }

    /// The changes that bring the emitted state of `affected` keys to the effective one: an Upsert only when the
    /// effective object differs from the one last emitted, a Delete only when no file defines the key any more.
    pub fn changes(&mut self, affected: BTreeSet<ObjectKey>) -> Vec<Change> {
        let mut changes = Vec::new();
        for key in affected {
            let files = self.defined_by.get(&key);
            let effective = files.and_then(|f| f.first()).and_then(|f| self.files.get(&**f)).and_then(|o| o.get(&key));
            match files {
                Some(files) if files.len() > 1 => {
                    if self.warned_duplicates.insert(key.clone()) {
                        let names: Vec<_> = files.iter().map(|f| f.to_string_lossy()).collect();
                        tracing::warn!(
                            dir = %self.dir.display(),
                            "{key} is defined in several files ({}); using the first, {}",
                            names.join(", "),
                            names[0],
                        );
                    }
                }
                _ => {
                    self.warned_duplicates.remove(&key);
                }
            }
            match (effective, self.emitted.get(&key)) {
                (Some(now), Some(before)) if now == before => {}
                (Some(now), _) => {
                    self.emitted.insert(key, now.clone());
                    changes.push(Change::Upsert(now.clone()));
                }
                (None, Some(_)) => {
                    self.emitted.remove(&key);
                    changes.push(Change::Delete(key));
                }
                (None, None) => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::model::fixtures::{service, svc_obj};

    fn svc(name: &str, port: u16) -> Object {
        svc_obj(service("default", name, "10.0.0.1", &[("", Protocol::Tcp, port)]))
    }

    fn set(store: &mut Store, file: &str, objects: Vec<Object>) -> Vec<Change> {
        let mut affected = BTreeSet::new();
        store.set_file(&file.into(), objects, &mut affected);
        store.changes(affected)
    }

    fn remove(store: &mut Store, file: &str) -> Vec<Change> {
        let mut affected = BTreeSet::new();
        store.remove_file(&file.into(), &mut affected);
        store.changes(affected)
    }

    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(o) => format!("upsert {}", o.key()),
                Change::Delete(k) => format!("delete {k}"),
            })
            .collect()
    }

    #[test]
    fn only_real_changes_are_emitted() {
        let mut store = Store::new("/m".into());
        assert_eq!(summary(&set(&mut store, "a.yaml", vec![svc("x", 80), svc("y", 80)])).len(), 2);
        assert!(set(&mut store, "a.yaml", vec![svc("x", 80), svc("y", 80)]).is_empty());
        assert_eq!(summary(&set(&mut store, "a.yaml", vec![svc("x", 81), svc("y", 80)])), ["upsert Service default/x"]);
        assert_eq!(summary(&set(&mut store, "a.yaml", vec![svc("x", 81)])), ["delete Service default/y"]);
        assert_eq!(summary(&remove(&mut store, "a.yaml")), ["delete Service default/x"]);
        assert!(!store.defines_any(&"a.yaml".into()));
        assert!(store.defined_by.is_empty() && store.emitted.is_empty());
    }

    #[test]
    fn moving_an_object_between_files_emits_nothing() {
        let mut store = Store::new("/m".into());
        set(&mut store, "a.yaml", vec![svc("x", 80)]);
        let mut affected = BTreeSet::new();
        store.remove_file(&"a.yaml".into(), &mut affected);
        store.set_file(&"b.yaml".into(), vec![svc("x", 80)], &mut affected);
        assert!(store.changes(affected).is_empty());
    }

    #[test]
    fn the_lexically_first_file_wins() {
        let mut store = Store::new("/m".into());
        set(&mut store, "b.yaml", vec![svc("x", 2)]);
        assert_eq!(summary(&set(&mut store, "a.yaml", vec![svc("x", 1)])), ["upsert Service default/x"]);
        assert!(store.warned_duplicates.contains(&svc("x", 1).key()));
        // The losing file's changes are invisible while the winner defines the key.
        assert!(set(&mut store, "b.yaml", vec![svc("x", 3)]).is_empty());
        let changes = remove(&mut store, "a.yaml");
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], Change::Upsert(o) if *o == svc("x", 3)));
        assert!(store.warned_duplicates.is_empty());
    }
}
