//! A small typed model of the nftables objects and rules kube-proxy-rs uses, shared by every transport: the
//! `nft -f` text writer and the netlink encoder turn the same `Transaction` into the same kernel state.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{IpFamily, Protocol};

/// The nftables families we program: one table per IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub fn of(family: IpFamily) -> Family {
        match family {
            IpFamily::V4 => Family::Ip,
            IpFamily::V6 => Family::Ip6,
        }
    }

    pub fn ip_family(self) -> IpFamily {
        match self {
            Family::Ip => IpFamily::V4,
            Family::Ip6 => IpFamily::V6,
        }
    }
}

/// Where a base chain hooks into netfilter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// A base chain's attachment; regular chains have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// Values a rule can load into a register and match, concatenate or map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Saddr,
    Daddr,
    /// Transport-header destination port (any of tcp/udp/sctp).
    Dport,
    L4Proto,
    Mark,
    Iifname,
    /// `fib saddr type`: the address type of the source address.
    FibSaddrType,
    /// `fib daddr type`: the address type of the destination address.
    FibDaddrType,
    /// `numgen random mod N offset O`.
    Numgen {
        modulus: u32,
        offset: u32,
    },
}

/// A constant a field is compared with or a set element is made of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Addr(IpAddr),
    Net(IpNet),
    Proto(Protocol),
    Port(u16),
    /// An index produced by numgen (endpoint maps).
    Index(u32),
    /// `local` as a fib address type.
    AddrTypeLocal,
    /// An interface name; a trailing `*` matches a prefix.
    Iface(String),
}

/// A verdict, in a rule or as the data of a verdict-map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// One statement of a rule; a rule is a sequence that stops at the first failing match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `<field> == value` (or `!=` when `negate`); a `Value::Net` matches a prefix.
    Cmp {
        field: Field,
        value: Value,
        negate: bool,
    },
    /// `meta mark & mask == value`.
    MarkMatch {
        mask: u32,
        value: u32,
    },
    /// `ct state new`.
    CtStateNew,
    /// `ct status dnat`.
    CtStatusDnat,
    /// `<concatenated fields> @set`.
    Lookup {
        key: Vec<Field>,
        set: String,
        negate: bool,
    },
    /// `<concatenated fields> vmap @map`.
    Vmap {
        key: Vec<Field>,
        map: String,
    },
    /// `meta mark set meta mark | bits`.
    MarkOr(u32),
    /// `meta mark set meta mark ^ bits`.
    MarkXor(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// `meta l4proto <p> dnat <family> to <key> map @map`: the map yields address . port.
    DnatMap {
        protocol: Protocol,
        key: Vec<Field>,
        map: String,
    },
    /// `meta l4proto <p> dnat to <addr>:<port>`.
    Dnat {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    /// `reject`: ICMP port unreachable.
    Reject,
    /// `reject with tcp reset` (only after a TCP match): refused at once, with no ICMP rate limit in the way.
    RejectTcpReset,
    /// `update @set { <key> }`: refresh a dynamic set's element (session affinity).
    Update {
        key: Vec<Field>,
        set: String,
    },
    Verdict(Verdict),
}

/// A rule: statements evaluated in order.
pub type Rule = Vec<Stmt>;

/// The data types set keys and map values are built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Addr,
    Proto,
    Port,
    /// The integer numgen produces (declared with `typeof numgen ...`).
    Index,
    /// A port of one protocol: inet_service, declared as `typeof <proto> dport` in index maps, because nft
    /// checks a DNAT rule's protocol against the map's declared one.
    L4Port(Protocol),
    Verdict,
}

/// Named set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SetDef {
    pub name: String,
    pub key: Vec<DataType>,
    /// Map data: `[Verdict]` or `[Addr, Port]`; empty for a plain set.
    pub data: Vec<DataType>,
    /// Dynamic set with a per-element timeout in seconds (session affinity).
    pub timeout: Option<u32>,
}

/// Data of a map element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemData {
    Verdict(Verdict),
    Values(Vec<Value>),
}

/// One element of a set or map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<Value>,
    pub data: Option<ElemData>,
}

/// One step of a transaction, in kernel order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    /// Remove another table of the same family if it exists (upstream kube-proxy's, on takeover).
    RemoveOtherTable(String),
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain(String),
    DeleteChain(String),
    AddSet(SetDef),
    DeleteSet(String),
    AddElements {
        set: String,
        elements: Vec<Element>,
    },
    DeleteElements {
        set: String,
        keys: Vec<Vec<Value>>,
    },
    AddRule {
        chain: String,
        rule: Rule,
    },
}

/// Everything one table must change, applied atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub family: Family,
    pub table: String,
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new(family: Family, table: impl Into<String>) -> Self {
        Transaction { family, table: table.into(), ops: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
