//! Configuration: [`settings`] reads the YAML file and the environment (each variable once);
//! [`Config`] is the daemon's validated configuration built from them; [`defaults`] is the one
//! place every default value lives (the file's defaults, `Config::new` and the command line's
//! help all read it). Secrets never reach `Debug` or logs.

pub(crate) mod settings;

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::queue::Table;

/// Every default, in one place.
pub mod defaults {
    /// The table of the original design.
    pub const TABLE: &str = crate::queue::DEFAULT_TABLE;
    pub const IMMEDIATE_TRIGGER: bool = true;
    pub const POLL_INTERVAL_MS: u64 = 1000;
    pub const BATCH_SIZE: usize = 32;
    pub const LEASE_SECS: u64 = 30;
    pub const MAX_RETRIES: i32 = 3;
    pub const RETRY_INTERVAL_SECS: f64 = 5.0;
    pub const RETRY_CAP_SECS: u64 = 300;
    pub const HTTP_ADDRESS: ([u8; 4], u16) = ([127, 0, 0, 1], 8760);
    pub const OPENAI_TIMEOUT_SECS: f64 = 30.0;
    pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
}

/// Longest retry backoff (and retry interval) accepted.
const MAX_RETRY_SECS: Duration = Duration::from_secs(86_400);

/// Everything the daemon needs, validated once at start-up.
#[derive(Clone)]
pub struct Config {
    /// libpq-style URL or key=value string. Carries the password: printed only via [`redact_url`].
    pub database_url: String,
    /// The table the daemon keeps embedded.
    pub table: Table,
    /// LISTEN for `embedding_needed` (true) or poll only (false: PgBouncer transaction mode).
    pub immediate_trigger: bool,
    /// Fallback poll: a lost notification costs at most this long.
    pub poll_interval: Duration,
    /// Most rows one claim takes (one model batch).
    pub batch_size: usize,
    /// How long a claim is valid; a crashed holder's rows are taken over after it expires.
    pub lease: Duration,
    /// Attempts before a row is marked `failed` (the original design's `max_retries`).
    pub max_retries: i32,
    /// Base of the exponential retry backoff, in seconds (the original design's `retry_interval`).
    pub retry_interval: Duration,
    /// Upper bound of the retry backoff.
    pub retry_cap: Duration,
    /// Names this daemon in `claimed_by` and in `application_name`.
    pub worker_id: String,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            table: Table::default(),
            immediate_trigger: defaults::IMMEDIATE_TRIGGER,
            poll_interval: Duration::from_millis(defaults::POLL_INTERVAL_MS),
            batch_size: defaults::BATCH_SIZE,
            lease: Duration::from_secs(defaults::LEASE_SECS),
            max_retries: defaults::MAX_RETRIES,
            retry_interval: Duration::from_secs_f64(defaults::RETRY_INTERVAL_SECS),
            retry_cap: Duration::from_secs(defaults::RETRY_CAP_SECS),
            worker_id: default_worker_id(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(Error::Config(what)) };
        check(
            (1..=4096).contains(&self.batch_size),
            format!(
                "batch_size must be between 1 and 4096, got {}",
                self.batch_size
            ),
        )?;
        check(
            (Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.poll_interval),
            format!(
                "poll_interval must be between 10 ms and 1 h, got {} ms",
                self.poll_interval.as_millis()
            ),
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.lease),
            format!(
                "lease must be between 1 s and 1 day, got {} s",
                self.lease.as_secs_f64()
            ),
        )?;
        check(
            (1..=1000).contains(&self.max_retries),
            format!(
                "max_retries must be between 1 and 1000, got {}",
                self.max_retries
            ),
        )?;
        check(
            self.retry_interval <= MAX_RETRY_SECS && self.retry_cap <= MAX_RETRY_SECS,
            format!(
                "retry_interval and the retry cap must be at most 1 day, got {} s and {} s",
                self.retry_interval.as_secs_f64(),
                self.retry_cap.as_secs_f64()
            ),
        )?;
        // The URL as every connection reads it, TLS options (sslmode, ...) included.
        crate::pg::Target::new(&self.database_url, "")?;
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("table", &self.table)
            .field("immediate_trigger", &self.immediate_trigger)
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .field("lease", &self.lease)
            .field("max_retries", &self.max_retries)
            .field("retry_interval", &self.retry_interval)
            .field("worker_id", &self.worker_id)
            .finish()
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// The connection string with any password replaced by `***`, for logs and errors: the URL's
/// user info (up to its first '@', where tokio-postgres ends it), a `password` query parameter,
/// or a `password` key=value pair, quoted or not. Everything else (TLS options included) is
/// kept as written.
pub fn redact_url(url: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => redact_url_form(url, scheme_end + 3),
        None => redact_key_value(url),
    }
}

