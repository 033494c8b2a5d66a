//! Virtual IP allocation, as a pure function: existing assignments are kept, new services get
//! the lowest free address of the range, services that are gone release theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// An IPv4 range such as `240.0.0.0/4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, bits) = s.split_once('/')?;
        let base: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Cidr {
            base: Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }

    fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip)).wrapping_sub(u64::from(u32::from(self.base)));
        u32::from(ip) >= u32::from(self.base) && offset < self.size()
    }
}

/// The DNS names of a service: `<service>.<domain>` and, when the service has underscores, the
/// RFC 1123 variant with dots. Lowercase (DNS is case-insensitive).
pub fn names(service: &str, domain: &str) -> Vec<String> {
    let mut out = vec![format!("{service}.{domain}").to_ascii_lowercase()];
    if service.contains('_') {
        out.push(format!("{}.{domain}", service.replace('_', ".")).to_ascii_lowercase());
    }
    out
}

/// Keys of the VIP table that are not services but hostnames of virtual outbounds start with
/// this character, which tag values (hence service names) cannot contain.
pub const HOST_KEY_PREFIX: char = '@';

/// The VIP table key of a virtual outbound's hostname.
pub fn host_key(hostname: &str) -> String {
    format!("{HOST_KEY_PREFIX}{}", hostname.to_ascii_lowercase())
}

/// The DNS names a VIP table key answers: a hostname key its hostname, a service its
/// [`names`].
pub fn key_names(key: &str, domain: &str) -> Vec<String> {
    match key.strip_prefix(HOST_KEY_PREFIX) {
        Some(host) => vec![host.to_string()],
        None => names(key, domain),
    }
}

/// Assigns a VIP to every wanted service. Kept: every previous assignment of a wanted service
/// inside the range. New: the lowest free addresses (the network address itself is skipped).
pub fn allocate(
    previous: &BTreeMap<String, Ipv4Addr>,
    wanted: &BTreeSet<String>,
    cidr: Cidr,
) -> BTreeMap<String, Ipv4Addr> {
    let mut out: BTreeMap<String, Ipv4Addr> = previous
        .iter()
        .filter(|(s, ip)| wanted.contains(*s) && cidr.contains(**ip))
        .map(|(s, ip)| (s.clone(), *ip))
        .collect();
    let mut used: BTreeSet<Ipv4Addr> = out.values().copied().collect();
    let mut next: u64 = 1;
    for service in wanted {
        if out.contains_key(service) {
            continue;
        }
        while next < cidr.size() {
            let ip = Ipv4Addr::from((u64::from(u32::from(cidr.base)) + next) as u32);
            next += 1;
            if used.insert(ip) {
                out.insert(service.clone(), ip);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keeps_existing_vips_and_fills_gaps() {
        let cidr = Cidr::parse("240.0.0.0/4").unwrap();
        let first = allocate(&BTreeMap::new(), &set(&["b", "a"]), cidr);
        assert_eq!(first["a"], Ipv4Addr::new(240, 0, 0, 1));
        assert_eq!(first["b"], Ipv4Addr::new(240, 0, 0, 2));
        // "a" goes away, "c" arrives: "b" keeps its VIP, "c" takes the freed lowest address.
        let second = allocate(&first, &set(&["b", "c"]), cidr);
        assert_eq!(second["b"], first["b"]);
        assert_eq!(second["c"], Ipv4Addr::new(240, 0, 0, 1));
        assert!(!second.contains_key("a"));
        // Addresses outside a new range are reassigned.
        let moved = allocate(&second, &set(&["b"]), Cidr::parse("10.1.0.0/16").unwrap());
        assert_eq!(moved["b"], Ipv4Addr::new(10, 1, 0, 1));
    }

    #[test]
    fn names_include_the_rfc1123_variant() {
        assert_eq!(
            names("echo-server_echo-example_svc_1010", "mesh"),
            [
                "echo-server_echo-example_svc_1010.mesh",
                "echo-server.echo-example.svc.1010.mesh"
            ]
        );
        assert_eq!(names("Web", "mesh"), ["web.mesh"]);
    }

    #[test]
    fn hostname_keys_answer_their_hostname_and_never_collide_with_services() {
        assert_eq!(host_key("V1.Web.mesh"), "@v1.web.mesh");
        assert_eq!(
            key_names(&host_key("web.svc.local"), "mesh"),
            ["web.svc.local"]
        );
        assert_eq!(key_names("web", "mesh"), ["web.mesh"]);
    }

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("240.1.2.3/4").unwrap();
        assert_eq!(c.base, Ipv4Addr::new(240, 0, 0, 0));
        assert!(c.contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(Cidr::parse("240.0.0.0").is_none());
        assert!(Cidr::parse("240.0.0.0/33").is_none());
    }
}
