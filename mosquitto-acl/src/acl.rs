//! The ACL file (Mosquitto's `acl_file` format) and the decisions it gives.
//!
//! The format and the decisions for publish and read are Mosquitto 2.0's own (its
//! `security_default.c`), so `deploy/mosquitto/acl` means what it meant under `acl_file`:
//! - `user <name>` starts the rules of one login; `topic [read|write|readwrite|deny] <filter>`
//!   lines belong to the last `user` (before any, to clients without a login);
//! - `pattern [read|write|readwrite|deny] <filter>` lines apply to every client, with `%u`
//!   replaced by its login and `%c` by its client id;
//! - a `deny` rule that matches wins over any grant; a login's own rules are asked before the
//!   patterns; nothing that no rule grants is allowed.
//!
//! One decision is stricter than Mosquitto's: `acl_file` lets every subscription through and
//! only filters what is delivered, so a terminal subscribing to `edubrain/#` got a granted
//! SUBACK and silence. Here a subscription is granted only when every topic it can match is
//! readable by one rule, so probing with wildcards is refused (and logged) at once.
//!
//! Pure: no I/O; the caller reads the file.

use std::collections::HashMap;

/// What a client asks to do with a topic (Mosquitto's `MOSQ_ACL_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published on the topic (asked per message, at delivery).
    Read,
    /// Publish on the topic.
    Write,
    /// Subscribe with the filter.
    Subscribe,
    /// Unsubscribe from the filter (always allowed, as in Mosquitto).
    Unsubscribe,
}

/// The client an ACL check is about.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub id: &'a str,
    /// `None` for a client without a login.
    pub username: Option<&'a str>,
}

/// A malformed ACL file: which line, and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    filter: String,
    read: bool,
    write: bool,
    /// No wildcard: a topic or filter applies only if it is the same string (after a pattern's
    /// `%u` and `%c`, which cannot bring one: such logins are refused before).
    literal: bool,
    /// A pattern naming `%u`, which does not apply to a client without a login.
    needs_login: bool,
}

impl Rule {
    fn is_deny(&self) -> bool {
        !self.read && !self.write
    }

    fn grants(&self, access: Access) -> bool {
        match access {
            Access::Read | Access::Subscribe => self.read,
            Access::Write => self.write,
            Access::Unsubscribe => true,
        }
    }

