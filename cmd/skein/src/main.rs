//! The `skein` command: the daemon (`skein run`), the userspace WireGuard device (`skein
//! wireguard`), `skein overlay rotate-key`, configuration tools, and the CNI plugin (when
//! `CNI_COMMAND` is set). Parsing arguments and setting up logging live here; the work lives in
//! the `internal/` crates.

// jemalloc, not the C library's allocator: at 10,000 Services the daemon's state is tens of
// thousands of small long-lived allocations made next to a first sync's larger short-lived ones,
// and glibc kept a 64 MB arena resident around them (98-102 MB RSS, against 78-83 MB with jemalloc, before the state was packed).
// mimalloc held more than glibc (149-154 MB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc reads this before `main`. One arena: the daemon's threads mostly wait, and with one
// arena per thread (eight on two cores) each kept its own partly used pages (57-61 MB RSS at
// 10,000 Services against 55 MB with one). Freed pages go back to the kernel a second after they
// fall idle (`dirty_decay_ms`), skipping the lazy "muzzy" stage, and a background thread does it,
// so an idle daemon returns a sync's garbage too rather than only on its next allocation.
// `MALLOC_CONF`-style settings in the `_RJEM_MALLOC_CONF` environment variable still win.
#[allow(unsafe_code)] // a symbol jemalloc looks up by name; the bytes are a C string
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 70] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "skein",
    version,
    about = "One daemon per node that gives a small Kubernetes cluster its whole network",
    long_about = "skein gives a small Kubernetes cluster its network from one process per node: \
                  pod addressing (CNI), a WireGuard overlay between nodes, the service proxy, \
                  cluster DNS and NetworkPolicy, configured by one file.\n\n\
                  Start it with `skein run` (normally through systemd: `systemctl enable --now \
                  skein`), then open the status page at http://127.0.0.1:9610/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    Run {
        /// Configuration file. Without it /etc/skein/config.toml is read if it exists, else
        /// built-in defaults apply.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Inspect configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the userspace WireGuard device NAME in the foreground (normally through systemd:
    /// skein-wireguard.service). The daemon configures it; it outlives daemon restarts, so pod
    /// traffic keeps flowing while skein itself restarts or upgrades.
    Wireguard {
        /// Interface name; default: overlay.interface from the configuration.
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// Configuration file, for overlay.interface and overlay.mode.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Packet worker threads; default: the number of CPUs, at most 4.
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
    },
    /// Act on the running daemon's WireGuard overlay.
    Overlay {
        #[command(subcommand)]
        command: OverlayCommand,
    },
    /// Ask the node's cluster DNS.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand, Debug)]
enum DnsCommand {
    /// Ask the local DNS server (dns.listen) for NAME's records of TYPE, and print the answer:
    /// what a pod asking the same would get.
    Query {
        name: String,
        /// A, AAAA, SRV, PTR, TXT, CNAME, SOA, NS, ANY, ...
        #[arg(default_value = "A")]
        r#type: String,
        /// The server to ask (IP or IP:port); default dns.listen from the configuration.
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
        /// Configuration file, for dns.listen.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum OverlayCommand {
    /// Make a new WireGuard key pair for this node, publish its public key and re-peer. The
    /// old key stops working; connections through the tunnel carry on.
    RotateKey {
        /// The daemon's configuration (for the state directory).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file (with SKEIN_* environment overrides) and print the
    /// effective configuration. Exits non-zero and names every problem when it is invalid.
    Check {
        /// The file to check; default /etc/skein/config.toml.
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// Print the default configuration, every key documented.
    Default,
}

fn main() -> ExitCode {
    // Run by a container runtime as the CNI plugin: the protocol is the environment and stdin.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return skein_cni::plugin_main();
    }
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let loaded = skein_config::load(config.as_deref(), std::env::vars())?;
            init_logging(&loaded.settings.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("skein")
                .build()
                .context("cannot start the async runtime")?;
            let result = runtime.block_on(skein_daemon::run(loaded));
            // Parts were given their grace period already; do not wait on stragglers.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            Ok(result?)
        }
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            let loaded = skein_config::load(path.as_deref(), std::env::vars())?;
            println!("# effective configuration from {}", loaded.source);
            for name in &loaded.overrides {
                println!("# overridden by the environment: {name}");
            }
            print!("{}", loaded.config.to_toml());
            eprintln!("config OK: {}", loaded.source);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", skein_config::DEFAULT_TOML);
            Ok(())
        }
        Command::Wireguard {
            interface,
            config,
            threads,
        } => {
            let loaded = skein_config::load(config.as_deref(), std::env::vars())?;
            init_logging(&loaded.settings.log)?;
            let name = match interface {
                Some(name) => skein_names::IfName::new(name.as_str())
                    .map_err(|e| anyhow::anyhow!("--interface: {e}"))?,
                None => loaded.settings.overlay.interface.clone(),
            };
            // The unit is wanted by skein.service everywhere; where the kernel carries the
            // overlay it has nothing to do.
            let mode = loaded.settings.overlay.mode;
            let (backend, _) = skein_overlay::choose_backend(
                mode,
                skein_wireguard::kernel_has_wireguard(),
                name.as_str(),
            );
            if backend == skein_overlay::Backend::Kernel {
                eprintln!(
                    "skein wireguard: overlay.mode = {} and the kernel carries the overlay; no userspace device is needed",
                    mode.as_str()
                );
                return Ok(());
            }
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
            });
            Ok(skein_wireguard::run(&name, threads)?)
        }
        Command::Overlay {
            command: OverlayCommand::RotateKey { config },
        } => {
            let loaded = skein_config::load(config.as_deref(), std::env::vars())?;
            let state_dir = loaded.settings.store.dir();
            let answer = skein_daemon::control::request(&state_dir, "rotate-key")
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{answer}");
            Ok(())
        }
        Command::Dns {
            command:
                DnsCommand::Query {
                    name,
                    r#type,
                    server,
                    config,
                },
        } => {
            let server = match server {
                Some(s) => s
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| {
                        anyhow::anyhow!("--server {s:?}: not an address (IP or IP:port)")
                    })?,
                None => {
                    let loaded = skein_config::load(config.as_deref(), std::env::vars())?;
                    (loaded.settings.dns.listen, 53).into()
                }
            };
            let rtype: skein_dns::RecordType = r#type
                .to_ascii_uppercase()
                .parse()
                .map_err(|_| anyhow::anyhow!("{type:?} is not a DNS record type", type = r#type))?;
            let (answer, tcp) =
                skein_dns::client::query(server, &name, rtype, std::time::Duration::from_secs(3))
                    .map_err(|e| anyhow::anyhow!(e))?;
            print!("{}", skein_dns::client::describe(&answer, tcp));
            Ok(())
        }
        Command::Version => {
            println!("skein {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// Text for people or JSON for machines; level from RUST_LOG, else `log.level`. Under systemd
/// (JOURNAL_STREAM set) lines carry no timestamp, since the journal adds its own.
fn init_logging(config: &skein_config::LogSettings) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("RUST_LOG = {spec:?}"))?
        }
        _ => EnvFilter::try_new(&config.level)
            .with_context(|| format!("log.level = {:?}", config.level))?,
    };
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let result = match (config.format, under_journal) {
        (skein_config::LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (skein_config::LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (skein_config::LogFormat::Text, false) => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

#[cfg(test)]
mod tests {
    //! The command line's shape.
    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
