//! The `infergate` command: run the router (`serve`), validate its configuration (`check`), a self-contained demo (`demo`, with the default `demo` feature), render Kubernetes manifests (`render`, `crd`), or print build information (`version`).
//!
//! Built without the `demo` feature (the release image), the binary has no `demo` subcommand and
//! embeds neither the example certificate nor its key, nor the mock model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

mod autoscale;
mod check;
#[cfg(feature = "demo")]
mod demo;
mod nofile;
mod reload;
mod token;
mod version;

/// infergate: an inference ingress/router for Kubernetes (the job of azureml-fe).
#[derive(Debug, Parser)]
#[command(version = version::LINE, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the router from a configuration file.
    Serve {
        /// YAML configuration file (see README: "Configuration reference").
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Override a top-level key, e.g. `--set allowInsecureConnections=True` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Validate a configuration as `serve` would (files readable, PEMs parse and match, keys,
    /// weights, limits) without binding anything; one line per endpoint, exit 0, or 2 on error.
    Check {
        /// YAML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Override a top-level key, as with `serve` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print the version, git commit, build date, rustc version and crypto provider.
    Version,
    /// Print Kubernetes manifests from the AzureML extension's `--config KEY=VALUE` settings.
    Render(infergate_deploy::cli::RenderCommand),
    /// Print the InferenceEndpoint CustomResourceDefinition (YAML, for `kubectl apply -f -`).
    Crd,
    /// Issue tokens for endpoints in token mode (`token issue --endpoint NAME --ttl 1h --key-file F`).
    Token(token::TokenCommand),
    /// Start three mock model pods and the router on 127.0.0.1 with the example certificate; Ctrl-C stops.
    #[cfg(feature = "demo")]
    Demo {
        /// HTTPS port of the router (of the first replica; replica i gets this + i; 0: any free port).
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        /// Admin port (/healthz, /readyz, /metrics) of the first replica; replica i gets this + i.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Router replicas in this process, acting as one cluster when more than one (HA: the
        /// pods' slots and the queue are global).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        replicas: u16,
        /// Peer (cluster) port of the first replica; replica i gets this + i; 0: free ports.
        /// Used with --replicas 2 or more.
        #[arg(long, default_value_t = 7946)]
        peer_port: u16,
        /// Service time of each mock model pod, in milliseconds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[command(flatten)]
        run: RunOpts,
    },
}

#[derive(Debug, clap::Args)]
struct RunOpts {
    /// Connection workers: threads each running a single-threaded runtime; a connection stays
    /// on one for its life (default: the CPUs available to the process, cgroup CPU quota
    /// included). With 1, everything runs on one thread.
    #[arg(long, env = "INFERGATE_WORKERS")]
    workers: Option<usize>,
    /// Log format: one JSON object per line (default), or human-readable text.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => b.compact().init(),
    }
}

/// The demo's runtime (its routers and mock pods share one process): `--workers N` threads.
/// One gets tokio's single-threaded scheduler.
#[cfg(feature = "demo")]
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == Some(1) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build()
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, sets, run } => {
            // Validate before anything else (and before any port is bound). The file is hashed
            // first: the reloader watches for changes from this version on.
            let loaded = reload::file_hash(&config);
            let cfg = match infergate_config::Config::load(&config, &sets) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(run.log_format);
            nofile::raise(cfg.limits.max_connections);
            // The main runtime runs the accept loops, admin, discovery, the cluster and the
            // autoscaler; with more than one worker, connections run on the workers.
            let n = run
                .workers
                .unwrap_or_else(infergate_proxy::workers::default_workers)
                .max(1);
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    let w = (n > 1)
                        .then(|| infergate_proxy::workers::Workers::start(n).map(Arc::new))
                        .transpose()?;
                    Ok((rt, w))
                });
            let (rt, workers) = match started {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(workers = n, "connection workers");
            rt.block_on(async {
                // With `discovery.kube`: the Kubernetes client, before any port is bound (kube's
                // TLS is rustls: the process's crypto provider goes in first).
                infergate_tls::install_crypto_provider();
                let kube = match infergate_discovery::client_if_configured(&cfg).await {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                // With `cluster.kube`: the peers are the headless Service's ready endpoints.
                let peers = match (
                    &kube,
                    cfg.cluster
                        .as_ref()
                        .and_then(|c| Some((c, c.kube.as_ref()?))),
                ) {
                    (Some(client), Some((c, k))) => Some(infergate_discovery::watch_peers(
                        client.clone(),
                        infergate_discovery::peer_namespace(k.namespace.as_deref()),
                        k.service.clone(),
                        c.listen.port(),
                        None,
                    )),
                    _ => None,
                };
                let server = match infergate_proxy::Server::bind_with_peers(&cfg, peers).await {
                    Ok(s) => match &workers {
                        Some(w) => s.with_workers(w.clone()),
                        None => s,
                    },
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                // The autoscaler's part of InferenceEndpoint status, written by discovery's writer.
                let board = cfg
                    .discovery
                    .kube
                    .as_ref()
                    .map(|_| std::sync::Arc::new(infergate_discovery::ScaleBoard::default()));
                let autoscaler =
                    autoscale::start(kube.as_ref(), &cfg, server.router(), board.clone());
                let _discovery = kube.and_then(|c| {
                    infergate_discovery::start(
                        c,
                        &cfg,
                        server.router().clone(),
                        server.readiness().clone(),
                        server.registry(),
                        board,
                    )
                });
                // SIGHUP and file changes reload the configuration from here on.
                let reloader = reload::Reloader::new(&config, &sets, &cfg, server.router().clone())
                    .loaded_from(loaded)
                    .spawn();
                let reloader = match reloader {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: cannot install the SIGHUP handler: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                server.run(shutdown_signal()).await;
                reloader.abort();
                if let Some(a) = autoscaler {
                    a.stop().await;
                }
                ExitCode::SUCCESS
            })
        }
        Cmd::Check { config, sets } => check::run(&config, &sets),
        Cmd::Version => {
            print!("{}", version::report());
            ExitCode::SUCCESS
        }
        Cmd::Render(cmd) => cmd.run(),
        Cmd::Crd => {
            print!("{}", infergate_discovery::crd_yaml());
            ExitCode::SUCCESS
        }
        Cmd::Token(cmd) => cmd.run(),
        #[cfg(feature = "demo")]
        Cmd::Demo {
            https_port,
            admin_port,
            replicas,
            peer_port,
            latency_ms,
            run,
        } => {
            init_logging(
                if run.log_format == LogFormat::Json
                    && std::env::args().any(|a| a == "--log-format")
                {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                },
            );
            let rt = match runtime(run.workers) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(demo::run(
                demo::Ports {
                    https: https_port,
                    admin: admin_port,
                    peer: peer_port,
                },
                latency_ms,
                usize::from(replicas),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