    /// What this rule decides once it applies: a deny refuses, a grant of `access` allows, and
    /// a rule for other access leaves the question to the next.
    fn verdict(&self, access: Access) -> Option<bool> {
        if self.is_deny() { Some(false) } else { self.grants(access).then_some(true) }
    }
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` rules per login, deny rules first.
    users: HashMap<String, Vec<Rule>>,
    /// `topic` rules before any `user` line: for clients without a login.
    anonymous: Vec<Rule>,
    /// `pattern` rules, deny rules first.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses the text of an ACL file. Any line Mosquitto would refuse is an error here too.
    pub fn parse(text: &str) -> Result<Acl, ParseError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |reason| ParseError { line: i + 1, reason, text: raw.to_string() };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(' ').map_or((line, ""), |(k, r)| (k, r.trim_start()));
            match keyword {
                "user" if rest.is_empty() => return Err(err("`user` without a login")),
                "user" => user = Some(rest.to_string()),
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(err("a rule without a topic"));
                    }
                    // `topic <filter>` alone grants both; otherwise the first word is the access.
                    let (access, filter) = match rest.split_once(' ') {
                        Some((a, f)) => (Some(a), f.trim()),
                        None => (None, rest),
                    };
                    let (read, write) = match access {
                        None | Some("readwrite") => (true, true),
                        Some("read") => (true, false),
                        Some("write") => (false, true),
                        Some("deny") => (false, false),
                        Some(_) => return Err(err("access is not one of read, write, readwrite, deny")),
                    };
                    if !valid_filter(filter) {
                        return Err(err("not a valid MQTT topic filter"));
                    }
                    let literal = !filter.contains(['+', '#']);
                    let needs_login = filter.contains("%u");
                    let rule = Rule { filter: filter.to_string(), read, write, literal, needs_login };
                    let rules = match (keyword, &user) {
                        ("topic", Some(user)) => acl.users.entry(user.clone()).or_default(),
                        ("topic", None) => &mut acl.anonymous,
                        _ => &mut acl.patterns,
                    };
                    // Deny rules are asked first, whatever their place in the file.
                    if rule.is_deny() {
                        rules.insert(0, rule);
                    } else {
                        rules.push(rule);
                    }
                }
                _ => return Err(err("not a `user`, `topic` or `pattern` line")),
            }
        }
        Ok(acl)
    }

    /// Whether `client` may do `access` on `topic` (a topic name, or a filter for subscribe).
    pub fn allows(&self, client: Client<'_>, access: Access, topic: &str) -> bool {
        match access {
            Access::Unsubscribe => true,
            Access::Read | Access::Write => self.decide(client, access, topic, matches),
            // A shared subscription's filter is what follows `$share/<group>/`.
            Access::Subscribe => {
                let filter = match topic.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
                    Some((_group, filter)) => filter,
                    None => topic,
                };
                self.decide(client, access, filter, covers)
            }
        }
    }

    /// The first rule that `applies` decides: a deny refuses, a grant of `access` allows.
    fn decide(&self, client: Client<'_>, access: Access, topic: &str, applies: impl Fn(&str, &str) -> bool) -> bool {
        let own = match client.username {
            Some(user) => self.users.get(user).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        if let Some(verdict) = own.iter().filter(|rule| applies(&rule.filter, topic)).find_map(|rule| rule.verdict(access)) {
            return verdict;
        }
        if self.patterns.is_empty() {
            return false;
        }
        // A login or client id with a wildcard in it would widen every pattern it is put into.
        let dangerous = |s: &str| s.bytes().any(|b| b == b'+' || b == b'#');
        if client.username.is_some_and(dangerous) || dangerous(client.id) {
            return false;
        }
        // The hub's patterns are literal (`edubrain/v1/%u/events`): compared in place, without
        // building the expansion, on every message.
        let pattern_applies = |rule: &&Rule| {
            !(rule.needs_login && client.username.is_none())
                && if rule.literal { equals_expanded(&rule.filter, client, topic) } else { applies(&expand(&rule.filter, client), topic) }
        };
        self.patterns.iter().filter(pattern_applies).find_map(|rule| rule.verdict(access)).unwrap_or(false)
    }
}

/// A pattern with `%c` replaced by the client id and `%u` by its login.
fn expand(pattern: &str, client: Client<'_>) -> String {
    let mut out = String::with_capacity(pattern.len() + 64);
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match (tail.as_bytes().get(1), client.username) {
            (Some(b'c'), _) => out.push_str(client.id),
            (Some(b'u'), Some(user)) => out.push_str(user),
            _ => {
                out.push('%');
                rest = &tail[1..];
                continue;
            }
        }
        rest = &tail[2..];
    }
    out.push_str(rest);
    out
}

/// Whether `topic` is `pattern` with `%c` and `%u` replaced: [`expand`] without the copy.
fn equals_expanded(pattern: &str, client: Client<'_>, topic: &str) -> bool {
    let (mut p, mut rest) = (pattern, topic);
    while let Some(at) = p.find('%') {
        let (literal, tail) = p.split_at(at);
        let (with, skip) = match (tail.as_bytes().get(1), client.username) {
            (Some(b'c'), _) => (client.id, 2),
            (Some(b'u'), Some(user)) => (user, 2),
            _ => ("%", 1),
        };
        match rest.strip_prefix(literal).and_then(|r| r.strip_prefix(with)) {
            Some(r) => rest = r,
            None => return false,
        }
        p = &tail[skip..];
    }
    rest == p
}

/// A valid subscription filter: `#` only as the whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if (level.contains('#') && (level != "#" || !last)) || (level.contains('+') && level != "+") {
            return false;
        }
    }
    true
}

