//! VirtualOutbound (Kuma's source/destination-era policy): extra hostnames and ports for the
//! services of a mesh. `conf.host` and `conf.port` are templates such as `{{.service}}.mesh`
//! and `{{.port}}`; each `parameters` entry names a template parameter and the tag its value
//! comes from (`tagKey`, the name itself when absent). For every set of tags a service's
//! instances carry that a `selectors` entry matches, the templates are rendered from those
//! tags: the result is a hostname (with its own virtual IP from the zone's DNS), a port, and
//! the tags of the parameters, which select the instances traffic to `hostname:port` goes to.
//!
//! Pure: the spec, its validation with field paths, and the rendering. The zone's DNS gives each
//! hostname a VIP (`meshzone-dns`), the DP server turns entries into outbound listeners.
//!
//! Templates support `{{.name}}` substitutions only (Kuma uses Go templates; anything beyond a
//! parameter reference is refused, so a template either renders the same way or is rejected).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::specs::{SERVICE_TAG, Tags};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualOutboundSpec {
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub conf: VirtualOutboundConf,
}

/// Tags to match: a value, or `*` for "the tag is present, any value".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(rename = "match", default)]
    pub match_tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualOutboundConf {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub parameters: Vec<TemplateParameter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateParameter {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag_key: String,
}

impl TemplateParameter {
    /// The tag the parameter's value comes from.
    pub fn tag(&self) -> &str {
        if self.tag_key.is_empty() {
            &self.name
        } else {
            &self.tag_key
        }
    }
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

/// Parses `text` into literal text and `{{.name}}` references (spaces inside the braces are
/// allowed); anything else between `{{` and `}}` is an error.
fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            format!(
                "{{{{ at offset {} is never closed",
                text.len() - rest.len() + open
            )
        })?;
        let inner = after[..close].trim();
        let name = inner
            .strip_prefix('.')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match name {
            Some(n) => out.push(Piece::Param(n.to_string())),
            None => {
                return Err(format!(
                    "{{{{{inner}}}}} is not supported: only {{{{.parameter}}}} substitutions are"
                ));
            }
        }
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err("}} without a matching {{".into());
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

fn render(pieces: &[Piece], values: &BTreeMap<&str, &str>) -> Option<String> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Param(n) => out.push_str(values.get(n.as_str())?),
        }
    }
    Some(out)
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, at most 253 characters.
pub fn is_hostname(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl VirtualOutboundSpec {
    pub fn validate(&self, v: &mut Violations) {
        if self.selectors.is_empty() {
            v.push("selectors", "must have at least one element");
        }
        for (i, s) in self.selectors.iter().enumerate() {
            if s.match_tags.is_empty() {
                v.push(
                    format!("selectors[{i}].match"),
                    "must have at least one tag",
                );
            }
            for (k, value) in &s.match_tags {
                if k.is_empty() || value.is_empty() {
                    v.push(
                        format!("selectors[{i}].match[\"{k}\"]"),
                        "tag keys and values cannot be empty (use \"*\" for any value)",
                    );
                }
            }
        }
        let c = &self.conf;
        if c.parameters.is_empty() {
            v.push("conf.parameters", "must have at least one element");
        }
        let mut names = BTreeMap::new();
        for (i, p) in c.parameters.iter().enumerate() {
            let path = format!("conf.parameters[{i}]");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                v.push(
                    format!("{path}.name"),
                    "must be alphanumeric (letters, digits, _)",
                );
            } else if names.insert(p.name.as_str(), i).is_some() {
                v.push(
                    format!("{path}.name"),
                    format!("{:?} is declared twice", p.name),
                );
            }
        }
        if !c.parameters.is_empty() && !c.parameters.iter().any(|p| p.tag() == SERVICE_TAG) {
            v.push(
                "conf.parameters",
                format!("must contain a parameter with tagKey {SERVICE_TAG:?}"),
            );
        }
        for (field, text) in [("conf.host", &c.host), ("conf.port", &c.port)] {
            if text.is_empty() {
                v.push(field, "cannot be empty");
                continue;
            }
            match parse_template(text) {
                Err(e) => v.push(field, e),
                Ok(pieces) => {
                    for p in &pieces {
                        if let Piece::Param(n) = p
                            && !names.contains_key(n.as_str())
                        {
                            v.push(field, format!("{{{{.{n}}}}} is not one of conf.parameters"));
                        }
                    }
                    let literal = pieces.iter().all(|p| matches!(p, Piece::Text(_)));
                    if field == "conf.port" && literal && port_number(text).is_none() {
                        v.push(field, "must be a port number between 1 and 65535");
                    }
                    if field == "conf.host" && literal && !is_hostname(text) {
                        v.push(field, "must be a DNS name");
                    }
                }
            }
        }
    }

    /// Whether a selector matches `tags`.
    pub fn selects(&self, tags: &Tags) -> bool {
        self.selectors.iter().any(|s| {
            s.match_tags.iter().all(|(k, want)| match tags.get(k) {
                Some(have) => want == "*" || want == have,
                None => false,
            })
        })
    }

    /// The entry this virtual outbound makes for instances carrying `tags`: `None` when no
    /// selector matches, a parameter's tag is missing, or the rendered host or port is invalid.
    pub fn entry(&self, tags: &Tags) -> Option<VirtualOutboundEntry> {
        if !self.selects(tags) {
            return None;
        }
        let mut values = BTreeMap::new();
        let mut selected = Tags::new();
        for p in &self.conf.parameters {
            let value = tags.get(p.tag())?;
            values.insert(p.name.as_str(), value.as_str());
            selected.insert(p.tag().to_string(), value.clone());
        }
        let host = render(&parse_template(&self.conf.host).ok()?, &values)?.to_ascii_lowercase();
        let port = port_number(&render(&parse_template(&self.conf.port).ok()?, &values)?)?;
        is_hostname(&host).then_some(VirtualOutboundEntry {
            host,
            port,
            tags: selected,
        })
    }
}

