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
    /// `?wait=true` requests (and library waits) waiting at once per store; more get 503.
    pub const HTTP_MAX_WAITING: usize = 256;
    /// Largest request body (axum's own default, made explicit); more gets 413.
    pub const HTTP_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
    /// Most inputs of one `/v1/embeddings` request (OpenAI's limit); more gets 413.
    pub const HTTP_MAX_INPUTS: usize = 2048;
    /// Most bytes of text of one `/v1/embeddings` request, all inputs together; more gets 413.
    pub const HTTP_MAX_INPUT_BYTES: usize = 1024 * 1024;
    /// A client must send a request's headers within this many seconds.
    pub const HTTP_HEADER_TIMEOUT_SECS: f64 = 10.0;
    pub const OPENAI_TIMEOUT_SECS: f64 = 30.0;
    pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
}

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
        if self.batch_size == 0 || self.batch_size > 4096 {
            return Err(Error::Config(format!(
                "batch_size must be between 1 and 4096, got {}",
                self.batch_size
            )));
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(Error::Config("poll_interval must be at least 10 ms".into()));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(Error::Config("lease must be at least 1 s".into()));
        }
        if self.max_retries < 1 {
            return Err(Error::Config("max_retries must be at least 1".into()));
        }
        self.database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| {
                Error::Config(format!(
                    "database URL {}: {e}",
                    redact_url(&self.database_url)
                ))
            })?;
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

/// The URL with any password replaced by `***`, for logs and errors. Covers the URL form
/// (`scheme://user:password@host`, including passwords with raw or percent-encoded `@ : / ? #`
/// or spaces, which is what a malformed URL's error message shows), `password=` and
/// `sslpassword=` query parameters, and the key=value form (`password=secret`,
/// `password = 'a b'`). When unsure, it redacts more rather than less.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (head, rest) = url.split_at(scheme_end + 3);
        let rest = redact_userinfo(rest);
        return format!("{head}{}", redact_query_passwords(&rest));
    }
    redact_key_value(url)
}

/// `user:password@hosts…` → `user:***@hosts…`. The userinfo ends at the last `@` (a password
/// may hold raw `@`, `/`, `?`, `#`); a `/`, `?` or `#` before the first `:` means that `@`
/// belongs to the path or query, not to a userinfo.
fn redact_userinfo(rest: &str) -> String {
    let Some(at) = rest.rfind('@') else {
        return rest.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) if !userinfo[..colon].contains(['/', '?', '#']) => {
            format!("{}:***{}", &userinfo[..colon], &rest[at..])
        }
        _ => rest.to_string(),
    }
}

/// Every `password=` (and `sslpassword=`) query value, up to the next `&` or `#`.
fn redact_query_passwords(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("password=") {
        let value = i + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(['&', '#'])
            .map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The index after the character at `j`, or after the escaped one when it is `\\`.
fn skip_char(s: &str, j: usize) -> usize {
    let mut chars = s[j..].chars();
    let mut len = chars.next().map_or(1, char::len_utf8);
    if s.as_bytes()[j] == b'\\' {
        len += chars.next().map_or(0, char::len_utf8);
    }
    j + len
}

/// libpq's key=value form: `password` (and `sslpassword`) values, quoted (`'a b'`, with `\'`
/// and `\\` escapes) or not, spaces around `=` allowed.
fn redact_key_value(conninfo: &str) -> String {
    let b = conninfo.as_bytes();
    let mut out = String::with_capacity(conninfo.len());
    let mut i = 0;
    while i < b.len() {
        // A keyword: a run of non-space, non-'=' characters.
        if b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let key_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &conninfo[key_start..i];
        out.push_str(key);
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'=' {
            continue;
        }
        out.push_str(&conninfo[i..=j]);
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            out.push(b[j] as char);
            j += 1;
        }
        // The value.
        let value_start = j;
        if j < b.len() && b[j] == b'\'' {
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j = skip_char(conninfo, j);
            }
            j = (j + 1).min(b.len());
        } else {
            while j < b.len() && !b[j].is_ascii_whitespace() {
                j = skip_char(conninfo, j);
            }
        }
        if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") {
            out.push_str("***");
        } else {
            out.push_str(&conninfo[value_start..j]);
        }
        i = j;
    }
    out
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
    fn redacts_passwords_with_any_characters() {
        // Percent-encoded reserved characters and spaces.
        for pw in ["p%40ss", "p%3Ass", "p%2Fss", "p%3Fss", "p%23ss", "p%20s s"] {
            let url = format!("postgresql://app:{pw}@db:5432/x?sslmode=disable");
            let r = redact_url(&url);
            assert_eq!(r, "postgresql://app:***@db:5432/x?sslmode=disable", "{url}");
        }
        // Raw reserved characters (a malformed URL, whose error message prints it).
        for pw in ["p@ss", "p:ss", "p/ss", "p?ss", "p#ss", "a b", "x@y/z?w#v:u"] {
            let url = format!("postgresql://app:{pw}@db/x");
            let r = redact_url(&url);
            assert_eq!(r, "postgresql://app:***@db/x", "{url}");
        }
        // An @ in the query is not a userinfo; query passwords, all of them.
        assert_eq!(
            redact_url("postgres://db/x?user=me@corp&password=s3cret&sslpassword=k3y#f"),
            "postgres://db/x?user=me@corp&password=***&sslpassword=***#f"
        );
        // key=value form: quoted values with spaces and escapes, spaces around '='.
        assert_eq!(
            redact_url("host=db password='a b' user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact_url(r"host=db password = 'it\'s a @b' user=x"),
            "host=db password = *** user=x"
        );
        assert_eq!(
            redact_url("password=s3cret sslpassword='k 3y' dbname=d"),
            "password=*** sslpassword=*** dbname=d"
        );
        assert_eq!(redact_url("password='unterminated"), "password=***");
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
    }
}
