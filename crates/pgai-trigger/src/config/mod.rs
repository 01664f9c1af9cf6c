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
    redact_encoded_password_keys(&out)
}

/// A query key written percent-encoded (`pass%77ord=…`) still names a password.
fn redact_encoded_password_keys(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let mut out = url[..=q].to_string();
    for piece in url[q + 1..].split_inclusive('&') {
        let pair = piece.strip_suffix('&').unwrap_or(piece);
        match pair.split_once('=') {
            Some((key, _))
                if key.contains('%')
                    && percent_encoding::percent_decode_str(key)
                        .decode_utf8_lossy()
                        .ends_with("password") =>
            {
                out.push_str(key);
                out.push_str("=***");
                out.push_str(&piece[pair.len()..]);
            }
            _ => out.push_str(piece),
        }
    }
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
