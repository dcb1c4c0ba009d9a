//! `--config FILE`: a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1), as kubeadm writes it into the
//! kube-proxy ConfigMap. Decoded like upstream: a wrong type is an error naming the field and its line; an
//! unknown field is a warning (upstream decodes strictly, then leniently); zero values mean "default".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration;

/// A Go duration string ("30s", "1m0s"); `null` and "0s" both mean "default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&duration::format(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        match s {
            None => Ok(GoDuration::default()),
            Some(s) => duration::parse(&s).map(GoDuration).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientConnection {
    pub accept_content_types: String,
    pub burst: i32,
    pub content_type: String,
    pub kubeconfig: String,
    pub qps: f32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Conntrack {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_be_liberal: bool,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub udp_stream_timeout: GoDuration,
    pub udp_timeout: GoDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectLocal {
    pub bridge_interface: String,
    pub interface_name_prefix: String,
}

/// The `iptables` and `nftables` sections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModeSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localhost_node_ports: Option<bool>,
    pub masquerade_all: bool,
    pub masquerade_bit: Option<i32>,
    pub min_sync_period: GoDuration,
    pub sync_period: GoDuration,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Ipvs {
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    pub min_sync_period: GoDuration,
    pub scheduler: String,
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    pub sync_period: GoDuration,
    pub tcp_fin_timeout: GoDuration,
    pub tcp_timeout: GoDuration,
    pub udp_timeout: GoDuration,
}

/// Every field of upstream's v1alpha1 KubeProxyConfiguration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeProxyConfiguration {
    pub api_version: String,
    pub kind: String,
    pub bind_address: String,
    pub bind_address_hard_fail: bool,
    pub client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub config_sync_period: GoDuration,
    pub conntrack: Conntrack,
    pub detect_local: DetectLocal,
    pub detect_local_mode: String,
    pub enable_profiling: bool,
    pub feature_gates: BTreeMap<String, bool>,
    pub healthz_bind_address: String,
    pub hostname_override: String,
    pub iptables: ModeSection,
    pub ipvs: Ipvs,
    /// Component-base logging options: accepted; only `verbosity` is used.
    pub logging: serde_json::Value,
    pub metrics_bind_address: String,
    pub mode: String,
    pub nftables: ModeSection,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub port_range: String,
    pub show_hidden_metrics_for_version: String,
    /// Windows-only settings: accepted and ignored.
    pub winkernel: serde_json::Value,
}

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("--config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {path}: not YAML: {message}")]
    Syntax { path: String, message: String },
    /// A field has the wrong type or an invalid value.
    #[error("--config {path}: field {field}{line}: {message}")]
    Field { path: String, field: String, line: String, message: String },
}

/// A decoded file and the warnings upstream would print (unknown fields).
#[derive(Debug)]
pub struct Decoded {
    pub config: KubeProxyConfiguration,
    pub warnings: Vec<String>,
    /// The file's text, to find fields' lines in later error messages.
    pub text: String,
}

/// The line (1-based) where a dotted field path appears in YAML `text`, found by indentation.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut indent: Option<usize> = None;
    let mut found = None;
    let mut lines = text.lines().enumerate();
    for segment in path.split('.').map(|s| s.split('[').next().unwrap_or(s)) {
        found = None;
        for (n, line) in lines.by_ref() {
            let depth = line.len() - line.trim_start().len();
            if indent.is_some_and(|i| depth <= i) && !line.trim().is_empty() {
                return None;
            }
            let key = line.trim_start().trim_start_matches("- ");
            if key.strip_prefix(segment).is_some_and(|rest| rest.starts_with(':')) {
                indent = Some(depth);
                found = Some(n + 1);
                break;
            }
        }
        found?;
    }
    found
}

fn at_line(text: &str, field: &str) -> String {
    line_of(text, field).map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// Decode the file at `path`.
pub fn read(path: &str) -> Result<Decoded, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.into(), source })?;
    decode(path, &text)
}

/// Decode `text` (named `path` in messages).
pub fn decode(path: &str, text: &str) -> Result<Decoded, FileError> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| FileError::Syntax {
        path: path.into(),
        message: e.to_string().lines().next().unwrap_or("").into(),
    })?;
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let result: Result<KubeProxyConfiguration, _> =
        serde_ignored::deserialize(de, |ignored| unknown.push(ignored.to_string()));
    let config = result.map_err(|e| {
        let field = track.path().to_string();
        FileError::Field { path: path.into(), line: at_line(text, &field), field, message: e.to_string() }
    })?;
    let field_error = |field: &str, message: String| FileError::Field {
        path: path.into(),
        field: field.into(),
        line: at_line(text, field),
        message,
    };
    if config.kind != "KubeProxyConfiguration" {
        return Err(field_error("kind", format!("{:?}: want KubeProxyConfiguration", config.kind)));
    }
    if config.api_version != API_VERSION {
        return Err(field_error("apiVersion", format!("{:?}: want {API_VERSION}", config.api_version)));
    }
    let warnings = unknown
        .into_iter()
        .map(|field| format!("--config {path}: unknown field {field}{} ignored", at_line(text, &field)))
        .collect();
    Ok(Decoded { config, warnings, text: text.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = include_str!("../../tests/fixtures/kubeadm-config.conf");

    #[test]
    fn kubeadm_output_decodes_without_warnings() {
        let d = decode("config.conf", KUBEADM).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(d.config.cluster_cidr, "10.244.0.0/16");
        assert_eq!(d.config.client_connection.kubeconfig, "/var/lib/kube-proxy/kubeconfig.conf");
        assert_eq!(d.config.iptables.sync_period, GoDuration(Duration::ZERO), "0s: default");
        assert_eq!(d.config.nftables.masquerade_bit, None);
    }

    #[test]
    fn unknown_fields_are_warnings_naming_field_and_line() {
        let text = KUBEADM.replace("  tcpBeLiberal: false\n", "  tcpBeLiberal: false\n  tcpSomething: 3\n");
        let d = decode("config.conf", &text).unwrap();
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].contains("conntrack.tcpSomething") && d.warnings[0].contains("(line 16)"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn wrong_types_are_errors_naming_field_and_line() {
        let text = KUBEADM
            .replace("  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:", "  minSyncPeriod: 0s\n  syncPeriod: soon\nipvs:");
        let err = decode("config.conf", &text).unwrap_err().to_string();
        assert!(err.contains("iptables.syncPeriod") && err.contains("line 32") && err.contains("soon"), "{err}");
        let text = KUBEADM.replace("nftables:\n  masqueradeAll: false", "nftables:\n  masqueradeAll: yes please");
        let err = decode("config.conf", &text).unwrap_err().to_string();
        assert!(err.contains("nftables.masqueradeAll") && err.contains("line 54"), "{err}");
        let err = decode("c", "apiVersion: v1\nkind: KubeProxyConfiguration\n").unwrap_err().to_string();
        assert!(err.contains("apiVersion") && err.contains("line 1"), "{err}");
        let err = decode("c", "kind: [unclosed\n").unwrap_err().to_string();
        assert!(err.contains("not YAML"), "{err}");
    }

    #[test]
    fn line_of_follows_indentation() {
        let t = "a:\n  b: 1\nc:\n  b: 2\n  d:\n    b: 3\n";
        assert_eq!(line_of(t, "c.b"), Some(4));
        assert_eq!(line_of(t, "c.d.b"), Some(6));
        assert_eq!(line_of(t, "a.d"), None);
    }
}
