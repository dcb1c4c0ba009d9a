//! The nf_tables VM expressions of each rule statement, encoded as nft 1.0.6 encodes the same statement in
//! text (checked against `nft --debug=netlink,mnl`): the same expressions, attribute order and registers.
//!
//! Registers follow nft's allocator: every statement starts over at NFT_REG_1; a plain value takes a whole
//! 128-bit register, a concatenation takes one 32-bit register per 4 bytes of each field; a register is named
//! by its 128-bit number when it starts one (1..4), else by its 32-bit number (NFT_REG32_00 + n).

use std::collections::HashMap;
use std::net::IpAddr;

use super::super::ir::{Family, Field, Stmt, Value, Verdict};
use super::EncodeError;
use super::attr::Writer;
use super::sys::*;
use crate::model::Protocol;

/// What rule encoding needs to know beyond the rule: the family, and the ids of sets created earlier in the
/// same batch (the kernel finds a set by name first; the id is how nft names a set the batch itself adds).
pub struct Ctx<'a> {
    pub family: Family,
    pub set_ids: &'a HashMap<String, u32>,
}

/// The register holding 32-bit word `index` of nft's register file (word 0 = start of NFT_REG_1).
pub fn reg(index: u32) -> u32 {
    if index.is_multiple_of(4) { NFT_REG_1 + index / 4 } else { NFT_REG32_00 + index }
}

/// 32-bit words a value of `len` bytes occupies.
fn words(len: usize) -> u32 {
    len.div_ceil(4) as u32
}

/// Bytes a field loads into a register.
pub fn field_len(family: Family, field: &Field) -> usize {
    match field {
        Field::Saddr | Field::Daddr => addr_len(family),
        Field::Dport => 2,
        Field::L4Proto => 1,
        Field::Mark | Field::FibSaddrType | Field::FibDaddrType | Field::Numgen { .. } => 4,
        Field::Iifname => IFNAMSIZ,
    }
}

pub fn addr_len(family: Family) -> usize {
    match family {
        Family::Ip => 4,
        Family::Ip6 => 16,
    }
}

pub fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
    }
}

/// An address of the table's family, in network byte order.
pub fn addr_bytes(family: Family, addr: &IpAddr) -> Result<Vec<u8>, EncodeError> {
    match (family, addr) {
        (Family::Ip, IpAddr::V4(a)) => Ok(a.octets().to_vec()),
        (Family::Ip6, IpAddr::V6(a)) => Ok(a.octets().to_vec()),
        _ => Err(EncodeError(format!("{addr} is not an address of family {family:?}"))),
    }
}

/// One expression: its name and its attributes.
fn expr(w: &mut Writer, name: &str, body: impl FnOnce(&mut Writer)) {
    let elem = w.begin_nest(NFTA_LIST_ELEM);
    w.put_str(NFTA_EXPR_NAME, name);
    let data = w.begin_nest(NFTA_EXPR_DATA);
    body(w);
    w.end_nest(data);
    w.end_nest(elem);
}