/// Whether the topic name `topic` matches the filter `filter` (MQTT 3.1.1 section 4.7: a
/// wildcard in the first level does not match a topic that starts with `$`).
///
/// One pass over the bytes: the broker asks this for every message published and every copy
/// delivered, and splitting both strings into levels cost ~2,000 instructions a call (callgrind).
pub fn matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    let whole_level = |i: usize| f.get(i + 1).is_none_or(|&c| c == b'/');
    let (mut i, mut j) = (0, 0);
    // At the start of a level of both.
    loop {
        match f.get(i) {
            Some(b'#') if whole_level(i) => return true,
            Some(b'+') if whole_level(i) => {
                i += 1;
                while j < t.len() && t[j] != b'/' {
                    j += 1;
                }
            }
            _ => {
                while i < f.len() && f[i] != b'/' {
                    if t.get(j) != Some(&f[i]) {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                if j < t.len() && t[j] != b'/' {
                    return false;
                }
            }
        }
        // Both at the end of a level: a `/` or the end of the string.
        match (i < f.len(), j < t.len()) {
            (false, false) => return true,
            (true, true) => (i, j) = (i + 1, j + 1),
            // `a/#` matches `a` too: `#` is also the parent level.
            (true, false) => return &f[i..] == b"/#",
            (false, true) => return false,
        }
    }
}

/// Whether every topic the filter `filter` can match is matched by `rule`.
pub fn covers(rule: &str, filter: &str) -> bool {
    // A wildcard rule level never matches a `$` topic; neither does a filter's wildcard level.
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            // `+` covers one level of anything but `#`, which can reach several.
            (Some("+"), Some(fl)) if fl != "#" => {}
            // A literal covers only the same literal, not a wildcard in the filter.
            (Some(rl), Some(fl)) if rl == fl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HUB: &str = include_str!("../../deploy/mosquitto/acl");

    fn terminal(name: &str) -> Client<'_> {
        Client { id: name, username: Some(name) }
    }

    #[test]
    fn the_hubs_acl_confines_terminals_to_their_own_topics() {
        let acl = Acl::parse(HUB).unwrap();
        let a = terminal("c01/c01-s1/c01-s1-r1/t1");
        assert!(acl.allows(a, Access::Write, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/events"));
        assert!(acl.allows(a, Access::Subscribe, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/acks"));
        assert!(acl.allows(a, Access::Read, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/acks"));
        // Another classroom's topic, its own acks topic, or anything else.
        assert!(!acl.allows(a, Access::Write, "edubrain/v1/c01/c01-s1/c01-s1-r2/t2/events"));
        assert!(!acl.allows(a, Access::Write, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/acks"));
        assert!(!acl.allows(a, Access::Write, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/events/x"));
        assert!(!acl.allows(a, Access::Read, "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/events"));
        assert!(!acl.allows(a, Access::Read, "$SYS/broker/log/N"));
        // Wildcard subscriptions reach beyond its own acks.
        for filter in ["#", "edubrain/#", "edubrain/v1/c01/+/+/+/acks", "edubrain/v1/c01/c01-s1/c01-s1-r1/t1/+", "$SYS/#"] {
            assert!(!acl.allows(a, Access::Subscribe, filter), "{filter}");
        }
        assert!(acl.allows(a, Access::Unsubscribe, "#"));
    }

    #[test]
    fn the_hubs_acl_gives_an_edge_its_city_and_the_broker_log() {
        let acl = Acl::parse(HUB).unwrap();
        let edge = Client { id: "edge-c01", username: Some("edge-c01") };
        assert!(acl.allows(edge, Access::Subscribe, "edubrain/v1/c01/+/+/+/events"));
        assert!(acl.allows(edge, Access::Subscribe, "$share/edges/edubrain/v1/c01/+/+/+/events"));
        assert!(acl.allows(edge, Access::Subscribe, "$SYS/broker/log/+"));
        assert!(acl.allows(edge, Access::Read, "$SYS/broker/log/N"));
        assert!(acl.allows(edge, Access::Read, "edubrain/v1/c01/s/r/t/events"));
        assert!(acl.allows(edge, Access::Write, "edubrain/v1/c01/s/r/t/acks"));
        // Not another city's, nor the rest of $SYS, nor publishing events.
        assert!(!acl.allows(edge, Access::Subscribe, "edubrain/v1/+/+/+/+/events"));
        assert!(!acl.allows(edge, Access::Read, "edubrain/v1/c02/s/r/t/events"));
        assert!(!acl.allows(edge, Access::Write, "edubrain/v1/c02/s/r/t/acks"));
        assert!(!acl.allows(edge, Access::Subscribe, "$SYS/#"));
        assert!(!acl.allows(edge, Access::Write, "edubrain/v1/c01/s/r/t/events"));
    }

    #[test]
    fn deny_rules_win_and_logins_come_before_patterns() {
        let acl = Acl::parse("topic read a/#\ntopic write a/b\nuser u\ntopic a/#\ntopic deny a/secret\npattern read p/%u/%c\n").unwrap();
        let u = Client { id: "cid", username: Some("u") };
        assert!(acl.allows(u, Access::Write, "a/x"));
        assert!(!acl.allows(u, Access::Read, "a/secret"), "a deny rule later in the file still wins");
        assert!(acl.allows(u, Access::Read, "p/u/cid"));
        assert!(!acl.allows(u, Access::Read, "p/u/other"));
        // Rules before any `user` line are for clients without a login.
        let anonymous = Client { id: "anon", username: None };
        assert!(acl.allows(anonymous, Access::Read, "a/z"));
        assert!(acl.allows(anonymous, Access::Write, "a/b"));
        assert!(!acl.allows(anonymous, Access::Write, "a/z"));
        assert!(!acl.allows(anonymous, Access::Read, "p/%u/anon"), "a %u pattern does not apply without a login");
        // A login with a wildcard in it never gets a pattern.
        let sneaky = Client { id: "x", username: Some("+") };
        assert!(!acl.allows(sneaky, Access::Read, "p/a/x"));
    }

    #[test]
    fn malformed_lines_are_named() {
        let cases = [
            ("user\n", 1, "`user` without a login"),
            ("# c\ntopic\n", 2, "a rule without a topic"),
            ("topic sometimes a/b\n", 1, "access is not one of read, write, readwrite, deny"),
            ("topic read a/#/b\n", 1, "not a valid MQTT topic filter"),
            ("pattern read a+\n", 1, "not a valid MQTT topic filter"),
            ("\n\nallow all\n", 3, "not a `user`, `topic` or `pattern` line"),
        ];
        for (text, line, reason) in cases {
            let e = Acl::parse(text).unwrap_err();
            assert_eq!((e.line, e.reason), (line, reason), "{text:?}");
            assert!(e.to_string().starts_with(&format!("line {line}: {reason}: ")), "{e}");
        }
    }

    /// The level-by-level reading of MQTT 3.1.1 section 4.7 that [`matches`] must agree with.
    fn matches_by_levels(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let (mut f, mut t) = (filter.split('/'), topic.split('/'));
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(fl), Some(tl)) if fl == tl => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/+/c", "a//c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("$SYS/broker/log/+", "$SYS/broker/log/N"));
        assert!(!matches("#", "$SYS/broker/log/N"));
        assert!(!matches("+/broker/log/N", "$SYS/broker/log/N"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("a/+/c", "a/b"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("ab", "a"));
        assert!(!matches("a", "ab"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("edubrain/v1/c01/+/+/+/events", "edubrain/v1/c01/s/r/t/events"));
        assert!(!matches("edubrain/v1/c01/+/+/+/events", "edubrain/v1/c01/s/r/t/acks"));
        assert!(!matches("edubrain/v1/c01/+/+/+/events", "edubrain/v1/c01/s/r/events"));
    }

    // Few level names and short topics, so that rules, filters and topics often overlap.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof![4 => Just("a".to_string()), 1 => Just("b".to_string()), 1 => Just("$s".to_string()), 1 => Just(String::new())]
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(prop_oneof![2 => level(), 1 => Just("+".to_string())], 1..4), any::<bool>()).prop_map(
            |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_string());
                }
                levels.join("/")
            },
        )
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        // The subscription check is sound: if a rule covers a filter, every topic the filter
        // matches, the rule matches too (so a granted subscription never receives what a
        // read check would refuse).
        #[test]
        fn a_covered_filter_matches_nothing_the_rule_does_not(rule in filter(), f in filter(), t in topic()) {
            if covers(&rule, &f) && matches(&f, &t) {
                prop_assert!(matches(&rule, &t), "rule {rule} covers {f}, which matches {t}");
            }
        }

        #[test]
        fn the_one_pass_matcher_agrees_with_the_levels(f in filter(), t in topic()) {
            prop_assert_eq!(matches(&f, &t), matches_by_levels(&f, &t), "filter {} topic {}", f, t);
        }

        // Literal patterns are compared in place; that must be what expanding them and matching
        // (or covering) gives.
        #[test]
        fn a_literal_pattern_compared_in_place_is_its_expansion(
            levels in prop::collection::vec(prop_oneof![Just("%u"), Just("%c"), Just("a"), Just("%"), Just("x%uy"), Just("")], 1..5),
            user in prop_oneof![Just(Some("a")), Just(Some("a/b")), Just(Some("")), Just(None)],
            id in prop_oneof![Just("a"), Just("c1"), Just("a/%u")],
            t in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c1"), Just(""), Just("%"), Just("xay")], 1..7),
        ) {
            let (pattern, topic) = (levels.join("/"), t.join("/"));
            let client = Client { id, username: user };
            let expanded = expand(&pattern, client);
            prop_assert_eq!(equals_expanded(&pattern, client, &topic), matches(&expanded, &topic), "{} as {} on {}", pattern, expanded, topic);
            prop_assert_eq!(equals_expanded(&pattern, client, &topic), covers(&expanded, &topic), "{} as {} on {}", pattern, expanded, topic);
        }

        #[test]
        fn a_filter_covers_itself(f in filter()) {
            prop_assert!(covers(&f, &f), "{f}");
        }
    }
}
