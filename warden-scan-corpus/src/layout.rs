//! The files of one generated host, client by client, in each client's real file shape: Claude
//! Desktop's and Cursor's `mcpServers`, Claude Code's `~/.claude.json` with per-project servers
//! and `settings.json` `env`, VS Code's JSONC `settings.json` (`mcp.servers`) and `mcp.json`
//! (`inputs`, `servers`, `envFile`), Windsurf's `serverUrl`, Continue's YAML `mcpServers` list,
//! old `experimental.modelContextProtocolServers` and one-file blocks, Gemini's `httpUrl`, Codex's
//! `[mcp_servers.*]` TOML, a generic `mcp.json` whose docker server loads `--env-file`.

use std::collections::HashSet;
use std::path::PathBuf;

use rand::Rng;
use rand::seq::IndexedRandom;

use super::fakes;
use super::servers::{self, Dialect, Plan, Plant, Seg, Server};
use super::traps;
use super::tree::{self, JsonStyle, Tree};
use warden_scan::location::{Segment, render};
use warden_scan::{Client, Kind};

/// A generated file and what was planted in it.
pub(crate) struct GeneratedFile {
    pub(crate) path: PathBuf,
    pub(crate) client: Client,
    pub(crate) text: String,
    /// (location, kind, secret, server) of each plant.
    pub(crate) plants: Vec<(String, Kind, String, Option<String>)>,
}

/// A plant with the server entry it is in.
struct Placed {
    plant: Plant,
    server: Option<String>,
}

fn location(path: &[Seg]) -> String {
    let segments: Vec<Segment<'_>> = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => Segment::Key(k),
            Seg::Index(i) => Segment::Index(*i),
        })
        .collect();
    render(&segments)
}