/// `scheme://[user[:password]@]host.../db?key=value&...`, the user info starting at `start`.
fn redact_url_form(url: &str, start: usize) -> String {
    let mut out = url[..start].to_string();
    let mut rest = &url[start..];
    if let Some(at) = rest.find('@') {
        let userinfo = &rest[..at];
        match userinfo.find(':') {
            Some(colon) => {
                out.push_str(&userinfo[..colon]);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    // The query starts at the first '?' and splits on '&' only (a '?' later is part of a
    // value). Without a '?' (a stray '@' in the query moved it into the user info) every '&'
    // still starts a pair.
    let (head, query) = match rest.find('?').or_else(|| rest.find('&')) {
        Some(q) => rest.split_at(q + 1),
        None => (rest, ""),
    };
    out.push_str(head);
    for piece in query.split_inclusive('&') {
        let pair = piece.strip_suffix('&').unwrap_or(piece);
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if percent_encoding::percent_decode_str(key).decode_utf8_lossy() == "password" {
            out.push_str(key);
            out.push_str("=***");
            out.push_str(&piece[pair.len()..]);
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// `key=value key = 'quoted \' value' ...`, libpq's grammar.
fn redact_key_value(s: &str) -> String {
    let bytes = s.as_bytes();
    let is_space = |i: usize| i < bytes.len() && bytes[i].is_ascii_whitespace();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    loop {
        let space_start = i;
        while is_space(i) {
            i += 1;
        }
        out.push_str(&s[space_start..i]);
        if i == bytes.len() {
            return out;
        }
        let key_start = i;
        while i < bytes.len() && !is_space(i) && bytes[i] != b'=' {
            i += 1;
        }
        let key = &s[key_start..i];
        while is_space(i) {
            i += 1;
        }
        if i == bytes.len() || bytes[i] != b'=' {
            // Malformed: tokio-postgres reports it; keep the rest unless it could hold the
            // password.
            out.push_str(if s[key_start..].contains("password") {
                "***"
            } else {
                &s[key_start..]
            });
            return out;
        }
        i += 1;
        while is_space(i) {
            i += 1;
        }
        let value_start = i;
        let quoted = bytes.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        // The grammar's special characters are ASCII: byte steps stay on char boundaries,
        // except after a backslash, which may escape any character.
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    i += 1;
                    while i < bytes.len() && !s.is_char_boundary(i + 1) {
                        i += 1;
                    }
                }
                b'\'' if quoted => {
                    i += 1;
                    break;
                }
                _ if !quoted && is_space(i) => break,
                _ => {}
            }
            i += 1;
        }
        let i_end = i.min(bytes.len());
        if key == "password" {
            out.push_str(&s[key_start..value_start]);
            out.push_str("***");
        } else {
            out.push_str(&s[key_start..i_end]);
        }
        i = i_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_every_form() {
        assert_eq!(
            redact_url("postgresql://app:s3cret@db:5432/x"),
            "postgresql://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgresql://app@db/x"), "postgresql://app@db/x");
        assert_eq!(
            redact_url("postgres://db/x?user=a&password=s3cret&sslmode=disable"),
            "postgres://db/x?user=a&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db password=s3cret user=a"),
            "host=db password=*** user=a"
        );
        assert!(!format!("{:?}", Config::new("postgresql://a:s3cret@h/d")).contains("s3cret"));
    }

    #[test]
    fn redacts_passwords_next_to_tls_options() {
        let ca = "sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem";
        assert_eq!(
            redact_url(&format!("postgresql://app:s3cret@db:5432/x?{ca}")),
            format!("postgresql://app:***@db:5432/x?{ca}")
        );
        assert_eq!(
            redact_url(&format!(
                "postgresql://db/x?{ca}&password=s3cret&sslkey=/k.pem"
            )),
            format!("postgresql://db/x?{ca}&password=***&sslkey=/k.pem")
        );
        assert_eq!(
            redact_url("postgresql://db/x?password=s3?cr&et&sslmode=require"),
            "postgresql://db/x?password=***&et&sslmode=require"
        );
        assert_eq!(
            redact_url(&format!("postgresql://db/x?pass%77ord=s3cret&{ca}")),
            format!("postgresql://db/x?pass%77ord=***&{ca}")
        );
        // A '/' or '?' in the password: the user info runs to the first '@'.
        assert_eq!(
            redact_url("postgresql://app:s3/c?ret@db/x?sslmode=require"),
            "postgresql://app:***@db/x?sslmode=require"
        );
        // tokio-postgres would read "db/x?sslrootcert=/a" as the user: the query still counts.
        assert!(
            !redact_url("postgresql://db/x?sslrootcert=/a@b/ca.pem&password=s3cret")
                .contains("s3cret")
        );
        assert_eq!(
            redact_url(
                "host=db sslmode=require sslrootcert='/a dir/ca.pem' password = 's3 \\'c' user=a"
            ),
            "host=db sslmode=require sslrootcert='/a dir/ca.pem' password = *** user=a"
        );
        assert_eq!(
            redact_url("host=db password=s3\\ cret sslmode=verify-ca"),
            "host=db password=*** sslmode=verify-ca"
        );
        assert_eq!(
            redact_url("host=db password='s3cret"),
            "host=db password=***"
        );
        assert_eq!(redact_url("host=db password"), "host=db ***");
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut c = Config::new("postgresql://a@h/d");
        assert!(c.validate().is_ok());
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        let c = Config::new("postgresql://a:pw@h:notaport/d");
        let msg = c.validate().unwrap_err().to_string();
        assert!(!msg.contains("pw@"), "{msg}");
        assert!(msg.contains("`port`"), "{msg}");
        let c = Config::new("postgresql://a:pw@h/d?sslmode=bogus&sslrootcert=/x.pem");
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: database URL postgresql://a:***@h/d?sslmode=bogus\
             &sslrootcert=/x.pem: invalid sslmode 'bogus' (expected disable, allow, prefer, \
             require, verify-ca or verify-full)"
        );
        assert!(
            Config::new("postgresql://a@h/d?sslmode=verify-full&sslrootcert=/x.pem")
                .validate()
                .is_ok()
        );
    }
}
