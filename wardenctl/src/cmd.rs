//! One module per `wardenctl` command, as mini-redis keeps its commands: each holds the
//! command's arguments (its clap type, whose doc comment is the command's help) and what it
//! does, and returns the process's exit code. `main` only parses and dispatches.

pub mod apply;
pub mod decisions;
pub mod delete;
pub mod diff;
pub mod explain;
pub mod get;
pub mod history;
pub mod join_token;
pub mod operator_cert;
pub mod revoke;
pub mod scorecard;
pub mod test;
pub mod tools;
