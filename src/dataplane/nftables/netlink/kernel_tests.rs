//! The netlink transport against `nft -f` on the real kernel: the same transactions, applied in two fresh
//! network namespaces (one thread each), must leave rulesets that `nft list ruleset` prints identically — and
//! identically down to the VM expressions (`nft --debug=netlink`) — after every step.

use std::thread;

use super::super::ir::{Element, Family, Op, Transaction, Value};
use super::super::kernel_tests::{Via, every_config, life, nft_list};
use super::super::ruleset::{CLUSTER_IPS, SERVICE_IPS, TABLE};
use super::super::transport::{Transport, TransportError};
use super::NetlinkTransport;
use crate::lab::root_or_skip;
use crate::model::{IpFamily, Protocol};
use crate::testutil::enter_new_netns;

/// `nft --debug=netlink list ruleset` prints set elements in the kernel's hash order, which differs between
/// two sets with the same content (the hash seed is per set): sort each run of element lines.
fn sort_element_lines(listing: &str) -> String {
    let mut out = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in listing.lines() {
        if line.starts_with("\telement ") {
            run.push(line);
            continue;
        }
        run.sort_unstable();
        out.append(&mut run);
        out.push(line);
    }
    run.sort_unstable();
    out.append(&mut run);
    out.join("\n")
}

/// What the kernel holds after each transaction, applied through `via` in a fresh namespace: the ruleset as
/// `nft list ruleset` prints it, and its VM expressions.
fn replay(via: Via, steps: Vec<(String, Transaction)>) -> Vec<(String, String, String)> {
    thread::spawn(move || {
        enter_new_netns();
        let mut transport = via.transport();
        steps
            .into_iter()
            .map(|(label, tx)| {
                transport.apply(&tx).unwrap_or_else(|e| panic!("{via:?}, {label}: {e}"));
                let text = nft_list(&["list", "ruleset"]);
                let vm = sort_element_lines(&nft_list(&["--debug=netlink", "list", "ruleset"]));
                (label, text, vm)
            })
            .collect()
    })
    .join()
    .expect("replay thread")
}

fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = la.iter().zip(&lb).position(|(x, y)| x != y).unwrap_or(la.len().min(lb.len()));
    let around = |l: &[&str]| l[i.saturating_sub(3)..(i + 3).min(l.len())].join("\n");
    format!("line {}:\n--- nft -f\n{}\n--- netlink\n{}", i + 1, around(&la), around(&lb))
}

fn same_ruleset_through_both_transports(family: IpFamily) {
    let fam = Family::of(family);
    let mut steps = Vec::new();
    for (name, cfg) in every_config(fam) {
        for (i, tx) in life(&cfg, family).into_iter().enumerate() {
            steps.push((format!("{name}, step {i}"), tx));
        }
    }
    let by_nft = replay(Via::Nft, steps.clone());
    let by_netlink = replay(Via::Netlink, steps);
    for ((label, nft_text, nft_vm), (_, nl_text, nl_vm)) in by_nft.iter().zip(&by_netlink) {
        assert!(nft_text.contains("kube-proxy-rs"), "{label}: nothing listed");
        assert!(nft_text == nl_text, "{label}: `nft list ruleset` differs at {}", first_difference(nft_text, nl_text));
        assert!(nft_vm == nl_vm, "{label}: VM expressions differ at {}", first_difference(nft_vm, nl_vm));
    }
}

#[test]
fn netlink_and_nft_leave_the_same_ruleset_v4() {
    if root_or_skip("netlink_and_nft_leave_the_same_ruleset_v4") {
        same_ruleset_through_both_transports(IpFamily::V4);
    }
}

#[test]
fn netlink_and_nft_leave_the_same_ruleset_v6() {
    if root_or_skip("netlink_and_nft_leave_the_same_ruleset_v6") {
        same_ruleset_through_both_transports(IpFamily::V6);
    }
}

fn cluster_ip(i: u32) -> Value {
    Value::Addr(std::net::Ipv4Addr::from(0x0a60_0000 + i).into())
}

#[test]
fn a_rejected_transaction_names_the_failing_operation_and_changes_nothing() {
    if !root_or_skip("a_rejected_transaction_names_the_failing_operation_and_changes_nothing") {
        return;
    }
    enter_new_netns();
    let mut netlink = NetlinkTransport::new().unwrap();
    let cfg = every_config(Family::Ip).remove(0).1;
    netlink.apply(&life(&cfg, IpFamily::V4)[0]).unwrap();
    let before = nft_list(&["list", "ruleset"]);

    // Big enough to be split across messages: the error must name the one element the kernel refused.
    let elements: Vec<Element> = (0..20_000).map(|i| Element { key: vec![cluster_ip(1000 + i)], data: None }).collect();
    let missing = vec![cluster_ip(999), Value::Proto(Protocol::Tcp), Value::Port(80)];
    // The TCP services of the full sync (every TCP shape but the one without endpoints, 3).
    let mut keys: Vec<Vec<Value>> =
        [1, 2, 4, 5, 6, 7, 8, 9].map(|i| vec![cluster_ip(i), Value::Proto(Protocol::Tcp), Value::Port(80)]).to_vec();
    keys.insert(5, missing);
    let mut tx = Transaction::new(Family::Ip, TABLE);
    tx.ops.push(Op::AddElements { set: CLUSTER_IPS.into(), elements });
    tx.ops.push(Op::DeleteElements { set: SERVICE_IPS.into(), keys });
    tx.ops.push(Op::AddChain { name: "never".into(), base: None });
    let batch = netlink.encode(&tx).unwrap();
    assert!(batch.origins.iter().filter(|o| o.op == 0).count() > 1, "the element list was split");
    match netlink.send(&tx, &batch) {
        Err(TransportError::Rejected(msg)) => {
            assert!(
                msg.starts_with("delete element ip kube-proxy-rs service-ips { 10.96.3.231 . tcp . 80 }: "),
                "{msg}"
            );
            assert!(msg.contains("No such file or directory"), "{msg}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(nft_list(&["list", "ruleset"]), before, "nothing of the transaction was applied");

    // The same batch without the bad key goes through, all 20,000 elements with it.
    if let Op::DeleteElements { keys, .. } = &mut tx.ops[1] {
        keys.remove(5);
    }
    netlink.apply(&tx).unwrap();
    let set = nft_list(&["list", "set", "ip", TABLE, CLUSTER_IPS]);
    assert!(set.contains("10.96.78.31"), "the last element (10.96.0.0 + 1000 + 19999) is there");
    assert!(nft_list(&["list", "chain", "ip", TABLE, "never"]).contains("chain never"));
}
