//! Settings from a YAML file, then environment variables, then command-line flags (each
//! overriding the one before), turned into the daemon's validated [`Config`] and the choice of
//! embedding provider.
//!
//! The file's keys include the original design's `database.pgai.*`:
//!
//! ```yaml
//! database:
//!   url: postgresql://app@db.internal/notes   # DATABASE_URL
//!   table: m0_episodic                        # PGAI_TABLE
//!   pgai:
//!     enabled: true            # PGAI_ENABLED        false: serve runs the HTTP API only
//!     auto_embedding: true     # PGAI_AUTO_EMBEDDING false: `add` stores rows unqueued
//!     immediate_trigger: true  # PGAI_IMMEDIATE_TRIGGER (PGAI_POLLING=true means false)
//!     max_retries: 3           # PGAI_MAX_RETRIES
//!     retry_interval: 5.0      # PGAI_RETRY_INTERVAL (seconds, doubles per attempt)
//!     worker_count: 3          # PGAI_WORKER_COUNT (= PGAI_THREADS): model threads
//!     enable_metrics: true     # PGAI_ENABLE_METRICS false: no /metrics
//!     batch_size: 32           # PGAI_BATCH_SIZE
//!     poll_interval_ms: 1000   # PGAI_POLL_INTERVAL_MS
//!     lease_secs: 30           # PGAI_LEASE_SECS
//! http:
//!   address: 127.0.0.1:8760    # PGAI_HTTP
//!   token: change-me           # PGAI_HTTP_TOKEN (bearer token; unset: no auth, loopback only;
//!                              #   set but empty: refused)
//!   allow_unauthenticated: false  # PGAI_HTTP_ALLOW_UNAUTHENTICATED: true lets a non-loopback
//!                              #   address serve without a token
//!   allowed_hosts: []          # PGAI_HTTP_ALLOWED_HOSTS (comma-separated): Host names accepted
//!                              #   without a token besides localhost and IP literals
//!   max_waiting: 256           # PGAI_HTTP_MAX_WAITING: concurrent ?wait=true requests
//!   max_body_bytes: 2097152    # PGAI_HTTP_MAX_BODY_BYTES
//!   max_inputs: 2048           # PGAI_HTTP_MAX_INPUTS: inputs per /v1/embeddings request
//!   max_input_bytes: 1048576   # PGAI_HTTP_MAX_INPUT_BYTES: text bytes per /v1/embeddings request
//!   header_timeout_secs: 10    # PGAI_HTTP_HEADER_TIMEOUT_SECS
//! embedding:
//!   provider: local            # PGAI_PROVIDER: local | openai
//!   model_dir: /opt/minilm     # PGAI_MODEL_DIR (local)
//!   url: http://localhost:11434/v1   # PGAI_OPENAI_URL (openai)
//!   model: all-minilm                # PGAI_OPENAI_MODEL
//!   api_key_env: OPENAI_API_KEY      # the variable holding the key (never the key itself)
//!   timeout_secs: 30                 # PGAI_OPENAI_TIMEOUT_SECS
//!   dimensions: 384                  # PGAI_OPENAI_DIMENSIONS (optional)
//! vectorizers:                 # applied by `serve`/`up` before the daemon starts
//!   - name: docs_body          # see `vectorizer::VectorizerSpec` for every key
//!     table: public.docs
//!     column: body
//! ```
//!
//! An unknown key or a value of the wrong type is refused with one line naming the key and what
//! was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{defaults, Config};
use crate::daemon::model::EmbedService;
use crate::error::{Error, Result};
use crate::queue::Table;

/// Where the configuration file is looked for when neither `--config` nor `PGAI_CONFIG` names
/// one: the first that exists.
pub const DEFAULT_PATHS: &[&str] = &["./pgai-trigger.yaml", "/etc/pgai-trigger/config.yaml"];

/// Everything the file can hold. Every section and key is optional.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub embedding: EmbeddingSettings,
    /// Vectorizers the daemon's start makes the catalog hold (`vectorizer::admin::apply`).
    pub vectorizers: Vec<crate::vectorizer::VectorizerSpec>,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Carries the password: printed only through [`crate::config::redact_url`].
    pub url: Option<String>,
    pub table: String,
    pub pgai: PgaiSettings,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            table: defaults::TABLE.into(),
            pgai: PgaiSettings::default(),
        }
    }
}

