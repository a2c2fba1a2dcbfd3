//! Settings: every flag has an environment variable (the flag wins), parsed by clap and
//! validated once into [`Settings`], which the rest of the code trusts.

use crate::config_file::{self, ConfigFileError, Routing};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com";

/// The raw command line and environment, as the contract names them.
#[derive(Debug, Parser)]
#[command(
    name = "chatgate",
    version,
    about = "An AI chat streaming gateway: any OpenAI-compatible LLM as ChatGPT-shaped Server-Sent Events, with conversations remembered."
)]
pub struct Cli {
    /// Address to serve on.
    #[arg(long, env = "CHATGATE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: String,

    /// A TOML file of upstreams and model routes; when given, the upstream flags below
    /// (URL and key) are not used.
    #[arg(long, env = "CHATGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// An OpenAI-compatible API base URL; `/chat/completions` is appended.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub upstream_url: Option<String>,

    /// Sent upstream as `Authorization: Bearer …`; never logged, never sent to a client.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub upstream_key: Option<String>,

    /// A file holding the upstream key (a key given as a flag shows in `ps`).
    #[arg(long, env = "OPENAI_API_KEY_FILE")]
    pub upstream_key_file: Option<PathBuf>,

    /// The Anthropic Messages API base URL (`/v1/messages` is appended); with no OpenAI
    /// setting, it or an Anthropic key selects Anthropic as the upstream.
    #[arg(long, env = "ANTHROPIC_BASE_URL")]
    pub anthropic_url: Option<String>,

    /// Sent to Anthropic as `x-api-key`; never logged, never sent to a client.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_key: Option<String>,

    /// Model used when a request names none [default: gpt-4o-mini, or `demo`].
    #[arg(long, env = "CHATGATE_MODEL")]
    pub model: Option<String>,

    /// Where conversations live: `sqlite://PATH`, `postgres://USER:PASSWORD@HOST:PORT/DB` or `memory`.
    #[arg(
        long,
        env = "CHATGATE_STORE",
        default_value = "sqlite://chatgate.db",
        hide_env_values = true
    )]
    pub store: String,

    /// Joins the replicas on the same store and bus: `redis://[:PASSWORD@]HOST:PORT/N` (`rediss://` for TLS); needs a `postgres://` store.
    #[arg(long, env = "CHATGATE_BUS", hide_env_values = true)]
    pub bus: Option<String>,

    /// Directory of prompt presets (`NAME.md`); the built-in presets are used when it does not exist.
    #[arg(long, env = "CHATGATE_PROMPTS_DIR", default_value = "prompts")]
    pub prompts_dir: PathBuf,

    /// Comma list of allowed browser origins, or `*` [default: localhost and 127.0.0.1, any port].
    #[arg(long, env = "CHATGATE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Larger request bodies get 413.
    #[arg(long, env = "CHATGATE_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// The built chat page served at `/`.
    #[arg(long, env = "CHATGATE_WEB_DIR", default_value = "web/dist")]
    pub web_dir: PathBuf,

    /// End a stream whose upstream sends no byte for this many seconds.
    #[arg(long, env = "CHATGATE_UPSTREAM_IDLE_TIMEOUT", default_value_t = 60.0)]
    pub upstream_idle_timeout: f64,

    /// Seconds between SSE comment heartbeats while waiting for the first token.
    #[arg(long, env = "CHATGATE_HEARTBEAT", default_value_t = 15.0)]
    pub heartbeat: f64,

    /// The model's context window in tokens; older turns are dropped to fit.
    #[arg(long, env = "CHATGATE_CONTEXT_TOKENS", default_value_t = 16384)]
    pub context_tokens: usize,

    /// Tokens of the context window kept free for the answer.
    #[arg(long, env = "CHATGATE_ANSWER_RESERVE_TOKENS", default_value_t = 2048)]
    pub answer_reserve_tokens: usize,

    /// Seconds an answer keeps generating after its last reader left, so that a reload
    /// picks it up again; 0 cancels it at once.
    #[arg(long, env = "CHATGATE_DETACHED_GRACE", default_value_t = 10.0)]
    pub detached_grace: f64,

    /// On SIGTERM/SIGINT, seconds that running answers may take to finish before they are
    /// ended with the code `gateway_stopping`.
    #[arg(long, env = "CHATGATE_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,

    /// Comma list of `Host` names served (ports not compared), or `*` for any; others get
    /// 421 (DNS rebinding) [default: localhost, 127.0.0.1, [::1] and the listen address].
    #[arg(long, env = "CHATGATE_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,

    /// Worker threads serving requests, each with an event loop of its own [default: one
    /// per CPU the process may run on]. Fewer workers than cores cost less CPU per relayed
    /// chunk on a busy machine, and leave cores to other processes.
    #[arg(long, env = "CHATGATE_WORKERS")]
    pub workers: Option<u32>,

    /// UTF-8 bytes of an answer's text; an answer that reaches it is ended (`answer_too_large`).
    #[arg(long, env = "CHATGATE_MAX_ANSWER_BYTES", default_value_t = 4 << 20)]
    pub max_answer_bytes: usize,

    /// Seconds from a request's first byte to the end of its body; slower clients get 408.
    #[arg(long, env = "CHATGATE_REQUEST_TIMEOUT", default_value_t = 10.0)]
    pub request_timeout: f64,

    /// Client keys, a comma list of `NAME:KEY`; with any, every route but the page's and
    /// `/healthz` needs `Authorization: Bearer KEY`.
    #[arg(long, env = "CHATGATE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A file of client keys, one `NAME:KEY` a line (`#` comments); re-read on SIGHUP.
    #[arg(long, env = "CHATGATE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Serve a non-loopback address without client keys (anyone who reaches it may use it).
    #[arg(long, env = "CHATGATE_NO_AUTH")]
    pub no_auth: bool,

    /// Turns (`POST /conv`) per client per sliding minute; over it, 429 with `Retry-After`.
    #[arg(long, env = "CHATGATE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// Live answers per client at once; over it, 429.
    #[arg(long, env = "CHATGATE_MAX_STREAMS_PER_CLIENT")]
    pub max_streams_per_client: Option<u32>,

    /// Milliseconds between words of the demo provider's answer.
    #[arg(long, env = "CHATGATE_DEMO_DELAY_MS", default_value_t = 45)]
    pub demo_delay_ms: u64,
}

