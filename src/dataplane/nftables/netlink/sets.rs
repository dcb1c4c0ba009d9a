//! Set definitions as nft declares them (key and data types, lengths, flags, and the userdata `nft list` reads
//! back), and the bytes of set elements.

use super::super::ir::{DataType, Family, SetDef, Value};
use super::EncodeError;
use super::attr::{Udata, Writer};
use super::expr::{addr_bytes, addr_len};
use super::sys::*;
use crate::model::Protocol;

/// Bytes of one value of `t` alone.
fn type_len(family: Family, t: DataType) -> usize {
    match t {
        DataType::Addr => addr_len(family),
        DataType::Proto => 1,
        DataType::Port | DataType::L4Port(_) => 2,
        DataType::Index => 4,
        DataType::Verdict => 0,
    }
}

/// Bytes of a key or data of these types: a lone value has its own length, each field of a concatenation is
/// padded to 4 bytes.
fn types_len(family: Family, types: &[DataType]) -> usize {
    match types {
        [one] => type_len(family, *one),
        many => many.iter().map(|t| type_len(family, *t).next_multiple_of(4)).sum(),
    }
}

fn type_id(family: Family, t: DataType) -> u32 {
    match (t, family) {
        (DataType::Addr, Family::Ip) => TYPE_IPADDR,
        (DataType::Addr, Family::Ip6) => TYPE_IP6ADDR,
        (DataType::Proto, _) => TYPE_INET_PROTOCOL,
        (DataType::Port | DataType::L4Port(_), _) => TYPE_INET_SERVICE,
        (DataType::Index, _) => TYPE_INTEGER,
        (DataType::Verdict, _) => NFT_DATA_VERDICT,
    }
}

/// nft's id of a (concatenated) type: 6 bits per field.
fn types_id(family: Family, types: &[DataType]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << TYPE_BITS) | type_id(family, *t))
}

/// The key (or map data) of an element. The values alone determine the bytes, so no set definition is needed
/// (partial transactions add elements to sets an earlier transaction made): each value in network order except
/// numgen's index, which the kernel produces in host order; the fields of a concatenation padded to 4 bytes.
pub fn key_bytes(family: Family, values: &[Value]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(4 * values.len());
    for v in values {
        match v {
            Value::Addr(a) => out.extend_from_slice(&addr_bytes(family, a)?),
            Value::Proto(p) => out.push(p.number()),
            Value::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Value::Index(i) => out.extend_from_slice(&i.to_ne_bytes()),
            Value::Net(_) | Value::AddrTypeLocal | Value::Iface(_) => {
                return Err(EncodeError(format!("{v:?} cannot be a set element")));
            }
        }
        if values.len() > 1 {
            out.resize(out.len().next_multiple_of(4), 0);
        }
    }
    Ok(out)
}

pub fn set_def(w: &mut Writer, family: Family, table: &str, s: &SetDef, id: u32) -> Result<(), EncodeError> {
    let is_map = !s.data.is_empty();
    let mut flags = if is_map { NFT_SET_MAP } else { 0 };
    if s.timeout.is_some() {
        flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
    }
    w.put_str(NFTA_SET_TABLE, table);
    w.put_str(NFTA_SET_NAME, &s.name);
    w.put_be32(NFTA_SET_FLAGS, flags);
    w.put_be32(NFTA_SET_KEY_TYPE, types_id(family, &s.key));
    w.put_be32(NFTA_SET_KEY_LEN, types_len(family, &s.key) as u32);
    if is_map {
        w.put_be32(NFTA_SET_DATA_TYPE, types_id(family, &s.data));
        w.put_be32(NFTA_SET_DATA_LEN, types_len(family, &s.data) as u32);
    }
    w.put_be32(NFTA_SET_ID, id);
    if let Some(t) = s.timeout {
        w.put_be64(NFTA_SET_TIMEOUT, u64::from(t) * 1000);
    }
    w.put(NFTA_SET_USERDATA, &set_userdata(family, s)?);
    Ok(())
}

/// What nft stores in a set's userdata so that `nft list` prints the set as it was declared: byte orders of key
/// and data, and for `typeof` declarations (and concatenated keys) the expressions they were made of.
fn set_userdata(family: Family, s: &SetDef) -> Result<Vec<u8>, EncodeError> {
    let key_order = match s.key.as_slice() {
        [DataType::Index] => BYTEORDER_HOST,
        [_] => BYTEORDER_BIG,
        _ => BYTEORDER_INVALID,
    };
    let mut u = Udata::new().u32(UDATA_SET_KEYBYTEORDER, key_order);
    let is_map = !s.data.is_empty();
    if is_map {
        u = u.u32(UDATA_SET_DATABYTEORDER, BYTEORDER_INVALID);
    }
    let typeof_expr = |expr: u32, data: Udata| Udata::new().u32(UDATA_TYPEOF_EXPR, expr).nest(UDATA_TYPEOF_DATA, data);
    let typeof_index = s.key == [DataType::Index];
    if typeof_index {
        // `typeof numgen random mod 1`
        let numgen = Udata::new().u32(0, NFT_NG_RANDOM).u32(1, 1).u32(2, 0);
        u = u.nest(UDATA_SET_KEY_TYPEOF, typeof_expr(EXPR_NUMGEN, numgen));
    } else if s.key.len() > 1 {
        u = u.nest(UDATA_SET_KEY_TYPEOF, typeof_expr(EXPR_CONCAT, Udata::new()));
    }
    if typeof_index {
        let data = match s.data.as_slice() {
            [DataType::Verdict] => typeof_expr(EXPR_VERDICT, Udata::new()),
            [DataType::Addr, DataType::L4Port(p)] => {
                // `ip daddr . tcp dport`: two payload expressions, by protocol description and header field.
                let (ip_desc, daddr) = match family {
                    Family::Ip => (PROTO_DESC_IP, IPHDR_DADDR),
                    Family::Ip6 => (PROTO_DESC_IP6, IP6HDR_DADDR),
                };
                let l4_desc = match p {
                    Protocol::Tcp => PROTO_DESC_TCP,
                    Protocol::Udp => PROTO_DESC_UDP,
                    Protocol::Sctp => PROTO_DESC_SCTP,
                };
                let field = |desc: u32, tmpl: u32| typeof_expr(EXPR_PAYLOAD, Udata::new().u32(0, desc).u32(1, tmpl));
                typeof_expr(EXPR_CONCAT, Udata::new().nest(0, field(ip_desc, daddr)).nest(1, field(l4_desc, TH_DPORT)))
            }
            other => return Err(EncodeError(format!("unsupported index map data {other:?}"))),
        };
        u = u.nest(UDATA_SET_DATA_TYPEOF, data);
    }
    if is_map {
        u = u.u32(UDATA_SET_DATA_INTERVAL, 0);
    }
    Ok(u.into_bytes())
}
