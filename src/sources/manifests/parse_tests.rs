use std::path::Path;

use super::*;
use crate::model::ObjectKind;
use crate::sources::manifests::report;

const PATH: &str = "/m/f.yaml";

fn yaml(text: &str) -> Parsed {
    parse(Path::new(PATH), Format::Yaml, text.as_bytes()).expect("parses")
}

fn keys(parsed: &Parsed) -> Vec<String> {
    parsed.objects.iter().map(|o| o.key().to_string()).collect()
}

fn problems(parsed: &Parsed) -> Vec<String> {
    parsed.problems.iter().map(|p| report(p)).collect()
}

pub(super) fn service_yaml(name: &str, ip: &str, port: &str, protocol: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: ns\n\
         spec:\n  clusterIP: {ip}\n  ports:\n  - port: {port}\n    protocol: {protocol}\n"
    )
}

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: ns
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.5]
  nodeName: n1
"#;

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
status:
  addresses: [{type: InternalIP, address: 192.168.0.1}]
"#;

#[test]
fn documents_of_all_three_kinds() {
    let text = format!("{}---\n{SLICE}---\n{NODE}", service_yaml("web", "10.0.0.1", "80", "TCP"));
    let parsed = yaml(&text);
    assert_eq!(keys(&parsed), ["Service ns/web", "EndpointSlice ns/web-abc", "Node n1"]);
    assert!(parsed.problems.is_empty());
}

#[test]
fn empty_documents_and_empty_files_hold_nothing() {
    assert!(keys(&yaml("")).is_empty());
    let parsed = yaml(&format!("---\n---\n# just a comment\n---\n{NODE}---\n"));
    assert_eq!(keys(&parsed), ["Node n1"]);
    assert!(parsed.problems.is_empty());
}

#[test]
fn unknown_kinds_are_skipped_silently() {
    let parsed = yaml(&format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\n{NODE}"));
    assert_eq!(keys(&parsed), ["Node n1"]);
    assert!(parsed.problems.is_empty());
}

#[test]
fn lists_are_flattened() {
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
        serde_json::to_string(&serde_saphyr::from_str::<Value>(NODE).unwrap()).unwrap(),
        serde_json::to_string(&serde_saphyr::from_str::<Value>(SLICE).unwrap()).unwrap(),
    );
    assert_eq!(keys(&yaml(&text)), ["Node n1", "EndpointSlice ns/web-abc"]);
}

#[test]
fn invalid_objects_are_reported_and_skipped() {
    let text = [
        service_yaml("good", "10.0.0.1", "80", "TCP"),
        service_yaml("bad-ip", "10.0.0.999", "80", "TCP"),
        service_yaml("bad-port", "10.0.0.2", "70000", "TCP"),
        service_yaml("bad-proto", "10.0.0.3", "80", "ICMP"),
        service_yaml("bad-type", "10.0.0.4", "eighty", "TCP"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: no-spec}\n".to_string(),
        "apiVersion: v2\nkind: Service\nmetadata: {name: v2}\n".to_string(),
        "kind: Service\nmetadata: {name: no-version}\n".to_string(),
        "just a string\n".to_string(),
        "metadata: {name: no-kind}\n".to_string(),
    ]
    .join("---\n");
    let parsed = yaml(&text);
    assert_eq!(keys(&parsed), ["Service ns/good"]);
    let problems = problems(&parsed);
    let expect = [
        "Service ns/bad-ip (document 2) is invalid: spec.clusterIPs[0]: invalid value \"10.0.0.999\"",
        "Service ns/bad-port (document 3) is invalid: spec.ports[0].port: invalid value \"70000\"",
        "Service ns/bad-proto (document 4) is invalid: spec.ports[0].protocol: invalid value \"ICMP\"",
        "Service ns/bad-type (document 5): does not match the Kubernetes schema",
        "Service default/no-spec (document 6) is invalid: spec is missing",
        "Service default/v2 (document 7): apiVersion \"v2\" is not supported (want v1)",
        "Service default/no-version (document 8): apiVersion is missing",
        "document 9: not a mapping",
        "document 10: kind is missing",
    ];
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    for (problem, want) in problems.iter().zip(expect) {
        assert!(problem.starts_with(&format!("{PATH}: {want}")), "{problem:?} should start with {want:?}");
    }
}

#[test]
fn ignored_services_are_absent_without_complaint() {
    let parsed = yaml(&service_yaml("headless", "None", "80", "TCP"));
    assert!(parsed.objects.is_empty() && parsed.problems.is_empty());
}

#[test]
fn a_key_defined_twice_in_one_file_keeps_the_first() {
    let text = format!(
        "{}---\n{}",
        service_yaml("web", "10.0.0.1", "80", "TCP"),
        service_yaml("web", "10.0.0.1", "81", "TCP")
    );
    let parsed = yaml(&text);
    let [Object::Service(svc)] = &parsed.objects[..] else { panic!("{:?}", parsed.objects) };
    assert_eq!(svc.ports[0].port, 80);
    assert_eq!(
        problems(&parsed),
        [format!("{PATH}: Service ns/web is defined twice in this file; using the first definition")]
    );
}

#[test]
fn syntax_errors_fail_the_whole_file() {
    let err = parse(Path::new(PATH), Format::Yaml, b"kind: Service\nmetadata: {name: [unclosed\n").unwrap_err();
    assert!(matches!(err, ManifestError::Yaml { .. }), "{err:?}");
    let err = parse(Path::new(PATH), Format::Json, b"{\"kind\": ").unwrap_err();
    assert!(matches!(err, ManifestError::Json { .. }), "{err:?}");
    let err = parse(Path::new(PATH), Format::Yaml, b"\xff\xfe").unwrap_err();
    assert!(matches!(err, ManifestError::Encoding { .. }), "{err:?}");
}

#[test]
fn json_files_and_json_streams() {
    let node = serde_saphyr::from_str::<Value>(NODE).unwrap();
    let slice = serde_saphyr::from_str::<Value>(SLICE).unwrap();
    let text = format!("\u{feff}{node}\n{slice}\n");
    let parsed = parse(Path::new("/m/f.json"), Format::Json, text.as_bytes()).unwrap();
    assert_eq!(
        parsed.objects.iter().map(|o| o.key().kind).collect::<Vec<_>>(),
        [ObjectKind::Node, ObjectKind::EndpointSlice]
    );
}

#[test]
fn large_files_are_not_rejected_by_the_parser_budget() {
    let text: Vec<String> = (0..3000).map(|i| service_yaml(&format!("s{i}"), "10.0.0.1", "80", "TCP")).collect();
    let parsed = yaml(&text.join("---\n"));
    assert_eq!(parsed.objects.len(), 3000);
    assert!(parsed.problems.is_empty());
}

#[test]
fn syntax_errors_fit_on_one_line() {
    let err = parse(Path::new(PATH), Format::Yaml, b"a: b\n  c: d\n").unwrap_err();
    let message = report(&err);
    assert!(!message.contains('\n') && message.contains("line 2"), "{message:?}");
}