/// The original design's `database.pgai` block, plus our queue settings.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgaiSettings {
    /// false: `serve`/`up` start no listener and no worker (the HTTP API still answers).
    pub enabled: bool,
    /// false: rows added through `add`, `POST /v1/items` or the library are stored with
    /// `needs_embedding = false` (not queued); SQL inserts are unaffected.
    pub auto_embedding: bool,
    /// true: LISTEN for `embedding_needed`; false: polling only (PgBouncer transaction mode).
    pub immediate_trigger: bool,
    pub max_retries: i32,
    /// Base retry backoff in seconds.
    pub retry_interval: f64,
    /// Threads of the in-process model (ONNX Runtime intra-op threads). The daemon runs one
    /// claim → embed → write pipeline; this sets how many cores that pipeline's model uses.
    /// Unset: all cores.
    pub worker_count: Option<usize>,
    pub enable_metrics: bool,
    pub batch_size: usize,
    pub poll_interval_ms: u64,
    pub lease_secs: u64,
}

impl Default for PgaiSettings {
    fn default() -> Self {
        PgaiSettings {
            enabled: true,
            auto_embedding: true,
            immediate_trigger: defaults::IMMEDIATE_TRIGGER,
            max_retries: defaults::MAX_RETRIES,
            retry_interval: defaults::RETRY_INTERVAL_SECS,
            worker_count: None,
            enable_metrics: true,
            batch_size: defaults::BATCH_SIZE,
            poll_interval_ms: defaults::POLL_INTERVAL_MS,
            lease_secs: defaults::LEASE_SECS,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub address: SocketAddr,
    /// Bearer token every endpoint but /healthz and /readyz requires. Never printed. Unset: no
    /// authentication (a loopback address only, unless `allow_unauthenticated`); set but empty:
    /// a configuration error.
    pub token: Option<String>,
    /// Lets a non-loopback `address` serve without a token (otherwise refused at start).
    pub allow_unauthenticated: bool,
    /// Without a token, requests must name `localhost`, an IP literal of the address they
    /// reached, or one of these names in `Host` (against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// `?wait=true` requests waiting at once; more get 503.
    pub max_waiting: usize,
    pub max_body_bytes: usize,
    /// Inputs of one `/v1/embeddings` request.
    pub max_inputs: usize,
    /// Bytes of text of one `/v1/embeddings` request, all inputs together.
    pub max_input_bytes: usize,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_secs: f64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            address: SocketAddr::from(defaults::HTTP_ADDRESS),
            token: None,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            max_waiting: defaults::HTTP_MAX_WAITING,
            max_body_bytes: defaults::HTTP_MAX_BODY_BYTES,
            max_inputs: defaults::HTTP_MAX_INPUTS,
            max_input_bytes: defaults::HTTP_MAX_INPUT_BYTES,
            header_timeout_secs: defaults::HTTP_HEADER_TIMEOUT_SECS,
        }
    }
}

