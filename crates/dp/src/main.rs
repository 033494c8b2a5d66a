//! `kuma-dp`: the data plane proxy. Its command line already follows the seed's
//! (`kuma-dp run --proxy-type=… --cp-address=… --dataplane-file=…`), but the proxy itself
//! is not built yet: `run` checks its arguments and stops with a clear message.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "kuma-dp",
    version,
    about = "Data plane proxy of the multi-zone service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProxyType {
    Dataplane,
    Ingress,
    Egress,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, value_enum, default_value = "dataplane")]
        proxy_type: ProxyType,
        /// Zone control plane DP server, e.g. https://zone-cp:5678
        #[arg(long)]
        cp_address: String,
        #[arg(long)]
        dataplane_file: Option<PathBuf>,
        #[arg(long)]
        dataplane_token_file: Option<PathBuf>,
        #[arg(long)]
        ca_cert_file: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        mesh: Option<String>,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { cp_address, .. } => {
            eprintln!(
                "kuma-dp: the data plane proxy is not available in this build yet (it arrives with the data-plane work); cannot connect to {cp_address}"
            );
            std::process::exit(2);
        }
    }
}