fn port_number(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

/// One `hostname:port` a virtual outbound gives, and the tags of the instances it reaches
/// (`kuma.io/service` among them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VirtualOutboundEntry {
    pub host: String,
    pub port: u16,
    pub tags: Tags,
}

impl VirtualOutboundEntry {
    pub fn service(&self) -> &str {
        self.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or("")
    }
}

/// Every entry of a mesh's virtual outbounds (`(name, spec)`, applied in name order) for the
/// tag sets its services' instances carry. When two give the same `hostname:port` with
/// different tags, the first (by virtual outbound name) wins, so the result never depends on
/// the order the store lists resources in.
pub fn entries<'a>(
    virtual_outbounds: &[(&str, &VirtualOutboundSpec)],
    tag_sets: impl IntoIterator<Item = &'a Tags>,
) -> Vec<VirtualOutboundEntry> {
    let tag_sets: Vec<&Tags> = tag_sets.into_iter().collect();
    let mut sorted: Vec<&(&str, &VirtualOutboundSpec)> = virtual_outbounds.iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut taken: BTreeMap<(String, u16), VirtualOutboundEntry> = BTreeMap::new();
    for (_, vo) in sorted {
        for tags in &tag_sets {
            if let Some(e) = vo.entry(tags) {
                taken.entry((e.host.clone(), e.port)).or_insert(e);
            }
        }
    }
    taken.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specs::tags;

    fn spec(host: &str, port: &str, params: &[(&str, &str)]) -> VirtualOutboundSpec {
        VirtualOutboundSpec {
            selectors: vec![Selector {
                match_tags: tags(&[(SERVICE_TAG, "*")]),
            }],
            conf: VirtualOutboundConf {
                host: host.into(),
                port: port.into(),
                parameters: params
                    .iter()
                    .map(|(n, t)| TemplateParameter {
                        name: n.to_string(),
                        tag_key: t.to_string(),
                    })
                    .collect(),
            },
        }
    }

    fn errors(s: &VirtualOutboundSpec) -> Vec<String> {
        let mut v = Violations::default();
        s.validate(&mut v);
        v.violations.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kumas_example_renders_host_port_and_tags() {
        let vo = spec(
            "{{.v}}.{{.service}}.mesh",
            "{{.port}}",
            &[("service", SERVICE_TAG), ("port", "port"), ("v", "version")],
        );
        assert!(errors(&vo).is_empty(), "{:?}", errors(&vo));
        let backend = tags(&[
            (SERVICE_TAG, "backend"),
            ("version", "v1"),
            ("port", "1800"),
        ]);
        assert_eq!(
            vo.entry(&backend),
            Some(VirtualOutboundEntry {
                host: "v1.backend.mesh".into(),
                port: 1800,
                tags: backend.clone(),
            })
        );
        // A missing tag, a port that is not a number, a host that is not a DNS name: no entry.
        assert_eq!(
            vo.entry(&tags(&[(SERVICE_TAG, "backend"), ("port", "1800")])),
            None
        );
        let bad_port = tags(&[(SERVICE_TAG, "b"), ("version", "v1"), ("port", "http")]);
        assert_eq!(vo.entry(&bad_port), None);
        let bad_host = tags(&[(SERVICE_TAG, "a b"), ("version", "v1"), ("port", "80")]);
        assert_eq!(vo.entry(&bad_host), None);
    }

    #[test]
    fn a_parameter_without_tag_key_reads_the_tag_of_its_name_and_spaces_are_allowed() {
        let vo = spec(
            "{{ .version }}.web.mesh",
            "8080",
            &[("version", ""), ("s", SERVICE_TAG)],
        );
        assert!(errors(&vo).is_empty(), "{:?}", errors(&vo));
        let e = vo
            .entry(&tags(&[
                (SERVICE_TAG, "web"),
                ("version", "V2"),
                ("zone", "z"),
            ]))
            .expect("entry");
        assert_eq!((e.host.as_str(), e.port), ("v2.web.mesh", 8080));
        assert_eq!(e.tags, tags(&[(SERVICE_TAG, "web"), ("version", "V2")]));
        assert_eq!(e.service(), "web");
    }

    #[test]
    fn selectors_match_values_or_any_value() {
        let mut vo = spec("{{.s}}.mesh", "80", &[("s", SERVICE_TAG)]);
        vo.selectors = vec![Selector {
            match_tags: tags(&[(SERVICE_TAG, "*"), ("team", "a")]),
        }];
        assert!(vo.selects(&tags(&[(SERVICE_TAG, "x"), ("team", "a")])));
        assert!(!vo.selects(&tags(&[(SERVICE_TAG, "x"), ("team", "b")])));
        assert!(!vo.selects(&tags(&[("team", "a")])));
    }

    #[test]
    fn each_mistake_is_named_with_its_path() {
        let cases: Vec<(VirtualOutboundSpec, &str)> = vec![
            (
                VirtualOutboundSpec {
                    selectors: vec![],
                    ..spec("{{.s}}.mesh", "80", &[("s", SERVICE_TAG)])
                },
                "selectors: must have at least one element",
            ),
            (
                VirtualOutboundSpec {
                    selectors: vec![Selector::default()],
                    ..spec("{{.s}}.mesh", "80", &[("s", SERVICE_TAG)])
                },
                "selectors[0].match: must have at least one tag",
            ),
            (
                spec("{{.s}}.mesh", "80", &[]),
                "conf.parameters: must have at least one element",
            ),
            (
                spec("{{.v}}.mesh", "80", &[("v", "version")]),
                "conf.parameters: must contain a parameter with tagKey \"kuma.io/service\"",
            ),
            (
                spec("{{.s}}.mesh", "80", &[("s", SERVICE_TAG), ("s", "version")]),
                "conf.parameters[1].name: \"s\" is declared twice",
            ),
            (
                spec("{{.s}}.mesh", "80", &[("s-1", SERVICE_TAG)]),
                "conf.parameters[0].name: must be alphanumeric (letters, digits, _)",
            ),
            (
                spec("{{.nope}}.mesh", "80", &[("s", SERVICE_TAG)]),
                "conf.host: {{.nope}} is not one of conf.parameters",
            ),
            (
                spec("{{.s | upper}}.mesh", "80", &[("s", SERVICE_TAG)]),
                "conf.host: {{.s | upper}} is not supported: only {{.parameter}} substitutions are",
            ),
            (
                spec("{{.s.mesh", "80", &[("s", SERVICE_TAG)]),
                "conf.host: {{ at offset 0 is never closed",
            ),
            (
                spec("{{.s}}.mesh", "", &[("s", SERVICE_TAG)]),
                "conf.port: cannot be empty",
            ),
            (
                spec("{{.s}}.mesh", "70000", &[("s", SERVICE_TAG)]),
                "conf.port: must be a port number between 1 and 65535",
            ),
            (
                spec("not a host", "80", &[("s", SERVICE_TAG)]),
                "conf.host: must be a DNS name",
            ),
        ];
        for (vo, want) in cases {
            let got = errors(&vo);
            assert!(got.iter().any(|e| e == want), "want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn entries_are_unique_per_host_and_port_and_the_first_name_wins() {
        let by_version = spec(
            "{{.s}}.{{.v}}.mesh",
            "80",
            &[("s", SERVICE_TAG), ("v", "version")],
        );
        let clash = spec("{{.s}}.v1.mesh", "80", &[("s", SERVICE_TAG)]);
        let sets = [
            tags(&[(SERVICE_TAG, "web"), ("version", "v1")]),
            tags(&[(SERVICE_TAG, "web"), ("version", "v1")]),
            tags(&[(SERVICE_TAG, "web"), ("version", "v2")]),
        ];
        let got = entries(&[("b-clash", &clash), ("a-version", &by_version)], &sets);
        let hosts: Vec<(&str, &Tags)> = got.iter().map(|e| (e.host.as_str(), &e.tags)).collect();
        assert_eq!(
            hosts,
            [("web.v1.mesh", &sets[0]), ("web.v2.mesh", &sets[2]),]
        );
    }
}
