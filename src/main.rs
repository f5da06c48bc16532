//! The `switchyard` command line: `run` (the default), `check` and `demo` (SPEC section 1).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use switchyard::config::{self, Config, Workers};
use switchyard::reload::{Reloader, Trigger};
use switchyard::{demo, Server, ServerOptions, StartError};

/// A load-balancing HTTP reverse proxy driven by one YAML file.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options before the command (`switchyard -c FILE check`, as `nginx -c FILE -t`); the
    /// command's own options win.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given).
    Run(RunArgs),
    /// Validate the config file: exit 0 with a summary, or 1 with every error as FILE:LINE:COL.
    Check(ConfigArg),
    /// Start three demo backends on 127.0.0.1:9001-9003 and run the proxy with ./proxy.yaml.
    Demo(RunArgs),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file [default: $SWITCHYARD_CONFIG, else ./proxy.yaml]
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// `--config`, else `$SWITCHYARD_CONFIG` when set and not empty (an empty one falls back
    /// rather than being a usage error), else `proxy.yaml`.
    fn path(&self) -> PathBuf {
        let from_env = || std::env::var_os("SWITCHYARD_CONFIG").filter(|v| !v.is_empty());
        self.config
            .clone()
            .or_else(|| from_env().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("proxy.yaml"))
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Worker threads, `auto` (one per core) or a number (overrides `workers` in the config).
    #[arg(long, value_parser = parse_workers)]
    workers: Option<Workers>,
    /// Log filter when RUST_LOG is unset, e.g. info, debug, switchyard=trace [default: info]
    #[arg(long, value_parser = parse_log_level)]
    log_level: Option<String>,
    /// How long shutdown waits for in-flight requests, e.g. 30s [default: 30s]
    #[arg(long, value_parser = config::parse_duration)]
    drain_timeout: Option<Duration>,
    /// Do not reload when the config file changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

impl RunArgs {
    /// These options, each one not given taken from `outer` (given before the command).
    fn or(self, outer: RunArgs) -> RunArgs {
        RunArgs {
            config: ConfigArg {
                config: self.config.config.or(outer.config.config),
            },
            workers: self.workers.or(outer.workers),
            log_level: self.log_level.or(outer.log_level),
            drain_timeout: self.drain_timeout.or(outer.drain_timeout),
            no_watch: self.no_watch || outer.no_watch,
        }
    }

    /// The options given that only running the proxy uses.
    fn run_only(&self) -> Vec<&'static str> {
        let given = [
            (self.workers.is_some(), "--workers"),
            (self.log_level.is_some(), "--log-level"),
            (self.drain_timeout.is_some(), "--drain-timeout"),
            (self.no_watch, "--no-watch"),
        ];
        given.into_iter().filter(|g| g.0).map(|g| g.1).collect()
    }
}