/// Where conversations live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
    Memory,
}

/// A `postgres://` URL, which may hold a password: shown without it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(pub String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::conversation::postgres::describe(&self.0))
    }
}

/// A `redis://` URL, which may hold a password: shown without it.
#[derive(Clone, PartialEq, Eq)]
pub struct BusUrl(pub String);

impl std::fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::generation::bus::describe(&self.0))
    }
}

/// Which browser origins may call the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `http(s)://localhost`, `127.0.0.1` and `[::1]`, any port.
    Localhost,
    Any,
    List(Vec<String>),
}

/// Which upstream answers.
#[derive(Debug, Clone)]
pub enum UpstreamKind {
    /// An OpenAI-compatible API.
    OpenAi { base_url: String, key: Option<String> },
    /// The Anthropic Messages API; `base_url` has no `/v1`.
    Anthropic { base_url: String, key: Option<String> },
    /// The built-in demo provider: no upstream was configured.
    Demo { delay: Duration },
    /// The upstreams and model routes of a config file.
    Routed(Routing),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub upstream: UpstreamKind,
    pub model: String,
    pub store: StoreKind,
    /// The bus shared with other replicas; `None`: this process alone.
    pub bus: Option<BusUrl>,
    pub prompts_dir: PathBuf,
    pub cors: CorsOrigins,
    pub max_body_bytes: usize,
    pub web_dir: PathBuf,
    pub upstream_idle_timeout: Duration,
    pub heartbeat: Duration,
    pub context_tokens: usize,
    pub answer_reserve_tokens: usize,
    pub detached_grace: Duration,
    pub shutdown_grace: Duration,
    pub allowed_hosts: AllowedHosts,
    pub max_answer_bytes: usize,
    pub request_timeout: Duration,
    /// `--api-keys`: `NAME:KEY,…`.
    pub api_keys: Option<String>,
    pub api_keys_file: Option<PathBuf>,
    pub limits: ClientLimits,
    /// Worker threads; `None`: one per CPU the process may run on.
    pub workers: Option<usize>,
}

/// The most worker threads `--workers` may ask for.
pub const MAX_WORKERS: u32 = 256;

/// Per-client limits; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    /// Turns per sliding minute.
    pub turns_per_minute: Option<u32>,
    /// Live answers at once.
    pub streams: Option<u32>,
}

