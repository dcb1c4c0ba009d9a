//! `nft -f` syntax for a `Transaction`. One script is one atomic kernel transaction.

use std::fmt::Write;

use super::ir::*;

fn family_kw(f: Family) -> &'static str {
    match f {
        Family::Ip => "ip",
        Family::Ip6 => "ip6",
    }
}

fn field(f: Family, field: &Field) -> String {
    let ip = family_kw(f);
    match field {
        Field::Saddr => format!("{ip} saddr"),
        Field::Daddr => format!("{ip} daddr"),
        Field::Dport => "th dport".into(),
        Field::L4Proto => "meta l4proto".into(),
        Field::Mark => "meta mark".into(),
        Field::Iifname => "iifname".into(),
        Field::FibSaddrType => "fib saddr type".into(),
        Field::FibDaddrType => "fib daddr type".into(),
        Field::Numgen { modulus, offset } => format!("numgen random mod {modulus} offset {offset}"),
    }
}

fn key(f: Family, fields: &[Field]) -> String {
    fields.iter().map(|x| field(f, x)).collect::<Vec<_>>().join(" . ")
}

fn value(v: &Value) -> String {
    match v {
        Value::Addr(a) => a.to_string(),
        Value::Net(n) => n.to_string(),
        Value::Proto(p) => p.name().into(),
        Value::Port(p) => p.to_string(),
        Value::Index(i) => i.to_string(),
        Value::AddrTypeLocal => "local".into(),
        Value::Iface(name) => format!("\"{name}\""),
    }
}

fn values(vs: &[Value]) -> String {
    vs.iter().map(value).collect::<Vec<_>>().join(" . ")
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn stmt(f: Family, s: &Stmt) -> String {
    match s {
        Stmt::Cmp { field: fl, value: v, negate } => {
            format!("{} {}{}", field(f, fl), if *negate { "!= " } else { "" }, value(v))
        }
        Stmt::MarkMatch { mask, value } => format!("meta mark & {mask:#010x} == {value:#010x}"),
        Stmt::CtStateNew => "ct state new".into(),
        Stmt::CtStatusDnat => "ct status dnat".into(),
        Stmt::Lookup { key: k, set, negate } => {
            format!("{} {}@{set}", key(f, k), if *negate { "!= " } else { "" })
        }
        Stmt::Vmap { key: k, map } => format!("{} vmap @{map}", key(f, k)),
        Stmt::MarkOr(bits) => format!("meta mark set meta mark | {bits:#010x}"),
        Stmt::MarkXor(bits) => format!("meta mark set meta mark ^ {bits:#010x}"),
        Stmt::Masquerade => "masquerade fully-random".into(),
        Stmt::DnatMap { protocol, key: k, map } => {
            format!("meta l4proto {} dnat {} to {} map @{map}", protocol.name(), family_kw(f), key(f, k))
        }
        Stmt::Dnat { protocol, addr, port } => {
            let to = match addr {
                std::net::IpAddr::V4(a) => format!("{a}:{port}"),
                std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
            };
            format!("meta l4proto {} dnat {} to {to}", protocol.name(), family_kw(f))
        }
        Stmt::Reject => "reject".into(),
        Stmt::RejectTcpReset => "reject with tcp reset".into(),
        Stmt::Update { key: k, set } => format!("update @{set} {{ {} }}", key(f, k)),
        Stmt::Verdict(v) => verdict(v),
    }
}

/// The text of one rule, as `nft` would accept it after `add rule <family> <table> <chain>`.
pub fn rule(f: Family, r: &Rule) -> String {
    r.iter().map(|s| stmt(f, s)).collect::<Vec<_>>().join(" ")
}

fn data_type(f: Family, t: DataType) -> &'static str {
    match (t, f) {
        (DataType::Addr, Family::Ip) => "ipv4_addr",
        (DataType::Addr, Family::Ip6) => "ipv6_addr",
        (DataType::Proto, _) => "inet_proto",
        (DataType::Port | DataType::L4Port(_), _) => "inet_service",
        (DataType::Index, _) => "integer",
        (DataType::Verdict, _) => "verdict",
    }
}