fn payload(w: &mut Writer, dreg: u32, base: u32, offset: u32, len: u32) {
    expr(w, "payload", |w| {
        w.put_be32(NFTA_PAYLOAD_DREG, dreg);
        w.put_be32(NFTA_PAYLOAD_BASE, base);
        w.put_be32(NFTA_PAYLOAD_OFFSET, offset);
        w.put_be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn meta_load(w: &mut Writer, key: u32, dreg: u32) {
    expr(w, "meta", |w| {
        w.put_be32(NFTA_META_KEY, key);
        w.put_be32(NFTA_META_DREG, dreg);
    });
}

fn meta_set(w: &mut Writer, key: u32, sreg: u32) {
    expr(w, "meta", |w| {
        w.put_be32(NFTA_META_KEY, key);
        w.put_be32(NFTA_META_SREG, sreg);
    });
}

fn ct_load(w: &mut Writer, key: u32, dreg: u32) {
    expr(w, "ct", |w| {
        w.put_be32(NFTA_CT_KEY, key);
        w.put_be32(NFTA_CT_DREG, dreg);
    });
}

/// `reg = (reg & mask) ^ xor` on 4 bytes. nft sends the operation attribute for `&`/`|`/`^` expressions but
/// not for the flag tests it generates for `ct state new`.
fn bitwise(w: &mut Writer, mask: u32, xor: u32, with_op: bool) {
    expr(w, "bitwise", |w| {
        w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        if with_op {
            w.put_be32(NFTA_BITWISE_OP, NFT_BITWISE_BOOL);
        }
        w.put_be32(NFTA_BITWISE_LEN, 4);
        w.put_value(NFTA_BITWISE_MASK, &mask.to_ne_bytes());
        w.put_value(NFTA_BITWISE_XOR, &xor.to_ne_bytes());
    });
}

/// Prefix bitwise on an address register: mask bytes given.
fn bitwise_mask(w: &mut Writer, mask: &[u8]) {
    expr(w, "bitwise", |w| {
        w.put_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        w.put_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        w.put_be32(NFTA_BITWISE_LEN, mask.len() as u32);
        w.put_value(NFTA_BITWISE_MASK, mask);
        w.put_value(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    });
}

fn cmp(w: &mut Writer, negate: bool, data: &[u8]) {
    expr(w, "cmp", |w| {
        w.put_be32(NFTA_CMP_SREG, NFT_REG_1);
        w.put_be32(NFTA_CMP_OP, if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ });
        w.put_value(NFTA_CMP_DATA, data);
    });
}

fn immediate_value(w: &mut Writer, dreg: u32, data: &[u8]) {
    expr(w, "immediate", |w| {
        w.put_be32(NFTA_IMMEDIATE_DREG, dreg);
        w.put_value(NFTA_IMMEDIATE_DATA, data);
    });
}

/// NFTA_DATA_VERDICT { code, chain } inside a nest of type `ty` (immediate data, map element data).
pub fn put_verdict(w: &mut Writer, ty: u16, v: &Verdict) {
    let (code, chain) = match v {
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(c) => (NFT_JUMP, Some(c)),
        Verdict::Goto(c) => (NFT_GOTO, Some(c)),
    };
    let data = w.begin_nest(ty);
    let verdict = w.begin_nest(NFTA_DATA_VERDICT);
    w.put_be32(NFTA_VERDICT_CODE, code as u32);
    if let Some(chain) = chain {
        w.put_str(NFTA_VERDICT_CHAIN, chain);
    }
    w.end_nest(verdict);
    w.end_nest(data);
}

impl Ctx<'_> {
    /// Load `field` into the register starting at 32-bit word `index`.
    fn load(&self, w: &mut Writer, field: &Field, index: u32) {
        let dreg = reg(index);
        let (saddr, daddr) = match self.family {
            Family::Ip => (12, 16),
            Family::Ip6 => (8, 24),
        };
        let alen = addr_len(self.family) as u32;
        match field {
            Field::Saddr => payload(w, dreg, NFT_PAYLOAD_NETWORK_HEADER, saddr, alen),
            Field::Daddr => payload(w, dreg, NFT_PAYLOAD_NETWORK_HEADER, daddr, alen),
            Field::Dport => payload(w, dreg, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            Field::L4Proto => meta_load(w, NFT_META_L4PROTO, dreg),
            Field::Mark => meta_load(w, NFT_META_MARK, dreg),
            Field::Iifname => meta_load(w, NFT_META_IIFNAME, dreg),
            Field::FibSaddrType => self.fib(w, NFTA_FIB_F_SADDR, dreg),
            Field::FibDaddrType => self.fib(w, NFTA_FIB_F_DADDR, dreg),
            Field::Numgen { modulus, offset } => expr(w, "numgen", |w| {
                w.put_be32(NFTA_NG_DREG, dreg);
                w.put_be32(NFTA_NG_MODULUS, *modulus);
                w.put_be32(NFTA_NG_TYPE, NFT_NG_RANDOM);
                w.put_be32(NFTA_NG_OFFSET, *offset);
            }),
        }
    }

    fn fib(&self, w: &mut Writer, flags: u32, dreg: u32) {
        expr(w, "fib", |w| {
            w.put_be32(NFTA_FIB_FLAGS, flags);
            w.put_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            w.put_be32(NFTA_FIB_DREG, dreg);
        });
    }

    /// Load a (possibly concatenated) key from word 0 on: each field at the next free 32-bit word.
    fn load_key(&self, w: &mut Writer, key: &[Field]) -> Result<(), EncodeError> {
        if key.is_empty() {
            return Err(EncodeError("empty key".into()));
        }
        let mut index = 0;
        for field in key {
            self.load(w, field, index);
            index += words(field_len(self.family, field));
        }
        Ok(())
    }

    fn lookup(&self, w: &mut Writer, set: &str, dreg: Option<u32>, negate: bool) {
        expr(w, "lookup", |w| {
            w.put_be32(NFTA_LOOKUP_SREG, NFT_REG_1);
            if let Some(dreg) = dreg {
                w.put_be32(NFTA_LOOKUP_DREG, dreg);
            }
            w.put_str(NFTA_LOOKUP_SET, set);
            if let Some(id) = self.set_ids.get(set) {
                w.put_be32(NFTA_LOOKUP_SET_ID, *id);
            }
            if negate {
                w.put_be32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        });
    }

    /// The bytes a field is compared with.
    fn cmp_bytes(&self, field: &Field, value: &Value) -> Result<Vec<u8>, EncodeError> {
        match (field, value) {
            (Field::Saddr | Field::Daddr, Value::Addr(a)) => addr_bytes(self.family, a),
            (Field::Dport, Value::Port(p)) => Ok(p.to_be_bytes().to_vec()),
            (Field::L4Proto, Value::Proto(p)) => Ok(vec![p.number()]),
            (Field::FibSaddrType | Field::FibDaddrType, Value::AddrTypeLocal) => Ok(RTN_LOCAL.to_ne_bytes().to_vec()),
            (Field::Numgen { .. }, Value::Index(i)) => Ok(i.to_ne_bytes().to_vec()),
            (Field::Iifname, Value::Iface(name)) => match name.strip_suffix('*') {
                // A wildcard compares only the prefix's bytes.
                Some(prefix) => Ok(prefix.as_bytes().to_vec()),
                None if name.len() < IFNAMSIZ => {
                    let mut b = name.as_bytes().to_vec();
                    b.resize(IFNAMSIZ, 0);
                    Ok(b)
                }
                None => Err(EncodeError(format!("interface name {name:?} is too long"))),
            },
            _ => Err(EncodeError(format!("cannot compare {field:?} with {value:?}"))),
        }
    }

    /// `<addr field> [!=] <prefix>`, as nft does it: a full-length prefix is a plain address; a byte-aligned
    /// one loads and compares only its leading bytes; any other masks the whole address first.
    fn cmp_prefix(&self, w: &mut Writer, field: &Field, net: &ipnet::IpNet, negate: bool) -> Result<(), EncodeError> {
        let (saddr, daddr) = match self.family {
            Family::Ip => (12, 16),
            Family::Ip6 => (8, 24),
        };
        let offset = match field {
            Field::Saddr => saddr,
            Field::Daddr => daddr,
            _ => return Err(EncodeError(format!("cannot compare {field:?} with a prefix"))),
        };
        let network = addr_bytes(self.family, &net.network())?;
        let full = network.len();
        let bits = usize::from(net.prefix_len());
        if bits == full * 8 {
            payload(w, NFT_REG_1, NFT_PAYLOAD_NETWORK_HEADER, offset, full as u32);
            cmp(w, negate, &network);
        } else if bits > 0 && bits.is_multiple_of(8) {
            payload(w, NFT_REG_1, NFT_PAYLOAD_NETWORK_HEADER, offset, (bits / 8) as u32);
            cmp(w, negate, &network[..bits / 8]);
        } else {
            payload(w, NFT_REG_1, NFT_PAYLOAD_NETWORK_HEADER, offset, full as u32);
            let mask = addr_bytes(self.family, &net.netmask())?;
            bitwise_mask(w, &mask);
            cmp(w, negate, &network);
        }
        Ok(())
    }

    fn dnat(&self, w: &mut Writer, proto_reg: u32, flags: Option<u32>) {
        let family = u32::from(nfproto(self.family));
        expr(w, "nat", |w| {
            w.put_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            w.put_be32(NFTA_NAT_FAMILY, family);
            w.put_be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            w.put_be32(NFTA_NAT_REG_PROTO_MIN, proto_reg);
            if let Some(flags) = flags {
                w.put_be32(NFTA_NAT_FLAGS, flags);
            }
        });
    }

    /// `meta l4proto <p>`: the protocol check nft requires before a DNAT with a port.
    fn l4proto(&self, w: &mut Writer, p: Protocol) {
        meta_load(w, NFT_META_L4PROTO, NFT_REG_1);
        cmp(w, false, &[p.number()]);
    }

    /// The expressions of one statement.
    pub fn stmt(&self, w: &mut Writer, s: &Stmt) -> Result<(), EncodeError> {
        match s {
            Stmt::Cmp { field, value: Value::Net(net), negate } => self.cmp_prefix(w, field, net, *negate)?,
            Stmt::Cmp { field, value, negate } => {
                let data = self.cmp_bytes(field, value)?;
                self.load(w, field, 0);
                cmp(w, *negate, &data);
            }
            Stmt::MarkMatch { mask, value } => {
                meta_load(w, NFT_META_MARK, NFT_REG_1);
                bitwise(w, *mask, 0, true);
                cmp(w, false, &value.to_ne_bytes());
            }
            Stmt::CtStateNew => {
                ct_load(w, NFT_CT_STATE, NFT_REG_1);
                bitwise(w, NF_CT_STATE_NEW_BIT, 0, false);
                cmp(w, true, &0u32.to_ne_bytes());
            }
            Stmt::CtStatusDnat => {
                ct_load(w, NFT_CT_STATUS, NFT_REG_1);
                bitwise(w, IPS_DST_NAT, 0, false);
                cmp(w, true, &0u32.to_ne_bytes());
            }
            Stmt::Lookup { key, set, negate } => {
                self.load_key(w, key)?;
                self.lookup(w, set, None, *negate);
            }
            Stmt::Vmap { key, map } => {
                self.load_key(w, key)?;
                self.lookup(w, map, Some(NFT_REG_VERDICT), false);
            }
            Stmt::MarkOr(bits) | Stmt::MarkXor(bits) => {
                // `meta mark set meta mark | b` is `(mark & !b) ^ b`; `^ b` is `(mark & all) ^ b`.
                let mask = if matches!(s, Stmt::MarkOr(_)) { !bits } else { u32::MAX };
                meta_load(w, NFT_META_MARK, NFT_REG_1);
                bitwise(w, mask, *bits, true);
                meta_set(w, NFT_META_MARK, NFT_REG_1);
            }
            Stmt::Masquerade => expr(w, "masq", |w| w.put_be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY)),
            Stmt::DnatMap { protocol, key, map } => {
                self.l4proto(w, *protocol);
                // The map's data (address . port) lands from NFT_REG_1 on; the key is computed there too.
                self.load_key(w, key)?;
                self.lookup(w, map, Some(NFT_REG_1), false);
                self.dnat(w, reg(words(addr_len(self.family))), None);
            }
            Stmt::Dnat { protocol, addr, port } => {
                self.l4proto(w, *protocol);
                // Address and port are two plain values: one 128-bit register each.
                immediate_value(w, NFT_REG_1, &addr_bytes(self.family, addr)?);
                immediate_value(w, reg(4), &port.to_be_bytes());
                self.dnat(w, reg(4), Some(NF_NAT_RANGE_PROTO_SPECIFIED));
            }
            Stmt::Reject | Stmt::RejectTcpReset => {
                let (ty, code) = match (s, self.family) {
                    (Stmt::RejectTcpReset, _) => (NFT_REJECT_TCP_RST, 0),
                    (_, Family::Ip) => (NFT_REJECT_ICMP_UNREACH, ICMP_PORT_UNREACH),
                    (_, Family::Ip6) => (NFT_REJECT_ICMP_UNREACH, ICMPV6_PORT_UNREACH),
                };
                expr(w, "reject", |w| {
                    w.put_be32(NFTA_REJECT_TYPE, ty);
                    w.put(NFTA_REJECT_ICMP_CODE, &[code]);
                });
            }
            Stmt::Update { key, set } => {
                self.load_key(w, key)?;
                expr(w, "dynset", |w| {
                    w.put_be32(NFTA_DYNSET_SREG_KEY, NFT_REG_1);
                    w.put_be32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                    w.put_str(NFTA_DYNSET_SET_NAME, set);
                    if let Some(id) = self.set_ids.get(set) {
                        w.put_be32(NFTA_DYNSET_SET_ID, *id);
                    }
                });
            }
            Stmt::Verdict(v) => expr(w, "immediate", |w| {
                w.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                put_verdict(w, NFTA_IMMEDIATE_DATA, v);
            }),
        }
        Ok(())
    }
}
