//! `kuma-dp`: the data plane proxy. `kuma-dp run` connects to its zone control plane over
//! ADS (gRPC/TLS), registers its Dataplane, and proxies the application's traffic with mTLS:
//! outbound listeners send to the endpoints of a service, inbound listeners terminate mTLS and
//! forward to the application. It keeps serving its last configuration if the CP goes away.

mod access_log;
mod admin;
mod balancer;
mod dns;
mod faults;
mod health_check;
mod http;
mod idle;
mod limits;
mod metrics_endpoints;
mod outlier;
mod proxy;
mod ratelimit;
mod rbac;
mod routes;
mod runtime;
mod stats;
mod tls;
mod trace;
mod xds_client;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use meshzone_lifecycle::{Backoff, Shutdown, Supervisor};
use meshzone_model::{Resource, ResourceType, parse_documents};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::proxy::{Drain, Listeners};
use crate::runtime::Runtime;
use crate::stats::Stats;

#[derive(Parser)]
#[command(name = "kuma-dp", version = meshzone_model::VERSION, about = "Data plane proxy of the multi-zone service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum ProxyType {
    Dataplane,
    Ingress,
    Egress,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "dataplane")]
    proxy_type: ProxyType,
    /// Zone control plane DP server, e.g. https://zone-cp:5678
    #[arg(long, env = "KUMA_CONTROL_PLANE_URL")]
    cp_address: String,
    /// Dataplane resource (YAML) to register.
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_RESOURCE_FILE")]
    dataplane_file: Option<PathBuf>,
    /// Dataplane resource inline (YAML or JSON).
    #[arg(long)]
    dataplane: Option<String>,
    #[arg(long, env = "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH")]
    dataplane_token_file: Option<PathBuf>,
    /// CA certificate of the control plane (its kuma-cp.crt).
    #[arg(long, env = "KUMA_CONTROL_PLANE_CA_CERT_FILE")]
    ca_cert_file: Option<PathBuf>,
    /// Name of an existing Dataplane (without --dataplane-file).
    #[arg(long, env = "KUMA_DATAPLANE_NAME")]
    name: Option<String>,
    #[arg(long, env = "KUMA_DATAPLANE_MESH")]
    mesh: Option<String>,
    /// Admin server port on 127.0.0.1.
    #[arg(long, default_value_t = 9901, env = "KUMA_DATAPLANE_ADMIN_PORT")]
    admin_port: u16,
    /// On SIGTERM, how long live connections may take to finish.
    #[arg(long, default_value = "30s")]
    drain_time: String,
    #[arg(long, default_value = "info", env = "KUMA_LOG_LEVEL")]
    log_level: String,
    /// With transparent proxying: answer DNS on 127.0.0.1:--dns-port (`.mesh` from this proxy's
    /// VIPs, other names relayed to /etc/resolv.conf's servers). `kumactl install
    /// transparent-proxy --redirect-dns` sends the host's queries there.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KUMA_DNS_ENABLED")]
    dns_enabled: bool,
    #[arg(long, default_value_t = 15053, env = "KUMA_DNS_CORE_DNS_PORT")]
    dns_port: u16,
    /// Worker threads of the proxy.
    #[arg(long, default_value_t = 2, env = "KUMA_DATAPLANE_RUNTIME_CONCURRENCY")]
    concurrency: usize,
}

fn main() {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.concurrency.max(1))
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
        .and_then(|rt| rt.block_on(run(args)));
    if let Err(e) = result {
        eprintln!("kuma-dp: {e:#}");
        std::process::exit(1);
    }
}

/// The proxy's identity and, when it registers itself, its Dataplane as JSON.
fn dataplane(args: &RunArgs) -> anyhow::Result<(String, String, Option<String>)> {
    let text = match (&args.dataplane_file, &args.dataplane) {
        (Some(_), Some(_)) => bail!("give either --dataplane-file or --dataplane, not both"),
        (Some(path), None) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --dataplane-file {}", path.display()))?,
        ),
        (None, Some(inline)) => Some(inline.clone()),
        (None, None) => None,
    };
    let Some(text) = text else {
        let name = args.name.clone().context(
            "give --dataplane-file (or --dataplane), or --name and --mesh of an existing Dataplane",
        )?;
        return Ok((
            args.mesh.clone().unwrap_or_else(|| "default".into()),
            name,
            None,
        ));
    };
    let value = parse_documents(&text)
        .context("the dataplane resource is not valid YAML")?
        .into_iter()
        .next()
        .context("the dataplane resource is empty")?;
    let resource = Resource::from_value(value)
        .and_then(|r| meshzone_model::validate(&r).map(|()| r))
        .map_err(|v| anyhow!("the dataplane resource is not valid: {v}"))?;
    let expected = match args.proxy_type {
        ProxyType::Dataplane => ResourceType::Dataplane,
        ProxyType::Ingress => ResourceType::ZoneIngress,
        ProxyType::Egress => ResourceType::ZoneEgress,
    };
    if resource.resource_type() != expected {
        bail!(
            "--proxy-type wants a {expected} resource, but the file describes a {}",
            resource.resource_type()
        );
    }
    let json = serde_json::to_string(&resource.to_value())?;
    Ok((
        resource.meta.mesh.clone(),
        resource.meta.name.clone(),
        Some(json),
    ))
}

