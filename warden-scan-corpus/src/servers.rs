//! MCP server entries as clients write them — stdio (`command`/`args`/`env`) or HTTP
//! (`url`/`headers`) — with fake credentials planted in the places real entries hold them, trap
//! values around them, and the path of every plant inside the entry.
//!
//! Each `Kind` has the slots it is really found in (a GitHub token in `GITHUB_PERSONAL_ACCESS_TOKEN`,
//! after `--github-token`, in `-e NAME=…` of a docker run, in an `Authorization: Bearer` header,
//! in a git URL; a Postgres password in `DATABASE_URL` or a positional connection URL; …). A `Plan`
//! deals kinds round-robin so every kind is planted about equally often.

use std::collections::HashSet;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::fakes::{self, Fake};
use super::traps;
use super::tree::Tree;
use warden_scan::Kind;

/// One step of a path in a corpus document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A credential planted in a document: where (relative to what holds it), what, and its secret.
#[derive(Clone, Debug)]
pub(crate) struct Plant {
    pub(crate) path: Vec<Seg>,
    pub(crate) kind: Kind,
    pub(crate) secret: String,
}

impl Plant {
    /// The same plant one level deeper in a document.
    pub(crate) fn under(mut self, prefix: &[Seg]) -> Plant {
        let mut path = prefix.to_vec();
        path.append(&mut self.path);
        self.path = path;
        self
    }
}

/// Deals kinds to plant, cycling through every kind in a shuffled order.
pub(crate) struct Plan {
    queue: Vec<Kind>,
    /// Whether to plant at all (a traps-only corpus plants nothing).
    pub(crate) planting: bool,
}

impl Plan {
    pub(crate) fn new(planting: bool) -> Plan {
        Plan { queue: Vec::new(), planting }
    }

    /// The next kind that has a slot `fits` accepts.
    fn next(&mut self, rng: &mut impl Rng, fits: impl Fn(&Slot) -> bool) -> Option<(Kind, Vec<Slot>)> {
        if !self.planting {
            return None;
        }
        for _ in 0..2 * Kind::ALL.len() {
            if self.queue.is_empty() {
                self.queue = Kind::ALL.to_vec();
                self.queue.shuffle(rng);
            }
            let kind = self.queue.pop()?;
            let slots: Vec<Slot> = slots(kind).into_iter().filter(|s| fits(s)).collect();
            if !slots.is_empty() {
                return Some((kind, slots));
            }
            // Put it back at the far end: a later server of the other transport will take it.
            self.queue.insert(0, kind);
        }
        None
    }

    /// A kind and value for a plain `NAME = value` place (a settings file's `env`, a model's
    /// `apiKey`): returns the name to use and the fake.
    pub(crate) fn next_env(&mut self, rng: &mut impl Rng) -> Option<(String, Kind, Fake)> {
        let (kind, slots) = self.next(rng, |s| matches!(s, Slot::Env(_)))?;
        let Some(Slot::Env(name)) = slots.choose(rng).cloned() else { return None };
        let fake = value_for(kind, name, rng);
        Some((name.to_string(), kind, fake))
    }
}

