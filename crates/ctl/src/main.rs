//! `kumactl`: the command-line client of the control plane's REST API.
//!
//! Every failure ends with one line on stderr (`Error: …`) and a non-zero exit.

mod client;
mod config;
mod tables;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use clap::{Parser, Subcommand, ValueEnum};
use client::Method;
use meshzone_model::{Resource, ResourceType, parse_documents, to_yaml_string, validate};
use serde_json::{Value, json};

use crate::client::ApiClient;
use crate::config::CtlConfig;

mod transparent_proxy;

#[derive(Parser)]
#[command(name = "kumactl", version = meshzone_model::VERSION, about = "Manage the multi-zone service mesh")]
struct Cli {
    /// kumactl configuration file.
    #[arg(long, global = true, env = "KUMACTL_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Manage kumactl's own configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create or update resources from a YAML file (several documents allowed) or stdin (-).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Show resources: `get dataplanes`, `get dataplane NAME`, `get meshes`, `get zones`…
    Get {
        /// Resource type (plural to list, singular with a NAME).
        #[arg(value_name = "TYPE")]
        resource: String,
        name: Option<String>,
        #[arg(short = 'm', long, default_value = meshzone_model::DEFAULT_MESH)]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a resource: `delete dataplane NAME`, `delete zone NAME`…
    Delete {
        #[arg(value_name = "TYPE")]
        resource: String,
        name: String,
        #[arg(short = 'm', long, default_value = meshzone_model::DEFAULT_MESH)]
        mesh: String,
    },
    /// Show status views: `inspect dataplanes`, `inspect services`, `inspect zones`,
    /// `inspect zoneingresses`; `inspect dataplane NAME --type config-dump` shows the
    /// configuration a connected proxy was given (from its zone, also when asked on global),
    /// `--type stats` and `--type clusters` the proxy's own Envoy-style stats and clusters.
    Inspect {
        #[arg(value_name = "WHAT")]
        what: String,
        /// One item: a dataplane (see `--type`) or a policy (the proxies it selects).
        name: Option<String>,
        /// `policies` (the default): the rules every policy type gives the proxy;
        /// `config-dump`: the proxy's configuration as its control plane sent it;
        /// `stats`, `clusters`: read from the proxy (dataplanes, zoneingresses, zoneegresses).
        #[arg(long = "type", value_name = "TYPE")]
        inspect_type: Option<String>,
        #[arg(short = 'm', long, default_value = meshzone_model::DEFAULT_MESH)]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the versions of kumactl and of the control plane.
    Version,
    /// Generate tokens.
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
    /// Install parts of the mesh on this machine: `install transparent-proxy`.
    Install {
        #[command(subcommand)]
        command: InstallCommand,
    },
    /// Remove what `install` added: `uninstall transparent-proxy`.
    Uninstall {
        #[command(subcommand)]
        command: UninstallCommand,
    },
}

#[derive(Subcommand)]
enum InstallCommand {
    /// iptables rules in this network namespace: outbound TCP to kuma-dp's redirect port,
    /// optionally DNS to the zone's `.mesh` resolver. Needs root (CAP_NET_ADMIN).
    #[command(name = "transparent-proxy")]
    TransparentProxy {
        /// Port of kuma-dp's redirect listener (the Dataplane's `redirectPortOutbound`).
        #[arg(long, default_value_t = 15001)]
        redirect_outbound_port: u16,
        /// User (name or uid) kuma-dp runs as; its own traffic is not redirected.
        #[arg(long, default_value = "kuma-dp")]
        kuma_dp_user: String,
        /// Send DNS queries (UDP 53) to kuma-dp's resolver on 127.0.0.1:--redirect-dns-port
        /// (`.mesh` names keep resolving while the control plane is away).
        #[arg(long, conflicts_with = "redirect_dns_to")]
        redirect_dns: bool,
        #[arg(long, default_value_t = 15053)]
        redirect_dns_port: u16,
        /// Send DNS queries (UDP 53) to another resolver instead, e.g. the zone CP's `<ip>:5653`.
        #[arg(long, value_name = "IP:PORT")]
        redirect_dns_to: Option<std::net::SocketAddr>,
        /// Destination ports never redirected (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        /// Redirect incoming TCP to kuma-dp (`redirectPortInbound`); `false` leaves it alone.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        redirect_inbound: bool,
        #[arg(long, default_value_t = 15006)]
        redirect_inbound_port: u16,
        /// Inbound ports never redirected (comma-separated), e.g. 22.
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        /// Print the iptables commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum UninstallCommand {
    /// Remove the transparent proxy's iptables rules from this network namespace.
    #[command(name = "transparent-proxy")]
    TransparentProxy {
        #[arg(long)]
        dry_run: bool,
    },
}

// The variants are kumactl's `generate` subcommands, which all end in -token.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum GenerateCommand {
    /// A token a data plane proxy presents to its zone control plane (--dataplane-token-file).
    #[command(name = "dataplane-token")]
    DataplaneToken {
        #[arg(short = 'm', long, default_value = meshzone_model::DEFAULT_MESH)]
        mesh: String,
        /// Name of the Dataplane; empty allows any name in the mesh.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        proxy_type: String,
        /// How long the token is valid, e.g. 24h.
        #[arg(long, default_value = "")]
        valid_for: String,
    },
    /// A user token for the REST API (an admin issues it; groups decide what it may do).
    #[command(name = "user-token")]
    UserToken {
        #[arg(long)]
        name: String,
        /// A group of the user; repeat for several (mesh-system:admin makes an admin).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is valid, e.g. 24h.
        #[arg(long)]
        valid_for: String,
    },
    /// A token for the zone proxies (ingress, egress) of a zone, issued by the global CP.
    #[command(name = "zone-token")]
    ZoneToken {
        #[arg(long)]
        zone: String,
        /// ingress, egress (both by default) or cp; repeat for several.
        #[arg(long)]
        scope: Vec<String>,
        #[arg(long, default_value = "")]
        valid_for: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    #[command(name = "control-planes")]
    ControlPlanes {
        #[command(subcommand)]
        command: ControlPlanesCommand,
    },
}

#[derive(Subcommand)]
enum ControlPlanesCommand {
    /// Add a control plane and make it the current one.
    Add {
        #[arg(long)]
        name: String,
        /// API address, e.g. http://localhost:5681
        #[arg(long)]
        address: String,
        #[arg(long)]
        overwrite: bool,
        /// `tokens`: authenticate with a user token given as --auth-conf token=<token>.
        #[arg(long)]
        auth_type: Option<String>,
        /// key=value settings of --auth-type (tokens: token=<token>).
        #[arg(long)]
        auth_conf: Vec<String>,
        /// PEM CA certificate(s) that verify an https:// control plane (default: the system's).
        #[arg(long)]
        ca_cert_file: Option<std::path::PathBuf>,
        /// PEM client certificate to present over https:// (an admin client certificate).
        #[arg(long)]
        client_cert_file: Option<std::path::PathBuf>,
        /// The private key of --client-cert-file.
        #[arg(long)]
        client_key_file: Option<std::path::PathBuf>,
        /// Do not verify the control plane's certificate (trials only; prefer --ca-cert-file).
        #[arg(long)]
        skip_verify: bool,
    },
    /// List the configured control planes.
    List,
}

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
        .and_then(|rt| rt.block_on(run(cli)));
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config_file.clone().unwrap_or_else(config::default_path);
    let mut config = CtlConfig::load(&config_path)?;
    match cli.command {
        Command::Install {
            command:
                InstallCommand::TransparentProxy {
                    redirect_outbound_port,
                    kuma_dp_user,
                    redirect_dns,
                    redirect_dns_port,
                    redirect_dns_to,
                    exclude_outbound_ports,
                    redirect_inbound,
                    redirect_inbound_port,
                    exclude_inbound_ports,
                    dry_run,
                },
        } => {
            use transparent_proxy::DnsRedirect;
            let options = transparent_proxy::Options {
                redirect_outbound_port,
                kuma_dp_uid: transparent_proxy::resolve_uid(&kuma_dp_user)?,
                redirect_dns: match (redirect_dns, redirect_dns_to) {
                    (_, Some(to)) => Some(DnsRedirect::To(to)),
                    (true, None) => Some(DnsRedirect::Local(redirect_dns_port)),
                    (false, None) => None,
                },
                exclude_outbound_ports,
                redirect_inbound_port: redirect_inbound.then_some(redirect_inbound_port),
                exclude_inbound_ports,
            };
            transparent_proxy::install(&options, dry_run)
        }
        Command::Uninstall {
            command: UninstallCommand::TransparentProxy { dry_run },
        } => transparent_proxy::uninstall(dry_run),
        Command::Config {
            command: ConfigCommand::ControlPlanes { command },
        } => match command {
            ControlPlanesCommand::Add {
                name,
                address,
                overwrite,
                auth_type,
                auth_conf,
                ca_cert_file,
                client_cert_file,
                client_key_file,
                skip_verify,
            } => {
                let auth = config::Auth::from_flags(auth_type.as_deref(), &auth_conf)?;
                if !(address.starts_with("http://") || address.starts_with("https://")) {
                    bail!(
                        "--address {address:?} must be an http:// or https:// URL, e.g. http://localhost:5681"
                    );
                }
                let tls = config::Tls::from_flags(
                    &address,
                    ca_cert_file.as_deref(),
                    client_cert_file.as_deref(),
                    client_key_file.as_deref(),
                    skip_verify,
                )?;
                let client = ApiClient::new(&address, auth.token(), &tls)?;
                let index = client.get("/").await?;
                if index["instanceId"].is_null() && index["version"].is_null() {
                    bail!("{address} does not look like a kuma-cp API server");
                }
                config.add(&name, &address, &auth, &tls, overwrite)?;
                config.save(&config_path)?;
                println!("added Control Plane {name:?}");
                println!("switched active Control Plane to {name:?}");
                Ok(())
            }
            ControlPlanesCommand::List => {
                let rows: Vec<Vec<String>> = config
                    .control_planes
                    .iter()
                    .map(|cp| {
                        let active =
                            if config.contexts.iter().any(|c| {
                                c.name == config.current_context && c.control_plane == cp.name
                            }) {
                                "*"
                            } else {
                                ""
                            };
                        vec![
                            active.to_string(),
                            cp.name.clone(),
                            cp.coordinates.api_server.url.clone(),
                        ]
                    })
                    .collect();
                print!("{}", tables::render(&["ACTIVE", "NAME", "ADDRESS"], &rows));
                Ok(())
            }
        },
        Command::Apply { file } => apply(&ApiClient::of(&config)?, &file).await,
        Command::Get {
            resource,
            name,
            mesh,
            output,
        } => {
            get(
                &ApiClient::of(&config)?,
                &resource,
                name.as_deref(),
                &mesh,
                output,
            )
            .await
        }
        Command::Delete {
            resource,
            name,
            mesh,
        } => delete(&ApiClient::of(&config)?, &resource, &name, &mesh).await,
        Command::Inspect {
            what,
            name,
            inspect_type,
            mesh,
            output,
        } => {
            let client = ApiClient::of(&config)?;
            match (what.as_str(), name, inspect_type.as_deref()) {
                ("dataplane" | "dataplanes", Some(name), Some("config-dump")) => {
                    let dump = client
                        .get(&format!("/meshes/{mesh}/dataplanes/{name}/xds"))
                        .await?;
                    println!("{}", serde_json::to_string_pretty(&dump)?);
                    Ok(())
                }
                (word, Some(name), Some(kind @ ("stats" | "clusters"))) => {
                    let path = match word {
                        "dataplane" | "dataplanes" => {
                            format!("/meshes/{mesh}/dataplanes/{name}/{kind}")
                        }
                        "zoneingress" | "zoneingresses" => format!("/zoneingresses/{name}/{kind}"),
                        "zoneegress" | "zoneegresses" => format!("/zoneegresses/{name}/{kind}"),
                        other => bail!(
                            "kumactl inspect {other} --type {kind}: only dataplanes, zoneingresses and zoneegresses have {kind}"
                        ),
                    };
                    print!("{}", client.get_text(&path).await?);
                    Ok(())
                }
                // `policies` is the default type, as in Kuma.
                ("dataplane" | "dataplanes", Some(name), None | Some("policies")) => {
                    let rules = client
                        .get(&format!("/meshes/{mesh}/dataplanes/{name}/_rules"))
                        .await?;
                    match output {
                        Output::Table => print!("{}", tables::inspect_rules(&rules)),
                        _ => print_value(&rules, output)?,
                    }
                    Ok(())
                }
                (_, _, Some(other)) => bail!(
                    "kumactl inspect --type {other:?} is not supported; use `kumactl inspect dataplane NAME --type policies|config-dump|stats|clusters`"
                ),
                // `kumactl inspect meshtrafficpermission NAME`: the proxies it selects.
                (word, Some(name), None)
                    if ResourceType::from_cli_name(word)
                        .is_some_and(|rt| rt.descriptor().policy) =>
                {
                    let rt = resource_type(word)?;
                    let path = format!("{}/_resources/dataplanes", item_path(rt, &mesh, &name));
                    let items = client.list_all(&path).await?;
                    match output {
                        Output::Table => print!("{}", tables::inspect_policy_dataplanes(&items)),
                        _ => print_value(
                            &json!({ "total": items.len(), "items": items, "next": null }),
                            output,
                        )?,
                    }
                    Ok(())
                }
                (_, Some(name), None) => bail!(
                    "kumactl inspect {what} {name}: only dataplanes (--type policies|config-dump|stats|clusters), zone proxies (--type stats|clusters) and policies can be inspected by name"
                ),
                (_, None, None) => inspect(&client, &what, &mesh, output).await,
            }
        }
        Command::Generate {
            command:
                GenerateCommand::DataplaneToken {
                    mesh,
                    name,
                    proxy_type,
                    valid_for,
                },
        } => {
            let client = ApiClient::of(&config)?;
            let body =
                json!({"mesh": mesh, "name": name, "type": proxy_type, "validFor": valid_for});
            let token = client.post_text("/tokens/dataplane", &body).await?;
            println!("{token}");
            Ok(())
        }
        Command::Generate {
            command:
                GenerateCommand::ZoneToken {
                    zone,
                    scope,
                    valid_for,
                },
        } => {
            let client = ApiClient::of(&config)?;
            let body = json!({"zone": zone, "scope": scope, "validFor": valid_for});
            println!("{}", client.post_text("/tokens/zone", &body).await?);
            Ok(())
        }
        Command::Generate {
            command:
                GenerateCommand::UserToken {
                    name,
                    groups,
                    valid_for,
                },
        } => {
            let client = ApiClient::of(&config)?;
            let body = json!({"name": name, "groups": groups, "validFor": valid_for});
            println!("{}", client.post_text("/tokens/user", &body).await?);
            Ok(())
        }
        Command::Version => {
            println!("Client: kumactl {}", meshzone_model::VERSION);
            let client = ApiClient::of(&config)?;
            match client.get("/").await {
                Ok(index) => println!(
                    "Control Plane: kuma-cp {} ({} mode) at {}",
                    index["version"].as_str().unwrap_or("unknown"),
                    index["mode"].as_str().unwrap_or("unknown"),
                    client.base()
                ),
                Err(e) => println!("Control Plane: unavailable ({e})"),
            }
            Ok(())
        }
    }
}

fn resource_type(word: &str) -> anyhow::Result<ResourceType> {
    ResourceType::from_cli_name(word).ok_or_else(|| {
        let known: Vec<&str> = ResourceType::all()
            .map(|t| t.descriptor().cli_plural)
            .collect();
        anyhow!(
            "unknown resource type {word:?}; known: {}",
            known.join(", ")
        )
    })
}

fn item_path(rt: ResourceType, mesh: &str, name: &str) -> String {
    let ws = rt.descriptor().ws_path;
    if rt.is_mesh_scoped() {
        format!("/meshes/{mesh}/{ws}/{name}")
    } else {
        format!("/{ws}/{name}")
    }
}

fn list_path(rt: ResourceType, mesh: &str) -> String {
    let ws = rt.descriptor().ws_path;
    if rt.is_mesh_scoped() {
        format!("/meshes/{mesh}/{ws}")
    } else {
        format!("/{ws}")
    }
}

/// The insights of every resource of `rt` (its status type's list).
async fn list_insights(
    client: &ApiClient,
    rt: ResourceType,
    mesh: &str,
) -> anyhow::Result<Vec<Value>> {
    match rt.insight() {
        Some(insight) => client.list_all(&list_path(insight, mesh)).await,
        None => Ok(Vec::new()),
    }
}

fn print_value(v: &Value, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", to_yaml_string(v)),
    }
    Ok(())
}

fn label(resource: &Value, index: usize) -> String {
    match (resource["type"].as_str(), resource["name"].as_str()) {
        (Some(t), Some(n)) => format!("{t} {n:?}"),
        (Some(t), None) => format!("{t} (document {index})"),
        _ => format!("document {index}"),
    }
}

async fn apply(client: &ApiClient, file: &str) -> anyhow::Result<()> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let docs = parse_documents(&text).with_context(|| file.to_string())?;
    if docs.is_empty() {
        bail!("{file} holds no resource");
    }
    // Check every document before writing any, so a bad file changes nothing.
    let mut resources = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let what = label(&doc, i + 1);
        let resource = Resource::from_value(doc)
            .and_then(|r| validate(&r).map(|()| r))
            .map_err(|v| anyhow!("{file}: {what} is not valid: {v}"))?;
        resources.push((what, resource));
    }
    for (what, resource) in resources {
        let path = item_path(
            resource.resource_type(),
            &resource.meta.mesh,
            &resource.meta.name,
        );
        let mut body = resource.to_value();
        if let Some(o) = body.as_object_mut() {
            o.remove("creationTime");
            o.remove("modificationTime");
        }
        client
            .call(Method::PUT, &path, Some(&body))
            .await
            .map_err(|e| anyhow!("{file}: {what} was not applied: {e}"))?;
    }
    Ok(())
}

