//! `Field`: every string of a `Document` together with what detection needs to judge it — the
//! path to it (the finding's `location`), the MCP server entry it belongs to, and the name it
//! sits under (its key, or the `--flag` before it in an argument list). `visit` hands each to a
//! callback, in document order, until the callback says stop. Also collects the env files a
//! configuration points at (`envFile`, `--env-file`), so the scan can follow them.
//!
//! Server entries are recognised by the keys MCP clients keep them under, at any depth (Claude
//! Code nests `mcpServers` under `projects.<path>`; VS Code's settings under `mcp.servers`).

use std::ops::ControlFlow;

use crate::document::{Document, Node, Value};
use crate::location::Segment;

/// Keys whose value holds one entry per MCP server: an object keyed by server name, or (Continue)
/// a list of objects with a `name`.
const SERVER_CONTAINERS: &[&str] =
    &["mcpServers", "mcp_servers", "servers", "context_servers", "modelContextProtocolServers", "mcp-servers"];

/// Keys and flags that name a dotenv file to load.
const ENV_FILE_KEYS: &[&str] = &["envFile", "env_file", "envfile", "--env-file"];

/// One string of a document, with its context.
#[derive(Debug)]
pub(crate) struct Field<'d, 'p> {
    pub(crate) path: &'p [Segment<'d>],
    /// The server entry it is inside, if any.
    pub(crate) server: Option<&'d str>,
    /// The key it sits under, or the flag before it in an array (`--token`, then this).
    pub(crate) name: Option<&'d str>,
    pub(crate) value: &'d str,
    /// Line the string starts on, where the parser knows it.
    pub(crate) line: Option<u32>,
    /// Its object has `"type": "service_account"` (a Google Cloud key file, inline).
    pub(crate) service_account: bool,
}

/// A dotenv file a configuration points at, as written (resolved by the scanner, which knows
/// where the configuration is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EnvRef {
    pub(crate) path: String,
    pub(crate) server: Option<String>,
}

/// Calls `each` for every string in `document`, in document order, until it returns `Break`;
/// returns the env files referenced by the strings visited.
pub(crate) fn visit<'d>(
    document: &'d Document,
    each: &mut dyn FnMut(&Field<'d, '_>) -> ControlFlow<()>,
) -> Vec<EnvRef> {
    let mut visitor = Visitor { path: Vec::new(), refs: Vec::new(), each };
    for root in &document.roots {
        if visitor.node(root, Context::default()).is_break() {
            break;
        }
    }
    visitor.refs
}

/// What the visitor knows about the node it is in.
#[derive(Clone, Copy, Default)]
struct Context<'d> {
    server: Option<&'d str>,
    name: Option<&'d str>,
    /// This node's children are server entries.
    servers_here: bool,
    service_account: bool,
}

struct Visitor<'d, 'v> {
    path: Vec<Segment<'d>>,
    refs: Vec<EnvRef>,
    each: &'v mut dyn FnMut(&Field<'d, '_>) -> ControlFlow<()>,
}

impl<'d> Visitor<'d, '_> {
    fn node(&mut self, node: &'d Node, cx: Context<'d>) -> ControlFlow<()> {
        match &node.value {
            Value::String(value) => {
                let field = Field {
                    path: &self.path,
                    server: cx.server,
                    name: cx.name,
                    value,
                    line: node.line,
                    service_account: cx.service_account,
                };
                let flow = (self.each)(&field);
                let referenced = match value.strip_prefix("--env-file=") {
                    Some(path) => Some(path),
                    None if cx.name.is_some_and(|n| ENV_FILE_KEYS.contains(&n)) => Some(value.as_str()),
                    None => None,
                };
                if let Some(path) = referenced.filter(|p| !p.is_empty()) {
                    self.refs.push(EnvRef { path: path.to_string(), server: cx.server.map(str::to_string) });
                }
                flow
            }
            Value::Object(entries) => self.object(node, entries, cx),
            Value::Array(items) => self.array(items, cx),
            Value::Other => ControlFlow::Continue(()),
        }
    }

    fn object(&mut self, node: &'d Node, entries: &'d [(String, Node)], cx: Context<'d>) -> ControlFlow<()> {
        let service_account = node.get_str("type") == Some("service_account");
        for (key, child) in entries {
            let server = if cx.servers_here { Some(key.as_str()) } else { cx.server };
            let nested = !matches!(child.value, Value::String(_) | Value::Other);
            let child_cx = Context {
                server,
                name: Some(key),
                servers_here: !cx.servers_here && nested && SERVER_CONTAINERS.contains(&key.as_str()),
                service_account,
            };
            self.path.push(Segment::Key(key));
            let flow = self.node(child, child_cx);
            self.path.pop();
            flow?;
        }
        ControlFlow::Continue(())
    }

    fn array(&mut self, items: &'d [Node], cx: Context<'d>) -> ControlFlow<()> {
        let mut previous_flag: Option<&'d str> = None;
        for (index, item) in items.iter().enumerate() {
            let server = if cx.servers_here { item.get_str("name").or(cx.server) } else { cx.server };
            // In an argument list a value takes its name from the flag before it
            // (`"--token", "abc"`); otherwise from the array's own key.
            let name = match (&item.value, previous_flag) {
                (Value::String(s), Some(flag)) if !s.starts_with('-') => Some(flag),
                _ => cx.name,
            };
            let item_cx = Context { server, name, servers_here: false, ..cx };
            self.path.push(Segment::Index(index));
            let flow = self.node(item, item_cx);
            self.path.pop();
            flow?;
            previous_flag = match &item.value {
                Value::String(s) if is_flag(s) => Some(s.as_str()),
                _ => None,
            };
        }
        ControlFlow::Continue(())
    }
}