impl Settings {
    /// Whether clients must present a key: any key source was given (an empty file too:
    /// keys can be added to it and read on SIGHUP).
    pub fn auth_on(&self) -> bool {
        self.api_keys.is_some() || self.api_keys_file.is_some()
    }
}

/// Whether `listen` is a loopback address: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback(listen: &str) -> bool {
    let name = host_name(listen);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Which `Host` names the gateway answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    Any,
    /// Lowercase host names, without ports (IPv6 in brackets).
    List(Vec<String>),
}

impl AllowedHosts {
    /// Whether a `Host` header's value names an allowed host (its port is not compared).
    pub fn allows(&self, host: &str) -> bool {
        match self {
            AllowedHosts::Any => true,
            AllowedHosts::List(names) => {
                let name = host_name(host);
                names.iter().any(|n| n.eq_ignore_ascii_case(name))
            }
        }
    }
}

/// `example.com:8000` → `example.com`; `[::1]:8000` → `[::1]`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad config file {0}")]
    File(#[from] ConfigFileError),
    #[error("--store must be `sqlite://PATH`, `postgres://USER@HOST:PORT/DB` or `memory`, got {0:?}")]
    Store(String),
    #[error("--store: bad PostgreSQL URL ({0})")]
    PostgresUrl(String),
    #[error("--bus must be a `redis://HOST:PORT/N` or `rediss://` URL, got {0}")]
    Bus(String),
    #[error(
        "--bus joins replicas that share one store: give --store postgres://… (a SQLite file or memory belongs to one process)"
    )]
    BusWithoutSharedStore,
    #[error("the upstream URL must start with http:// or https://, got {0:?}")]
    UpstreamUrl(String),
    #[error("{0} must be a positive number of seconds")]
    Seconds(&'static str),
    #[error("{0} must be a number of seconds, 0 or more")]
    SecondsOrZero(&'static str),
    #[error("--answer-reserve-tokens ({reserve}) must be smaller than --context-tokens ({context})")]
    Budget { reserve: usize, context: usize },
    #[error("--max-body-bytes must be at least 1")]
    BodyLimit,
    #[error("--max-answer-bytes must be at least 1")]
    AnswerLimit,
    #[error("cannot read the upstream key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("the upstream key is given twice: by --upstream-key (OPENAI_API_KEY) and by --upstream-key-file; give one")]
    KeyTwice,
    #[error("{0} must be at least 1")]
    AtLeastOne(&'static str),
    #[error("--workers must be from 1 to {MAX_WORKERS}, got {0}")]
    Workers(u32),
    #[error(
        "refusing to listen on {0} without client keys: anyone who can reach it could use the upstream key and read every conversation. Give keys with --api-keys (or --api-keys-file), or pass --no-auth to run open on purpose"
    )]
    OpenListen(String),
}

