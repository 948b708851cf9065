//! The standard `OTEL_*` variables: where each signal goes, how, and the resource.

use std::collections::HashMap;
use std::time::Duration;

/// How a signal is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    HttpProtobuf,
}

/// Where and how one signal is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// For gRPC the server's URL; for HTTP the full URL of the signal (`…/v1/logs`).
    pub url: String,
    pub protocol: Protocol,
    /// Sent with every request (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// For an `https://` URL.
    pub tls: Option<Tls>,
}

/// TLS to an `https://` endpoint, from PEM files read at start: the CA certificates to trust
/// (`OTEL_EXPORTER_OTLP_CERTIFICATE`; without it, the Mozilla roots compiled in) and a client
/// certificate and key (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key (PEM).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// The export configuration: off unless an endpoint is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where decision records go as logs.
    pub logs: Option<Endpoint>,
    /// Where metrics go.
    pub metrics: Option<Endpoint>,
    /// Where spans go.
    pub traces: Option<Endpoint>,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
    pub metric_interval: Duration,
    /// The resource: `service.name` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
}

/// A malformed `OTEL_*` variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    variable: String,
    message: String,
}

fn bad(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable: variable.to_string(), message: message.into() }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage-like, as the specification says).
fn pairs(variable: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| bad(variable, format!("{p:?} is not key=value")))?;
            let decode = |s: &str| {
                percent_decode(s.trim()).ok_or_else(|| bad(variable, format!("{s:?} is not percent-encoded UTF-8")))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Default for Config {
    fn default() -> Config {
        Config {
            logs: None,
            metrics: None,
            traces: None,
            metric_interval: Duration::from_secs(60),
            resource: Vec::new(),
        }
    }
}

impl Config {
    /// Reads the standard variables through `var` (the process environment in production).
    /// `service` is the default `service.name`.
    pub fn from_env(service: &str, var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_env_opting_in(service, &[], var)
    }

    /// [`Config::from_env`], with the signals in `opt_in` (`"LOGS"`, …) exported only when their
    /// `OTEL_<SIGNAL>_EXPORTER` names `otlp` (their variables are not even read otherwise).
    pub fn from_env_opting_in(
        service: &str,
        opt_in: &[&str],
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Config::default());
        }
        let mut resource = vec![("service.name".to_string(), service.to_string())];
        if let Some(text) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in pairs("OTEL_RESOURCE_ATTRIBUTES", &text)? {
                resource.retain(|(key, _)| *key != k);
                resource.push((k, v));
            }
        }
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            resource.retain(|(key, _)| key != "service.name");
            resource.push(("service.name".into(), name));
        }
        resource.push(("service.version".into(), env!("CARGO_PKG_VERSION").into()));
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(bad(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        format!("{ms:?} is not a positive number of milliseconds"),
                    ));
                }
            },
            None => Duration::from_secs(60),
        };
        Ok(Config {
            logs: endpoint("LOGS", "logs", opt_in, &get)?,
            metrics: endpoint("METRICS", "metrics", opt_in, &get)?,
            traces: endpoint("TRACES", "traces", opt_in, &get)?,
            metric_interval,
            resource,
        })
    }
}

/// The endpoint of one signal, from its own variables or the general ones; none when the
/// signal's exporter is `none` (`OTEL_LOGS_EXPORTER`, …; `otlp` is the other value these
/// binaries know, and the default unless the signal is in `opt_in`).
fn endpoint(
    signal: &str,
    path: &str,
    opt_in: &[&str],
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Endpoint>, ConfigError> {
    let exporter = format!("OTEL_{signal}_EXPORTER");
    match get(&exporter).as_deref() {
        None if opt_in.contains(&signal) => return Ok(None),
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => return Err(bad(&exporter, format!("{other:?}: use otlp or none"))),
    }
    let specific = |name: &str| format!("OTEL_EXPORTER_OTLP_{signal}_{name}");
    let either = |name: &str| get(&specific(name)).or_else(|| get(&format!("OTEL_EXPORTER_OTLP_{name}")));
    let protocol = match either("PROTOCOL").as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(bad(
                &specific("PROTOCOL"),
                format!("{other:?}: use grpc or http/protobuf (http/json is not supported)"),
            ));
        }
    };
    // A signal's own endpoint is used as is; the general one gets the signal's path for HTTP.
    let url = match (get(&specific("ENDPOINT")), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(url), _) => url,
        (None, Some(base)) if protocol == Protocol::HttpProtobuf => format!("{}/v1/{path}", base.trim_end_matches('/')),
        (None, Some(base)) => base,
        (None, None) => return Ok(None),
    };
    // The variable that gave a setting: the signal's own, else the general one.
    let which = |name: &str| match get(&specific(name)) {
        Some(_) => specific(name),
        None => format!("OTEL_EXPORTER_OTLP_{name}"),
    };
    let tls = if url.starts_with("https://") {
        let file = |name: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            match either(name) {
                None => Ok(None),
                Some(path) => std::fs::read(&path).map(Some).map_err(|e| bad(&which(name), format!("{path}: {e}"))),
            }
        };
        let client_pem = match (file("CLIENT_CERTIFICATE")?, file("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(bad(&which("CLIENT_KEY"), "give both CLIENT_CERTIFICATE and CLIENT_KEY, or neither")),
        };
        Some(Tls { ca_pem: file("CERTIFICATE")?, client_pem })
    } else if url.starts_with("http://") {
        None
    } else {
        return Err(bad(&which("ENDPOINT"), format!("{url:?}: use an http:// or https:// URL")));
    };
    let headers = match either("HEADERS") {
        Some(text) => pairs(&specific("HEADERS"), &text)?,
        None => Vec::new(),
    };
    let timeout = match either("TIMEOUT") {
        Some(ms) => Duration::from_millis(
            ms.parse().map_err(|_| bad(&specific("TIMEOUT"), format!("{ms:?} is not milliseconds")))?,
        ),
        None => Duration::from_secs(10),
    };
    Ok(Some(Endpoint { url, protocol, headers, timeout, tls }))
}

