//! Reading `iptables-save` output: which tables, chains and rules exist, and where each rule jumps. Rules are
//! kept as the exact text `iptables-save` printed, so that a rule can be deleted with `-D CHAIN <that text>`
//! without re-rendering (and possibly mis-rendering) its matches.

use super::IptablesError;

/// One `*table … COMMIT` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// `nat`, `filter`, `mangle`, …
    pub name: String,
    /// Chains in the order they were declared.
    pub chains: Vec<Chain>,
    /// Rules in the order they were printed (per chain, that is their order in the chain).
    pub rules: Vec<Rule>,
}

/// A chain declaration (`:NAME POLICY [packets:bytes]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Built-in chains (INPUT, PREROUTING, …) have a policy; user chains print `-` instead.
    pub builtin: bool,
}

/// A rule (`-A CHAIN spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Everything after the chain name, verbatim.
    pub spec: String,
    /// The chain or target named by `-j`/`-g`, if any.
    pub target: Option<String>,
}

/// Parse the whole output of `iptables-save` (all tables). `tool` names the program in errors.
pub fn parse(tool: &str, text: &str) -> Result<Vec<Table>, IptablesError> {
    let err = |line: usize, reason: &str| IptablesError::Parse { tool: tool.to_string(), line, reason: reason.into() };
    let mut tables = Vec::new();
    let mut open: Option<Table> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if open.is_some() {
                return Err(err(n, "table started before the previous one was committed"));
            }
            open = Some(Table { name: name.to_string(), ..Table::default() });
            continue;
        }
        let Some(table) = open.as_mut() else {
            return Err(err(n, "line outside a table"));
        };
        if line == "COMMIT" {
            tables.push(open.take().expect("checked above"));
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (Some(name), Some(policy)) = (words.next(), words.next()) else {
                return Err(err(n, "chain declaration without a policy"));
            };
            table.chains.push(Chain { name: name.to_string(), builtin: policy != "-" });
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let rest = rest.trim_start();
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let spec = spec.trim().to_string();
            let target = jump_target(&spec);
            table.rules.push(Rule { chain: chain.to_string(), spec, target });
        } else {
            return Err(err(n, "unrecognised line"));
        }
    }
    if open.is_some() {
        return Err(err(text.lines().count(), "last table has no COMMIT"));
    }
    Ok(tables)
}

/// The operand of `-j`/`--jump`/`-g`/`--goto`, found among the rule's words so that a comment mentioning
/// "-j KUBE-SERVICES" is not mistaken for a jump.
pub fn jump_target(spec: &str) -> Option<String> {
    let words = words(spec);
    words
        .iter()
        .position(|w| matches!(w.as_str(), "-j" | "--jump" | "-g" | "--goto"))
        .and_then(|i| words.get(i + 1).cloned())
}

/// Split a rule into words as iptables-restore does: whitespace separates, double quotes group, a backslash
/// escapes the next character.
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_honour_quotes_and_escapes() {
        assert_eq!(
            words(r#"-s 1.2.3.4/32 -m comment --comment "someone else\'s rule -j KUBE-SERVICES" -j DROP"#),
            ["-s", "1.2.3.4/32", "-m", "comment", "--comment", "someone else's rule -j KUBE-SERVICES", "-j", "DROP"]
        );
        assert_eq!(words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn jump_targets() {
        assert_eq!(
            jump_target(r#"-m comment --comment "x -j KUBE-NODEPORTS" -j KUBE-SERVICES"#).unwrap(),
            "KUBE-SERVICES"
        );
        assert_eq!(jump_target("-m addrtype --dst-type LOCAL -g KUBE-NODEPORTS").unwrap(), "KUBE-NODEPORTS");
        assert_eq!(jump_target(r#"-m comment --comment "other traffic will be dropped""#), None);
        assert_eq!(jump_target(""), None);
    }

    #[test]
    fn rejects_what_is_not_save_output() {
        for bad in
            ["-A INPUT -j ACCEPT\n", "*filter\n:INPUT ACCEPT [0:0]\n", "*filter\nhello\nCOMMIT\n", "*nat\n*filter\n"]
        {
            assert!(matches!(parse("test", bad), Err(IptablesError::Parse { .. })), "{bad:?}");
        }
    }
}