async fn get(
    client: &ApiClient,
    word: &str,
    name: Option<&str>,
    mesh: &str,
    output: Output,
) -> anyhow::Result<()> {
    let rt = resource_type(word)?;
    let now = Utc::now();
    match name {
        Some(name) => {
            let v = client.get(&item_path(rt, mesh, name)).await?;
            match output {
                Output::Table => print!("{}", tables::get_table(rt, &[v], now)),
                _ => print_value(&v, output)?,
            }
        }
        None => {
            if word == rt.descriptor().cli_singular && word != rt.descriptor().cli_plural {
                bail!(
                    "kumactl get {word} needs a NAME; use kumactl get {} to list",
                    rt.descriptor().cli_plural
                );
            }
            let items = client.list_all(&list_path(rt, mesh)).await?;
            match output {
                Output::Table if rt == ResourceType::Zone => {
                    let insights = list_insights(client, rt, mesh).await?;
                    print!("{}", tables::get_zones(&items, &insights, now));
                }
                Output::Table => print!("{}", tables::get_table(rt, &items, now)),
                _ => print_value(
                    &json!({ "total": items.len(), "items": items, "next": null }),
                    output,
                )?,
            }
        }
    }
    Ok(())
}

async fn delete(client: &ApiClient, word: &str, name: &str, mesh: &str) -> anyhow::Result<()> {
    let rt = resource_type(word)?;
    client
        .call(Method::DELETE, &item_path(rt, mesh, name), None)
        .await?;
    println!("deleted {rt} {name:?}");
    Ok(())
}