impl HttpSettings {
    /// A one-line error for an empty or unusable token, a non-loopback address without a token
    /// (unless `allow_unauthenticated`), a zero limit.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = &self.token {
            if t.trim().is_empty() {
                return Err(Error::Config(
                    "http.token (PGAI_HTTP_TOKEN) is set but empty: set a token, or unset it to serve without authentication"
                        .into(),
                ));
            }
            // A header value is trimmed and ASCII: any other token could never match.
            if t.trim() != t || !t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return Err(Error::Config(
                    "http.token (PGAI_HTTP_TOKEN) must be printable ASCII without leading or trailing spaces"
                        .into(),
                ));
            }
        } else if !self.address.ip().is_loopback() && !self.allow_unauthenticated {
            return Err(Error::Config(format!(
                "http.address {} is not a loopback address and no http.token (PGAI_HTTP_TOKEN) is set: set a token, or set http.allow_unauthenticated: true (PGAI_HTTP_ALLOW_UNAUTHENTICATED=true) to serve without authentication",
                self.address
            )));
        }
        for (name, v) in [
            ("max_waiting", self.max_waiting),
            ("max_body_bytes", self.max_body_bytes),
            ("max_inputs", self.max_inputs),
            ("max_input_bytes", self.max_input_bytes),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("http.{name} must be at least 1")));
            }
        }
        if !(self.header_timeout_secs.is_finite() && self.header_timeout_secs > 0.0) {
            return Err(Error::Config(format!(
                "http.header_timeout_secs must be a number of seconds > 0, got {}",
                self.header_timeout_secs
            )));
        }
        Ok(())
    }

    /// The API for `store` with these settings, once [`HttpSettings::validate`] passes.
    pub fn api(&self, store: std::sync::Arc<crate::Store>) -> Result<crate::http::Api> {
        self.validate()?;
        let mut api = crate::http::Api::new(store);
        api.token = self.token.clone();
        api.allowed_hosts = self.allowed_hosts.clone();
        api.limits = crate::http::Limits {
            max_body_bytes: self.max_body_bytes,
            max_inputs: self.max_inputs,
            max_input_bytes: self.max_input_bytes,
            header_read_timeout: Duration::from_secs_f64(self.header_timeout_secs),
        };
        Ok(api)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// all-MiniLM-L6-v2 in-process (ONNX Runtime).
    #[default]
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    Openai,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingSettings {
    pub provider: ProviderKind,
    /// Directory with `model.onnx` and `tokenizer.json` (local provider).
    pub model_dir: Option<PathBuf>,
    /// Base URL of the OpenAI-compatible endpoint (openai provider).
    pub url: Option<String>,
    pub model: Option<String>,
    /// Name of the environment variable that holds the API key.
    pub api_key_env: String,
    pub timeout_secs: f64,
    pub dimensions: Option<usize>,
}

impl Default for EmbeddingSettings {
    fn default() -> Self {
        EmbeddingSettings {
            provider: ProviderKind::Local,
            model_dir: None,
            url: None,
            model: None,
            api_key_env: defaults::OPENAI_API_KEY_ENV.into(),
            timeout_secs: defaults::OPENAI_TIMEOUT_SECS,
            dimensions: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field(
                "database_url",
                &self.database.url.as_deref().map(crate::config::redact_url),
            )
            .field("table", &self.database.table)
            .field("pgai", &self.database.pgai)
            .field("http_address", &self.http.address)
            .field("http_token", &self.http.token.as_ref().map(|_| "***"))
            .field(
                "http_allow_unauthenticated",
                &self.http.allow_unauthenticated,
            )
            .field("provider", &self.embedding.provider)
            .field(
                "vectorizers",
                &self.vectorizers.iter().map(|v| &v.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Settings {
    /// Reads `path`, or the file `PGAI_CONFIG` names, or the first of [`DEFAULT_PATHS`] that
    /// exists, or nothing (defaults); then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Settings> {
        let env_path = std::env::var_os("PGAI_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path).or_else(|| {
            DEFAULT_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        });
        let mut s = match path {
            Some(p) => Settings::from_file(&p)?,
            None => Settings::default(),
        };
        s.apply_env(|k| std::env::var(k).ok())?;
        Ok(s)
    }

    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Settings::from_yaml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("config file {}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses YAML; the error names the key (`database.pgai.max_retries: invalid type: …`).
    pub fn from_yaml(text: &str) -> Result<Settings> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        serde_norway::from_str(text).map_err(|e| {
            let msg = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            // A bad key at the top level has no path in serde's message: say so.
            let msg = if msg.starts_with("unknown field") {
                format!("top level: {msg}")
            } else {
                msg
            };
            Error::Config(msg)
        })
    }

    /// Applies the environment variables of the module documentation; `get` reads one
    /// (injected so tests need not touch the process environment). An empty variable counts as
    /// unset, except `PGAI_HTTP_TOKEN`: set but empty is refused, never read as "no
    /// authentication".
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("PGAI_HTTP_TOKEN") {
            self.http.token = Some(v);
        }
        let raw = get;
        let get = |k: &str| raw(k).filter(|v| !v.is_empty());
        let p = &mut self.database.pgai;
        if let Some(v) = get("DATABASE_URL") {
            self.database.url = Some(v);
        }
        if let Some(v) = get("PGAI_TABLE") {
            self.database.table = v;
        }
        env_parse(&get, "PGAI_ENABLED", &mut p.enabled, parse_bool)?;
        env_parse(
            &get,
            "PGAI_AUTO_EMBEDDING",
            &mut p.auto_embedding,
            parse_bool,
        )?;
        env_parse(
            &get,
            "PGAI_IMMEDIATE_TRIGGER",
            &mut p.immediate_trigger,
            parse_bool,
        )?;
        let mut polling = false;
        env_parse(&get, "PGAI_POLLING", &mut polling, parse_bool)?;
        if polling {
            p.immediate_trigger = false;
        }
        env_parse(&get, "PGAI_MAX_RETRIES", &mut p.max_retries, parse_num)?;
        env_parse(
            &get,
            "PGAI_RETRY_INTERVAL",
            &mut p.retry_interval,
            parse_num,
        )?;
        for var in ["PGAI_WORKER_COUNT", "PGAI_THREADS"] {
            let mut n = None;
            env_parse(&get, var, &mut n, |s| parse_num(s).map(Some))?;
            if n.is_some() {
                p.worker_count = n;
            }
        }
        env_parse(
            &get,
            "PGAI_ENABLE_METRICS",
            &mut p.enable_metrics,
            parse_bool,
        )?;
        env_parse(&get, "PGAI_BATCH_SIZE", &mut p.batch_size, parse_num)?;
        env_parse(
            &get,
            "PGAI_POLL_INTERVAL_MS",
            &mut p.poll_interval_ms,
            parse_num,
        )?;
        env_parse(&get, "PGAI_LEASE_SECS", &mut p.lease_secs, parse_num)?;
        let h = &mut self.http;
        env_parse(&get, "PGAI_HTTP", &mut h.address, parse_num)?;
        env_parse(
            &get,
            "PGAI_HTTP_ALLOW_UNAUTHENTICATED",
            &mut h.allow_unauthenticated,
            parse_bool,
        )?;
        if let Some(v) = get("PGAI_HTTP_ALLOWED_HOSTS") {
            h.allowed_hosts = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        env_parse(&get, "PGAI_HTTP_MAX_WAITING", &mut h.max_waiting, parse_num)?;
        env_parse(
            &get,
            "PGAI_HTTP_MAX_BODY_BYTES",
            &mut h.max_body_bytes,
            parse_num,
        )?;
        env_parse(&get, "PGAI_HTTP_MAX_INPUTS", &mut h.max_inputs, parse_num)?;
        env_parse(
            &get,
            "PGAI_HTTP_MAX_INPUT_BYTES",
            &mut h.max_input_bytes,
            parse_num,
        )?;
        env_parse(
            &get,
            "PGAI_HTTP_HEADER_TIMEOUT_SECS",
            &mut h.header_timeout_secs,
            parse_num,
        )?;
        let e = &mut self.embedding;
        env_parse(&get, "PGAI_PROVIDER", &mut e.provider, |s| match s {
            "local" => Ok(ProviderKind::Local),
            "openai" => Ok(ProviderKind::Openai),
            _ => Err("local or openai".into()),
        })?;
        if let Some(v) = get("PGAI_MODEL_DIR") {
            e.model_dir = Some(v.into());
        }
        if let Some(v) = get("PGAI_OPENAI_URL") {
            e.url = Some(v);
        }
        if let Some(v) = get("PGAI_OPENAI_MODEL") {
            e.model = Some(v);
        }
        env_parse(
            &get,
            "PGAI_OPENAI_TIMEOUT_SECS",
            &mut e.timeout_secs,
            parse_num,
        )?;
        let mut d = None;
        env_parse(&get, "PGAI_OPENAI_DIMENSIONS", &mut d, |s| {
            parse_num(s).map(Some)
        })?;
        if d.is_some() {
            e.dimensions = d;
        }
        Ok(())
    }

    /// The database URL, or a one-line error saying the three ways to give it.
    pub fn database_url(&self) -> Result<&str> {
        self.database.url.as_deref().ok_or_else(|| {
            Error::Config(
                "no database URL: pass --database-url, set DATABASE_URL, or set database.url in the config file".into(),
            )
        })
    }

    pub fn table(&self) -> Result<Table> {
        Table::new(&self.database.table)
    }

    /// The daemon's validated configuration.
    pub fn daemon_config(&self) -> Result<Config> {
        let p = &self.database.pgai;
        let mut c = Config::new(self.database_url()?);
        c.table = self.table()?;
        c.immediate_trigger = p.immediate_trigger;
        c.poll_interval = Duration::from_millis(p.poll_interval_ms);
        c.batch_size = p.batch_size;
        c.lease = Duration::from_secs(p.lease_secs);
        c.max_retries = p.max_retries;
        // Checked before the conversion: Duration::from_secs_f64 panics past its range.
        if !(p.retry_interval.is_finite() && (0.0..=86_400.0).contains(&p.retry_interval)) {
            return Err(Error::Config(format!(
                "database.pgai.retry_interval must be a number of seconds between 0 and 86400, got {}",
                p.retry_interval
            )));
        }
        c.retry_interval = Duration::from_secs_f64(p.retry_interval);
        c.validate()?;
        Ok(c)
    }

    /// Model threads: `worker_count`, else all cores.
    pub fn threads(&self) -> usize {
        self.database
            .pgai
            .worker_count
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
    }

    /// Starts the configured embedding provider on its own thread.
    pub async fn start_embedder(&self) -> Result<EmbedService> {
        let e = self.embedding.clone();
        let threads = self.threads();
        match e.provider {
            ProviderKind::Local => {
                let service = EmbedService::start(
                    move || {
                        let files = match &e.model_dir {
                            Some(dir) => {
                                let ort = std::env::var_os("ORT_DYLIB_PATH")
                                    .filter(|p| !p.is_empty())
                                    .map(PathBuf::from)
                                    .unwrap_or_else(|| {
                                        pgai_embed::dist::home()
                                            .join("onnxruntime/libonnxruntime.so")
                                    });
                                pgai_embed::ModelFiles::from_dir(dir, &ort)?
                            }
                            None => pgai_embed::ModelFiles::locate()?,
                        };
                        Ok(Box::new(pgai_embed::OnnxEmbedder::load(&files, threads)?)
                            as Box<dyn pgai_embed::Embedder>)
                    },
                    2,
                )
                .await?;
                Ok(service)
            }
            ProviderKind::Openai => {
                let config = self.openai_config()?;
                Ok(EmbedService::start(
                    move || {
                        Ok(Box::new(pgai_embed::OpenAiEmbedder::new(config)?)
                            as Box<dyn pgai_embed::Embedder>)
                    },
                    2,
                )
                .await?)
            }
        }
    }

    /// The remote provider's settings; the key is read from the variable `api_key_env` names.
    pub fn openai_config(&self) -> Result<pgai_embed::OpenAiConfig> {
        let e = &self.embedding;
        let url = e.url.clone().ok_or_else(|| {
            Error::Config("embedding.url (PGAI_OPENAI_URL) is required with provider openai".into())
        })?;
        // Checked before the conversion: Duration::from_secs_f64 panics past its range.
        if !(e.timeout_secs.is_finite() && e.timeout_secs > 0.0 && e.timeout_secs <= 3600.0) {
            return Err(Error::Config(format!(
                "embedding.timeout_secs must be a number of seconds above 0 and at most 3600, got {}",
                e.timeout_secs
            )));
        }
        Ok(pgai_embed::OpenAiConfig {
            url,
            model: e
                .model
                .clone()
                .unwrap_or_else(|| pgai_embed::MODEL_NAME.to_string()),
            api_key: std::env::var(&e.api_key_env).ok().filter(|k| !k.is_empty()),
            timeout: Duration::from_secs_f64(e.timeout_secs),
            dimensions: e.dimensions,
        })
    }
}

fn env_parse<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &str,
    slot: &mut T,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<()> {
    if let Some(raw) = get(var) {
        *slot = parse(raw.trim()).map_err(|expected| {
            Error::Config(format!("{var}: expected {expected}, got {raw:?}"))
        })?;
    }
    Ok(())
}

fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("true or false".into()),
    }
}

fn parse_num<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String> {
    s.parse()
        .map_err(|_| format!("a value of type {}", short_type::<T>()))
}

fn short_type<T>() -> &'static str {
    let t = std::any::type_name::<T>();
    match t {
        "usize" | "u64" | "u32" | "u16" => "unsigned integer",
        "i32" | "i64" => "integer",
        "f64" | "f32" => "number",
        _ if t.ends_with("SocketAddr") => "address host:port",
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_keys_parse_and_defaults_hold() {
        let s = Settings::from_yaml(
            "database:\n  url: postgresql://a:pw@h/d\n  pgai:\n    enabled: true\n    auto_embedding: true\n    immediate_trigger: false\n    max_retries: 5\n    retry_interval: 2.5\n    worker_count: 3\n    enable_metrics: false\n",
        )
        .unwrap();
        let p = &s.database.pgai;
        assert_eq!(
            (p.max_retries, p.retry_interval, p.worker_count),
            (5, 2.5, Some(3))
        );
        assert!(!p.immediate_trigger && !p.enable_metrics);
        assert_eq!(s.threads(), 3);
        let c = s.daemon_config().unwrap();
        assert_eq!(c.max_retries, 5);
        assert!(!c.immediate_trigger);
        assert_eq!(s.http.address.to_string(), "127.0.0.1:8760");
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn bad_keys_and_types_name_the_key() {
        let e = Settings::from_yaml("database:\n  pgai:\n    max_retry: 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database.pgai") && e.contains("max_retry") && !e.contains('\n'),
            "{e}"
        );
        let e = Settings::from_yaml("database:\n  pgai:\n    max_retries: three\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database.pgai.max_retries") && e.contains("expected"),
            "{e}"
        );
        let e = Settings::from_yaml("databse: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("databse"), "{e}");
        let e = Settings::from_yaml("http:\n  address: nowhere\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.address"), "{e}");
    }

    #[test]
    fn vectorizers_parse_and_unknown_keys_name_the_key() {
        let s = Settings::from_yaml(
            "vectorizers:\n  - name: docs_body\n    table: docs\n    template: \"{title}\\n{body}\"\n    chunk_tokens: 64\n",
        )
        .unwrap();
        assert_eq!(s.vectorizers.len(), 1);
        assert_eq!(
            s.vectorizers[0].template.as_deref(),
            Some("{title}\n{body}")
        );
        assert_eq!(s.vectorizers[0].chunk_tokens, Some(64));
        let e = Settings::from_yaml("vectorizers:\n  - name: a\n    table: t\n    colum: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vectorizers") && e.contains("colum") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn env_overrides_file() {
        let mut s = Settings::from_yaml(
            "database:\n  pgai:\n    batch_size: 8\n    immediate_trigger: true\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "PGAI_BATCH_SIZE" => Some("64".to_string()),
            "PGAI_POLLING" => Some("true".to_string()),
            "PGAI_HTTP_TOKEN" => Some("t0ken".to_string()),
            _ => None,
        };
        s.apply_env(env).unwrap();
        assert_eq!(s.database.pgai.batch_size, 64);
        assert!(!s.database.pgai.immediate_trigger);
        assert!(!format!("{s:?}").contains("t0ken"));
        let e = s
            .apply_env(|k| (k == "PGAI_MAX_RETRIES").then(|| "lots".to_string()))
            .unwrap_err();
        assert_eq!(e.to_string(), "invalid configuration: PGAI_MAX_RETRIES: expected a value of type integer, got \"lots\"");
        let e = Settings::default().daemon_config().unwrap_err().to_string();
        assert!(e.contains("DATABASE_URL"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_one_line_errors_not_panics() {
        let base = "database:\n  url: postgresql://a@h/d\n  pgai:\n";
        for (key, value, named) in [
            ("retry_interval", "1e300", "retry_interval"),
            ("retry_interval", "-1", "retry_interval"),
            ("max_retries", "0", "max_retries"),
            ("max_retries", "100000", "max_retries"),
            ("lease_secs", "0", "lease"),
            ("lease_secs", "18446744073709551615", "lease"),
            ("poll_interval_ms", "1", "poll_interval"),
            ("poll_interval_ms", "18446744073709551615", "poll_interval"),
            ("batch_size", "0", "batch_size"),
        ] {
            let s = Settings::from_yaml(&format!("{base}    {key}: {value}\n")).unwrap();
            let e = s.daemon_config().unwrap_err().to_string();
            assert!(e.contains(named) && !e.contains('\n'), "{key}={value}: {e}");
        }
        let mut s = Settings::default();
        s.embedding.url = Some("http://localhost:1/v1".into());
        s.embedding.timeout_secs = 1e300;
        let e = s.openai_config().unwrap_err().to_string();
        assert!(e.contains("timeout_secs"), "{e}");
    }

    #[test]
    fn an_empty_token_is_an_error_never_no_authentication() {
        // In the file.
        let s = Settings::from_yaml("http:\n  token: \"\"\n").unwrap();
        let e = s.http.validate().unwrap_err().to_string();
        assert!(
            e.contains("http.token") && e.contains("empty") && !e.contains('\n'),
            "{e}"
        );
        // In the environment: set but empty is not "unset".
        let mut s = Settings::default();
        s.apply_env(|k| (k == "PGAI_HTTP_TOKEN").then(String::new))
            .unwrap();
        assert_eq!(s.http.token.as_deref(), Some(""));
        assert!(s
            .http
            .validate()
            .unwrap_err()
            .to_string()
            .contains("PGAI_HTTP_TOKEN"));
        // Other empty variables still count as unset.
        let mut s = Settings::default();
        s.apply_env(|k| (k == "PGAI_BATCH_SIZE").then(String::new))
            .unwrap();
        assert_eq!(s.database.pgai.batch_size, defaults::BATCH_SIZE);
        assert!(s.http.validate().is_ok(), "no token on loopback");
        // A token a header could never carry.
        for bad in [" lead", "trail ", "tab\there", "é"] {
            let mut s = Settings::default();
            s.http.token = Some(bad.into());
            assert!(s.http.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_public_address_needs_a_token_or_an_explicit_opt_in() {
        let mut s = Settings::from_yaml("http:\n  address: 0.0.0.0:8760\n").unwrap();
        let e = s.http.validate().unwrap_err().to_string();
        assert!(
            e.contains("0.0.0.0:8760")
                && e.contains("allow_unauthenticated")
                && e.contains("PGAI_HTTP_ALLOW_UNAUTHENTICATED")
                && !e.contains('\n'),
            "{e}"
        );
        s.http.token = Some("t0ken".into());
        assert!(s.http.validate().is_ok());
        let s = Settings::from_yaml(
            "http:\n  address: \"[::]:8760\"\n  allow_unauthenticated: true\n  allowed_hosts: [embed.internal]\n",
        )
        .unwrap();
        assert!(s.http.validate().is_ok());
        let mut s = Settings::default();
        s.apply_env(|k| match k {
            "PGAI_HTTP" => Some("10.0.0.5:80".into()),
            "PGAI_HTTP_ALLOW_UNAUTHENTICATED" => Some("true".into()),
            "PGAI_HTTP_ALLOWED_HOSTS" => Some("a.internal, b.internal".into()),
            "PGAI_HTTP_MAX_WAITING" => Some("8".into()),
            "PGAI_HTTP_HEADER_TIMEOUT_SECS" => Some("2.5".into()),
            _ => None,
        })
        .unwrap();
        assert!(s.http.validate().is_ok());
        assert_eq!(s.http.allowed_hosts, ["a.internal", "b.internal"]);
        assert_eq!((s.http.max_waiting, s.http.header_timeout_secs), (8, 2.5));
        s.http.max_inputs = 0;
        assert!(s
            .http
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_inputs"));
        // Loopback addresses of both families need nothing.
        for a in ["127.0.0.1:1", "[::1]:1"] {
            let mut s = Settings::default();
            s.http.address = a.parse().unwrap();
            assert!(s.http.validate().is_ok(), "{a}");
        }
    }
}