impl Settings {
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let config = cli.config.clone().filter(|f| !f.as_os_str().is_empty());
        let upstream = match config {
            Some(file) => UpstreamKind::Routed(config_file::load(&file)?),
            None => environment_upstream(&cli)?,
        };
        let model = cli
            .model
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| match &upstream {
                UpstreamKind::Demo { .. } => "demo".to_owned(),
                UpstreamKind::OpenAi { .. } => "gpt-4o-mini".to_owned(),
                UpstreamKind::Anthropic { .. } => "claude-sonnet-4-5".to_owned(),
                UpstreamKind::Routed(routing) => default_model(routing),
            });
        if cli.answer_reserve_tokens >= cli.context_tokens {
            return Err(ConfigError::Budget {
                reserve: cli.answer_reserve_tokens,
                context: cli.context_tokens,
            });
        }
        if cli.max_body_bytes == 0 {
            return Err(ConfigError::BodyLimit);
        }
        let allowed_hosts = parse_hosts(cli.allowed_hosts.as_deref(), &cli.listen);
        let api_keys = cli.api_keys.filter(|k| !k.trim().is_empty());
        let api_keys_file = cli.api_keys_file.filter(|f| !f.as_os_str().is_empty());
        if api_keys.is_none() && api_keys_file.is_none() && !cli.no_auth && !is_loopback(&cli.listen) {
            return Err(ConfigError::OpenListen(cli.listen));
        }
        let limits = ClientLimits {
            turns_per_minute: at_least_one(cli.rate_limit, "--rate-limit")?,
            streams: at_least_one(cli.max_streams_per_client, "--max-streams-per-client")?,
        };
        let store = parse_store(&cli.store)?;
        let bus = parse_bus(cli.bus.as_deref(), &store)?;
        Ok(Self {
            listen: cli.listen,
            upstream,
            model,
            store,
            bus,
            prompts_dir: cli.prompts_dir,
            cors: parse_cors(cli.cors_origins.as_deref()),
            max_body_bytes: cli.max_body_bytes,
            web_dir: cli.web_dir,
            upstream_idle_timeout: seconds(cli.upstream_idle_timeout, "--upstream-idle-timeout")?,
            heartbeat: seconds(cli.heartbeat, "--heartbeat")?,
            context_tokens: cli.context_tokens,
            answer_reserve_tokens: cli.answer_reserve_tokens,
            detached_grace: seconds_or_zero(cli.detached_grace, "--detached-grace")?,
            shutdown_grace: seconds_or_zero(cli.shutdown_grace, "--shutdown-grace")?,
            allowed_hosts,
            max_answer_bytes: match cli.max_answer_bytes {
                0 => return Err(ConfigError::AnswerLimit),
                n => n,
            },
            request_timeout: seconds(cli.request_timeout, "--request-timeout")?,
            api_keys,
            api_keys_file,
            limits,
            workers: match cli.workers {
                Some(n) if n == 0 || n > MAX_WORKERS => return Err(ConfigError::Workers(n)),
                n => n.map(|n| n as usize),
            },
        })
    }

    /// Settings for tests: memory store, demo provider, defaults elsewhere.
    pub fn for_tests() -> Self {
        // Built by hand, not by clap, so a developer's CHATGATE_* variables cannot leak in.
        Self {
            listen: "127.0.0.1:0".into(),
            upstream: UpstreamKind::Demo {
                delay: Duration::from_millis(1),
            },
            model: "demo".into(),
            store: StoreKind::Memory,
            bus: None,
            prompts_dir: PathBuf::from("prompts"),
            cors: CorsOrigins::Localhost,
            max_body_bytes: 1 << 20,
            web_dir: PathBuf::from("web/dist"),
            upstream_idle_timeout: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            context_tokens: 16384,
            answer_reserve_tokens: 2048,
            detached_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            allowed_hosts: parse_hosts(None, "127.0.0.1:0"),
            max_answer_bytes: 4 << 20,
            request_timeout: Duration::from_secs(10),
            api_keys: None,
            api_keys_file: None,
            limits: ClientLimits::default(),
            workers: None,
        }
    }
}

/// The one upstream the environment names (no config file): an OpenAI-compatible API, or
/// the demo provider when neither a URL nor a key is given.
fn environment_upstream(cli: &Cli) -> Result<UpstreamKind, ConfigError> {
    let key = cli.upstream_key.clone().filter(|k| !k.trim().is_empty());
    let key = match (key, cli.upstream_key_file.clone()) {
        (Some(_), Some(_)) => return Err(ConfigError::KeyTwice),
        (key, None) => key,
        (None, Some(path)) => {
            let read = std::fs::read_to_string(&path).map_err(|source| ConfigError::KeyFile { path, source })?;
            Some(read.trim().to_owned()).filter(|k| !k.is_empty())
        }
    };
    let url = cli.upstream_url.clone().filter(|u| !u.trim().is_empty());
    let anthropic_url = cli.anthropic_url.clone().filter(|u| !u.trim().is_empty());
    let anthropic_key = cli.anthropic_key.clone().filter(|k| !k.trim().is_empty());
    Ok(match (url, key) {
        // Any OpenAI setting wins; the Anthropic ones alone select Anthropic.
        (None, None) if anthropic_url.is_some() || anthropic_key.is_some() => {
            let base_url = anthropic_url.unwrap_or_else(|| DEFAULT_ANTHROPIC_URL.to_owned());
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(ConfigError::UpstreamUrl(base_url));
            }
            UpstreamKind::Anthropic {
                base_url: base_url.trim_end_matches('/').to_owned(),
                key: anthropic_key,
            }
        }
        (None, None) => UpstreamKind::Demo {
            delay: Duration::from_millis(cli.demo_delay_ms),
        },
        (url, key) => {
            let base_url = url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(ConfigError::UpstreamUrl(base_url));
            }
            UpstreamKind::OpenAi {
                base_url: base_url.trim_end_matches('/').to_owned(),
                key,
            }
        }
    })
}