fn finish(path: PathBuf, client: Client, text: String, placed: Vec<Placed>) -> GeneratedFile {
    let plants =
        placed.into_iter().map(|p| (location(&p.plant.path), p.plant.kind, p.plant.secret, p.server)).collect();
    GeneratedFile { path, client, text, plants }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Generates `count` (1–3) server entries.
fn some_servers(rng: &mut impl Rng, plan: &mut Plan, dialect: Dialect) -> Vec<Server> {
    let count = rng.random_range(1..=3);
    let mut taken = HashSet::new();
    (0..count).map(|_| servers::server(rng, plan, dialect, &mut taken)).collect()
}

/// Servers as an object keyed by name under `prefix`.
fn keyed(servers: Vec<Server>, prefix: &[Seg], placed: &mut Vec<Placed>) -> Tree {
    let mut entries = Vec::new();
    for server in servers {
        let mut at = prefix.to_vec();
        at.push(key(&server.name));
        placed.extend(
            server.plants.into_iter().map(|p| Placed { plant: p.under(&at), server: Some(server.name.clone()) }),
        );
        entries.push((server.name, Tree::Obj(server.body)));
    }
    Tree::Obj(entries)
}

/// Servers as a list of objects with a `name` (Continue's YAML).
fn listed(servers: Vec<Server>, prefix: &[Seg], placed: &mut Vec<Placed>) -> Tree {
    let mut items = Vec::new();
    for (index, server) in servers.into_iter().enumerate() {
        let mut at = prefix.to_vec();
        at.push(Seg::Index(index));
        placed.extend(
            server.plants.into_iter().map(|p| Placed { plant: p.under(&at), server: Some(server.name.clone()) }),
        );
        let mut body = vec![("name".to_string(), Tree::s(server.name))];
        body.extend(server.body);
        items.push(Tree::Obj(body));
    }
    Tree::Arr(items)
}

/// `NAME = value` pairs of plants (kinds with an env-style slot) and traps, names unique.
fn env_pairs(
    rng: &mut impl Rng,
    plan: &mut Plan,
    plants: usize,
    prefix: &[Seg],
    server: Option<&str>,
    placed: &mut Vec<Placed>,
) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut used = HashSet::new();
    for _ in 0..plants {
        let Some((name, kind, fake)) = plan.next_env(rng) else { break };
        if !used.insert(name.clone()) {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(key(&name));
        placed.push(Placed { plant: Plant { path, kind, secret: fake.secret }, server: server.map(str::to_string) });
        pairs.push((name, fake.value));
    }
    let named = traps::named(rng);
    let count = rng.random_range(3..=6);
    for trap in named.choose_multiple(rng, count) {
        if used.insert(trap.name.clone()) {
            pairs.push((trap.name.clone(), trap.value.clone()));
        }
    }
    pairs
}

fn obj(entries: Vec<(&str, Tree)>) -> Tree {
    Tree::Obj(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A model's `apiKey`: a fake of a kind recognisable under that name, or a trap.
fn model_key(rng: &mut impl Rng, plan: &Plan) -> (Tree, Option<(Kind, String)>) {
    if !plan.planting {
        return (Tree::s("${{ secrets.OPENAI_API_KEY }}"), None);
    }
    let kind = [Kind::OpenaiKey, Kind::AnthropicKey, Kind::GoogleApiKey, Kind::GenericSecret]
        .choose(rng)
        .copied()
        .unwrap_or(Kind::OpenaiKey);
    let fake = fakes::fake(kind, rng);
    (Tree::s(fake.value), Some((kind, fake.secret)))
}

/// Every file of host number `index`, under `host-<index>/`.
pub(crate) fn host(index: usize, rng: &mut impl Rng, plan: &mut Plan) -> Vec<GeneratedFile> {
    let home = PathBuf::from(format!("host-{index}"));
    let project = home.join("project");
    let mut files = Vec::new();

    // Claude Desktop, on Linux or macOS.
    let mut placed = Vec::new();
    let servers = keyed(some_servers(rng, plan, Dialect::CLAUDE), &[key("mcpServers")], &mut placed);
    let root = obj(vec![("mcpServers", servers), ("globalShortcut", Tree::s("Ctrl+Space"))]);
    let path = if index.is_multiple_of(2) {
        home.join(".config/Claude/claude_desktop_config.json")
    } else {
        home.join("Library/Application Support/Claude/claude_desktop_config.json")
    };
    files.push(finish(path, Client::ClaudeDesktop, tree::json(&root, JsonStyle::default()), placed));

    // Claude Code's state file: user servers and per-project servers.
    let mut placed = Vec::new();
    let user = keyed(some_servers(rng, plan, Dialect::CLAUDE), &[key("mcpServers")], &mut placed);
    let project_key = format!("/home/dev/project-{index}");
    let per_project = keyed(
        some_servers(rng, plan, Dialect::CLAUDE),
        &[key("projects"), key(&project_key), key("mcpServers")],
        &mut placed,
    );
    let root = obj(vec![
        ("numStartups", Tree::Num(42)),
        ("installMethod", Tree::s("npm")),
        ("userID", Tree::s(fakes::draw(rng, b"0123456789abcdef", 64))),
        ("mcpServers", user),
        (
            "projects",
            Tree::Obj(vec![(
                project_key,
                obj(vec![
                    ("allowedTools", Tree::Arr(vec![])),
                    ("mcpServers", per_project),
                    ("hasTrustDialogAccepted", Tree::Bool(true)),
                ]),
            )]),
        ),
    ]);
    files.push(finish(home.join(".claude.json"), Client::ClaudeCode, tree::json(&root, JsonStyle::default()), placed));

    // Claude Code settings: a top-level `env`, in no server.
    let mut placed = Vec::new();
    let env = env_pairs(rng, plan, 2, &[key("env")], None, &mut placed);
    let root = obj(vec![
        ("env", Tree::Obj(env.into_iter().map(|(k, v)| (k, Tree::s(v))).collect())),
        (
            "permissions",
            obj(vec![("allow", Tree::Arr(vec![Tree::s("Bash(npm run lint)")])), ("deny", Tree::Arr(vec![]))]),
        ),
        ("model", Tree::s("sonnet")),
    ]);
    files.push(finish(
        home.join(".claude/settings.json"),
        Client::ClaudeCode,
        tree::json(&root, JsonStyle::default()),
        placed,
    ));

    // A project's `.mcp.json`.
    let mut placed = Vec::new();
    let servers = keyed(some_servers(rng, plan, Dialect::TYPED), &[key("mcpServers")], &mut placed);
    files.push(finish(
        project.join(".mcp.json"),
        Client::ClaudeCode,
        tree::json(&obj(vec![("mcpServers", servers)]), JsonStyle::default()),
        placed,
    ));

    // Cursor, user and project.
    for folder in [home.join(".cursor"), project.join(".cursor")] {
        let mut placed = Vec::new();
        let servers = keyed(some_servers(rng, plan, Dialect::CLAUDE), &[key("mcpServers")], &mut placed);
        let style = JsonStyle { comments: false, trailing_commas: index.is_multiple_of(3) };
        files.push(finish(
            folder.join("mcp.json"),
            Client::Cursor,
            tree::json(&obj(vec![("mcpServers", servers)]), style),
            placed,
        ));
    }

    // VS Code user settings: JSONC, servers under `mcp.servers`.
    let mut placed = Vec::new();
    let servers = keyed(some_servers(rng, plan, Dialect::TYPED), &[key("mcp"), key("servers")], &mut placed);
    let root = obj(vec![
        ("editor.fontSize", Tree::Num(14)),
        ("workbench.colorTheme", Tree::s("Default Dark Modern")),
        ("github.copilot.enable", obj(vec![("*", Tree::Bool(true))])),
        ("mcp", obj(vec![("servers", servers)])),
    ]);
    let jsonc = JsonStyle { comments: true, trailing_commas: true };
    let settings = if index.is_multiple_of(2) {
        ".config/Code/User/settings.json"
    } else {
        ".config/Code - Insiders/User/settings.json"
    };
    files.push(finish(home.join(settings), Client::VsCode, tree::json(&root, jsonc), placed));

    // A project's `.vscode/mcp.json`: inputs, servers, one server loading `.env`.
    let mut placed = Vec::new();
    let mut servers = some_servers(rng, plan, Dialect::TYPED);
    let env_server = format!("env-loader-{index}");
    let mut env_placed = Vec::new();
    let env = env_pairs(rng, plan, 2, &[], Some(&env_server), &mut env_placed);
    servers.push(Server {
        name: env_server.clone(),
        body: vec![
            ("type".into(), Tree::s("stdio")),
            ("command".into(), Tree::s("uvx")),
            ("args".into(), Tree::Arr(vec![Tree::s("mcp-server-tools")])),
            ("envFile".into(), Tree::s("${workspaceFolder}/.env")),
        ],
        plants: Vec::new(),
    });
    let servers = keyed(servers, &[key("servers")], &mut placed);
    let inputs = Tree::Arr(vec![obj(vec![
        ("type", Tree::s("promptString")),
        ("id", Tree::s("github-token")),
        ("description", Tree::s("GitHub Personal Access Token")),
        ("password", Tree::Bool(true)),
    ])]);
    let root = obj(vec![("inputs", inputs), ("servers", servers)]);
    files.push(finish(project.join(".vscode/mcp.json"), Client::VsCode, tree::json(&root, jsonc), placed));
    files.push(finish(project.join(".env"), Client::EnvFile, tree::env(&env, index), env_placed));

    // Windsurf.
    let mut placed = Vec::new();
    let servers = keyed(some_servers(rng, plan, Dialect::WINDSURF), &[key("mcpServers")], &mut placed);
    files.push(finish(
        home.join(".codeium/windsurf/mcp_config.json"),
        Client::Windsurf,
        tree::json(&obj(vec![("mcpServers", servers)]), JsonStyle::default()),
        placed,
    ));

    // Continue: config.yaml (servers as a list, a model key), old config.json, a block file.
    let mut placed = Vec::new();
    let (api_key, model_plant) = model_key(rng, plan);
    if let Some((kind, secret)) = model_plant {
        let path = vec![key("models"), Seg::Index(0), key("apiKey")];
        placed.push(Placed { plant: Plant { path, kind, secret }, server: None });
    }
    let servers = listed(some_servers(rng, plan, Dialect::CLAUDE), &[key("mcpServers")], &mut placed);
    let root = obj(vec![
        ("name", Tree::s("Local Assistant")),
        ("version", Tree::s("1.0.0")),
        ("schema", Tree::s("v1")),
        (
            "models",
            Tree::Arr(vec![obj(vec![
                ("name", Tree::s("GPT-4o")),
                ("provider", Tree::s("openai")),
                ("model", Tree::s("gpt-4o")),
                ("apiKey", api_key),
            ])]),
        ),
        ("mcpServers", servers),
    ]);
    files.push(finish(home.join(".continue/config.yaml"), Client::Continue, tree::yaml(&root), placed));

    let mut placed = Vec::new();
    let (api_key, model_plant) = model_key(rng, plan);
    if let Some((kind, secret)) = model_plant {
        let path = vec![key("models"), Seg::Index(0), key("apiKey")];
        placed.push(Placed { plant: Plant { path, kind, secret }, server: None });
    }
    let mut transports = Vec::new();
    for (i, server) in some_servers(rng, plan, Dialect::CLAUDE).into_iter().enumerate() {
        let at = [key("experimental"), key("modelContextProtocolServers"), Seg::Index(i), key("transport")];
        placed.extend(server.plants.into_iter().map(|p| Placed { plant: p.under(&at), server: None }));
        transports.push(obj(vec![("transport", Tree::Obj(server.body))]));
    }
    let root = obj(vec![
        (
            "models",
            Tree::Arr(vec![obj(vec![
                ("title", Tree::s("Claude")),
                ("provider", Tree::s("anthropic")),
                ("apiKey", api_key),
            ])]),
        ),
        ("experimental", obj(vec![("modelContextProtocolServers", Tree::Arr(transports))])),
    ]);
    files.push(finish(
        home.join(".continue/config.json"),
        Client::Continue,
        tree::json(&root, JsonStyle::default()),
        placed,
    ));

    let mut placed = Vec::new();
    let servers = some_servers(rng, plan, Dialect::CLAUDE);
    let block_name = servers.first().map_or_else(|| "tools".to_string(), |s| s.name.replace([' ', '.'], "-"));
    let servers = listed(servers, &[key("mcpServers")], &mut placed);
    let root = obj(vec![
        ("name", Tree::s(format!("{block_name} MCP"))),
        ("version", Tree::s("0.0.1")),
        ("schema", Tree::s("v1")),
        ("mcpServers", servers),
    ]);
    files.push(finish(
        home.join(format!(".continue/mcpServers/{block_name}.yaml")),
        Client::Continue,
        tree::yaml(&root),
        placed,
    ));

    // Gemini CLI, user and project.
    for folder in [home.join(".gemini"), project.join(".gemini")] {
        let mut placed = Vec::new();
        let servers = keyed(some_servers(rng, plan, Dialect::GEMINI), &[key("mcpServers")], &mut placed);
        let root = obj(vec![("theme", Tree::s("GitHub")), ("mcpServers", servers)]);
        files.push(finish(
            folder.join("settings.json"),
            Client::GeminiCli,
            tree::json(&root, JsonStyle::default()),
            placed,
        ));
    }

    // Codex: TOML, `env` inline on odd hosts and as its own table on even ones.
    let mut placed = Vec::new();
    let servers = keyed(some_servers(rng, plan, Dialect::CODEX), &[key("mcp_servers")], &mut placed);
    let root =
        obj(vec![("model", Tree::s("o3")), ("approval_policy", Tree::s("on-request")), ("mcp_servers", servers)]);
    let inline_env = index % 2 == 1;
    let text = tree::toml(&root, &|k| inline_env && (k == "env" || k == "http_headers"));
    files.push(finish(home.join(".codex/config.toml"), Client::Codex, text, placed));

    // A generic mcp.json whose docker server loads an env file.
    let mut placed = Vec::new();
    let mut servers = some_servers(rng, plan, Dialect::CLAUDE);
    let docker_server = format!("docker-tools-{index}");
    let mut env_placed = Vec::new();
    let env = env_pairs(rng, plan, 2, &[], Some(&docker_server), &mut env_placed);
    servers.push(Server {
        name: docker_server,
        body: vec![
            ("command".into(), Tree::s("docker")),
            (
                "args".into(),
                Tree::Arr(
                    ["run", "-i", "--rm", "--env-file", "secrets.env", "acme/mcp-tools:1.2"].map(Tree::s).to_vec(),
                ),
            ),
        ],
        plants: Vec::new(),
    });
    let servers = keyed(servers, &[key("mcpServers")], &mut placed);
    files.push(finish(
        project.join("mcp.json"),
        Client::Generic,
        tree::json(&obj(vec![("mcpServers", servers)]), JsonStyle::default()),
        placed,
    ));
    files.push(finish(project.join("secrets.env"), Client::EnvFile, tree::env(&env, index + 1), env_placed));

    files
}
