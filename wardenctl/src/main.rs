//! `wardenctl`: the operators' CLI. Declarative resources (`apply`, `get`, `delete`, `diff`),
//! fleet status, join tokens and the admin history, over the control plane's local admin socket
//! or with an operator certificate.
//!
//! This file parses the command line and dispatches; each command lives in its own module under
//! `cmd/`.
#![forbid(unsafe_code)]

// `println!`/`print!` that end the process quietly when standard output is closed
// (`wardenctl decisions | head -1`), as a Unix tool stopped by SIGPIPE does, where std's
// would panic. Defined before the modules so they use these too.
macro_rules! println {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

mod cmd;
mod documents;
mod output;

use wardenctl::client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cmd::{
    apply::Apply, decisions::Decisions, delete::Delete, diff::Diff, explain::Explain, get::Get, history::History,
    join_token::JoinToken, operator_cert::OperatorCert, revoke::Revoke, scorecard::Scorecard, test::Test, tools::Tools,
};

/// Warden operators' CLI.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The control plane's admin socket.
    #[arg(long, env = "WARDEN_ADMIN_SOCKET", default_value = "/var/lib/warden-cp/admin.sock", global = true)]
    socket: PathBuf,
    /// Use the control plane's TLS port (`host:port`) with an operator certificate instead of
    /// the socket. (Not `--server`: that filters by McpServer, as in `decisions --server`.)
    #[arg(long, env = "WARDEN_CONTROL_PLANE", global = true, requires_all = ["cert", "key", "ca"])]
    control_plane: Option<String>,
    /// Operator certificate (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Operator key (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_KEY", global = true)]
    key: Option<PathBuf>,
    /// Fleet CA certificate (PEM), with --control-plane.
    #[arg(long, env = "WARDEN_CA", global = true)]
    ca: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Where the admin API is: the TLS port with an operator certificate, else the socket.
    fn target(&self) -> client::Target {
        match &self.control_plane {
            Some(server) => client::Target::Tls {
                address: server.clone(),
                cert: self.cert.clone().unwrap_or_default(),
                key: self.key.clone().unwrap_or_default(),
                ca: self.ca.clone().unwrap_or_default(),
            },
            None => client::Target::Socket(self.socket.clone()),
        }
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

// The commands, in the order `--help` lists them; each one's help is its type's doc comment.
#[derive(Subcommand, Debug)]
enum Command {
    Apply(Apply),
    Get(Get),
    Delete(Delete),
    Diff(Diff),
    JoinToken(JoinToken),
    OperatorCert(OperatorCert),
    Decisions(Decisions),
    Explain(Explain),
    Revoke(Revoke),
    History(History),
    Scorecard(Scorecard),
    Tools(Tools),
    Test(Test),
}

/// Writes to standard output; a closed pipe ends the process with the status a shell reports
/// for SIGPIPE (128 + 13), any other failure with an error.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command `cli` names; its exit code.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = cli.target();
    let format = cli.output;
    match cli.command {
        Command::Apply(apply) => apply.run(&target, format).await,
        Command::Get(get) => get.run(&target, format).await,
        Command::Delete(delete) => delete.run(&target).await,
        Command::Diff(diff) => diff.run(&target).await,
        Command::JoinToken(join_token) => join_token.run(&target, format).await,
        Command::OperatorCert(operator_cert) => operator_cert.run(&target).await,
        Command::Decisions(decisions) => decisions.run(&target, format).await,
        Command::Revoke(revoke) => revoke.run(&target).await,
        Command::History(history) => history.run(&target, format).await,
        Command::Scorecard(scorecard) => scorecard.run(&target, format).await,
        Command::Explain(explain) => explain.run(&target, format).await,
        Command::Tools(tools) => tools.run(&target, format).await,
        Command::Test(test) => test.run(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every command's arguments (ids, groups, conflicts),
    /// which otherwise run only when that command is parsed in a debug build.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_jti_or_subject_starting_with_a_dash_is_a_value_not_a_flag() {
        use clap::Parser;
        for which in ["--jti", "--subject"] {
            let args = ["wardenctl", "revoke", "--issuer", "warden", which, "-v4K9ZTw31ey7DEx_7DR_A"];
            let parsed = super::Cli::try_parse_from(args).map(|cli| format!("{cli:?}"));
            assert!(parsed.as_ref().is_ok_and(|debug| debug.contains("\"-v4K9ZTw31ey7DEx_7DR_A\"")), "{parsed:?}");
        }
    }
}