fn main() -> ExitCode {
    let Cli {
        command,
        run: outer,
    } = Cli::parse();
    match command {
        Some(Command::Check(args)) => {
            let run_only = outer.run_only();
            if !run_only.is_empty() {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                let message = format!("{} applies to `run`, not `check`", run_only.join(", "));
                cmd.error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
            let config = args.config.or(outer.config.config);
            check(&ConfigArg { config }.path())
        }
        Some(Command::Run(args)) => exit(run(args.or(outer), false)),
        Some(Command::Demo(args)) => exit(run(args.or(outer), true)),
        None => exit(run(outer, false)),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchyard check`: like `nginx -t`, it also resolves hostnames and reads certificates.
fn check(path: &Path) -> ExitCode {
    match switchyard::check::check(path) {
        Ok(config) => {
            println!("{}", config.summary(path));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// `--log-level`: levels and `TARGET=LEVEL` directives `tracing` accepts. A bare word that
/// is not a level (`warning`, `inf`), which `tracing` would read as a target to trace, is
/// refused: here it is a typo far more often than a target.
fn parse_log_level(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let expected = "expected a level (off, error, warn, info, debug, trace) or TARGET=LEVEL \
                    directives, like info or warn,switchyard=debug";
    let typo = |directive: &str| {
        !directive.contains(['=', '['])
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
            && directive.parse::<u8>().is_err()
    };
    if text.split(',').any(|d| typo(d.trim())) {
        return Err(format!("`{text}`: {expected}"));
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|error| format!("{error} ({expected})"))
}

/// Whether a `RUST_LOG` directive is one of [`LEVEL_TYPOS`], in any case (tracing reads its
/// own levels so).
fn is_level_typo(directive: &str) -> bool {
    LEVEL_TYPOS
        .iter()
        .any(|typo| typo.eq_ignore_ascii_case(directive.trim()))
}

/// Level names of other loggers that `RUST_LOG` would take as a target (a bare word is one)
/// and so enable nothing, errors included: refused like an unparsable filter.
const LEVEL_TYPOS: [&str; 7] = [
    "warning",
    "err",
    "fatal",
    "critical",
    "notice",
    "verbose",
    "information",
];

fn init_tracing(level: &str) {
    let from_env = std::env::var_os("RUST_LOG").filter(|v| !v.is_empty());
    let parsed = from_env.as_ref().map(|v| match v.to_str() {
        Some(text) if text.split(',').any(is_level_typo) => {
            Err(format!("`{text}` names a level tracing does not have"))
        }
        Some(text) => tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string()),
        None => Err("not UTF-8".to_owned()),
    });
    let (filter, ignored) = match parsed {
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (tracing_subscriber::EnvFilter::new(level), Some(error)),
        None => (tracing_subscriber::EnvFilter::new(level), None),
    };
    // Colour only on a terminal: a log file or a log shipper must get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(error) = ignored {
        tracing::warn!(%error, level, "RUST_LOG is not a valid filter; using --log-level");
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))
}

/// `--workers`: `auto` or a count from 1 to `MAX_WORKERS`, as `workers` in the file.
fn parse_workers(text: &str) -> Result<Workers, String> {
    text.parse().map_err(|_| {
        format!(
            "expected `auto` or a number from 1 to {}, got `{text}`",
            config::MAX_WORKERS
        )
    })
}

/// How long shutdown waits for in-flight requests without `--drain-timeout` (SPEC section 7).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn run(args: RunArgs, with_demo: bool) -> anyhow::Result<()> {
    init_tracing(args.log_level.as_deref().unwrap_or("info"));
    let path = args.config.path();
    let drain_timeout = args.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
    let config = load(&path)?;
    let workers = match args.workers.unwrap_or(config.workers) {
        Workers::Count(n) => n,
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        if with_demo {
            let addrs = demo::start_backends()
                .await
                .context("cannot start the demo backends on 127.0.0.1:9001-9003")?;
            tracing::info!(?addrs, "demo backends up; try: curl http://127.0.0.1:8080/");
        }
        // Installed before the listeners open, so a signal is never met by the default action.
        let mut signals = ShutdownSignals::install();
        let hup = hangup_signal();
        let options = ServerOptions {
            config_path: Some(path.clone()),
            drain: drain_timeout,
            watch: !args.no_watch,
        };
        let server = Server::start_with(config, options)
            .await
            .map_err(|e| match e {
                StartError::Located(error) => anyhow::anyhow!("invalid config:\n{error}"),
                e => anyhow::anyhow!(switchyard::error_chain(&e)),
            })?;
        tracing::info!(workers, "switchyard running");
        if let Some(hup) = hup {
            tokio::spawn(reload_on_sighup(hup, server.reloader().clone()));
        }
        signals.recv().await;
        tracing::info!(drain = ?drain_timeout, "shutting down: draining connections");
        // The same signal streams: a second signal sent right after the first is not lost.
        tokio::spawn(async move {
            signals.recv().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        server.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

/// The SIGHUP stream, or `None` (logged) where it cannot be had.
fn hangup_signal() -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::error!(%error, "cannot install the SIGHUP handler; reload by file change");
            })
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the config on every SIGHUP, through the same function as the file watcher.
async fn reload_on_sighup(mut hup: Hangup, reloader: Reloader) {
    #[cfg(unix)]
    while hup.recv().await.is_some() {
        // The reloader logs and records the outcome.
        let _ = reloader.reload(Trigger::Signal).await;
    }
    #[cfg(not(unix))]
    let _ = (&mut hup, reloader);
}

/// SIGINT and SIGTERM, installed once for the whole life of the process.
struct ShutdownSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    fn install() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    tracing::error!("cannot install signal handlers; stop with SIGKILL");
                    None
                }
            };
            ShutdownSignals { streams }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let Some((term, int)) = &mut self.streams else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