/// Where in a server entry a credential goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// `env.NAME = value`.
    Env(&'static str),
    /// `args: ["--flag=value"]`.
    ArgEquals(&'static str),
    /// `args: ["--flag", "value"]`.
    ArgSeparate(&'static str),
    /// `args: [..., "-e", "NAME=value", ...]` (docker run).
    DockerEnv(&'static str),
    /// `args: ["--header", "Authorization: Bearer value"]` (mcp-remote).
    HeaderArg,
    /// `env.NAME = "Bearer value"` with `args: ["--header", "Authorization:${NAME}"]`: how
    /// mcp-remote's README has the token kept out of the argument list.
    HeaderEnv(&'static str),
    /// `args: [..., "value"]`: a positional connection URL.
    Positional,
    /// `env.OPENAPI_MCP_HEADERS = '{"Authorization": "Bearer value", …}'` (Notion's server).
    JsonHeadersEnv,
    /// `headers.Authorization = "<scheme> value"`.
    Authorization(&'static str),
    /// `headers.NAME = value`.
    Header(&'static str),
    /// `url = "https://…?param=value"`.
    UrlQuery(&'static str),
    /// `url = value` (a URL with a password in it).
    Url,
    /// `url`/`env.REPO_URL = "https://x-access-token:value@github.com/…"`.
    GitUrl,
}

impl Slot {
    fn http(&self) -> bool {
        matches!(self, Slot::Authorization(_) | Slot::Header(_) | Slot::UrlQuery(_) | Slot::Url)
    }
}

/// The places each kind is found in.
fn slots(kind: Kind) -> Vec<Slot> {
    use Slot::*;
    match kind {
        Kind::GithubToken => vec![
            Env("GITHUB_PERSONAL_ACCESS_TOKEN"),
            Env("GITHUB_TOKEN"),
            ArgSeparate("--github-token"),
            DockerEnv("GITHUB_PERSONAL_ACCESS_TOKEN"),
            Authorization("Bearer"),
            HeaderArg,
            HeaderEnv("AUTH_HEADER"),
            GitUrl,
        ],
        Kind::GithubOauthToken | Kind::GithubAppToken | Kind::GithubFineGrainedToken => {
            vec![Env("GH_TOKEN"), Env("GITHUB_TOKEN"), ArgEquals("--token"), Authorization("Bearer"), GitUrl]
        }
        Kind::GitlabToken => {
            vec![Env("GITLAB_PERSONAL_ACCESS_TOKEN"), Header("PRIVATE-TOKEN"), ArgEquals("--gitlab-token")]
        }
        Kind::SlackToken => vec![Env("SLACK_BOT_TOKEN"), Env("SLACK_MCP_XOXP_TOKEN"), Authorization("Bearer")],
        Kind::SlackWebhook => vec![Env("SLACK_WEBHOOK_URL"), ArgEquals("--webhook-url")],
        Kind::AwsAccessKeyId => vec![Env("AWS_ACCESS_KEY_ID"), DockerEnv("AWS_ACCESS_KEY_ID")],
        Kind::AwsSecretAccessKey => {
            vec![Env("AWS_SECRET_ACCESS_KEY"), DockerEnv("AWS_SECRET_ACCESS_KEY"), ArgEquals("--aws-secret-access-key")]
        }
        Kind::GcpServiceAccountKey => vec![Env("GOOGLE_SERVICE_ACCOUNT_JSON"), Env("GCP_CREDENTIALS")],
        Kind::GoogleApiKey => {
            vec![Env("GOOGLE_API_KEY"), Env("GEMINI_API_KEY"), UrlQuery("key"), Header("x-goog-api-key")]
        }
        Kind::AzureConnectionString => vec![Env("AZURE_STORAGE_CONNECTION_STRING"), ArgSeparate("--connection-string")],
        Kind::OpenaiKey => vec![Env("OPENAI_API_KEY"), ArgEquals("--openai-api-key"), Authorization("Bearer")],
        Kind::AnthropicKey => vec![Env("ANTHROPIC_API_KEY"), Header("x-api-key"), ArgSeparate("--api-key")],
        Kind::StripeKey => vec![Env("STRIPE_SECRET_KEY"), ArgEquals("--api-key"), Authorization("Bearer")],
        Kind::TwilioKey => vec![Env("TWILIO_API_KEY"), ArgSeparate("--api-key")],
        Kind::SendgridKey => vec![Env("SENDGRID_API_KEY"), Authorization("Bearer")],
        Kind::DatadogKey => vec![Env("DD_API_KEY"), Env("DATADOG_API_KEY"), Env("DD_APP_KEY"), Header("DD-API-KEY")],
        Kind::NpmToken => vec![Env("NPM_TOKEN"), ArgEquals("--npm-token")],
        Kind::PypiToken => vec![Env("PYPI_API_TOKEN"), Env("TWINE_PASSWORD")],
        Kind::HuggingfaceToken => vec![Env("HF_TOKEN"), Authorization("Bearer")],
        Kind::NotionToken => vec![Env("NOTION_API_KEY"), JsonHeadersEnv, Authorization("Bearer")],
        Kind::LinearKey => vec![Env("LINEAR_API_KEY"), Authorization("Bearer")],
        Kind::AtlassianToken => vec![Env("JIRA_API_TOKEN"), Env("CONFLUENCE_API_TOKEN"), ArgSeparate("--jira-token")],
        Kind::SupabaseToken => vec![Env("SUPABASE_ACCESS_TOKEN"), ArgSeparate("--access-token")],
        Kind::SentryToken => vec![Env("SENTRY_AUTH_TOKEN"), ArgEquals("--access-token")],
        Kind::PrivateKey => vec![Env("SSH_PRIVATE_KEY"), Env("GITHUB_APP_PRIVATE_KEY")],
        Kind::UrlCredentials => vec![Env("DATABASE_URL"), Env("MONGODB_URI"), Positional, Url],
        Kind::AuthorizationHeader => {
            vec![Authorization("Bearer"), Authorization("Token"), HeaderArg, HeaderEnv("AUTH_HEADER")]
        }
        Kind::Jwt => vec![Env("SUPABASE_SERVICE_ROLE_KEY"), Authorization("Bearer")],
        Kind::GenericSecret => vec![
            Env("API_KEY"),
            Env("BRAVE_API_KEY"),
            Env("TAVILY_API_KEY"),
            Env("SERVICE_TOKEN"),
            Env("CLIENT_SECRET"),
            Env("apiKey"),
            Env("DB_PASSWORD"),
            Env("PGPASSWORD"),
            Env("TWILIO_AUTH_TOKEN"),
            ArgEquals("--api-key"),
            ArgSeparate("--token"),
            ArgSeparate("--password"),
            DockerEnv("SERVICE_API_KEY"),
            Header("X-API-Key"),
            UrlQuery("api_key"),
        ],
    }
}

/// A fake of `kind` fitting the name it goes under: passwords under password names, hex under
/// the names vendors give hex keys.
fn value_for(kind: Kind, name: &str, rng: &mut impl Rng) -> Fake {
    if kind == Kind::GenericSecret {
        let lower = name.to_ascii_lowercase();
        if lower.contains("password") {
            let password = fakes::password(rng);
            return Fake { value: password.clone(), secret: password };
        }
        if name == "TWILIO_AUTH_TOKEN" {
            let hex = fakes::draw(rng, b"0123456789abcdef", 32);
            return Fake { value: hex.clone(), secret: hex };
        }
    }
    fakes::fake(kind, rng)
}

/// How a client writes server entries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialect {
    /// The key of an HTTP server's endpoint: `url`, `serverUrl` (Windsurf), `httpUrl` (Gemini).
    pub(crate) url_key: &'static str,
    /// The key of its headers: `headers`, `http_headers` (Codex).
    pub(crate) headers_key: &'static str,
    /// Entries say `"type": "stdio"`/`"http"` (VS Code, Claude Code's `.mcp.json`).
    pub(crate) typed: bool,
}

impl Dialect {
    pub(crate) const CLAUDE: Dialect = Dialect { url_key: "url", headers_key: "headers", typed: false };
    pub(crate) const TYPED: Dialect = Dialect { url_key: "url", headers_key: "headers", typed: true };
    pub(crate) const WINDSURF: Dialect = Dialect { url_key: "serverUrl", headers_key: "headers", typed: false };
    pub(crate) const GEMINI: Dialect = Dialect { url_key: "httpUrl", headers_key: "headers", typed: false };
    pub(crate) const CODEX: Dialect = Dialect { url_key: "url", headers_key: "http_headers", typed: false };
}

/// A generated server entry.
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) body: Vec<(String, Tree)>,
    pub(crate) plants: Vec<Plant>,
}

const NAMES: &[&str] = &[
    "github",
    "gitlab",
    "slack",
    "postgres",
    "notion",
    "linear",
    "stripe",
    "sentry",
    "supabase",
    "brave-search",
    "filesystem",
    "fetch",
    "aws-kb",
    "gdrive",
    "jira",
    "datadog",
    "hf-hub",
    "twilio",
    "azure-storage",
    "acme.internal",
    "memory",
    "search tools",
];

/// A server entry for `dialect`, with up to three plants if `plan` is planting, and traps.
pub(crate) fn server(rng: &mut impl Rng, plan: &mut Plan, dialect: Dialect, taken: &mut HashSet<String>) -> Server {
    let base = NAMES.choose(rng).copied().unwrap_or("server");
    let mut name = base.to_string();
    let mut n = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    let http = rng.random_bool(0.35);
    let mut entry = Entry::default();
    let plants_wanted = rng.random_range(1..=3);
    for _ in 0..plants_wanted {
        let Some((kind, slots)) = plan.next(rng, |s| s.http() == http) else { break };
        let mut slots = slots;
        slots.shuffle(rng);
        for slot in slots {
            if entry.place(&slot, kind, rng) {
                break;
            }
        }
    }
    entry.traps(rng, http);
    Server { name, body: entry.body(rng, http, dialect), plants: entry.plants(dialect) }
}

/// A server entry under construction.
#[derive(Default)]
struct Entry {
    docker: bool,
    args: Vec<String>,
    /// Index in `args` of each planted argument, with its plant.
    arg_plants: Vec<(usize, Kind, String)>,
    env: Vec<(String, String)>,
    env_plants: Vec<(String, Kind, String)>,
    headers: Vec<(String, String)>,
    header_plants: Vec<(String, Kind, String)>,
    url: Option<String>,
    url_plant: Option<(Kind, String)>,
    used: HashSet<String>,
}

impl Entry {
    /// Puts a fake of `kind` in `slot`, unless the place is taken. Returns whether it did.
    fn place(&mut self, slot: &Slot, kind: Kind, rng: &mut impl Rng) -> bool {
        let key = match slot {
            Slot::Env(name) => format!("env:{name}"),
            Slot::JsonHeadersEnv => "env:OPENAPI_MCP_HEADERS".to_string(),
            Slot::Authorization(_) => "header:authorization".to_string(),
            Slot::Header(name) => format!("header:{}", name.to_ascii_lowercase()),
            Slot::UrlQuery(_) | Slot::Url => "url".to_string(),
            Slot::GitUrl => "env:REPO_URL".to_string(),
            Slot::HeaderEnv(name) => format!("env:{name}"),
            Slot::Positional => "positional".to_string(),
            Slot::DockerEnv(name) => format!("docker:{name}"),
            Slot::ArgEquals(_) | Slot::ArgSeparate(_) | Slot::HeaderArg => String::new(),
        };
        if !key.is_empty() && !self.used.insert(key) {
            return false;
        }
        let name = match slot {
            Slot::Env(n) | Slot::DockerEnv(n) | Slot::Header(n) | Slot::ArgEquals(n) | Slot::ArgSeparate(n) => n,
            _ => "",
        };
        let fake = value_for(kind, name, rng);
        match slot {
            Slot::Env(name) => {
                self.env.push((name.to_string(), fake.value));
                self.env_plants.push((name.to_string(), kind, fake.secret));
            }
            Slot::JsonHeadersEnv => {
                let value = serde_json::json!({"Authorization": format!("Bearer {}", fake.value), "Notion-Version": "2022-06-28"});
                self.env.push(("OPENAPI_MCP_HEADERS".to_string(), value.to_string()));
                self.env_plants.push(("OPENAPI_MCP_HEADERS".to_string(), kind, fake.secret));
            }
            Slot::GitUrl => {
                let value = format!("https://x-access-token:{}@github.com/acme/tools.git", fake.value);
                self.env.push(("REPO_URL".to_string(), value));
                self.env_plants.push(("REPO_URL".to_string(), kind, fake.secret));
            }
            Slot::ArgEquals(flag) => {
                self.arg_plants.push((self.args.len(), kind, fake.secret));
                self.args.push(format!("{flag}={}", fake.value));
            }
            Slot::ArgSeparate(flag) => {
                self.args.push(flag.to_string());
                self.arg_plants.push((self.args.len(), kind, fake.secret));
                self.args.push(fake.value);
            }
            Slot::DockerEnv(name) => {
                self.docker = true;
                self.args.push("-e".to_string());
                self.arg_plants.push((self.args.len(), kind, fake.secret));
                self.args.push(format!("{name}={}", fake.value));
            }
            Slot::HeaderEnv(name) => {
                self.args.push("--header".to_string());
                self.args.push(format!("Authorization:${{{name}}}"));
                self.env.push((name.to_string(), format!("Bearer {}", fake.value)));
                self.env_plants.push((name.to_string(), kind, fake.secret));
            }
            Slot::HeaderArg => {
                self.args.push("--header".to_string());
                self.arg_plants.push((self.args.len(), kind, fake.secret));
                self.args.push(format!("Authorization: Bearer {}", fake.value));
            }
            Slot::Positional => {
                self.arg_plants.push((self.args.len(), kind, fake.secret));
                self.args.push(fake.value);
            }
            Slot::Authorization(scheme) => {
                self.headers.push(("Authorization".to_string(), format!("{scheme} {}", fake.value)));
                self.header_plants.push(("Authorization".to_string(), kind, fake.secret));
            }
            Slot::Header(name) => {
                self.headers.push((name.to_string(), fake.value));
                self.header_plants.push((name.to_string(), kind, fake.secret));
            }
            Slot::UrlQuery(param) => {
                self.url = Some(format!("https://mcp.acme-tools.com/mcp?transport=http&{param}={}", fake.value));
                self.url_plant = Some((kind, fake.secret));
            }
            Slot::Url => {
                self.url = Some(fake.value);
                self.url_plant = Some((kind, fake.secret));
            }
        }
        true
    }

    /// Trap values in every section the entry has.
    fn traps(&mut self, rng: &mut impl Rng, http: bool) {
        let named = traps::named(rng);
        let count = rng.random_range(2..=5);
        for trap in named.choose_multiple(rng, count) {
            if self.used.insert(format!("env:{}", trap.name)) {
                self.env.push((trap.name.clone(), trap.value.clone()));
            }
        }
        if http {
            let headers = traps::headers(rng);
            for trap in headers.choose_multiple(rng, 2) {
                if self.used.insert(format!("header:{}", trap.name.to_ascii_lowercase())) {
                    self.headers.push((trap.name.clone(), trap.value.clone()));
                }
            }
            if self.url.is_none() {
                self.url = traps::urls().choose(rng).cloned();
            }
        } else {
            let groups = traps::args(rng);
            let count = rng.random_range(1..=2);
            for group in groups.choose_multiple(rng, count) {
                self.args.extend(group.iter().cloned());
            }
        }
    }

    /// The entry's keys, in the order clients write them.
    fn body(&self, rng: &mut impl Rng, http: bool, dialect: Dialect) -> Vec<(String, Tree)> {
        let mut body = Vec::new();
        if dialect.typed {
            body.push(("type".to_string(), Tree::s(if http { "http" } else { "stdio" })));
        }
        if http {
            if let Some(url) = &self.url {
                body.push((dialect.url_key.to_string(), Tree::s(url.clone())));
            }
            let headers = self.headers.iter().map(|(k, v)| (k.clone(), Tree::s(v.clone()))).collect();
            body.push((dialect.headers_key.to_string(), Tree::Obj(headers)));
        } else {
            let (command, lead): (&str, &[&str]) = if self.docker {
                ("docker", &["run", "-i", "--rm"])
            } else {
                (*["npx", "uvx", "node"].choose(rng).unwrap_or(&"npx"), &[])
            };
            body.push(("command".to_string(), Tree::s(command)));
            let image = self.docker.then(|| Tree::s("mcp/server:latest"));
            let args = lead
                .iter()
                .map(|s| Tree::s(*s))
                .chain(self.args.iter().map(|s| Tree::s(s.clone())))
                .chain(image)
                .collect();
            body.push(("args".to_string(), Tree::Arr(args)));
            let env = self.env.iter().map(|(k, v)| (k.clone(), Tree::s(v.clone()))).collect();
            body.push(("env".to_string(), Tree::Obj(env)));
        }
        if rng.random_bool(0.3) {
            body.push(("timeout".to_string(), Tree::Num(60_000)));
        }
        if rng.random_bool(0.2) {
            body.push(("disabled".to_string(), Tree::Bool(false)));
        }
        body
    }

    /// The plants with their paths inside the entry.
    fn plants(&self, dialect: Dialect) -> Vec<Plant> {
        let lead = if self.docker { 3 } else { 0 };
        let mut plants = Vec::new();
        for (index, kind, secret) in &self.arg_plants {
            let path = vec![Seg::Key("args".into()), Seg::Index(lead + index)];
            plants.push(Plant { path, kind: *kind, secret: secret.clone() });
        }
        for (name, kind, secret) in &self.env_plants {
            let path = vec![Seg::Key("env".into()), Seg::Key(name.clone())];
            plants.push(Plant { path, kind: *kind, secret: secret.clone() });
        }
        for (name, kind, secret) in &self.header_plants {
            let path = vec![Seg::Key(dialect.headers_key.into()), Seg::Key(name.clone())];
            plants.push(Plant { path, kind: *kind, secret: secret.clone() });
        }
        if let Some((kind, secret)) = &self.url_plant {
            plants.push(Plant { path: vec![Seg::Key(dialect.url_key.into())], kind: *kind, secret: secret.clone() });
        }
        plants
    }
}
