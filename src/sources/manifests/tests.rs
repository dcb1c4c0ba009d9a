//! The source against real files and the real watcher. Every expected event must arrive within 1 s of the change
//! that causes it; "nothing happens" is checked over a window that spans several debounces (and rescans where the
//! test shortens the rescan interval).

mod harness;

use std::fs;
use std::io::Write;
use std::time::Duration;

use tokio::time::{sleep, timeout};

use self::harness::*;
use super::*;

#[tokio::test]
async fn initial_load_then_synced_once() {
    let node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#.to_string();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_string();
    let files = [
        ("a.yaml", docs(&[svc("a1", 80), deployment, svc("a2", 80)])),
        ("b.json", node),
        ("c.yml", format!("---\n{}---\n", svc("c", 80))),
        (".hidden.yaml", svc("hidden", 80)),
        ("notes.txt", svc("txt", 80)),
        ("a.yaml~", svc("backup", 80)),
    ];
    let (mut h, initial) = Harness::start(&files, DEFAULT_RESCAN_INTERVAL).await;
    assert_eq!(
        initial,
        set(&["upsert Service ns/a1", "upsert Service ns/a2", "upsert Service ns/c", "upsert Node n1"])
    );
    h.quiet().await;
    assert_eq!(h.logs.count("WARN"), 0);
}

#[tokio::test]
async fn a_new_file_is_picked_up_within_a_second() {
    let (mut h, initial) = Harness::start(&[], DEFAULT_RESCAN_INTERVAL).await;
    assert!(initial.is_empty());
    h.dir.write("new.yaml", &svc("new", 80));
    assert_eq!(h.changes(1).await, ["upsert Service ns/new"]);
    h.quiet().await;
}