/// A config file's default model when `--model` names none: its `default_model`, else its
/// first `[models]` name, else what the first upstream is asked for without a file.
fn default_model(routing: &Routing) -> String {
    routing
        .default_model
        .clone()
        .or_else(|| routing.models.first().map(|m| m.name.clone()))
        .unwrap_or_else(|| "gpt-4o-mini".to_owned())
}

fn at_least_one(value: Option<u32>, name: &'static str) -> Result<Option<u32>, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::AtLeastOne(name)),
        value => Ok(value),
    }
}

fn parse_store(raw: &str) -> Result<StoreKind, ConfigError> {
    if raw == "memory" {
        return Ok(StoreKind::Memory);
    }
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        // Checked now, so that a typo stops the start with a reason; the URL itself is not
        // repeated in the message (it may hold a password).
        return match raw.parse::<tokio_postgres::Config>() {
            Ok(_) => Ok(StoreKind::Postgres(PostgresUrl(raw.to_owned()))),
            Err(e) => Err(ConfigError::PostgresUrl(e.to_string())),
        };
    }
    match raw.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(StoreKind::Sqlite(PathBuf::from(path))),
        // A URL of another database may hold a password too: only its scheme is repeated.
        _ => Err(ConfigError::Store(match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => format!("{scheme}://…"),
            _ => raw.to_owned(),
        })),
    }
}

fn parse_bus(raw: Option<&str>, store: &StoreKind) -> Result<Option<BusUrl>, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let shown = crate::generation::bus::describe(raw);
    if !(raw.starts_with("redis://") || raw.starts_with("rediss://")) {
        return Err(ConfigError::Bus(shown));
    }
    if let Err(e) = redis::Client::open(raw) {
        return Err(ConfigError::Bus(format!("{shown} ({e})")));
    }
    match store {
        StoreKind::Postgres(_) => Ok(Some(BusUrl(raw.to_owned()))),
        _ => Err(ConfigError::BusWithoutSharedStore),
    }
}

fn parse_hosts(raw: Option<&str>, listen: &str) -> AllowedHosts {
    match raw.map(str::trim) {
        Some("*") => AllowedHosts::Any,
        Some(list) if !list.is_empty() => AllowedHosts::List(
            list.split(',')
                .map(|h| host_name(h).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        ),
        _ => {
            let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
            let own = host_name(listen).to_ascii_lowercase();
            // A wildcard listen address is no name a client sends.
            if !own.is_empty() && !names.contains(&own) && own != "0.0.0.0" && own != "[::]" {
                names.push(own);
            }
            AllowedHosts::List(names)
        }
    }
}

fn parse_cors(raw: Option<&str>) -> CorsOrigins {
    match raw.map(str::trim) {
        None | Some("") => CorsOrigins::Localhost,
        Some("*") => CorsOrigins::Any,
        Some(list) => CorsOrigins::List(
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        ),
    }
}

fn seconds(value: f64, name: &'static str) -> Result<Duration, ConfigError> {
    // At most a year: Duration::from_secs_f64 panics on values it cannot hold.
    if value.is_finite() && value > 0.0 && value <= 31_536_000.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::Seconds(name))
    }
}