fn set_spec(f: Family, s: &SetDef) -> String {
    let mut out = String::from("{ ");
    if s.key == [DataType::Index] {
        // numgen yields a plain integer, which nft only accepts as a key through `typeof`.
        let data = match s.data.as_slice() {
            [DataType::Verdict] => "verdict".to_string(),
            [DataType::Addr, DataType::L4Port(p)] => format!("{} daddr . {} dport", family_kw(f), p.name()),
            other => unreachable!("unsupported index map data {other:?}"),
        };
        let _ = write!(out, "typeof numgen random mod 1 : {data} ; ");
    } else {
        let k = s.key.iter().map(|t| data_type(f, *t)).collect::<Vec<_>>().join(" . ");
        let _ = write!(out, "type {k}");
        if !s.data.is_empty() {
            let d = s.data.iter().map(|t| data_type(f, *t)).collect::<Vec<_>>().join(" . ");
            let _ = write!(out, " : {d}");
        }
        out.push_str(" ; ");
    }
    if let Some(t) = s.timeout {
        let _ = write!(out, "flags dynamic,timeout ; timeout {t}s ; ");
    }
    out.push('}');
    out
}

fn element(e: &Element) -> String {
    let mut s = values(&e.key);
    match &e.data {
        None => {}
        Some(ElemData::Verdict(v)) => {
            let _ = write!(s, " : {}", verdict(v));
        }
        Some(ElemData::Values(vs)) => {
            let _ = write!(s, " : {}", values(vs));
        }
    }
    s
}

fn priority(b: &BaseChain) -> i32 {
    b.priority
}

fn hook(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// Elements per `add element` line: keeps lines and nft's per-command memory bounded.
const ELEMENTS_PER_LINE: usize = 512;

/// The whole transaction as an `nft -f` script.
pub fn script(tx: &Transaction) -> String {
    let mut out = String::new();
    for op in &tx.ops {
        write_op(&mut out, tx.family, &tx.table, op);
    }
    out
}

/// One operation as `nft -f` lines (for error messages that name the operation that failed).
pub fn op(family: Family, table: &str, op: &Op) -> String {
    let mut out = String::new();
    write_op(&mut out, family, table, op);
    out
}

fn write_op(out: &mut String, f: Family, table: &str, op: &Op) {
    let t = format!("{} {table}", family_kw(f));
    match op {
        Op::AddTable => writeln!(out, "add table {t}"),
        Op::DeleteTable => writeln!(out, "delete table {t}"),
        Op::RemoveOtherTable(name) => {
            let other = format!("{} {name}", family_kw(f));
            // "add" first makes the delete succeed whether or not the table exists.
            writeln!(out, "add table {other}\ndelete table {other}")
        }
        Op::AddChain { name, base: None } => writeln!(out, "add chain {t} {name}"),
        Op::AddChain { name, base: Some(b) } => {
            let ty = match b.chain_type {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            };
            writeln!(
                out,
                "add chain {t} {name} {{ type {ty} hook {} priority {} ; policy accept ; }}",
                hook(b.hook),
                priority(b)
            )
        }
        Op::FlushChain(name) => writeln!(out, "flush chain {t} {name}"),
        Op::DeleteChain(name) => writeln!(out, "delete chain {t} {name}"),
        Op::AddSet(s) => {
            let kind = if s.data.is_empty() { "set" } else { "map" };
            writeln!(out, "add {kind} {t} {} {}", s.name, set_spec(f, s))
        }
        Op::DeleteSet(name) => writeln!(out, "delete set {t} {name}"),
        Op::AddElements { set, elements } => {
            for chunk in elements.chunks(ELEMENTS_PER_LINE) {
                let list = chunk.iter().map(element).collect::<Vec<_>>().join(", ");
                let _ = writeln!(out, "add element {t} {set} {{ {list} }}");
            }
            Ok(())
        }
        Op::DeleteElements { set, keys } => {
            for chunk in keys.chunks(ELEMENTS_PER_LINE) {
                let list = chunk.iter().map(|k| values(k)).collect::<Vec<_>>().join(", ");
                let _ = writeln!(out, "delete element {t} {set} {{ {list} }}");
            }
            Ok(())
        }
        Op::AddRule { chain, rule: r } => writeln!(out, "add rule {t} {chain} {}", rule(f, r)),
    }
    .expect("writing to a String cannot fail");
}
