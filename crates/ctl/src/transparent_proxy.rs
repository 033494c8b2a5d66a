//! `kumactl install|uninstall transparent-proxy`: iptables rules in the current network namespace
//! that send the applications' outbound TCP to kuma-dp's redirect port (kuma-dp finds the
//! original destination with `SO_ORIGINAL_DST`) and, optionally, their DNS queries to the zone's
//! `.mesh` resolver. Traffic of the kuma-dp user and to loopback is left alone, so the proxy's
//! own connections and explicit `127.0.0.1` outbounds are not redirected.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, bail};

/// Chains we own in the `nat` table.
const OUTBOUND_CHAIN: &str = "MESH_OUTBOUND";
const INBOUND_CHAIN: &str = "MESH_INBOUND";
const DNS_CHAIN: &str = "MESH_DNS";

/// Where redirected DNS queries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRedirect {
    /// kuma-dp's own resolver on this port of 127.0.0.1 (`.mesh` from its VIPs, the rest relayed).
    Local(u16),
    /// Another resolver, e.g. the zone CP's `.mesh` server at `<ip>:5653`.
    To(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub redirect_outbound_port: u16,
    /// uid whose traffic is never redirected (the user kuma-dp runs as).
    pub kuma_dp_uid: u32,
    /// Where DNS queries (UDP 53) go, if anywhere.
    pub redirect_dns: Option<DnsRedirect>,
    /// Outbound destination ports never redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Incoming TCP goes to kuma-dp's inbound redirect port (`redirectPortInbound`), so the
    /// application's ports are reachable only through the proxy.
    pub redirect_inbound_port: Option<u16>,
    /// Inbound ports never redirected (e.g. 22).
    pub exclude_inbound_ports: Vec<u16>,
}

