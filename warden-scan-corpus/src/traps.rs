//! Look-alikes that are not credentials, each under the kind of name or in the kind of place real
//! configuration puts it: references the client resolves (`${VAR}`, `${input:x}`, `{{ secrets.X }}`),
//! template placeholders and documented examples, truncated prefixes (`sk-...`), UUIDs, digests
//! (even under `token_hash`), versions, paths, plain URLs, package arguments, booleans, ports,
//! base64 of ordinary text, weak values under secret names, and keys public by design
//! (Supabase's anon JWT and `sb_publishable_` keys). A scanner must report none.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::fakes::draw;

const HEX: &[u8] = b"0123456789abcdef";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A trap value and the name it sits under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trap {
    /// The key (env var, setting, header) it is written under.
    pub name: String,
    /// The value, which is not a credential.
    pub value: String,
}

fn trap(name: &str, value: impl Into<String>) -> Trap {
    Trap { name: name.to_string(), value: value.into() }
}

fn uuid(rng: &mut impl Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        draw(rng, HEX, 8),
        draw(rng, HEX, 4),
        draw(rng, HEX, 3),
        draw(rng, HEX, 3),
        draw(rng, HEX, 12)
    )
}

/// Shaped like the Supabase CLI's local-development key (`iss` `supabase-demo`), the same on
/// every machine.
fn supabase_demo_jwt(rng: &mut impl Rng) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"iss":"supabase-demo","role":"anon","exp":1983812996}"#),
        draw(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 43)
    )
}

/// Shaped like a Supabase project's anon key: a JWT with `"role":"anon"`, public by design (it
/// ships in every browser and app build of the project; row-level security guards the data).
fn supabase_anon_jwt(rng: &mut impl Rng) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat: u64 = rng.random_range(1_600_000_000..1_800_000_000);
    let claims = format!(
        r#"{{"iss":"supabase","ref":"{}","role":"anon","iat":{iat},"exp":{}}}"#,
        draw(rng, b"abcdefghijklmnopqrstuvwxyz", 20),
        iat + 315_360_000
    );
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims),
        draw(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 43)
    )
}

/// Short ordinary text, base64-encoded.
fn base64_text(rng: &mut impl Rng) -> String {
    let texts =
        ["hello world", "this is not a secret", "the quick brown fox", "lorem ipsum dolor sit amet", "see you soon"];
    STANDARD.encode(texts.choose(rng).copied().unwrap_or("hello world"))
}

