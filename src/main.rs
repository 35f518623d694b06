//! The `mailgrip` binary: parses the command line, sets up logging, binds sockets, wires signals,
//! and calls into the library (see `lib.rs` for the layout of a message's journey).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use mailgrip::cli::{self, Format};
use mailgrip::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "mailgrip",
    version,
    about = "Classifies e-mail in the mail chain: SMTP content filter, ONNX classifier, archive routing."
)]
struct Cli {
    /// Configuration file (TOML). Without it, the built-in defaults apply; MAILGRIP__SECTION__KEY
    /// environment variables override either.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mail gateway.
    Serve,
    /// Classify .eml files, folders of them, and mbox files.
    Classify {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the model text of each message (JSONL), exactly as the classifier sees it.
    Extract {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check the configuration and print it as TOML.
    CheckConfig,
    /// The archive policy: simulate it on labelled mail.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The review queue (reads review.dir).
    #[command(subcommand)]
    Review(ReviewCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The archivist's web console.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Read a password from stdin (its first line) and print its argon2 hash for [[admin.users]].
    HashPassword,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run labelled mail through the classifier and the policy: privacy leak, record loss and
    /// review rates, and the trade-off curve across review costs.
    Simulate {
        /// CSV with columns file,label[,split] (file relative to the CSV).
        #[arg(long)]
        labels: PathBuf,
        /// Only rows of this split (e.g. test).
        #[arg(long)]
        split: Option<String>,
        /// Write sweep.csv, tradeoff.svg and simulate.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Held copies, oldest first.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Decide on a held copy: archive, archive-restricted or none, with the corrected class.
    Decide {
        id: String,
        #[arg(long)]
        action: String,
        /// The correct class, when the model was wrong.
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        reviewer: String,
    },
    /// Reviewer decisions with corrected labels, as JSONL training data.
    Export,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a hash chain; exit 0 when intact, 1 naming the first broken record.
    Verify {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("mailgrip: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("configuration")?;
    match cli.command {
        Command::CheckConfig => {
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
        Command::Extract { paths, format: _ } => cli::extract(&paths),
        Command::Classify { paths, format } => {
            init_tracing(&Config {
                log: mailgrip::config::LogConfig { level: "warn".into(), ..cfg.log.clone() },
                ..cfg.clone()
            });
            runtime()?.block_on(cli::classify(&cfg, &paths, format))
        }
        Command::Policy(PolicyCommand::Simulate { labels, split, out, paths }) => {
            init_tracing(&Config {
                log: mailgrip::config::LogConfig { level: "warn".into(), ..cfg.log.clone() },
                ..cfg.clone()
            });
            runtime()?.block_on(cli::policy::simulate(&cfg, &labels, split.as_deref(), out.as_deref(), &paths))
        }
        Command::Review(ReviewCommand::List { format }) => cli::review::list(&cfg, format),
        Command::Review(ReviewCommand::Decide { id, action, class, reviewer }) => {
            runtime()?.block_on(cli::review::decide(&cfg, &id, &action, class.as_deref(), &reviewer))
        }
        Command::Review(ReviewCommand::Export) => cli::review::export(&cfg),
        Command::Audit(AuditCommand::Verify { paths }) => {
            if !cli::audit::verify(&paths)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Admin(AdminCommand::HashPassword) => cli::admin::hash_password(),
        Command::Serve => {
            init_tracing(&cfg);
            runtime()?.block_on(serve(cfg, cli.config.clone()))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn serve(cfg: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let smtp = match cfg.smtp_listen() {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("smtp.listen {}", cfg.smtp.listen))?),
        None => None,
    };
    let milter = match cfg.milter_listen() {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("milter.listen {}", cfg.milter.listen))?)
        }
        None => None,
    };
    let metrics = if cfg.metrics.listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&cfg.metrics.listen)
                .await
                .with_context(|| format!("metrics.listen {}", cfg.metrics.listen))?,
        )
    };
    let admin = if cfg.admin.listen.is_empty() {
        None
    } else {
        Some(TcpListener::bind(&cfg.admin.listen).await.with_context(|| format!("admin.listen {}", cfg.admin.listen))?)
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutdown requested; finishing sessions in flight");
        token.cancel();
    });
    // SIGHUP: reload configuration and model (see src/reload.rs).
    let (reload_tx, requests) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
        while hup.recv().await.is_some() {
            // A reload already waiting covers this request too.
            let _ = reload_tx.try_send(());
        }
    });
    let load = Box::new(move || Config::load(config_path.as_deref()).map_err(|e| format!("configuration: {e}")));
    let reload = mailgrip::Reload { requests, load };
    mailgrip::run_with_reload(cfg, mailgrip::Listeners { smtp, metrics, milter, admin }, shutdown, Some(reload))
        .await?;
    Ok(())
}