async fn inspect(client: &ApiClient, what: &str, mesh: &str, output: Output) -> anyhow::Result<()> {
    let now = Utc::now();
    // `services` is a view, not a type; the other words are kumactl names of types.
    let (items, table) = match (what, ResourceType::from_cli_name(what)) {
        ("services" | "service", _) => {
            let items = client
                .list_all(&list_path(ResourceType::ServiceInsight, mesh))
                .await?;
            let t = tables::inspect_services(&items);
            (items, t)
        }
        (_, Some(ResourceType::Dataplane)) => {
            let items = client
                .list_all(&format!("/meshes/{mesh}/dataplanes+insights"))
                .await?;
            let t = tables::inspect_dataplanes(&items, now);
            (items, t)
        }
        (_, Some(rt @ ResourceType::Zone)) => {
            let zones = client.list_all(&list_path(rt, mesh)).await?;
            let insights = list_insights(client, rt, mesh).await?;
            let t = tables::inspect_zones(&zones, &insights, now);
            (zones, t)
        }
        // Zone proxies: where they listen, what they advertise to other zones (an ingress
        // without an advertised address says so: other zones cannot reach it) and how many
        // services they offer.
        (_, Some(rt @ (ResourceType::ZoneIngress | ResourceType::ZoneEgress))) => {
            let items = client.list_all(&list_path(rt, mesh)).await?;
            let insights = list_insights(client, rt, mesh).await?;
            let t = tables::inspect_zone_proxies(rt, &items, &insights, now);
            (items, t)
        }
        (other, _) => {
            bail!(
                "kumactl inspect {other:?} is not supported; try dataplanes, services, zones, zoneingresses or zoneegresses"
            )
        }
    };
    match output {
        Output::Table => print!("{table}"),
        _ => print_value(
            &json!({ "total": items.len(), "items": items, "next": null }),
            output,
        )?,
    }
    Ok(())
}
