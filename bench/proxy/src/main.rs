//! `skein-bench-proxy`: the helpers `bench/proxy/run.sh` runs. API objects (create, change,
//! churn), the connection-rate server and client, skein's proxy driven in-process, and the two
//! ClusterIP dispatch shapes. Not shipped; see bench/README.md for what it measures.

mod conn;
mod insync;
mod objects;
mod shapes;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "skein-bench-proxy", about = "Helpers of bench/proxy/run.sh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Creates what is missing of Services FROM..TO (namespace `bench`) and their slices.
    Create {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value_t = 0)]
        from: usize,
        #[arg(long)]
        to: usize,
        #[arg(long, default_value_t = 32)]
        parallel: usize,
    },
    /// The Service the connection-rate test goes through (`conn-target`).
    Target {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        cluster_ip: String,
        #[arg(long)]
        endpoint: Ipv4Addr,
    },
    /// Changes endpoint 0 of Service INDEX's slice to the address of change GENERATION.
    Change {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        index: usize,
        #[arg(long)]
        generation: usize,
    },
    /// One change every EVERY for FOR, spread over Services 0..COUNT.
    Churn {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "10", help = "milliseconds between changes")]
        every_ms: u64,
        #[arg(long, default_value = "20", help = "seconds")]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        first_generation: usize,
    },
    /// Accepts and closes TCP connections until killed.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Opens connections one after another for SECONDS; prints the rate as JSON. With
    /// several targets, one connection to each in turn, and each one's rate.
    Rate {
        #[arg(required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// skein's proxy in-process in this network namespace: a full sync of COUNT Services,
    /// then CHANGES one-endpoint changes.
    Sync {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
    /// skein's proxy in-process in this network namespace: COUNT Services and the connection
    /// target programmed by one full sync, left in place.
    Program {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        cluster_ip: String,
        #[arg(long)]
        endpoint: Ipv4Addr,
    },
    /// The two ClusterIP dispatch shapes in this network namespace.
    Shapes {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        shards: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Create {
            kubeconfig,
            from,
            to,
            parallel,
        } => runtime()?.block_on(async {
            let client = objects::client(&kubeconfig).await?;
            objects::create(&client, from, to, parallel).await
        }),
        Cmd::Target {
            kubeconfig,
            cluster_ip,
            endpoint,
        } => runtime()?.block_on(async {
            let client = objects::client(&kubeconfig).await?;
            objects::create(&client, 0, 0, 1).await?;
            objects::target(&client, &cluster_ip, endpoint).await
        }),
        Cmd::Change {
            kubeconfig,
            index,
            generation,
        } => runtime()?.block_on(async {
            let client = objects::client(&kubeconfig).await?;
            // The trigger time, for end-to-end latencies.
            println!("{:.6}", objects::change(&client, index, generation).await?);
            Ok(())
        }),
        Cmd::Churn {
            kubeconfig,
            count,
            every_ms,
            seconds,
            first_generation,
        } => runtime()?.block_on(async {
            let client = objects::client(&kubeconfig).await?;
            objects::churn(
                &client,
                count,
                Duration::from_millis(every_ms),
                Duration::from_secs(seconds),
                first_generation,
            )
            .await
        }),
        Cmd::Serve { listen } => conn::serve(listen),
        Cmd::Rate { targets, seconds } => match targets.as_slice() {
            [one] => conn::rate(*one, Duration::from_secs_f64(seconds)),
            many => conn::rate_interleaved(many, Duration::from_secs_f64(seconds)),
        },
        Cmd::Sync { count, changes } => insync::run(count, changes),
        Cmd::Program {
            count,
            cluster_ip,
            endpoint,
        } => insync::program(count, &cluster_ip, endpoint),
        Cmd::Shapes {
            count,
            shards,
            repeats,
        } => shapes::run(count, shards, repeats),
    }
}
