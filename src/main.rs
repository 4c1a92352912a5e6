//! The `slotguard` command: serve, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The request path allocates small, short-lived objects at a high rate; mimalloc handles
/// that at a fraction of glibc malloc's cost (measured with `benches/compare.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use slotguard::cluster::mover as moving;
use slotguard::config::{Config, Overrides};

/// `--version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLOTGUARD_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "slotguard",
    version = VERSION,
    about = "A Redis Cluster proxy that holds and repairs instead of failing"
)]
struct Cli {
    /// Configuration file (TOML); every key is listed in config/slotguard.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6380].
    #[arg(long, global = true)]
    listen: Option<String>,
    /// A cluster node to learn the topology from (repeatable).
    #[arg(long = "seed", global = true)]
    seeds: Vec<String>,
    /// Admin HTTP listener (/healthz, /readyz).
    #[arg(long, global = true)]
    admin_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a configuration file without starting or connecting: exit 0 and a summary
    /// when it is good, else the error start-up would give (run it before a reload).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Start a local Redis Cluster (3 masters, 3 replicas) and the proxy in front of it.
    Demo {
        /// Keep the cluster's directory (logs, nodes.conf) after exit.
        #[arg(long)]
        keep_dir: bool,
    },
    /// Diagnose the cluster once (read-only): unsettled slots and the repair planned for
    /// each. Exit status 0 only when healthy.
    Check,
    /// Run the repairs once, without serving clients. Exit status 0 when the cluster ends
    /// healthy.
    Repair {
        /// Print the plans; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move slots to a master, in the order that survives a crash of any node or of
    /// slotguard (Ctrl-C stops at a step boundary; the same command resumes).
    Migrate {
        /// Slots: `100-199,300`.
        #[arg(long)]
        slots: String,
        /// The master that gets them: its id, a prefix of it, or host:port.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Even the slots across the masters (or in proportion to weights), with the fewest
    /// moves; prints the plan first.
    Rebalance {
        /// A master's weight: `NODE=2` (id, prefix or host:port; 1 when not given).
        #[arg(long = "weight")]
        weights: Vec<String>,
        /// Print the plan; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Move every slot off a master (before removing it), evenly to the others.
    Drain {
        /// The master to empty: its id, a prefix of it, or host:port.
        node: String,
        /// Print the plan; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        pace: PaceArgs,
    },
}

/// How fast `migrate`, `rebalance` and `drain` move keys.
#[derive(clap::Args)]
struct PaceArgs {
    /// Keys moved per MIGRATE.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// MIGRATEs sent at once, before each wait for the target's replicas.
    #[arg(long, default_value_t = slotguard::cluster::repair::PIPELINE)]
    pipeline: usize,
    /// At most this many keys a second (moves with MIGRATE, not atomically).
    #[arg(long)]
    max_keys_per_sec: Option<u64>,
    /// Move with SETSLOT and MIGRATE even where every master can migrate slots atomically
    /// (Valkey 9's CLUSTER MIGRATESLOTS).
    #[arg(long)]
    legacy: bool,
}

impl PaceArgs {
    fn options(&self) -> slotguard::cluster::mover::Options {
        slotguard::cluster::mover::Options {
            batch: self.batch.max(1),
            pipeline: self.pipeline.max(1),
            max_keys_per_sec: self.max_keys_per_sec,
            legacy: self.legacy,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Cmd::CheckConfig { file }) => return check_config(file),
        Some(Cmd::Completions { shell }) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "slotguard", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Man) => {
            use clap::CommandFactory;
            let page = clap_mangen::Man::new(Cli::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slotguard: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let flags = Overrides {
        listen: cli.listen,
        seeds: cli.seeds,
        admin_listen: cli.admin_listen,
    };
    let config = match Config::load(cli.config.as_deref(), &flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slotguard: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Moving slots shows a progress bar; each step's log line would break it. Warnings
    // and errors still show (RUST_LOG or `log.level` in a config file say otherwise).
    let moving = matches!(
        cli.command,
        Some(Cmd::Migrate { .. } | Cmd::Rebalance { .. } | Cmd::Drain { .. })
    );
    let level = match (moving, cli.config.is_some()) {
        (true, false) => "warn",
        _ => config.log_level.as_str(),
    };
    slotguard::logging::init(level, config.log_json);
    // One thread: a current-thread runtime, which saves the work-stealing machinery.
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slotguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => serve(config, cli.config, flags).await,
            Some(Cmd::Demo { keep_dir }) => {
                slotguard::demo::run(config, keep_dir, stop_signal()).await
            }
            Some(Cmd::CheckConfig { .. } | Cmd::Completions { .. } | Cmd::Man) => {
                unreachable!("answered before the runtime starts")
            }
            Some(Cmd::Check) => one_shot(slotguard::cluster::diagnose::check(&config).await),
            Some(Cmd::Repair { dry_run }) => {
                one_shot(slotguard::cluster::diagnose::repair(&config, dry_run).await)
            }
            Some(Cmd::Migrate { slots, to, pace }) => {
                let order = moving::Order::Migrate { slots, to };
                Ok(moving::run(&config, order, false, pace.options()).await?)
            }
            Some(Cmd::Rebalance {
                weights,
                dry_run,
                pace,
            }) => {
                let order = moving::Order::Rebalance { weights };
                Ok(moving::run(&config, order, dry_run, pace.options()).await?)
            }
            Some(Cmd::Drain {
                node,
                dry_run,
                pace,
            }) => {
                let order = moving::Order::Drain { node };
                Ok(moving::run(&config, order, dry_run, pace.options()).await?)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slotguard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `slotguard check-config FILE`: the file alone (no flags, no connection), with the
/// exit status and error text of start-up.
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(Some(file), &Overrides::default()) {
        Ok(c) => {
            let seeds = match c.seeds.len() {
                0 => "no seeds (give --seed when starting)".to_string(),
                n => format!("{n} seed(s)"),
            };
            println!(
                "{}: ok: listen {}, {seeds}, ack = {}, repair {}, {}",
                file.display(),
                c.listen,
                match c.ack {
                    slotguard::config::Ack::Master => "master",
                    slotguard::config::Ack::Replicated => "replicated",
                },
                if c.repair_auto { "auto" } else { "off" },
                match &c.coordination {
                    Some(_) => "coordinated through etcd",
                    None => "one proxy",
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slotguard: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Why a command ended with a failure: printed, then the exit status says so.
type Failed = Box<dyn std::error::Error>;

/// The exit of `check` and `repair`: unhealthy is an error without a message of its own.
fn one_shot(result: Result<bool, slotguard::cluster::Error>) -> Result<(), Failed> {
    match result? {
        true => Ok(()),
        false => Err("the cluster is not healthy".into()),
    }
}

/// Serves until SIGTERM or Ctrl-C, reloading the file on SIGHUP.
async fn serve(config: Config, path: Option<PathBuf>, flags: Overrides) -> Result<(), Failed> {
    if config.seeds.is_empty() {
        return Err("no seeds: give --seed HOST:PORT or `seeds` in the config file".into());
    }
    let running = slotguard::server::start(config).await?;
    // Ready for systemd once the first slot map is loaded, as /readyz.
    let proxy = running.proxy.clone();
    tokio::spawn(async move {
        proxy.mapped().await;
        slotguard::notify::notify("READY=1\nSTATUS=serving");
    });
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => {
                slotguard::notify::notify("STATUS=reloading");
                slotguard::server::reload(&running.proxy, path.as_deref(), &flags);
                slotguard::notify::notify("STATUS=serving");
            }
        }
    }
    tracing::info!("shutting down");
    slotguard::notify::notify("STOPPING=1\nSTATUS=draining");
    running.shutdown().await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