fn seconds_or_zero(value: f64, name: &'static str) -> Result<Duration, ConfigError> {
    // A day at most: Duration::from_secs_f64 panics on values it cannot hold.
    if value.is_finite() && (0.0..=86_400.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::SecondsOrZero(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["chatgate"];
        argv.extend_from_slice(args);
        Settings::from_cli(Cli::try_parse_from(argv).expect("parses"))
    }

    #[test]
    fn no_upstream_at_all_means_the_demo_provider() {
        let none = [
            "--upstream-url",
            "",
            "--upstream-key",
            "",
            "--anthropic-url",
            "",
            "--anthropic-key",
            "",
        ];
        let s = settings(&none).unwrap();
        assert!(matches!(s.upstream, UpstreamKind::Demo { .. }));
        assert_eq!(s.model, "demo");
    }

    #[test]
    fn a_key_alone_means_openai() {
        let s = settings(&["--upstream-url", "", "--upstream-key", "sk-x"]).unwrap();
        match s.upstream {
            UpstreamKind::OpenAi { base_url, key } => {
                assert_eq!(base_url, DEFAULT_BASE_URL);
                assert_eq!(key.as_deref(), Some("sk-x"));
            }
            other => panic!("expected OpenAI, got {other:?}"),
        }
    }

    #[test]
    fn an_anthropic_key_alone_means_anthropic_and_an_openai_setting_wins() {
        let none = ["--upstream-url", "", "--upstream-key", ""];
        let s = settings(&[&none[..], &["--anthropic-url", "", "--anthropic-key", "sk-ant-x"]].concat()).unwrap();
        match s.upstream {
            UpstreamKind::Anthropic { base_url, key } => {
                assert_eq!(base_url, DEFAULT_ANTHROPIC_URL);
                assert_eq!(key.as_deref(), Some("sk-ant-x"));
            }
            other => panic!("expected Anthropic, got {other:?}"),
        }
        assert_eq!(s.model, "claude-sonnet-4-5");
        let proxy = settings(
            &[
                &none[..],
                &["--anthropic-url", "http://proxy:8080/", "--anthropic-key", ""],
            ]
            .concat(),
        );
        assert!(
            matches!(proxy.unwrap().upstream, UpstreamKind::Anthropic { base_url, key: None } if base_url == "http://proxy:8080")
        );
        let both = settings(&[
            "--upstream-url",
            "",
            "--upstream-key",
            "sk-x",
            "--anthropic-key",
            "sk-ant-x",
        ])
        .unwrap();
        assert!(matches!(both.upstream, UpstreamKind::OpenAi { .. }));
        assert!(settings(&[&none[..], &["--anthropic-url", "api.anthropic.com"]].concat()).is_err());
    }

    #[test]
    fn the_upstream_key_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "sk-from-file\n").unwrap();
        let path = file.to_str().unwrap();
        let s = settings(&["--upstream-url", "", "--upstream-key", "", "--upstream-key-file", path]).unwrap();
        assert!(matches!(s.upstream, UpstreamKind::OpenAi { key: Some(k), .. } if k == "sk-from-file"));
        assert!(matches!(
            settings(&["--upstream-key", "sk-x", "--upstream-key-file", path]),
            Err(ConfigError::KeyTwice)
        ));
        let missing = dir.path().join("none");
        assert!(matches!(
            settings(&["--upstream-key", "", "--upstream-key-file", missing.to_str().unwrap()]),
            Err(ConfigError::KeyFile { .. })
        ));
    }

    #[test]
    fn a_config_file_replaces_the_environment_upstream_and_the_model_flag_wins_over_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(
            &file,
            "default_model = \"smart\"\n[upstreams.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[models.smart]\ntargets = [\"local/llama\"]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let s = settings(&["--config", path, "--upstream-key", "", "--model", ""]).unwrap();
        assert!(matches!(&s.upstream, UpstreamKind::Routed(r) if r.upstreams[0].name == "local"));
        assert_eq!(s.model, "smart");
        let s = settings(&["--config", path, "--model", "llama"]).unwrap();
        assert_eq!(s.model, "llama");

        std::fs::write(
            &file,
            "[upstreams.local]\nkind = \"openai\"\nbase_url = \"http://x\"\ntypo = 1\n",
        )
        .unwrap();
        let error = settings(&["--config", path]).unwrap_err().to_string();
        assert!(
            error.contains(&format!("{path}:4:1: ")) && error.contains("typo"),
            "{error}"
        );
    }

    #[test]
    fn store_and_cors_forms_are_parsed() {
        assert_eq!(parse_store("memory").unwrap(), StoreKind::Memory);
        assert_eq!(
            parse_store("sqlite://a/b.db").unwrap(),
            StoreKind::Sqlite("a/b.db".into())
        );
        assert_eq!(
            parse_store("postgres://u:pw@db.example:5433/chat").unwrap(),
            StoreKind::Postgres(PostgresUrl("postgres://u:pw@db.example:5433/chat".into()))
        );
        let shown = format!("{:?}", parse_store("postgresql://u:secret-pw@db.example/chat").unwrap());
        assert!(
            shown.contains("db.example:5432/chat") && !shown.contains("secret-pw"),
            "{shown}"
        );
        let refused = parse_store("postgres://u@db.example:notaport/chat")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("bad PostgreSQL URL"), "{refused}");
        let other = parse_store("mysql://u:pw2@x/db").unwrap_err().to_string();
        assert!(other.contains("\"mysql://…\"") && !other.contains("pw2"), "{other}");
        assert_eq!(parse_cors(Some("*")), CorsOrigins::Any);
        assert_eq!(
            parse_cors(Some("https://a.example/, http://b:3000")),
            CorsOrigins::List(vec!["https://a.example".into(), "http://b:3000".into()])
        );
    }

    #[test]
    fn a_bus_is_a_redis_url_beside_a_postgres_store_and_is_shown_without_its_password() {
        let postgres = parse_store("postgres://u@db/chat").unwrap();
        assert_eq!(parse_bus(None, &postgres).unwrap(), None);
        assert_eq!(parse_bus(Some("  "), &postgres).unwrap(), None);
        let bus = parse_bus(Some("redis://:s3cret-pw@cache:6379/2"), &postgres)
            .unwrap()
            .unwrap();
        assert_eq!(bus.0, "redis://:s3cret-pw@cache:6379/2");
        assert_eq!(format!("{bus:?}"), "redis://cache:6379/2");
        assert!(parse_bus(Some("rediss://cache:6380/0"), &postgres).unwrap().is_some());
        let other = parse_bus(Some("memcached://u:s3cret-pw@cache:11211"), &postgres)
            .unwrap_err()
            .to_string();
        assert!(
            other.contains("memcached://u@cache:11211") && !other.contains("s3cret"),
            "{other}"
        );
        for store in [StoreKind::Memory, StoreKind::Sqlite("c.db".into())] {
            let alone = parse_bus(Some("redis://cache:6379/0"), &store).unwrap_err().to_string();
            assert!(alone.contains("--store postgres://"), "{alone}");
        }
    }

    #[test]
    fn hosts_are_compared_without_ports_and_default_to_loopback_and_the_listen_address() {
        let default = parse_hosts(None, "10.1.2.3:8000");
        for ok in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1:1",
            "[::1]:80",
            "10.1.2.3:8000",
        ] {
            assert!(default.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "[::2]",
            "",
        ] {
            assert!(!default.allows(bad), "{bad}");
        }
        let set = parse_hosts(Some("chat.example.com, Other.example:443"), "127.0.0.1:8000");
        assert!(set.allows("chat.example.com:8443") && set.allows("other.example"));
        assert!(!set.allows("localhost"), "a set list replaces the default");
        assert!(parse_hosts(Some("*"), "127.0.0.1:8000").allows("anything"));
    }

    #[test]
    fn an_open_address_needs_keys_or_no_auth() {
        for loopback in ["127.0.0.1:0", "127.9.9.9:80", "[::1]:8000", "localhost:8000"] {
            assert!(is_loopback(loopback), "{loopback}");
            assert!(settings(&["--listen", loopback]).is_ok(), "{loopback}");
        }
        for open in ["0.0.0.0:8000", "[::]:8000", "10.0.0.1:80", "example.com:80"] {
            assert!(!is_loopback(open), "{open}");
            let error = settings(&["--listen", open]).unwrap_err().to_string();
            assert!(error.contains("--api-keys") && error.contains("--no-auth"), "{error}");
            assert!(settings(&["--listen", open, "--no-auth"]).is_ok());
            assert!(settings(&["--listen", open, "--api-keys", "a:k"]).unwrap().auth_on());
        }
        assert!(settings(&["--rate-limit", "0"]).is_err());
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(settings(&["--heartbeat", "0"]).is_err());
        assert!(settings(&["--detached-grace=-1"]).is_err());
        assert_eq!(
            settings(&["--detached-grace", "0"]).unwrap().detached_grace,
            Duration::ZERO
        );
        assert_eq!(settings(&[]).unwrap().shutdown_grace, Duration::from_secs(30));
        assert!(settings(&["--context-tokens", "100", "--answer-reserve-tokens", "100"]).is_err());
    }

    #[test]
    fn workers_default_to_one_per_cpu_and_are_from_1_to_the_most() {
        assert_eq!(settings(&[]).unwrap().workers, None);
        assert_eq!(settings(&["--workers", "1"]).unwrap().workers, Some(1));
        for bad in ["0", "257"] {
            let error = settings(&["--workers", bad]).unwrap_err().to_string();
            assert_eq!(error, format!("--workers must be from 1 to 256, got {bad}"));
        }
    }
}
