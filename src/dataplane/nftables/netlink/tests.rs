//! The encoding against bytes nft 1.0.6 sent for the same text (testdata/*.nft → testdata/*.hex, captured with
//! scripts/nft-batch.py and annotated field by field there), plus the parts no capture shows: element lists
//! split across messages, sequence numbers mapped back to operations, registers.

use std::net::IpAddr;

use super::super::ir::*;
use super::super::text;
use super::expr::reg;
use super::{Batch, Origin, encode};
use crate::model::Protocol;

/// The bytes of an annotated capture: hex digits and spaces, `#` comments.
fn hex(annotated: &str) -> Vec<u8> {
    let digits: String =
        annotated.lines().flat_map(|l| l.split('#').next().unwrap_or_default().split_whitespace()).collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

/// Equal bytes, or a failure that says where they part.
fn assert_same_bytes(ours: &[u8], nft: &[u8]) {
    if let Some(at) = ours.iter().zip(nft).position(|(a, b)| a != b).or((ours.len() != nft.len()).then_some(0)) {
        let at = at.min(ours.len().min(nft.len()));
        let window = |b: &[u8]| hex_string(&b[at.saturating_sub(16)..(at + 16).min(b.len())]);
        panic!(
            "batches differ at byte {at} (lengths {} and {}):\n ours: {}\n  nft: {}",
            ours.len(),
            nft.len(),
            window(ours),
            window(nft)
        );
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn addr(s: &str) -> Value {
    Value::Addr(s.parse::<IpAddr>().unwrap())
}

fn tx(family: Family, ops: Vec<Op>) -> Transaction {
    Transaction { family, table: "kube-proxy-rs".into(), ops }
}

fn set(name: &str, key: Vec<DataType>, data: Vec<DataType>, timeout: Option<u32>) -> Op {
    Op::AddSet(SetDef { name: name.into(), key, data, timeout })
}

fn chain(name: &str) -> Op {
    Op::AddChain { name: name.into(), base: None }
}

fn rule(chain: &str, rule: Rule) -> Op {
    Op::AddRule { chain: chain.into(), rule }
}

fn goto(c: &str) -> Option<ElemData> {
    Some(ElemData::Verdict(Verdict::Goto(c.into())))
}

/// Check the IR renders to the captured script and encodes to the bytes nft sent for it. nft numbers the batch
/// from 0, as `encode(tx, 0)` does.
fn check(tx: &Transaction, script: &str, captured: &str) {
    assert_eq!(text::script(tx), script, "the IR is the captured script");
    assert_same_bytes(&encode(tx, 0).unwrap().bytes, &hex(captured));
}

#[test]
fn sets_maps_chains_rules_and_elements_of_a_service_match_nft() {
    use DataType::{Addr, Index, L4Port, Port, Proto};
    let key3 = vec![Field::Daddr, Field::L4Proto, Field::Dport];
    let t = tx(
        Family::Ip,
        vec![
            Op::AddTable,
            set("service-ips", vec![Addr, Proto, Port], vec![DataType::Verdict], None),
            set("endpoints-tcp", vec![Index], vec![Addr, L4Port(Protocol::Tcp)], None),
            set("affinity-a", vec![Addr], vec![], Some(60)),
            chain("services"),
            chain("svc-a"),
            Op::AddChain {
                name: "nat-output".into(),
                base: Some(BaseChain { chain_type: ChainType::Nat, hook: Hook::Output, priority: -100 }),
            },
            rule("services", vec![Stmt::Vmap { key: key3, map: "service-ips".into() }]),
            rule(
                "services",
                vec![Stmt::DnatMap {
                    protocol: Protocol::Tcp,
                    key: vec![Field::Numgen { modulus: 2, offset: 4 }],
                    map: "endpoints-tcp".into(),
                }],
            ),
            rule(
                "services",
                vec![
                    Stmt::Cmp {
                        field: Field::Saddr,
                        value: Value::Net("10.244.0.0/16".parse().unwrap()),
                        negate: true,
                    },
                    Stmt::Update { key: vec![Field::Saddr], set: "affinity-a".into() },
                ],
            ),
            rule("nat-output", vec![Stmt::CtStateNew, Stmt::Verdict(Verdict::Jump("services".into()))]),
            Op::AddElements {
                set: "service-ips".into(),
                elements: vec![Element {
                    key: vec![addr("10.96.0.1"), Value::Proto(Protocol::Tcp), Value::Port(80)],
                    data: goto("svc-a"),
                }],
            },
            Op::AddElements {
                set: "endpoints-tcp".into(),
                elements: vec![Element {
                    key: vec![Value::Index(4)],
                    data: Some(ElemData::Values(vec![addr("10.244.0.5"), Value::Port(8080)])),
                }],
            },
        ],
    );
    check(&t, include_str!("testdata/ipv4-service-objects.nft"), include_str!("testdata/ipv4-service-objects.hex"));
}

#[test]
fn an_ipv6_endpoint_map_static_dnat_reject_and_element_changes_match_nft() {
    use DataType::{Addr, Index, L4Port};
    let t = tx(
        Family::Ip6,
        vec![
            Op::AddTable,
            set("endpoints-udp", vec![Index], vec![Addr, L4Port(Protocol::Udp)], None),
            chain("c"),
            rule("c", vec![Stmt::Dnat { protocol: Protocol::Udp, addr: "fd00::5".parse().unwrap(), port: 53 }]),
            rule("c", vec![Stmt::Reject]),
            Op::AddElements {
                set: "endpoints-udp".into(),
                elements: vec![Element {
                    key: vec![Value::Index(7)],
                    data: Some(ElemData::Values(vec![addr("fd00::5"), Value::Port(53)])),
                }],
            },
            Op::DeleteElements { set: "endpoints-udp".into(), keys: vec![vec![Value::Index(7)]] },
        ],
    );
    check(&t, include_str!("testdata/ipv6-endpoint-map.nft"), include_str!("testdata/ipv6-endpoint-map.hex"));
}

#[test]
fn every_other_match_and_action_matches_nft() {
    use DataType::Addr;
    let net = |s: &str| Value::Net(s.parse().unwrap());
    let cmp = |field, value, negate| Stmt::Cmp { field, value, negate };
    let t = tx(
        Family::Ip,
        vec![
            Op::AddTable,
            set("cluster-ips", vec![Addr], vec![], None),
            set("hairpin", vec![Addr, Addr], vec![], None),
            chain("c"),
            rule(
                "c",
                vec![
                    cmp(Field::Iifname, Value::Iface("cbr0".into()), false),
                    Stmt::Lookup { key: vec![Field::Daddr], set: "cluster-ips".into(), negate: true },
                    Stmt::Verdict(Verdict::Jump("c".into())),
                ],
            ),
            rule(
                "c",
                vec![
                    cmp(Field::Iifname, Value::Iface("veth*".into()), true),
                    cmp(Field::FibDaddrType, Value::AddrTypeLocal, false),
                    Stmt::Verdict(Verdict::Return),
                ],
            ),
            // Prefixes: not byte-aligned (masked), empty (masked too), full length (a plain address).
            rule(
                "c",
                vec![
                    cmp(Field::Saddr, net("10.240.0.0/12"), false),
                    cmp(Field::Saddr, net("0.0.0.0/0"), false),
                    cmp(Field::Saddr, net("192.0.2.7/32"), false),
                    Stmt::Verdict(Verdict::Accept),
                ],
            ),
            rule("c", vec![Stmt::MarkMatch { mask: 0x4000, value: 0 }, Stmt::MarkXor(0x4000), Stmt::Masquerade]),
            rule("c", vec![cmp(Field::L4Proto, Value::Proto(Protocol::Tcp), false), Stmt::RejectTcpReset]),
            rule(
                "c",
                vec![
                    Stmt::CtStatusDnat,
                    Stmt::Lookup { key: vec![Field::Saddr, Field::Daddr], set: "hairpin".into(), negate: false },
                    Stmt::MarkOr(0x4000),
                    Stmt::Verdict(Verdict::Drop),
                ],
            ),
        ],
    );
    check(&t, include_str!("testdata/ipv4-matches.nft"), include_str!("testdata/ipv4-matches.hex"));
}

/// The element nests of each NEWSETELEM message: (message index, nest length, element numbers).
fn element_lists(batch: &Batch) -> Vec<(usize, usize, Vec<u16>)> {
    let b = &batch.bytes;
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < b.len() {
        let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(b[at + 4..at + 6].try_into().unwrap());
        if ty == 0x0a0c {
            let mut a = at + 20;
            while a < at + len {
                let alen = usize::from(u16::from_ne_bytes(b[a..a + 2].try_into().unwrap()));
                let aty = u16::from_ne_bytes(b[a + 2..a + 4].try_into().unwrap()) & 0x3fff;
                if aty == 3 {
                    let mut numbers = Vec::new();
                    let mut e = a + 4;
                    while e < a + alen {
                        numbers.push(u16::from_ne_bytes(b[e + 2..e + 4].try_into().unwrap()) & 0x3fff);
                        e += usize::from(u16::from_ne_bytes(b[e..e + 2].try_into().unwrap())).next_multiple_of(4);
                    }
                    out.push((i, alen, numbers));
                }
                a += alen.next_multiple_of(4);
            }
        }
        at += len.next_multiple_of(4);
        i += 1;
    }
    out
}

#[test]
fn long_element_lists_are_split_below_the_16_bit_nest_limit() {
    let elements: Vec<Element> = (0..20_000u32)
        .map(|i| Element {
            key: vec![
                Value::Addr(std::net::Ipv4Addr::from(0x0a60_0000 + i).into()),
                Value::Proto(Protocol::Tcp),
                Value::Port(80),
            ],
            data: goto("svc-ns/some-service/tcp/http"),
        })
        .collect();
    let t = tx(Family::Ip, vec![Op::AddTable, Op::AddElements { set: "service-ips".into(), elements }]);
    let batch = encode(&t, 100).unwrap();
    let lists = element_lists(&batch);
    assert!(lists.len() > 1, "split into {} messages", lists.len());
    assert!(lists.iter().all(|(_, len, _)| *len <= usize::from(u16::MAX)));
    // libnftnl numbers the elements of each message from 1.
    for (_, _, numbers) in &lists {
        assert!(numbers.iter().copied().eq(1..=numbers.len() as u16));
    }
    assert_eq!(lists.iter().map(|(_, _, n)| n.len()).sum::<usize>(), 20_000);
    // Each message knows which elements it carries, and they add up to the whole list in order.
    let ranges: Vec<_> = batch.origins.iter().filter(|o| o.op == 1).map(|o| o.elements.clone().unwrap()).collect();
    assert_eq!(ranges.first().unwrap().start, 0);
    assert_eq!(ranges.last().unwrap().end, 20_000);
    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(ranges.len(), lists.len());
}

#[test]
fn sequence_numbers_map_back_to_operations_across_wrap_around() {
    let t = tx(Family::Ip, vec![Op::RemoveOtherTable("kube-proxy".into()), Op::AddTable, chain("a")]);
    let batch = encode(&t, u32::MAX - 1).unwrap();
    // BATCH_BEGIN u32::MAX - 1, then the two messages of RemoveOtherTable, AddTable, AddChain, BATCH_END.
    assert_eq!(batch.messages(), 6);
    assert_eq!(batch.origin(u32::MAX - 1), None, "BATCH_BEGIN is not an operation");
    assert_eq!(batch.origin(u32::MAX), Some(&Origin { op: 0, elements: None }));
    assert_eq!(batch.origin(0), Some(&Origin { op: 0, elements: None }));
    assert_eq!(batch.origin(1), Some(&Origin { op: 1, elements: None }));
    assert_eq!(batch.origin(2), Some(&Origin { op: 2, elements: None }));
    assert_eq!(batch.origin(3), None, "BATCH_END");
    assert!(batch.contains(3) && !batch.contains(4) && !batch.contains(u32::MAX - 2));
}

#[test]
fn registers_are_named_as_nft_names_them() {
    // A 128-bit register where one starts, else the 32-bit one (NFT_REG32_00 = 8).
    assert_eq!([0, 1, 2, 3, 4, 5, 8].map(reg), [1, 9, 10, 11, 2, 13, 3]);
}

#[test]
fn values_that_fit_no_field_are_refused_not_guessed() {
    let bad = [
        vec![Stmt::Cmp { field: Field::Mark, value: Value::Port(1), negate: false }],
        vec![Stmt::Cmp { field: Field::Saddr, value: addr("fd00::1"), negate: false }],
        vec![Stmt::Cmp {
            field: Field::Iifname,
            value: Value::Iface("a-very-long-interface-name".into()),
            negate: false,
        }],
        vec![Stmt::Lookup { key: vec![], set: "s".into(), negate: false }],
    ];
    for r in bad {
        let t = tx(Family::Ip, vec![rule("c", r.clone())]);
        assert!(encode(&t, 0).is_err(), "{r:?}");
    }
}