#[tokio::test]
async fn editing_one_object_of_a_file_emits_just_that_object() {
    let (mut h, _) =
        Harness::start(&[("a.yaml", docs(&[svc("s1", 80), svc("s2", 80), svc("s3", 80)]))], FAST_RESCAN).await;
    h.dir.write("a.yaml", &docs(&[svc("s1", 80), svc("s2", 81), svc("s3", 80)]));
    let event = h.next().await;
    assert_eq!((summary(&event), port_of(&event)), ("upsert Service ns/s2".to_string(), 81));
    h.quiet().await;
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_read_once() {
    let (mut h, _) = Harness::start(&[("a.yaml", docs(&[svc("s1", 80), svc("s2", 80)]))], FAST_RESCAN).await;

    // A temporary file with another extension in the directory, renamed over the manifest.
    let before = h.reads();
    h.dir.write("a.yaml.tmp", &docs(&[svc("s1", 80), svc("s2", 81), svc("s3", 80)]));
    fs::rename(h.dir.path("a.yaml.tmp"), h.dir.path("a.yaml")).unwrap();
    assert_eq!(h.changes(2).await, ["upsert Service ns/s2", "upsert Service ns/s3"]);
    h.quiet().await;
    assert_eq!(h.reads() - before, 1, "read once, and not again by the rescans");

    // A file written elsewhere and moved in.
    let elsewhere = TempDir::new();
    let before = h.reads();
    elsewhere.write("staged", &docs(&[svc("s1", 80), svc("s2", 81)]));
    fs::rename(elsewhere.path("staged"), h.dir.path("a.yaml")).unwrap();
    assert_eq!(h.changes(1).await, ["delete Service ns/s3"]);
    h.quiet().await;
    assert_eq!(h.reads() - before, 1);
}

#[tokio::test]
async fn one_changed_file_among_many_is_the_only_one_read() {
    let files: Vec<(String, String)> = (0..300).map(|i| (format!("f{i:03}.yaml"), svc(&format!("s{i}"), 80))).collect();
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let (mut h, initial) = Harness::start(&files, FAST_RESCAN).await;
    assert_eq!(initial.len(), 300);
    let before = h.reads();
    h.dir.write("f123.yaml", &svc("s123", 81));
    assert_eq!(port_of(&h.next().await), 81);
    h.quiet().await;
    assert_eq!(h.reads() - before, 1, "neither the event nor the rescans read the unchanged files");
}

#[tokio::test]
async fn a_configmap_update_through_its_data_link_is_picked_up() {
    // The layout the kubelet gives a mounted ConfigMap: visible links through `..data`, which is swapped atomically.
    let (mut h, _) = Harness::start(&[], DEFAULT_RESCAN_INTERVAL).await;
    let dir = h.dir.0.clone();
    let link = |target: &str, name: &str| std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    fs::create_dir(h.dir.path("..v1")).unwrap();
    h.dir.write("..v1/svc.yaml", &svc("cm", 80));
    link("..v1", "..data");
    link("..data/svc.yaml", "svc.yaml");
    assert_eq!(h.changes(1).await, ["upsert Service ns/cm"]);

    fs::create_dir(h.dir.path("..v2")).unwrap();
    h.dir.write("..v2/svc.yaml", &svc("cm", 81));
    link("..v2", "..data_tmp");
    fs::rename(h.dir.path("..data_tmp"), h.dir.path("..data")).unwrap();
    assert_eq!(port_of(&h.next().await), 81);
    h.quiet().await;
}

#[tokio::test]
async fn deleting_a_file_deletes_its_objects() {
    let files = [("a.yaml", docs(&[svc("s1", 80), svc("s2", 80)])), ("b.yaml", svc("s3", 80))];
    let (mut h, _) = Harness::start(&files, DEFAULT_RESCAN_INTERVAL).await;
    fs::remove_file(h.dir.path("a.yaml")).unwrap();
    assert_eq!(h.changes(2).await, ["delete Service ns/s1", "delete Service ns/s2"]);
    h.quiet().await;
}

#[tokio::test]
async fn renaming_a_file_keeps_its_objects() {
    let (mut h, _) = Harness::start(&[("a.yaml", svc("s1", 80))], FAST_RESCAN).await;
    fs::rename(h.dir.path("a.yaml"), h.dir.path("z.yaml")).unwrap();
    h.quiet().await;
    // Renamed away from the manifest extensions, it is gone.
    fs::rename(h.dir.path("z.yaml"), h.dir.path("z.yaml.disabled")).unwrap();
    assert_eq!(h.changes(1).await, ["delete Service ns/s1"]);
}

#[tokio::test]
async fn a_broken_file_is_logged_once_and_keeps_its_objects() {
    let files = [("good.yaml", svc("s1", 80)), ("broken.yaml", "kind: Service\nmetadata: {name: [x\n".to_string())];
    let (mut h, initial) = Harness::start(&files, FAST_RESCAN).await;
    assert_eq!(initial, set(&["upsert Service ns/s1"]));
    assert_eq!(h.logs.count("broken.yaml: invalid YAML"), 1);

    // Half-written: the objects stay, the complaint is made once however many rescans see the file.
    h.dir.write("good.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s1\n  namespace: [ns\n");
    h.quiet().await;
    assert_eq!(h.logs.count("good.yaml: invalid YAML"), 1);
    assert_eq!(h.logs.count("broken.yaml: invalid YAML"), 1);

    h.dir.write("good.yaml", &svc("s1", 81));
    assert_eq!(port_of(&h.next().await), 81);
    h.dir.write("broken.yaml", &svc("s2", 80));
    assert_eq!(h.changes(1).await, ["upsert Service ns/s2"]);
    h.quiet().await;
}

#[tokio::test]
async fn invalid_objects_are_skipped_and_their_keys_deleted() {
    let bad_ip = svc("bad-ip", 80).replace("10.0.0.1", "10.0.0.300");
    let bad_protocol = svc("bad-protocol", 80).replace("TCP", "ICMP");
    let text = docs(&[svc("good", 80), bad_ip, svc("bad-port", 70000), bad_protocol]);
    let (mut h, initial) = Harness::start(&[("a.yaml", text)], FAST_RESCAN).await;
    assert_eq!(initial, set(&["upsert Service ns/good"]));
    for name in ["ns/bad-ip (document 2)", "ns/bad-port (document 3)", "ns/bad-protocol (document 4)"] {
        assert_eq!(h.logs.count(&format!("a.yaml: Service {name} is invalid")), 1, "{name}");
    }
    h.dir.write("a.yaml", &docs(&[svc("good", 70000), svc("good2", 80)]));
    assert_eq!(h.changes(2).await, ["delete Service ns/good", "upsert Service ns/good2"]);
    h.quiet().await;
    assert_eq!(h.logs.count("a.yaml: Service ns/good (document 1) is invalid"), 1);
}

#[tokio::test]
async fn a_kind_list_holds_objects() {
    let item = |name: &str| format!("- {}", svc(name, 80).replace('\n', "\n  "));
    let list = |names: &[&str]| {
        format!(
            "apiVersion: v1\nkind: List\nitems:\n{}\n",
            names.iter().map(|n| item(n)).collect::<Vec<_>>().join("\n")
        )
    };
    let (mut h, initial) = Harness::start(&[("list.yaml", list(&["l1", "l2"]))], DEFAULT_RESCAN_INTERVAL).await;
    assert_eq!(initial, set(&["upsert Service ns/l1", "upsert Service ns/l2"]));
    h.dir.write("list.yaml", &list(&["l2"]));
    assert_eq!(h.changes(1).await, ["delete Service ns/l1"]);
}

#[tokio::test]
async fn with_duplicates_the_lexically_first_file_wins() {
    let files = [("b.yaml", svc("dup", 2)), ("a.yaml", svc("dup", 1))];
    let (mut h, initial) = Harness::start(&files, FAST_RESCAN).await;
    assert_eq!(initial, set(&["upsert Service ns/dup"]));
    h.dir.write("b.yaml", &svc("dup", 3));
    h.quiet().await;
    assert_eq!(h.logs.count("Service ns/dup is defined in several files (a.yaml, b.yaml); using the first, a.yaml"), 1);
    fs::remove_file(h.dir.path("a.yaml")).unwrap();
    assert_eq!(port_of(&h.next().await), 3);
    fs::remove_file(h.dir.path("b.yaml")).unwrap();
    assert_eq!(h.changes(1).await, ["delete Service ns/dup"]);
}

#[tokio::test]
async fn a_file_truncated_then_rewritten_in_place_ends_with_its_final_content() {
    let (mut h, _) = Harness::start(&[("a.yaml", docs(&[svc("s1", 80), svc("s2", 80)]))], FAST_RESCAN).await;
    let mut file = fs::File::create(h.dir.path("a.yaml")).unwrap();
    // Long enough for the source to see the empty file, which must not delete anything yet.
    sleep(Duration::from_millis(150)).await;
    file.write_all(docs(&[svc("s1", 80)]).as_bytes()).unwrap();
    sleep(Duration::from_millis(20)).await;
    file.write_all(format!("---\n{}", svc("s2", 81)).as_bytes()).unwrap();
    drop(file);
    let event = h.next().await;
    assert_eq!((summary(&event), port_of(&event)), ("upsert Service ns/s2".to_string(), 81));
    h.quiet().await;

    // Emptied for good, it is believed after a grace period.
    h.dir.write("a.yaml", "");
    assert_eq!(h.changes(2).await, ["delete Service ns/s1", "delete Service ns/s2"]);
}

#[tokio::test]
async fn a_directory_that_disappears_keeps_its_objects_until_it_is_back() {
    let (mut h, _) = Harness::start(&[("a.yaml", svc("s1", 80))], FAST_RESCAN).await;
    let moved = h.dir.0.with_extension("moved");
    fs::rename(&h.dir.0, &moved).unwrap();
    let _cleanup = TempDir(moved);
    h.quiet().await;
    assert_eq!(h.logs.count("cannot read manifest directory"), 1);

    fs::create_dir(&h.dir.0).unwrap();
    h.dir.write("b.yaml", &svc("s2", 80));
    assert_eq!(h.changes(2).await, ["delete Service ns/s1", "upsert Service ns/s2"]);
    h.dir.write("c.yaml", &svc("s3", 80));
    assert_eq!(h.changes(1).await, ["upsert Service ns/s3"]);
}

#[tokio::test]
async fn the_source_stops_when_the_receiver_is_dropped() {
    let (h, _) = Harness::start(&[("a.yaml", svc("s1", 80))], DEFAULT_RESCAN_INTERVAL).await;
    drop(h.rx);
    let result = timeout(WITHIN, h.task).await.expect("stops within 1 s").expect("no panic");
    assert!(result.is_ok());
}

#[test]
fn check_wants_an_existing_directory() {
    let dir = TempDir::new();
    assert!(check(&dir.0).is_ok());
    dir.write("f.yaml", "");
    let missing = dir.path("missing");
    assert_eq!(
        check(&missing).unwrap_err().to_string(),
        format!("manifest directory {} does not exist", missing.display())
    );
    let file = dir.path("f.yaml");
    assert!(matches!(ManifestSource::check(&file), Err(ManifestError::NotADirectory { .. })));
}
