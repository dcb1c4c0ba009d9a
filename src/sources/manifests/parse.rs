//! Manifest text → model objects. Pure (no I/O), so every rule here is unit-tested on strings.
//!
//! Each document is first parsed into a `serde_json::Value`, so one syntax pass serves YAML and JSON alike and the
//! dispatch on `apiVersion`/`kind` happens before any typed decoding; only then is the document decoded into its
//! k8s-openapi type and converted into the model at the edge.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1 as core_v1;
use k8s_openapi::api::discovery::v1 as discovery_v1;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ManifestError;
use crate::model::{ConvertError, Object, ObjectKey, convert};

/// How a file's text is parsed, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

/// The usable objects of one file (each key at most once) and what was wrong with the others.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub objects: Vec<Object>,
    pub problems: Vec<ManifestError>,
}

/// Parse a whole file. `Err` means the file as a whole is unusable (not text, or a syntax error), which the caller
/// treats as "keep what it held before": it is most likely being written.
pub(super) fn parse(path: &Path, format: Format, bytes: &[u8]) -> Result<Parsed, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|source| ManifestError::Encoding { path: path.into(), source })?;
    // Editors on some systems write a byte-order mark; serde_json rejects it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let documents = match format {
        Format::Yaml => serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options(text.len()))
            .map_err(|source| ManifestError::Yaml { path: path.into(), source: Box::new(source) })?,
        // A stream of JSON values, as `jq` prints them, is accepted as well as a single one.
        Format::Json => serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|source| ManifestError::Json { path: path.into(), source })?,
    };
    let mut collector = Collector { path, parsed: Parsed::default(), seen: HashSet::new() };
    for (i, document) in documents.into_iter().enumerate() {
        collector.document(document, format!("document {}", i + 1));
    }
    Ok(collector.parsed)
}

/// The parser's defaults, but with limits on documents, nodes and events that grow with the input: its fixed
/// defaults (1,024 documents, 250,000 nodes) reject a generated file of a few thousand Services. Without aliases a
/// file cannot hold more nodes than bytes, and the limits on aliases, which are what can blow up, are kept.
/// Errors are rendered without a source snippet so each fits on one log line.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = budget.max_documents.max(len);
    budget.max_nodes = budget.max_nodes.max(len);
    budget.max_events = budget.max_events.max(len.saturating_mul(4));
    serde_saphyr::options! { budget: Some(budget), with_snippet: false, emit_comments: false }
}

struct Collector<'a> {
    path: &'a Path,
    parsed: Parsed,
    seen: HashSet<ObjectKey>,
}

impl Collector<'_> {
    fn problem(&mut self, make: impl FnOnce(PathBuf) -> ManifestError) {
        self.parsed.problems.push(make(self.path.to_owned()));
    }

    fn document(&mut self, mut value: Value, place: String) {
        // An empty document (`---` followed by nothing, or `null`) holds nothing; it is not an error.
        if value.is_null() {
            return;
        }
        if !value.is_object() {
            return self.problem(|path| ManifestError::NotAnObject { path, object: place, reason: "not a mapping" });
        }
        let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
            return self.problem(|path| ManifestError::NotAnObject { path, object: place, reason: "kind is missing" });
        };
        // `kind: List` is what `kubectl get -o yaml` prints; typed lists (ServiceList…) are what the API returns.
        if kind.ends_with("List") {
            let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) else {
                let reason = "a list without an items array";
                return self.problem(|path| ManifestError::NotAnObject { path, object: place, reason });
            };
            for (j, item) in items.into_iter().enumerate() {
                self.document(item, format!("{place}, item {}", j + 1));
            }
            return;
        }
        match kind.as_str() {
            "Service" => self.object::<core_v1::Service>(value, place, |s| {
                Ok(convert::service(s)?.map(|s| Object::Service(Arc::new(s))))
            }),
            "EndpointSlice" => self.object::<discovery_v1::EndpointSlice>(value, place, |s| {
                Ok(convert::endpoint_slice(s)?.map(|s| Object::EndpointSlice(Arc::new(s))))
            }),
            "Node" => {
                self.object::<core_v1::Node>(value, place, |n| Ok(Some(Object::Node(Arc::new(convert::node(n)?)))))
            }
            other => {
                tracing::debug!(path = %self.path.display(), %place, kind = other, "skipping a kind the proxy does not use")
            }
        }
    }

    fn object<K: Resource + DeserializeOwned>(
        &mut self,
        value: Value,
        place: String,
        convert: impl FnOnce(&K) -> Result<Option<Object>, ConvertError>,
    ) {
        let object = describe::<K>(&value, &place);
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        if api_version != Some(K::API_VERSION) {
            let reason = match api_version {
                None => "apiVersion is missing".to_string(),
                Some(v) => format!("apiVersion {v:?} is not supported (want {})", K::API_VERSION),
            };
            return self.problem(|path| ManifestError::Unsupported { path, object, reason });
        }
        let wire: K = match serde_json::from_value(value) {
            Ok(wire) => wire,
            Err(source) => return self.problem(|path| ManifestError::Decode { path, object, source }),
        };
        match convert(&wire) {
            Ok(Some(object)) => {
                let key = object.key();
                if self.seen.insert(key.clone()) {
                    self.parsed.objects.push(object);
                } else {
                    self.problem(|path| ManifestError::DuplicateInFile { path, key });
                }
            }
            // Headless, ExternalName, another proxy's: valid, but nothing for this proxy to program.
            Ok(None) => tracing::debug!(path = %self.path.display(), %object, "object not proxied, skipped"),
            Err(source) => self.problem(|path| ManifestError::Convert { path, object, source }),
        }
    }
}

/// "Service default/web (document 2)", or just the place when the object has no usable name.
fn describe<K: Resource>(value: &Value, place: &str) -> String {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("name"), K::KIND) {
        (None, _) => place.to_string(),
        (Some(name), "Node") => format!("Node {name} ({place})"),
        (Some(name), kind) => format!("{kind} {}/{name} ({place})", field("namespace").unwrap_or("default")),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