/// TLS to the control plane, verified with the CA that signs its certificate (or that
/// self-signed certificate itself): `--ca-cert-file`, else the seed's same-machine default
/// `~/.kuma/kuma-cp.crt`.
fn control_plane_tls(args: &RunArgs) -> anyhow::Result<meshzone_tls_client::Connector> {
    let path = match &args.ca_cert_file {
        Some(p) => p.clone(),
        None => {
            let home = std::env::var("HOME").unwrap_or_default();
            let default = Path::new(&home).join(".kuma").join("kuma-cp.crt");
            if !default.exists() {
                bail!(
                    "cannot verify the control plane at {}: pass --ca-cert-file with the zone CP's certificate (kuma-cp.crt in its work dir, ~/.kuma/kuma-cp.crt by default)",
                    args.cp_address
                );
            }
            default
        }
    };
    let roots = meshzone_tls_client::Roots::read("--ca-cert-file", &path)?;
    Ok(meshzone_tls_client::Connector::new(
        &meshzone_tls_client::Trust::Roots(roots),
        443,
    )?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .map_err(|e| anyhow!("--log-level {:?}: {e}", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !args.cp_address.starts_with("https://") {
        bail!(
            "--cp-address {:?} must be https://HOST:5678 (the DP server is TLS only)",
            args.cp_address
        );
    }
    let drain_time = meshzone_model::validate::parse_duration(&args.drain_time)
        .with_context(|| format!("--drain-time {:?} is not a duration", args.drain_time))?;
    let (mesh, name, dataplane_json) = dataplane(&args)?;
    let tls = control_plane_tls(&args)?;
    let token = match &args.dataplane_token_file {
        Some(p) => {
            let token = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --dataplane-token-file {}", p.display()))?
                .trim()
                .to_string();
            meshzone_tls_client::bearer::check(&token)
                .with_context(|| format!("--dataplane-token-file {}", p.display()))?;
            token
        }
        None => String::new(),
    };

    let stats = Arc::new(Stats::default());
    let drain = Arc::new(Drain::default());
    // Zipkin names spans' service after the first inbound's `kuma.io/service` (Envoy: the node's
    // cluster, which Kuma sets to it).
    let local_service = dataplane_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| {
            v["networking"]["inbound"][0]["tags"]["kuma.io/service"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| name.clone());
    let (runtime_tx, runtime_rx) = watch::channel(Arc::new(Runtime::empty_for(&local_service)));
    let (ready_tx, ready_rx) = watch::channel(false);

    let admin_listener = tokio::net::TcpListener::bind(("127.0.0.1", args.admin_port))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot listen on 127.0.0.1:{} (--admin-port): {e}",
                args.admin_port
            )
        })?;
    // The admin server and the DNS resolver are critical: if one of them ends, kuma-dp stops
    // (non-zero) rather than run half-blind; the xDS client's outcome is awaited below.
    let shutdown = Shutdown::new();
    let (supervisor, mut failures) = Supervisor::new(shutdown.clone(), Backoff::default());
    let admin_view = admin::AdminView::new(stats.clone(), runtime_rx.clone(), ready_rx.clone());
    supervisor.critical(
        "admin server",
        axum::serve(admin_listener, admin::router(admin_view.clone())).into_future(),
    );

    supervisor.serving(
        "MeshMetric endpoints",
        metrics_endpoints::run(
            runtime_rx.clone(),
            stats.clone(),
            ready_rx.clone(),
            std::time::Instant::now(),
        ),
    );

    let transparent = dataplane_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .is_some_and(|v| !v["networking"]["transparentProxying"].is_null());
    if transparent && args.dns_enabled {
        let socket = tokio::net::UdpSocket::bind(("127.0.0.1", args.dns_port))
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot listen on 127.0.0.1:{} (--dns-port, UDP): {e}",
                    args.dns_port
                )
            })?;
        let upstreams =
            dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        info!(
            port = args.dns_port,
            ?upstreams,
            "DNS for .mesh names listening (UDP)"
        );
        supervisor.serving(
            "DNS resolver",
            dns::serve(socket, runtime_rx.clone(), upstreams, stats.clone()),
        );
    }

    let settings = xds_client::XdsSettings {
        cp_address: args.cp_address.clone(),
        tls,
        token,
        mesh: mesh.clone(),
        name: name.clone(),
        dataplane_json,
        proxy_type: match args.proxy_type {
            ProxyType::Dataplane => "dataplane",
            ProxyType::Ingress => "ingress",
            ProxyType::Egress => "egress",
        },
        admin: admin_view,
    };
    let mut xds = tokio::spawn(xds_client::run(
        settings,
        runtime_tx,
        ready_tx,
        stats.clone(),
    ));

    let mut listeners = Listeners::new(stats.clone(), drain.clone());
    let mut changes = runtime_rx.clone();
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    info!(mesh, name, cp = args.cp_address, "kuma-dp started");
    let mut updates_open = true;
    loop {
        tokio::select! {
            changed = changes.changed(), if updates_open => {
                // The sender lives in the xDS task; when it ends, its outcome comes next.
                match changed {
                    Ok(()) => listeners.reconcile(&changes).await,
                    Err(_) => updates_open = false,
                }
            }
            outcome = &mut xds => {
                return match outcome {
                    Ok(Err(refused)) => Err(refused.into()),
                    Ok(Ok(())) => Ok(()),
                    Err(e) => Err(anyhow!("xDS client stopped: {e}")),
                };
            }
            failure = failures.next() => return Err(anyhow!("{failure}")),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shutdown.begin();
    info!(
        active = drain.active(),
        "stopping: no new connections; draining live ones for up to {drain_time:?}"
    );
    listeners.close_all();
    xds.abort();
    if tokio::time::timeout(drain_time, drain.wait_idle())
        .await
        .is_err()
    {
        warn!(
            active = drain.active(),
            "drain time over; closing the remaining connections"
        );
    }
    // Let the control plane see the stream end before the process exits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