/// The process environment as a lookup: the one place the `OTEL_*` variables are read, called
/// from each binary's start-up (`Config::from_env`).
#[allow(clippy::disallowed_methods, reason = "this is the configuration read at start-up")]
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// For tests: a lookup over fixed pairs.
pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_variables_configure_the_export() {
        let none = Config::from_env("warden-cp", env_of(&[])).unwrap();
        assert_eq!(none.logs, None);
        let http = Config::from_env("warden-cp", env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]))
            .unwrap();
        let logs = http.logs.unwrap();
        assert_eq!((logs.url.as_str(), logs.protocol), ("http://collector:4318/v1/logs", Protocol::HttpProtobuf));
        assert_eq!(http.metrics.unwrap().url, "http://collector:4318/v1/metrics");
        assert_eq!(http.metric_interval, Duration::from_secs(60));
        assert_eq!(logs.tls, None);
        let https = Config::from_env("x", env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]));
        assert_eq!(https.unwrap().logs.unwrap().tls, Some(Tls::default()), "the compiled-in roots");
        let grpc = Config::from_env(
            "warden-cp",
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x, team = sec"),
                ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "2500"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=ignored"),
                ("OTEL_SERVICE_NAME", "cp-eu"),
            ]),
        )
        .unwrap();
        let logs = grpc.logs.unwrap();
        assert_eq!((logs.url.as_str(), logs.protocol), ("http://logs:4317", Protocol::Grpc));
        assert_eq!(logs.headers, [("authorization".into(), "Bearer x".into()), ("team".into(), "sec".into())]);
        assert_eq!(logs.timeout, Duration::from_millis(2500));
        let resource: HashMap<_, _> = grpc.resource.into_iter().collect();
        assert_eq!(resource["service.name"], "cp-eu");
        assert_eq!(resource["deployment.environment"], "prod");
        let disabled = Config::from_env(
            "x",
            env_of(&[("OTEL_SDK_DISABLED", "true"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")]),
        );
        assert_eq!(disabled.unwrap().logs, None);
        let some = Config::from_env(
            "x",
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_LOGS_EXPORTER", "otlp"),
            ]),
        )
        .unwrap();
        assert_eq!((some.traces, some.logs.map(|l| l.url)), (None, Some("http://c/v1/logs".to_string())));
        assert!(some.metrics.is_some(), "a signal not named keeps the default, otlp");
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c");
        let opted = |pairs: &[(&str, &str)]| Config::from_env_opting_in("x", &["LOGS"], env_of(pairs)).unwrap();
        assert_eq!(opted(&[endpoint]).logs, None, "an opt-in signal is off unless named");
        assert!(opted(&[endpoint]).traces.is_some());
        assert!(opted(&[endpoint, ("OTEL_LOGS_EXPORTER", "otlp")]).logs.is_some());
    }

    #[test]
    fn malformed_variables_are_named_in_the_error() {
        let err = |pairs: &[(&str, &str)]| Config::from_env("x", env_of(pairs)).unwrap_err().to_string();
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .starts_with("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL:")
        );
        assert!(err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")]).starts_with("OTEL_EXPORTER_OTLP_ENDPOINT:"));
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_LOGS_EXPORTER", "console")])
                .starts_with("OTEL_LOGS_EXPORTER: \"console\": use otlp or none")
        );
        assert!(
            err(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"),
                ("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "/nonexistent")
            ])
            .starts_with("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE: /nonexistent")
        );
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/hostname")])
                .contains("give both")
        );
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")])
                .contains("not key=value")
        );
        assert!(
            err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")])
                .contains("not milliseconds")
        );
        assert!(err(&[("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")]).starts_with("OTEL_RESOURCE_ATTRIBUTES:"));
        assert!(err(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")]).starts_with("OTEL_METRIC_EXPORT_INTERVAL:"));
    }
}