/// Traps for name/value places: env vars, settings keys.
pub fn named(rng: &mut impl Rng) -> Vec<Trap> {
    vec![
        trap("GITHUB_TOKEN", "${GITHUB_TOKEN}"),
        trap("GITHUB_PERSONAL_ACCESS_TOKEN", "${env:GITHUB_PAT}"),
        trap("OPENAI_API_KEY", "$OPENAI_API_KEY"),
        trap("SLACK_BOT_TOKEN", "{{ secrets.SLACK_BOT_TOKEN }}"),
        trap("API_KEY", "${input:api-key}"),
        trap("API_KEY", "<your-api-key>"),
        trap("ANTHROPIC_API_KEY", "your-api-key-here"),
        trap("STRIPE_SECRET_KEY", "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx"),
        trap("STRIPE_API_KEY", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
        trap("SUPABASE_ANON_KEY", supabase_demo_jwt(rng)),
        trap("SUPABASE_ANON_KEY", supabase_anon_jwt(rng)),
        trap("SUPABASE_KEY", supabase_anon_jwt(rng)),
        trap("SUPABASE_KEY", format!("sb_publishable_{}", draw(rng, BASE62, 31))),
        trap("AUTH_HEADER", "Bearer ${MCP_REMOTE_TOKEN}"),
        trap("AUTH_HEADER", "Bearer <your-token>"),
        trap("CUSTOM_HEADERS", "Accept: application/json"),
        trap("GITHUB_TOKEN", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        trap("OPENAI_API_KEY", "sk-..."),
        trap("GH_TOKEN", "ghp_..."),
        trap("OPENAI_API_KEY", "sk-proj-..."),
        trap("ANTHROPIC_API_KEY", "sk-ant-api03-..."),
        trap("SECRET_KEY", "changeme"),
        trap("CLIENT_SECRET", "REPLACE_ME"),
        trap("API_TOKEN", "YOUR_API_TOKEN_HERE"),
        trap("API_TOKEN", "x".repeat(32)),
        trap("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        trap("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        trap("SLACK_BOT_TOKEN", "xoxb-your-bot-token"),
        trap(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        ),
        trap("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n"),
        trap("STRIPE_PUBLISHABLE_KEY", format!("pk_live_{}", draw(rng, BASE62, 24))),
        trap("API_KEY", uuid(rng)),
        trap("TENANT_ID", uuid(rng)),
        trap("token_hash", draw(rng, HEX, 64)),
        trap("sha256", draw(rng, HEX, 64)),
        trap("commit", draw(rng, HEX, 40)),
        trap("checksum", draw(rng, HEX, 64)),
        trap("userID", draw(rng, HEX, 64)),
        trap("integrity", format!("sha512-{}", STANDARD.encode(draw(rng, BASE62, 64)))),
        trap("VERSION", "1.4.2"),
        trap("API_VERSION", "2024-10-21"),
        trap("API_KEY_VERSION", "v2.0.0-beta.1"),
        trap("API_URL", "https://api.example.com/v1"),
        trap("GOOGLE_APPLICATION_CREDENTIALS", "/home/user/.config/gcloud/application_default_credentials.json"),
        trap("SSH_KEY_PATH", "~/.ssh/id_ed25519"),
        trap("TOKEN_FILE", "/run/secrets/github_token"),
        trap("ENABLED", "true"),
        trap("PORT", "8080"),
        trap("AUTH_PORT", "9090"),
        trap("API_TOKEN", base64_text(rng)),
        trap("password", "password"),
        trap("token", "test"),
        trap("DB_PASSWORD", "postgres"),
        trap("API_KEY", "test1234test1234"),
        trap("SECRET", "a".repeat(20)),
        trap("env_key", "OPENAI_API_KEY"),
        trap("bearer_token_env_var", "GITHUB_TOKEN"),
        trap("API_KEY", "github-token-from-keychain"),
        trap("API_KEY", "sk-your-key-here"),
        trap("GITHUB_TOKEN", ""),
        trap("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/postgres"),
        trap("DATABASE_URL", "postgresql://localhost:5432/app"),
        trap("REDIS_URL", "redis://${REDIS_USER}:${REDIS_PASSWORD}@cache:6379"),
        trap("AUTH_TOKEN", "Bearer ${TOKEN}"),
        trap("NODE_OPTIONS", "--max-old-space-size=4096"),
        trap("MODEL", "claude-sonnet-4-5"),
        trap("OAUTH_CLIENT_ID", format!("{}.apps.googleusercontent.com", draw(rng, b"0123456789", 20))),
        trap("LOG_LEVEL", "debug"),
        trap("WORKSPACE", "${workspaceFolder}"),
        trap("KEYCHAIN_SERVICE", "github-mcp"),
    ]
}

/// Traps for `headers` objects.
pub fn headers(rng: &mut impl Rng) -> Vec<Trap> {
    vec![
        trap("apikey", supabase_anon_jwt(rng)),
        trap("Authorization", format!("Bearer {}", supabase_anon_jwt(rng))),
        trap("Authorization", "Bearer ${input:github-token}"),
        trap("Authorization", "Bearer <your-token>"),
        trap("Authorization", "Basic ${BASIC_AUTH}"),
        trap("Authorization", "token {{ secrets.GH_TOKEN }}"),
        trap("Authorization", "Bearer YOUR_TOKEN_HERE"),
        trap("Authorization", "Bearer"),
        trap(
            "Authorization",
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        ),
        trap("X-API-Key", "${env:API_KEY}"),
        trap("Accept", "application/json, text/event-stream"),
        trap("User-Agent", "mcp-client/1.0.3"),
        trap("Content-Type", "application/json"),
    ]
}

/// Traps for argument lists: groups appended as they are.
pub fn args(rng: &mut impl Rng) -> Vec<Vec<String>> {
    let group = |items: &[&str]| items.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    vec![
        group(&["-y", "@modelcontextprotocol/server-github"]),
        group(&["--port", "8080"]),
        group(&["--token=${GITHUB_TOKEN}"]),
        group(&["--api-key", "$API_KEY"]),
        group(&["--config", "/etc/mcp/config.json"]),
        group(&["--verbose"]),
        group(&["--header", "Authorization: Bearer ${AUTH_TOKEN}"]),
        group(&["--header", "Authorization:${AUTH_HEADER}"]),
        group(&["-e", "GITHUB_PERSONAL_ACCESS_TOKEN"]),
        group(&["--allowed-origins", "https://example.com"]),
        group(&["--db-password=changeme"]),
        vec!["--commit".to_string(), draw(rng, HEX, 40)],
        group(&["--api-key=<YOUR_API_KEY>"]),
        group(&["--token", "{{ secrets.TOKEN }}"]),
        vec!["--session-id".to_string(), uuid(rng)],
    ]
}

/// Traps for `url` fields: URLs without credentials.
pub fn urls() -> Vec<String> {
    [
        "https://api.githubcopilot.com/mcp/",
        "http://localhost:3000/sse",
        "https://mcp.example.com/mcp?version=2&transport=streamable-http",
        "https://mcp.linear.app/sse",
        "https://mcp.example.com/mcp?api_key=${API_KEY}",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}
