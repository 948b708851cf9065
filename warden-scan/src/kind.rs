//! `Kind`: what sort of credential a finding is. One variant per format the detectors know
//! (a vendor's token, a private key, a password in a URL) plus `GenericSecret` for a value that is
//! a secret by the name it sits under rather than by its shape.
//!
//! The snake_case name (`as_str`, and the serde form) is the stable identifier: SARIF rule ids,
//! the JSON report and the control plane's records use it, so a variant may be added but a name
//! never changes.

use serde::{Deserialize, Serialize};

/// Declares `Kind` with its stable name and human description in one table, so `ALL`, `as_str`,
/// `parse` and `describe` cannot drift apart.
macro_rules! kinds {
    ($( $variant:ident => $name:literal, $describe:literal; )*) => {
        /// What sort of credential a finding is.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Kind {
            $( #[doc = $describe] $variant, )*
        }

        impl Kind {
            /// Every kind, in declaration order (the order of SARIF rules).
            pub const ALL: &[Kind] = &[$( Kind::$variant, )*];

            /// The stable snake_case name (equal to the serde form).
            pub fn as_str(self) -> &'static str {
                match self { $( Kind::$variant => $name, )* }
            }

            /// A human name for reports.
            pub fn describe(self) -> &'static str {
                match self { $( Kind::$variant => $describe, )* }
            }
        }
    };
}

kinds! {
    GithubToken => "github_token", "GitHub personal access token (classic)";
    GithubFineGrainedToken => "github_fine_grained_token", "GitHub fine-grained personal access token";
    GithubOauthToken => "github_oauth_token", "GitHub OAuth access token";
    GithubAppToken => "github_app_token", "GitHub App token";
    GitlabToken => "gitlab_token", "GitLab token";
    SlackToken => "slack_token", "Slack token";
    SlackWebhook => "slack_webhook", "Slack incoming webhook URL";
    AwsAccessKeyId => "aws_access_key_id", "AWS access key ID";
    AwsSecretAccessKey => "aws_secret_access_key", "AWS secret access key";
    GcpServiceAccountKey => "gcp_service_account_key", "Google Cloud service account key";
    GoogleApiKey => "google_api_key", "Google API key";
    AzureConnectionString => "azure_connection_string", "Azure connection string key";
    OpenaiKey => "openai_key", "OpenAI API key";
    AnthropicKey => "anthropic_key", "Anthropic API key";
    StripeKey => "stripe_key", "Stripe secret key";
    TwilioKey => "twilio_key", "Twilio API key";
    SendgridKey => "sendgrid_key", "SendGrid API key";
    DatadogKey => "datadog_key", "Datadog API or application key";
    NpmToken => "npm_token", "npm access token";
    PypiToken => "pypi_token", "PyPI API token";
    HuggingfaceToken => "huggingface_token", "Hugging Face access token";
    NotionToken => "notion_token", "Notion integration token";
    LinearKey => "linear_key", "Linear API key";
    AtlassianToken => "atlassian_token", "Atlassian API token";
    SupabaseToken => "supabase_token", "Supabase access token";
    SentryToken => "sentry_token", "Sentry auth token";
    PrivateKey => "private_key", "Private key (PEM)";
    UrlCredentials => "url_credentials", "Password in a URL";
    AuthorizationHeader => "authorization_header", "Credential in an Authorization header";
    Jwt => "jwt", "JSON Web Token";
    GenericSecret => "generic_secret", "Secret-named high-entropy value";
}

impl Kind {
    /// The kind whose stable name is `s`, if any.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|kind| kind.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for &kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert!(!kind.describe().is_empty());
        }
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
    }
}
