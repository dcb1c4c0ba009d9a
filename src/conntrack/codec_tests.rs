//! Requests and replies against bytes captured from Linux 6.18 (x86_64, so host byte order is little-endian):
//! the entries were made with `conntrack -I` in a fresh network namespace, the requests sent by this code and
//! accepted by that kernel.

use super::*;

/// Bytes from an annotated dump: hex digits, whitespace ignored, `#` starts a comment.
fn unhex(annotated: &str) -> Vec<u8> {
    let digits: String = annotated
        .lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

fn flow(family: IpFamily, original: (&str, &str), reply: (&str, &str), zone: u16, id: Option<u32>) -> Flow {
    Flow {
        family,
        protocol: 17,
        original: FlowTuple { src: original.0.parse().unwrap(), dst: original.1.parse().unwrap() },
        reply: FlowTuple { src: reply.0.parse().unwrap(), dst: reply.1.parse().unwrap() },
        zone,
        id,
    }
}

const DUMP_V4_UDP: &str = "
    30000000 0101 0103 01000000 00000000    # nlmsghdr: 48 bytes, CT_GET, REQUEST|DUMP, seq 1, port 0
    02 00 0000                              # nfgenmsg: AF_INET, version 0, res_id 0
    1000 0180                               # CTA_TUPLE_ORIG (nested)
      0c00 0280                             #   CTA_TUPLE_PROTO (nested)
        0500 0100 11 000000                 #     CTA_PROTO_NUM 17 (UDP)
    0c00 1980                               # CTA_FILTER (nested, the flag is required)
      0800 0100 08000000                    #   CTA_FILTER_ORIG_FLAGS: CTA_FILTER_F_CTA_PROTO_NUM (host order)
";

const DUMP_V6_ALL: &str = "
    14000000 0101 0103 01000000 00000000    # nlmsghdr: 20 bytes, CT_GET, REQUEST|DUMP, seq 1
    0a 00 0000                              # nfgenmsg: AF_INET6
";

/// One IPv4 entry as the kernel dumped it: udp 10.0.0.1:40000 → 10.96.0.10:53, reply from 10.244.1.5:5353,
/// zone 7; then the end of the dump.
const ENTRY_V4: &str = "
    c8000000 0001 2200 01000000 c4730000    # nlmsghdr: 200 bytes, CT_NEW, MULTI|DUMP_FILTERED, seq 1
    02 00 0000                              # nfgenmsg: AF_INET
    3400 0180                               # CTA_TUPLE_ORIG
      1400 0180                             #   CTA_TUPLE_IP
        0800 0100 0a000001                  #     CTA_IP_V4_SRC 10.0.0.1
        0800 0200 0a60000a                  #     CTA_IP_V4_DST 10.96.0.10
      1c00 0280                             #   CTA_TUPLE_PROTO
        0500 0100 11000000                  #     CTA_PROTO_NUM 17
        0600 0200 9c400000                  #     CTA_PROTO_SRC_PORT 40000 (big-endian)
        0600 0300 00350000                  #     CTA_PROTO_DST_PORT 53
    3400 0280                               # CTA_TUPLE_REPLY
      1400 0180                             #   CTA_TUPLE_IP
        0800 0100 0af40105                  #     CTA_IP_V4_SRC 10.244.1.5 (the DNAT target)
        0800 0200 0a000001                  #     CTA_IP_V4_DST 10.0.0.1
      1c00 0280                             #   CTA_TUPLE_PROTO
        0500 0100 11000000                  #     CTA_PROTO_NUM 17
        0600 0200 14e90000                  #     CTA_PROTO_SRC_PORT 5353
        0600 0300 9c400000                  #     CTA_PROTO_DST_PORT 40000
    0600 1200 00070000                      # CTA_ZONE 7 (big-endian u16)
    0800 0300 00000008                      # CTA_STATUS: CONFIRMED
    0800 0800 00000000                      # CTA_MARK 0
    0800 0c00 792bb454                      # CTA_ID
    0800 0b00 00000001                      # CTA_USE 1
    0800 0700 00000077                      # CTA_TIMEOUT 119 s
    1c00 1880                               # CTA_SYNPROXY (nested, all zero)
      0800 0100 00000000
      0800 0200 00000000
      0800 0300 00000000
    14000000 0300 0200 01000000 c4730000    # nlmsghdr: 20 bytes, NLMSG_DONE, MULTI, seq 1
    00000000                                # code 0
";

/// One IPv6 entry, default zone (so no CTA_ZONE): udp [fd00::1]:40000 → [fd00:96::10]:53, reply from
/// [fd00:244::5]:5353.
const ENTRY_V6: &str = "
    f0000000 0001 2200 01000000 c4730000    # nlmsghdr: 240 bytes, CT_NEW, MULTI|DUMP_FILTERED, seq 1
    0a 00 0000                              # nfgenmsg: AF_INET6
    4c00 0180                               # CTA_TUPLE_ORIG
      2c00 0180                             #   CTA_TUPLE_IP
        1400 0300 fd000000000000000000000000000001  # CTA_IP_V6_SRC fd00::1
        1400 0400 fd000096000000000000000000000010  # CTA_IP_V6_DST fd00:96::10
      1c00 0280                             #   CTA_TUPLE_PROTO
        0500 0100 11000000
        0600 0200 9c400000
        0600 0300 00350000
    4c00 0280                               # CTA_TUPLE_REPLY
      2c00 0180
        1400 0300 fd000244000000000000000000000005  # fd00:244::5
        1400 0400 fd000000000000000000000000000001  # fd00::1
      1c00 0280
        0500 0100 11000000
        0600 0200 14e90000
        0600 0300 9c400000
    0800 0300 00000008                      # CTA_STATUS
    0800 0800 00000000                      # CTA_MARK
    0800 0c00 86d4b5f5                      # CTA_ID
    0800 0b00 00000001                      # CTA_USE
    0800 0700 00000077                      # CTA_TIMEOUT
    1c00 1880 0800010000000000 0800020000000000 0800030000000000  # CTA_SYNPROXY
";

const DELETE_V4: &str = "
    58000000 0201 0500 09000000 00000000    # nlmsghdr: 88 bytes, CT_DELETE, REQUEST|ACK, seq 9
    02 00 0000                              # nfgenmsg: AF_INET
    3400 0180                               # CTA_TUPLE_ORIG: the same tuple as in the dump
      1400 0180
        0800 0100 0a000001
        0800 0200 0a60000a
      1c00 0280
        0500 0100 11000000
        0600 0200 9c400000
        0600 0300 00350000
    0600 1200 00070000                      # CTA_ZONE 7
    0800 0c00 01020304                      # CTA_ID 0x01020304
";

/// The kernel's answer to DELETE_V4 (its id did not match the entry's): ENOENT, request echoed.
const DELETE_V4_ENOENT: &str = "
    6c000000 0200 0000 09000000 c4730000    # nlmsghdr: 108 bytes, NLMSG_ERROR, seq 9
    feffffff                                # error -2 (ENOENT)
    58000000 0201 0500 09000000 00000000    # the request, echoed (no NETLINK_CAP_ACK on that socket)
    02000000
    3400018014000180080001000a000001080002000a60000a1c0002800500010011000000060002009c4000000600030000350000
    0600120000070000
    08000c0001020304
";

#[test]
fn a_filtered_dump_request_matches_what_the_kernel_accepted() {
    let mut out = Vec::new();
    dump_request(&mut out, IpFamily::V4, Some(17), 1);
    assert_eq!(out, unhex(DUMP_V4_UDP));
    out.clear();
    dump_request(&mut out, IpFamily::V6, None, 1);
    assert_eq!(out, unhex(DUMP_V6_ALL));
}

#[test]
fn requests_append_to_what_is_already_in_the_buffer() {
    let mut out = vec![0xaa; 3];
    dump_request(&mut out, IpFamily::V4, Some(17), 1);
    assert_eq!(out[3..], unhex(DUMP_V4_UDP), "the length patched for CTA_FILTER is the message's own");
}

#[test]
fn a_dumped_ipv4_entry_decodes_to_its_flow_with_zone_and_id() {
    let bytes = unhex(ENTRY_V4);
    let replies: Vec<_> = replies(&bytes).map(Result::unwrap).collect();
    let expected = flow(
        IpFamily::V4,
        ("10.0.0.1:40000", "10.96.0.10:53"),
        ("10.244.1.5:5353", "10.0.0.1:40000"),
        7,
        Some(0x792b_b454),
    );
    assert_eq!(replies, vec![(1, Reply::Entry(Some(expected))), (1, Reply::Done { code: 0 })]);
}

#[test]
fn a_dumped_ipv6_entry_decodes_to_its_flow() {
    let bytes = unhex(ENTRY_V6);
    let replies: Vec<_> = replies(&bytes).map(Result::unwrap).collect();
    let expected = flow(
        IpFamily::V6,
        ("[fd00::1]:40000", "[fd00:96::10]:53"),
        ("[fd00:244::5]:5353", "[fd00::1]:40000"),
        0,
        Some(0x86d4_b5f5),
    );
    assert_eq!(replies, vec![(1, Reply::Entry(Some(expected)))]);
}

#[test]
fn a_delete_request_carries_the_original_tuple_zone_and_id() {
    let f = flow(
        IpFamily::V4,
        ("10.0.0.1:40000", "10.96.0.10:53"),
        ("10.244.1.5:5353", "10.0.0.1:40000"),
        7,
        Some(0x0102_0304),
    );
    let mut out = Vec::new();
    delete_request(&mut out, &f, 9);
    assert_eq!(out, unhex(DELETE_V4));
    // Default zone and no id: just the tuple.
    let plain = Flow { zone: 0, id: None, ..f };
    out.clear();
    delete_request(&mut out, &plain, 9);
    let mut expected = unhex(DELETE_V4);
    expected.truncate(expected.len() - 16);
    expected[0] = 0x48;
    assert_eq!(out, expected);
}

#[test]
fn an_error_answer_is_an_ack_with_the_errno_and_the_request_seq() {
    let bytes = unhex(DELETE_V4_ENOENT);
    let replies: Vec<_> = replies(&bytes).map(Result::unwrap).collect();
    assert_eq!(replies, vec![(9, Reply::Ack { code: -libc::ENOENT })]);
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let mut bytes = unhex(ENTRY_V4);
    // A length beyond the buffer ends the buffer with an error.
    bytes[0] = 0xff;
    let all: Vec<_> = replies(&bytes).collect();
    assert_eq!(all.len(), 1);
    assert!(all[0].is_err());
    // A short tail is ignored; an empty buffer has no messages.
    assert_eq!(replies_of(&[1, 2, 3]), 0);
    assert_eq!(replies_of(&[]), 0);
    // An entry without a reply tuple decodes to None rather than a half-filled flow.
    let mut bytes = unhex(ENTRY_V4);
    bytes[72 + 2] = 0x1f; // CTA_TUPLE_REPLY's type → an unknown attribute
    let first = replies(&bytes).next().unwrap().unwrap();
    assert_eq!(first, (1, Reply::Entry(None)));
}

fn replies_of(bytes: &[u8]) -> usize {
    replies(bytes).count()
}