/// One iptables command line (no argument contains a space).
fn rule(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// `iptables` argument lists that install the rules, in order.
pub fn install_rules(o: &Options) -> Vec<Vec<String>> {
    let (uid, out_port) = (o.kuma_dp_uid, o.redirect_outbound_port);
    let mut rules = vec![
        rule(&format!("-t nat -N {OUTBOUND_CHAIN}")),
        rule(&format!(
            "-t nat -A {OUTBOUND_CHAIN} -m owner --uid-owner {uid} -j RETURN"
        )),
        rule(&format!(
            "-t nat -A {OUTBOUND_CHAIN} -d 127.0.0.0/8 -j RETURN"
        )),
    ];
    for p in &o.exclude_outbound_ports {
        rules.push(rule(&format!(
            "-t nat -A {OUTBOUND_CHAIN} -p tcp --dport {p} -j RETURN"
        )));
    }
    rules.push(rule(&format!(
        "-t nat -A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {out_port}"
    )));
    rules.push(rule(&format!(
        "-t nat -A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"
    )));
    if let Some(in_port) = o.redirect_inbound_port {
        rules.push(rule(&format!("-t nat -N {INBOUND_CHAIN}")));
        for p in &o.exclude_inbound_ports {
            rules.push(rule(&format!(
                "-t nat -A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN"
            )));
        }
        rules.push(rule(&format!(
            "-t nat -A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {in_port}"
        )));
        rules.push(rule(&format!(
            "-t nat -A PREROUTING -p tcp -j {INBOUND_CHAIN}"
        )));
    }
    if let Some(dns) = o.redirect_dns {
        let target = match dns {
            DnsRedirect::Local(port) => format!("REDIRECT --to-ports {port}"),
            DnsRedirect::To(to) => format!("DNAT --to-destination {to}"),
        };
        rules.extend([
            rule(&format!("-t nat -N {DNS_CHAIN}")),
            rule(&format!(
                "-t nat -A {DNS_CHAIN} -m owner --uid-owner {uid} -j RETURN"
            )),
            rule(&format!(
                "-t nat -A {DNS_CHAIN} -p udp --dport 53 -j {target}"
            )),
            rule(&format!(
                "-t nat -A OUTPUT -p udp --dport 53 -j {DNS_CHAIN}"
            )),
        ]);
    }
    rules
}

/// `iptables` argument lists that remove whatever `install_rules` may have added.
pub fn uninstall_rules() -> Vec<Vec<String>> {
    [
        format!("-t nat -D OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
        format!("-t nat -F {OUTBOUND_CHAIN}"),
        format!("-t nat -X {OUTBOUND_CHAIN}"),
        format!("-t nat -D PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-t nat -F {INBOUND_CHAIN}"),
        format!("-t nat -X {INBOUND_CHAIN}"),
        format!("-t nat -D OUTPUT -p udp --dport 53 -j {DNS_CHAIN}"),
        format!("-t nat -F {DNS_CHAIN}"),
        format!("-t nat -X {DNS_CHAIN}"),
    ]
    .iter()
    .map(|l| rule(l))
    .collect()
}

fn iptables(args: &[String]) -> anyhow::Result<std::process::Output> {
    Command::new("iptables")
        .args(args)
        .output()
        .context("cannot run iptables (install the iptables package; root is needed)")
}

fn installed() -> anyhow::Result<bool> {
    Ok(iptables(&rule(&format!("-t nat -S {OUTBOUND_CHAIN}")))?
        .status
        .success())
}

/// A user name or uid, as the kernel's owner match needs a uid.
pub fn resolve_uid(user: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    let out = Command::new("id")
        .args(["-u", user])
        .output()
        .context("cannot run id")?;
    if !out.status.success() {
        bail!("--kuma-dp-user {user:?}: no such user (give a uid instead)");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("--kuma-dp-user {user:?}: id printed no uid"))
}

pub fn install(o: &Options, dry_run: bool) -> anyhow::Result<()> {
    let rules = install_rules(o);
    if dry_run {
        for r in &rules {
            println!("iptables {}", r.join(" "));
        }
        return Ok(());
    }
    if installed()? {
        bail!(
            "the transparent proxy is already installed in this network namespace (chain {OUTBOUND_CHAIN} exists); run `kumactl uninstall transparent-proxy` first"
        );
    }
    for r in &rules {
        let out = iptables(r)?;
        if !out.status.success() {
            let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
            // Leave nothing half-installed.
            for u in uninstall_rules() {
                let _ = iptables(&u);
            }
            bail!("iptables {} failed: {reason}", r.join(" "));
        }
    }
    println!(
        "transparent proxy installed: outbound TCP → 127.0.0.1:{} (except uid {}){}{}",
        o.redirect_outbound_port,
        o.kuma_dp_uid,
        o.redirect_inbound_port
            .map(|p| format!(", inbound TCP → :{p}"))
            .unwrap_or_default(),
        match o.redirect_dns {
            Some(DnsRedirect::Local(port)) =>
                format!(", DNS (UDP 53) → kuma-dp on 127.0.0.1:{port}"),
            Some(DnsRedirect::To(to)) => format!(", DNS (UDP 53) → {to}"),
            None => String::new(),
        }
    );
    Ok(())
}

pub fn uninstall(dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        for r in uninstall_rules() {
            println!("iptables {}", r.join(" "));
        }
        return Ok(());
    }
    if !installed()? {
        bail!(
            "no transparent proxy is installed in this network namespace (no chain {OUTBOUND_CHAIN})"
        );
    }
    for r in uninstall_rules() {
        // The DNS part is optional; a missing rule or chain is not an error here.
        let _ = iptables(&r)?;
    }
    if installed()? {
        bail!("chain {OUTBOUND_CHAIN} is still present after uninstalling");
    }
    println!("transparent proxy uninstalled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_the_proxy_user_and_loopback_before_redirecting() {
        let rules = install_rules(&Options {
            redirect_outbound_port: 15001,
            kuma_dp_uid: 5678,
            redirect_dns: Some(DnsRedirect::To("198.18.1.1:5653".parse().unwrap())),
            exclude_outbound_ports: vec![22],
            redirect_inbound_port: Some(15006),
            exclude_inbound_ports: vec![22],
        });
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| {
            text.iter()
                .position(|r| r.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {text:#?}"))
        };
        assert!(pos("--uid-owner 5678 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("-d 127.0.0.0/8 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("--dport 22 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("-N MESH_OUTBOUND") < pos("-A OUTPUT -p tcp -j MESH_OUTBOUND"));
        assert!(pos("DNAT --to-destination 198.18.1.1:5653") < pos("-A OUTPUT -p udp"));
        assert!(
            pos("-A MESH_INBOUND -p tcp --dport 22 -j RETURN") < pos("REDIRECT --to-ports 15006")
        );
        assert!(pos("REDIRECT --to-ports 15006") < pos("-A PREROUTING -p tcp -j MESH_INBOUND"));
        // Everything installed is removed again.
        let undo: Vec<String> = uninstall_rules().iter().map(|r| r.join(" ")).collect();
        for added in text
            .iter()
            .filter(|r| r.contains(" -A OUTPUT ") || r.contains(" -A PREROUTING "))
        {
            let removal = added.replace(" -A ", " -D ");
            assert!(undo.contains(&removal), "{added} is undone");
        }
    }

    #[test]
    fn dns_to_kuma_dp_is_a_local_redirect() {
        let rules = install_rules(&Options {
            redirect_outbound_port: 15001,
            kuma_dp_uid: 5678,
            redirect_dns: Some(DnsRedirect::Local(15053)),
            exclude_outbound_ports: vec![],
            redirect_inbound_port: None,
            exclude_inbound_ports: vec![],
        });
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert!(
            text.contains(
                &"-t nat -A MESH_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053".to_string()
            ),
            "{text:#?}"
        );
    }

    #[test]
    fn without_dns_redirection_no_dns_chain() {
        let rules = install_rules(&Options {
            redirect_outbound_port: 15001,
            kuma_dp_uid: 0,
            redirect_dns: None,
            exclude_outbound_ports: vec![],
            redirect_inbound_port: None,
            exclude_inbound_ports: vec![],
        });
        assert!(rules.iter().all(|r| !r.contains(&DNS_CHAIN.to_string())));
    }
}