/// `--token`, `-k`: a flag that takes the next argument as its value (no `=` in it).
fn is_flag(s: &str) -> bool {
    s.starts_with('-') && s.len() > 1 && !s.contains('=') && !s.contains(char::is_whitespace) && s != "--"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Format, parse_as};
    use crate::location::render;

    #[derive(Debug, PartialEq)]
    struct Seen {
        location: String,
        server: Option<String>,
        name: Option<String>,
        value: String,
    }

    fn seen(format: Format, text: &str) -> (Vec<Seen>, Vec<EnvRef>) {
        let doc = parse_as(format, text).unwrap();
        let mut out = Vec::new();
        let refs = visit(&doc, &mut |f| {
            out.push(Seen {
                location: render(f.path),
                server: f.server.map(str::to_string),
                name: f.name.map(str::to_string),
                value: f.value.to_string(),
            });
            ControlFlow::Continue(())
        });
        (out, refs)
    }

    #[test]
    fn claude_shape() {
        let text = r#"{"mcpServers": {"github": {"command": "npx",
            "args": ["-y", "@x/server", "--token", "T", "--api-key=K", "--verbose", "-v"],
            "env": {"GITHUB_TOKEN": "G"}}},
            "projects": {"/home/u/app": {"mcpServers": {"db": {"url": "U", "headers": {"Authorization": "A"}}}}}}"#;
        let (fields, _) = seen(Format::Json, text);
        let find = |loc: &str| fields.iter().find(|f| f.location == loc).unwrap_or_else(|| panic!("{loc}"));
        let t = find("mcpServers.github.args[3]");
        assert_eq!((t.name.as_deref(), t.server.as_deref(), t.value.as_str()), (Some("--token"), Some("github"), "T"));
        assert_eq!(find("mcpServers.github.args[4]").name.as_deref(), Some("args"));
        assert_eq!(find("mcpServers.github.args[6]").name.as_deref(), Some("args"));
        assert_eq!(find("mcpServers.github.env.GITHUB_TOKEN").name.as_deref(), Some("GITHUB_TOKEN"));
        let a = find(r#"projects["/home/u/app"].mcpServers.db.headers.Authorization"#);
        assert_eq!((a.server.as_deref(), a.name.as_deref()), (Some("db"), Some("Authorization")));
    }

    #[test]
    fn continue_lists_and_vscode_settings() {
        let yaml = "mcpServers:\n  - name: gh\n    env:\n      TOKEN: x\n  - command: y\n";
        let (fields, _) = seen(Format::Yaml, yaml);
        assert_eq!(fields[0].location, "mcpServers[0].name");
        assert_eq!(fields[1].location, "mcpServers[0].env.TOKEN");
        assert_eq!(fields[1].server.as_deref(), Some("gh"));
        assert_eq!(fields[2].server, None);
        let json = r#"{"mcp": {"servers": {"s": {"env": {"K": "v"}}}}}"#;
        let (fields, _) = seen(Format::Json, json);
        assert_eq!(fields[0].server.as_deref(), Some("s"));
        assert_eq!(fields[0].location, "mcp.servers.s.env.K");
    }

    #[test]
    fn a_server_named_like_a_container_is_still_a_server() {
        let json = r#"{"mcpServers": {"servers": {"env": {"K": "v"}}}}"#;
        let (fields, _) = seen(Format::Json, json);
        assert_eq!(fields[0].server.as_deref(), Some("servers"));
    }

    #[test]
    fn env_file_references() {
        let json = r#"{"servers": {"a": {"envFile": "${workspaceFolder}/.env", "args": ["run", "--env-file", "x.env", "--env-file=y.env"]}}}"#;
        let (_, refs) = seen(Format::Json, json);
        assert_eq!(
            refs,
            [
                EnvRef { path: "${workspaceFolder}/.env".into(), server: Some("a".into()) },
                EnvRef { path: "x.env".into(), server: Some("a".into()) },
                EnvRef { path: "y.env".into(), server: Some("a".into()) },
            ]
        );
    }

    #[test]
    fn visiting_stops_when_asked() {
        let doc = parse_as(Format::Json, r#"{"a": ["1", "2", {"b": "3"}], "c": "4", "envFile": ".env"}"#).unwrap();
        let mut seen = Vec::new();
        let refs = visit(&doc, &mut |f| {
            seen.push(f.value.to_string());
            if f.value == "2" { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert_eq!(seen, ["1", "2"]);
        assert!(refs.is_empty());
    }
}
