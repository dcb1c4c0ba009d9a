//! What the API source has passed on, per object, so that relists and repeated events become only the real
//! differences. Pure: no I/O.

use std::collections::{HashMap, HashSet};

use crate::core::Change;
use crate::model::{Object, ObjectKey, ObjectKind};

/// Objects last passed on, and the progress of each kind's current (re)list.
#[derive(Debug, Default)]
pub struct Store {
    known: HashMap<ObjectKey, Object>,
    /// Keys seen since the last `Init` of each kind, while a list is in progress.
    listing: HashMap<ObjectKind, HashSet<ObjectKey>>,
    listed: HashSet<ObjectKind>,
}

impl Store {
    /// An object exists now (converted; `None` when it exists but the proxy ignores it, or it is invalid).
    pub fn apply(&mut self, key: ObjectKey, object: Option<Object>) -> Option<Change> {
        if let Some(seen) = self.listing.get_mut(&key.kind) {
            seen.insert(key.clone());
        }
        match object {
            Some(obj) => {
                if self.known.get(&key) == Some(&obj) {
                    return None;
                }
                self.known.insert(key, obj.clone());
                Some(Change::Upsert(obj))
            }
            None => self.known.remove(&key).map(|_| Change::Delete(key)),
        }
    }

    /// An object is gone.
    pub fn delete(&mut self, key: &ObjectKey) -> Option<Change> {
        self.known.remove(key).map(|_| Change::Delete(key.clone()))
    }

    /// A (re)list of `kind` starts.
    pub fn list_started(&mut self, kind: ObjectKind) {
        self.listing.insert(kind, HashSet::new());
    }

    /// A (re)list of `kind` is complete: whatever it did not mention is gone. Returns those deletions.
    pub fn list_done(&mut self, kind: ObjectKind) -> Vec<Change> {
        self.listed.insert(kind);
        let Some(seen) = self.listing.remove(&kind) else { return Vec::new() };
        let gone: Vec<ObjectKey> = self.known.keys().filter(|k| k.kind == kind && !seen.contains(k)).cloned().collect();
        gone.into_iter().filter_map(|k| self.delete(&k)).collect()
    }

    /// Every kind in `kinds` has completed at least one list.
    pub fn has_listed(&self, kinds: &[ObjectKind]) -> bool {
        kinds.iter().all(|k| self.listed.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::Protocol;
    use crate::model::fixtures::{service, svc_obj};

    fn svc(name: &str, port: u16) -> (ObjectKey, Object) {
        let obj = svc_obj(service("ns", name, "10.96.0.1", &[("http", Protocol::Tcp, port)]));
        (obj.key(), obj)
    }

    #[test]
    fn repeated_objects_pass_once() {
        let mut s = Store::default();
        let (k, o) = svc("a", 80);
        assert!(s.apply(k.clone(), Some(o.clone())).is_some());
        assert!(s.apply(k.clone(), Some(o)).is_none());
        let (_, changed) = svc("a", 81);
        assert!(matches!(s.apply(k, Some(changed)), Some(Change::Upsert(_))));
    }

    #[test]
    fn a_relist_passes_only_real_differences() {
        let mut s = Store::default();
        let (ka, a) = svc("a", 80);
        let (kb, b) = svc("b", 80);
        s.list_started(ObjectKind::Service);
        s.apply(ka.clone(), Some(a.clone()));
        s.apply(kb.clone(), Some(b));
        assert!(s.list_done(ObjectKind::Service).is_empty());
        assert!(s.has_listed(&[ObjectKind::Service]));
        // After a 410 Gone: relist; b vanished during the outage, a is unchanged.
        s.list_started(ObjectKind::Service);
        assert!(s.apply(ka, Some(a)).is_none());
        let gone = s.list_done(ObjectKind::Service);
        assert!(matches!(&gone[..], [Change::Delete(k)] if *k == kb), "{gone:?}");
    }

    #[test]
    fn an_object_that_becomes_ignored_is_deleted() {
        let mut s = Store::default();
        let (k, o) = svc("a", 80);
        s.apply(k.clone(), Some(o));
        assert!(matches!(s.apply(k.clone(), None), Some(Change::Delete(_))));
        assert!(s.apply(k, None).is_none());
        let _ = Arc::new(0);
    }
}
