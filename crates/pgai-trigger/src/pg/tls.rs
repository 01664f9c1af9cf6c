//! TLS to PostgreSQL with libpq's `sslmode` semantics, for tokio-postgres, on rustls.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and has no `sslrootcert`, and its
//! TLS connectors decide on their own what they verify. This module gives a connection string
//! the meaning it has for `psql`:
//!
//! | sslmode       | TLS                                            | server certificate check  |
//! |---------------|------------------------------------------------|---------------------------|
//! | `disable`     | never                                          | -                         |
//! | `allow`       | first without; with TLS if the server says no  | none; with a root cert, the CA |
//! | `prefer`      | if offered; without TLS if the handshake fails | none; with a root cert, the CA |
//! | `require`     | always                                         | none; with a root cert, the CA (libpq: "like verify-ca") |
//! | `verify-ca`   | always                                         | the chain up to the CA    |
//! | `verify-full` | always                                         | the chain and the host name |
//!
//! Without a root certificate, `prefer` and `require` only encrypt, as in libpq: anyone in the
//! middle can present any certificate.
//!
//! The options, as in libpq:
//! * `sslmode` (env `PGSSLMODE`), default `prefer`; `verify-full` when `sslrootcert=system`.
//! * `sslrootcert` (env `PGSSLROOTCERT`): a PEM file of CA certificates, or `system` for the
//!   operating system's trust store (rustls-native-certs; Mozilla's roots from webpki-roots when
//!   the store is empty). `system` demands `sslmode=verify-full`. When unset,
//!   `~/.postgresql/root.crt` is used if it exists.
//! * `sslcert` / `sslkey` (env `PGSSLCERT` / `PGSSLKEY`): a client certificate (PEM chain) and
//!   its unencrypted PEM key. When unset, `~/.postgresql/postgresql.crt` and `.key` are used if
//!   the certificate exists.
//!
//! A value in the connection string wins over the environment; an empty one means the default.
//! The four variables and `HOME` are read once, on the first connection string this process
//! parses ([`process_env`]): they are the environment of every connection string, as for libpq,
//! and a daemon that reconnects for days keeps the settings it started with.
//! TLS is never used over Unix-domain sockets, whatever the sslmode (as in libpq).
//!
//! Where this differs from libpq, on purpose:
//! * An `sslrootcert`, `sslcert` or `sslkey` that is named but cannot be read is an error
//!   (libpq quietly goes on without it, i.e. without verifying). The `~/.postgresql` defaults
//!   are used only when they exist, as in libpq.
//! * Encrypted client keys (`sslpassword`), CRLs (`sslcrl`), `sslcertmode`, `sslsni`, the
//!   `ssl_*_protocol_version` options are not supported: tokio-postgres rejects them as
//!   unknown options. TLS 1.2 and 1.3 are offered.
//!
//! `pg` uses [`split_url`] on every URL, then [`connect`] (or [`connect_with`] and a connector
//! made once, for the store's pool) for every connection: they implement the second attempts of
//! `allow` and `prefer` for every connection the product opens, pooled ones included.
//! [`describe`] turns a TLS failure inside a `tokio_postgres::Error` into one line that says
//! what is wrong.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};

pub use tokio_postgres_rustls::MakeRustlsConnect;

/// The stream a connection made with [`MakeRustlsConnect`] runs on when TLS is in use.
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// The connection half returned by [`connect`]: one type whether TLS is used or not.
pub type PgConnection = tokio_postgres::Connection<Socket, TlsStream>;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// First try without TLS; if the server refuses that connection, try again with TLS.
    /// [`connect`] implements both attempts; [`split_url`]'s `Config` alone acts as `prefer`.
    Allow,
    /// TLS if the server offers it; if the TLS attempt fails, try again without TLS.
    /// Libpq's default.
    #[default]
    Prefer,
    /// TLS or nothing. Verifies the CA only when a root certificate is given.
    Require,
    /// TLS, and the server's certificate must chain up to the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must also name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling: `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn is_verify(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(TlsError::Config(format!(
                    "invalid sslmode '{s}' (expected disable, allow, prefer, require, verify-ca \
                     or verify-full)"
                )))
            }
        })
    }
}

/// Where the CA certificates that verify the server come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file with one or more CA certificates (`sslrootcert=/path/ca.pem`).
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// A client certificate to present to the server (`sslcert` + `sslkey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM file: the certificate, optionally followed by its intermediates.
    pub cert: PathBuf,
    /// PEM file: the unencrypted private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The TLS half of a connection string, resolved against the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The sslmode asked for.
    pub mode: SslMode,
    /// The CAs that verify the server; `None`: no verification (possible below `verify-ca`).
    pub root_cert: Option<RootCert>,
    /// The client certificate, if any.
    pub client_cert: Option<ClientCert>,
}

/// What the server's certificate is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verification {
    /// Nothing: the connection is encrypted, not authenticated.
    None,
    /// The chain up to a root certificate (libpq's verify-ca).
    Chain,
    /// The chain and the host name (libpq's verify-full).
    ChainAndHost,
}

impl TlsSettings {
    fn verification(&self) -> Verification {
        match self.mode {
            SslMode::VerifyFull => Verification::ChainAndHost,
            SslMode::VerifyCa => Verification::Chain,
            // libpq: with a root certificate at hand, every mode that uses TLS checks the chain
            // ("require with an sslrootcert behaves like verify-ca").
            SslMode::Allow | SslMode::Prefer | SslMode::Require if self.root_cert.is_some() => {
                Verification::Chain
            }
            _ => Verification::None,
        }
    }

    /// "sslmode=..." for messages, saying why a weaker mode checked the CA at all.
    fn mode_label(&self) -> String {
        match (self.mode.is_verify(), self.verification()) {
            (false, Verification::Chain) => format!(
                "sslmode={}, which checks the CA because sslrootcert is set",
                self.mode
            ),
            _ => format!("sslmode={}", self.mode),
        }
    }
}

/// Everything that can go wrong here, each as one line (`Display`).
#[derive(Debug)]
pub enum TlsError {
    /// The connection string or a `PG*` variable is invalid; nothing was tried.
    Config(String),
    /// A certificate or key file cannot be used; nothing was tried.
    File(String),
    /// Connecting failed; its `message` says why in one line.
    Connect(ConnectFailure),
}

/// A failed [`connect`] / [`connect_with`].
#[derive(Debug)]
pub struct ConnectFailure {
    /// One line: [`describe`]'s for TLS failures, else the error with its causes; both
    /// attempts' for `allow` and `prefer` when both failed.
    pub message: String,
    /// The (last) error of tokio-postgres.
    pub source: tokio_postgres::Error,
    /// True when an attempt failed at TLS (the handshake, the certificate, a server without
    /// TLS), false for plain connection errors.
    pub tls_failed: bool,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Config(m) | TlsError::File(m) => f.write_str(m),
            TlsError::Connect(failure) => f.write_str(&failure.message),
        }
    }
}

impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            TlsError::Connect(failure) => Some(&failure.source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection strings
// ---------------------------------------------------------------------------------------------

/// The options this module takes out of the connection string, before tokio-postgres sees it.
const TLS_OPTIONS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Raw values of [`TLS_OPTIONS`] found in a connection string (the last one wins, as in libpq).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsOptions {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => self.sslcert = Some(value),
            "sslkey" => self.sslkey = Some(value),
            _ => unreachable!("not a TLS option: {key}"),
        }
    }
}

/// Splits a libpq connection string, URL (`postgresql://u@h:5432/db?sslmode=verify-full&...`)
/// or key=value (`host=h sslmode=require ...`), into the tokio-postgres `Config` of everything
/// but the TLS options, and the [`TlsSettings`] from those (falling back to `PGSSLMODE`,
/// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` and the `~/.postgresql` files).
///
/// The `Config`'s own sslmode is set for a single attempt: `disable` for `disable` (and for
/// Unix-socket-only hosts), `prefer` for `allow`/`prefer`, `require` for the rest; the
/// certificate checks live in [`make_tls_connect`]'s connector.
pub fn split_url(url: &str) -> Result<(Config, TlsSettings), TlsError> {
    split_url_with_env(url, &process_env)
}

/// The variables [`split_url`] reads: libpq's four and `HOME` (for `~/.postgresql`).
const ENV_VARS: [&str; 5] = [
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "HOME",
];

/// This process's value of one of [`ENV_VARS`], as it was when the first connection string was
/// parsed: read once, then the same for every connection (see the module documentation).
fn process_env(name: &str) -> Option<String> {
    static ENV: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        ENV_VARS
            .iter()
            .filter_map(|&var| std::env::var(var).ok().map(|value| (var, value)))
            .collect()
    })
    .iter()
    .find(|(var, _)| *var == name)
    .map(|(_, value)| value.clone())
}

/// [`split_url`] with the environment passed in (unit tests must not touch the real one).
fn split_url_with_env(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, TlsSettings), TlsError> {
    let (rest, options) = if is_url(url) {
        strip_url(url)?
    } else {
        strip_key_value(url)
    };
    let mut config: Config = rest
        .parse()
        // "invalid connection string: invalid value for option `port`" (Display alone stops
        // before the cause).
        .map_err(|e| TlsError::Config(chain_line(&e)))?;
    let settings = resolve(options, env)?;
    config.ssl_mode(single_attempt_mode(settings.mode, &config));
    Ok((config, settings))
}

/// The prefixes tokio-postgres (and libpq) take for the URL form.
fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Removes the TLS options from a URL's query string; everything else is kept byte for byte.
fn strip_url(url: &str) -> Result<(String, TlsOptions), TlsError> {
    // Like tokio-postgres: the user info runs to the first '@', the query starts at the first
    // '?' after it.
    let after_at = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_at..].find('?').map(|i| after_at + i) else {
        return Ok((url.to_owned(), TlsOptions::default()));
    };
    let mut options = TlsOptions::default();
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        if TLS_OPTIONS.contains(&key.as_str()) {
            options.set(&key, percent_decode(value)?);
        } else {
            kept.push(pair);
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, options))
}

fn percent_decode(s: &str) -> Result<String, TlsError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| TlsError::Config(format!("invalid connection string: '{s}' is not UTF-8")))
}

/// Removes the TLS options from a key=value string, with the grammar of libpq and
/// tokio-postgres (`key = value`, `key='quoted \' value'`, backslash escapes). The other pairs
/// are kept as written. On anything malformed it stops and keeps the rest as it is, for
/// tokio-postgres to report.
fn strip_key_value(s: &str) -> (String, TlsOptions) {
    let mut options = TlsOptions::default();
    let mut kept: Vec<&str> = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    // The grammar's special characters are ASCII, so byte positions are always char boundaries.
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_ws(i);
        let parsed = if key.is_empty() || i == bytes.len() || bytes[i] != b'=' {
            None
        } else {
            read_value(s, skip_ws(i + 1))
        };
        let Some((value, end)) = parsed else {
            kept.push(&s[start..]);
            break;
        };
        if TLS_OPTIONS.contains(&key) {
            options.set(key, value);
        } else {
            kept.push(&s[start..end]);
        }
        i = end;
    }
    (kept.join(" "), options)
}

/// Reads a key=value value starting at byte `i`: returns it unescaped and the index after it.
fn read_value(s: &str, mut i: usize) -> Option<(String, usize)> {
    let bytes = s.as_bytes();
    let quoted = bytes.get(i) == Some(&b'\'');
    if quoted {
        i += 1;
    }
    let mut value = String::new();
    let mut chars = s[i..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\'' if quoted => return Some((value, i + at + 1)),
            c if !quoted && c.is_whitespace() => return Some((value, i + at)),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    // An unterminated quote, or a bare `key=` at the end, are tokio-postgres's to report.
    (!quoted && !value.is_empty()).then_some((value, s.len()))
}

/// Applies libpq's fallbacks and rules to the raw options.
fn resolve(
    options: TlsOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TlsSettings, TlsError> {
    // A value in the string wins over the environment; an empty one means the default.
    let pick = |given: Option<String>, var: &str| {
        let from_env = given.is_none();
        given
            .or_else(|| env(var))
            .filter(|v| !v.is_empty())
            .map(|v| (v, from_env))
    };
    let sslmode = pick(options.sslmode, "PGSSLMODE");
    let sslrootcert = pick(options.sslrootcert, "PGSSLROOTCERT").map(|(v, _)| v);
    let sslcert = pick(options.sslcert, "PGSSLCERT").map(|(v, _)| PathBuf::from(v));
    let sslkey = pick(options.sslkey, "PGSSLKEY").map(|(v, _)| PathBuf::from(v));
    let dot_postgresql = env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".postgresql"));
    let default_file = |name: &str| {
        dot_postgresql
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
    };

    let system = sslrootcert.as_deref() == Some("system");
    let mode = match &sslmode {
        Some((v, from_env)) => v.parse::<SslMode>().map_err(|e| match from_env {
            true => TlsError::Config(format!("{e} in PGSSLMODE")),
            false => e,
        })?,
        // libpq: sslrootcert=system makes verify-full the default.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if mode == SslMode::Disable {
        return Ok(TlsSettings {
            mode,
            root_cert: None,
            client_cert: None,
        });
    }

    let root_cert = match sslrootcert {
        Some(_) if system => {
            if mode != SslMode::VerifyFull {
                return Err(TlsError::Config(format!(
                    "TLS: weak sslmode={mode} may not be used with sslrootcert=system (use \
                     verify-full)"
                )));
            }
            Some(RootCert::System)
        }
        Some(path) => Some(RootCert::File(path.into())),
        None => default_file("root.crt").map(RootCert::File),
    };
    if mode.is_verify() && root_cert.is_none() {
        return Err(TlsError::Config(format!(
            "TLS: sslmode={mode} needs the CA that signed the server's certificate: set \
             sslrootcert=/path/to/ca.pem (or PGSSLROOTCERT), or sslrootcert=system for the \
             system's trusted CAs"
        )));
    }

    let default_key = || {
        dot_postgresql
            .as_ref()
            .map(|d| d.join("postgresql.key"))
            .unwrap_or_else(|| PathBuf::from("postgresql.key"))
    };
    let client_cert = match (sslcert, sslkey) {
        (Some(cert), key) => Some(ClientCert {
            cert,
            key: key.unwrap_or_else(default_key),
        }),
        (None, key) => match default_file("postgresql.crt") {
            Some(cert) => Some(ClientCert {
                cert,
                key: key.unwrap_or_else(default_key),
            }),
            None if key.is_some() => {
                return Err(TlsError::Config(
                    "TLS: sslkey is set but sslcert is not: set both for a client certificate"
                        .into(),
                ))
            }
            None => None,
        },
    };

    Ok(TlsSettings {
        mode,
        root_cert,
        client_cert,
    })
}

/// tokio-postgres's sslmode for one attempt of `mode`.
fn single_attempt_mode(mode: SslMode, config: &Config) -> PgSslMode {
    if unix_sockets_only(config) {
        return PgSslMode::Disable;
    }
    match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    }
}

/// True when every host is a Unix-domain socket: PostgreSQL has no TLS there, and libpq does
/// not ask for it whatever the sslmode.
fn unix_sockets_only(config: &Config) -> bool {
    #[cfg(unix)]
    {
        !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The connector
// ---------------------------------------------------------------------------------------------

/// Builds the rustls connector for `tls`: reads the root and client certificate files (errors
/// name the file) and installs the verifier that matches the sslmode. Pass it to
/// `Config::connect`; with `ssl_mode(Disable)` it is never used.
pub fn make_tls_connect(tls: &TlsSettings) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verification = if tls.mode == SslMode::Disable {
        Verification::None
    } else {
        tls.verification()
    };
    let (roots, ca) = match (&tls.root_cert, verification) {
        (_, Verification::None) => (None, String::new()),
        (Some(RootCert::File(path)), _) => (
            Some(load_root_file(path)?),
            format!("the CA in {}", path.display()),
        ),
        (Some(RootCert::System), _) => (Some(system_roots()), "the system's trusted CAs".into()),
        (None, _) => {
            return Err(TlsError::Config(format!(
                "TLS: sslmode={} needs a root certificate (sslrootcert)",
                tls.mode
            )))
        }
    };
    let verifier = PgVerifier {
        roots: roots.map(Arc::new),
        check_host: verification == Verification::ChainAndHost,
        algorithms: provider.signature_verification_algorithms,
        ca,
        mode: tls.mode_label(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match &tls.client_cert {
        Some(client) if tls.mode != SslMode::Disable => {
            let (chain, key) = load_client_cert(client)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::File(format!(
                    "TLS: cannot use sslcert {} with sslkey {}: {e}",
                    client.cert.display(),
                    client.key.display()
                ))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Reads a file for `option`, with an error that names both.
fn read_file(option: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::NotFound => "no such file".to_owned(),
            io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        TlsError::File(format!(
            "TLS: cannot read {option} {}: {why}",
            path.display()
        ))
    })
}

/// The CA certificates of a PEM file.
fn load_root_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read_file("sslrootcert", path)?;
    let bad = |why: String| TlsError::File(format!("TLS: sslrootcert {}: {why}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a valid PEM file ({e})")))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(
            "no usable CA certificate in it (expected PEM '-----BEGIN CERTIFICATE-----')".into(),
        ));
    }
    Ok(roots)
}

/// The operating system's trust store; Mozilla's roots (webpki-roots) when it yields nothing.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The client certificate chain and key.
fn load_client_cert(
    client: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = read_file("sslcert", &client.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            TlsError::File(format!(
                "TLS: sslcert {}: no PEM certificate in it",
                client.cert.display()
            ))
        })?;
    let pem = read_file("sslkey", &client.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        TlsError::File(format!(
            "TLS: sslkey {}: no unencrypted PEM private key in it (encrypted keys are not \
             supported)",
            client.key.display()
        ))
    })?;
    Ok((chain, key))
}

/// The server certificate check, per sslmode (see [`Verification`]).
///
/// rustls's own `WebPkiServerVerifier` always checks the host name; libpq's verify-ca does not,
/// and require/prefer without a root certificate check nothing. Handshake signatures are always
/// verified: the server must hold the key of the certificate it shows.
#[derive(Debug)]
struct PgVerifier {
    /// `None`: accept any certificate.
    roots: Option<Arc<RootCertStore>>,
    check_host: bool,
    algorithms: WebPkiSupportedAlgorithms,
    /// "the CA in /x/ca.pem", for messages.
    ca: String,
    /// "sslmode=verify-full", for messages.
    mode: String,
}

/// A rejected server certificate, with the whole story in its message. It travels inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))` up to [`describe`].
#[derive(Debug)]
struct CertRejected(String);

impl fmt::Display for CertRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for CertRejected {}

impl PgVerifier {
    fn reject(&self, error: &rustls::Error, host: &ServerName<'_>) -> rustls::Error {
        use CertificateError as C;
        let what = match error {
            rustls::Error::InvalidCertificate(e) => match e {
                C::UnknownIssuer | C::BadSignature => {
                    format!("the server's certificate is not signed by {}", self.ca)
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    let mut m = format!(
                        "the server's certificate is not valid for host '{}'",
                        host.to_str()
                    );
                    if let C::NotValidForNameContext { presented, .. } = e {
                        let names: Vec<_> = presented.iter().map(|n| pretty_name(n)).collect();
                        m.push_str(&format!(" (it names: {})", names.join(", ")));
                    }
                    m
                }
                C::Expired | C::ExpiredContext { .. } => {
                    "the server's certificate has expired".into()
                }
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "the server's certificate is not valid yet".into()
                }
                _ => format!("the server's certificate is rejected: {error}"),
            },
            _ => format!("the server's certificate is rejected: {error}"),
        };
        let message = format!("{what} ({})", self.mode);
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            CertRejected(message),
        ))))
    }
}

/// `DnsName("localhost")` → `DNS:localhost`, `IpAddress(127.0.0.1)` → `IP:127.0.0.1` (webpki's
/// Debug spelling of subjectAltName entries).
fn pretty_name(name: &str) -> String {
    if let Some(dns) = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
    {
        format!("DNS:{dns}")
    } else if let Some(ip) = name
        .strip_prefix("IpAddress(")
        .and_then(|n| n.strip_suffix(')'))
    {
        format!("IP:{ip}")
    } else {
        name.to_owned()
    }
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let reject = |e: rustls::Error| self.reject(&e, server_name);
        let cert = ParsedCertificate::try_from(end_entity).map_err(reject)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(reject)?;
        if self.check_host {
            verify_server_name(&cert, server_name).map_err(reject)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting and errors
// ---------------------------------------------------------------------------------------------

/// Connects as libpq would with `tls`: one attempt, plus libpq's second one for `allow` (with
/// TLS when the server refused the plain connection) and `prefer` (without TLS when the TLS
/// handshake failed). `config`'s own sslmode is ignored. Spawn the returned connection.
pub async fn connect(
    config: &Config,
    tls: &TlsSettings,
) -> Result<(Client, PgConnection), TlsError> {
    connect_with(config, tls, make_tls_connect(tls)?)
        .await
        .map_err(TlsError::Connect)
}

/// [`connect`] with a connector made by [`make_tls_connect`] for `tls` beforehand (the pool makes
/// one, reading the certificate files once).
pub async fn connect_with(
    config: &Config,
    tls: &TlsSettings,
    connector: MakeRustlsConnect,
) -> Result<(Client, PgConnection), ConnectFailure> {
    let mut config = config.clone();
    let unix = unix_sockets_only(&config);
    let first = match tls.mode {
        SslMode::Allow => PgSslMode::Disable,
        mode => single_attempt_mode(mode, &config),
    };
    config.ssl_mode(first);
    let error = match config.connect(connector.clone()).await {
        Ok(pair) => return Ok(pair),
        Err(e) => e,
    };
    let retry = match tls.mode {
        _ if unix => None,
        // libpq retries `allow` with TLS when the server sent an error (e.g. "SSL required").
        SslMode::Allow if error.as_db_error().is_some() => Some(PgSslMode::Require),
        SslMode::Prefer if is_tls_failure(&error) => Some(PgSslMode::Disable),
        _ => None,
    };
    let first_message = message_with(&error, Some(tls));
    let first_tls = describe_with(&error, Some(tls)).is_some();
    let Some(retry) = retry else {
        return Err(ConnectFailure {
            message: first_message,
            source: error,
            tls_failed: first_tls,
        });
    };
    config.ssl_mode(retry);
    config.connect(connector).await.map_err(|second| {
        let how = match retry {
            PgSslMode::Disable => "without TLS",
            _ => "with TLS",
        };
        let second_message = message_with(&second, Some(tls));
        ConnectFailure {
            tls_failed: first_tls || describe_with(&second, Some(tls)).is_some(),
            message: format!("{first_message}; then {how}: {second_message}"),
            source: second,
        }
    })
}

/// tokio-postgres's word for a failed TLS negotiation (its error kinds are private).
const TLS_FAILURE: &str = "error performing TLS handshake";

fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string().starts_with(TLS_FAILURE)
}

/// One line that says what is wrong, when `e` is a TLS failure; `None` for anything else.
///
/// E.g. "TLS: the server's certificate is not signed by the CA in /x/ca.pem
/// (sslmode=verify-full)" or "TLS: the server does not support TLS, but the sslmode requires
/// it". [`connect`]'s errors already carry these lines.
pub fn describe(e: &tokio_postgres::Error) -> Option<String> {
    describe_with(e, None)
}

fn describe_with(e: &tokio_postgres::Error, tls: Option<&TlsSettings>) -> Option<String> {
    if let Some(rejected) = find::<CertRejected>(e) {
        return Some(format!("TLS: {rejected}"));
    }
    // Not only during the handshake: in TLS 1.3 the server checks the client's certificate
    // after the client is done, so its alert comes with the first read of the session.
    if let Some(r) = find::<rustls::Error>(e) {
        return Some(match r {
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                "TLS: the server requires a client certificate (set sslcert and sslkey)".into()
            }
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied),
            ) => match tls.and_then(|t| t.client_cert.as_ref()) {
                Some(c) => format!(
                    "TLS: the server rejected the client certificate {} (alert {alert:?})",
                    c.cert.display()
                ),
                None => format!("TLS: the server ended the handshake with the alert {alert:?}"),
            },
            other => format!("TLS: handshake failed: {other}"),
        });
    }
    if !is_tls_failure(e) {
        return None;
    }
    let cause = e.source().map(|s| s.to_string()).unwrap_or_default();
    Some(match cause.as_str() {
        "server does not support TLS" => match tls {
            Some(t) => format!(
                "TLS: the server does not support TLS but sslmode={}",
                t.mode
            ),
            None => "TLS: the server does not support TLS, but the sslmode requires it".into(),
        },
        "no hostname provided for TLS handshake" => {
            "TLS: no host name to check the server's certificate against (hostaddr is set \
             without host)"
                .into()
        }
        _ if find::<io::Error>(e).map(io::Error::kind) == Some(io::ErrorKind::UnexpectedEof) => {
            "TLS: the server closed the connection during the TLS handshake".into()
        }
        _ => format!("TLS: {}", chain_line(e)),
    })
}

/// [`describe`]'s line for a TLS failure, else `e` with its causes on one line (tokio-postgres's
/// own `Display` leaves the causes out: "db error", "error connecting to server").
fn message_with(e: &tokio_postgres::Error, tls: Option<&TlsSettings>) -> String {
    describe_with(e, tls).unwrap_or_else(|| chain_line(e))
}

/// "error connecting to server: Connection refused (os error 111)"; for a server error
/// "FATAL: SSL required" (DETAIL and HINT on the same line).
fn chain_line(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string().replace('\n', " ");
    }
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        next = cause.source();
    }
    line
}

/// The first `T` in `e`'s source chain, looking inside `io::Error`s too (whose `source()` skips
/// the error they wrap, where tokio-rustls puts the `rustls::Error`).
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
        {
            if let Some(t) = find::<T>(&*other.0) {
                return Some(t);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `split_url` against a fake environment.
    fn split(url: &str, env: &[(&str, &str)]) -> Result<(Config, TlsSettings), TlsError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        split_url_with_env(url, &move |k: &str| env.get(k).cloned())
    }

    fn settings(url: &str, env: &[(&str, &str)]) -> TlsSettings {
        split(url, env).unwrap().1
    }

    fn error(url: &str, env: &[(&str, &str)]) -> String {
        split(url, env).unwrap_err().to_string()
    }

    fn file(path: &str) -> Option<RootCert> {
        Some(RootCert::File(path.into()))
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_parsed() {
        let (config, tls) = split(
            "postgresql://u:p%3Fw@db.example:6432/app?sslmode=verify-full&application_name=x\
             &sslrootcert=%2Fx%2Fca.pem&connect_timeout=5",
            &[],
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, file("/x/ca.pem"));
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_ports(), &[6432]);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(config.get_ssl_mode(), PgSslMode::Require);
    }

    #[test]
    fn url_split_keeps_other_parameters_verbatim() {
        let (rest, options) =
            strip_url("postgres://h/db?sslmode=require&options=-c%20x%3D1&sslkey=k").unwrap();
        assert_eq!(rest, "postgres://h/db?options=-c%20x%3D1");
        assert_eq!(options.sslmode.as_deref(), Some("require"));
        assert_eq!(options.sslkey.as_deref(), Some("k"));
        let (rest, options) = strip_url("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(options.sslmode.as_deref(), Some("disable"));
        // A '?' inside the password is not the query.
        let (rest, options) = strip_url("postgres://u:a?b@h/db").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(options, TlsOptions::default());
    }

    #[test]
    fn key_value_options_are_taken_out() {
        let (config, tls) = split(
            "host=db.example sslmode = verify-ca user=u sslrootcert='/a dir/ca.pem' \
             password='it\\'s' dbname=app",
            &[],
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert, file("/a dir/ca.pem"));
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_ssl_mode(), PgSslMode::Require);

        let (rest, options) = strip_key_value("host=h  sslmode=require   port=1 sslcert=a\\ b");
        assert_eq!(rest, "host=h port=1");
        assert_eq!(options.sslmode.as_deref(), Some("require"));
        assert_eq!(options.sslcert.as_deref(), Some("a b"));
    }

    #[test]
    fn malformed_strings_are_left_to_tokio_postgres() {
        assert!(error("host=h password='open", &[]).starts_with("invalid connection string"));
        assert!(error("host=h nonsense", &[]).starts_with("invalid connection string"));
        assert!(error("host=h bogus=1", &[]).starts_with("invalid connection string"));
        let e = error("host=h sslmode=maybe", &[]);
        assert!(e.starts_with("invalid sslmode 'maybe'"), "{e}");
    }

    #[test]
    fn default_is_prefer_and_environment_fills_gaps() {
        let tls = settings("host=h", &[]);
        assert_eq!(tls, TlsSettings::default());
        assert_eq!(tls.mode, SslMode::Prefer);

        let env = [("PGSSLMODE", "require"), ("PGSSLROOTCERT", "/env/ca.pem")];
        let tls = settings("host=h", &env);
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert, file("/env/ca.pem"));

        // The string wins over the environment, option by option.
        let tls = settings("postgres://h/db?sslmode=verify-full", &env);
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, file("/env/ca.pem"));
        let tls = settings("host=h sslrootcert=/url/ca.pem", &env);
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert, file("/url/ca.pem"));

        // Empty counts as unset.
        assert_eq!(
            settings("host=h", &[("PGSSLMODE", "")]).mode,
            SslMode::Prefer
        );

        let e = error("host=h", &[("PGSSLMODE", "on")]);
        assert!(e.contains("in PGSSLMODE"), "{e}");
    }

    #[test]
    fn require_with_root_cert_verifies_the_ca() {
        let tls = settings("host=h sslmode=require sslrootcert=/x/ca.pem", &[]);
        assert_eq!(tls.verification(), Verification::Chain);
        assert_eq!(
            tls.mode_label(),
            "sslmode=require, which checks the CA because sslrootcert is set"
        );
        let tls = settings("host=h sslmode=require", &[]);
        assert_eq!(tls.verification(), Verification::None);
        let tls = settings("host=h sslmode=verify-ca sslrootcert=/x/ca.pem", &[]);
        assert_eq!(tls.verification(), Verification::Chain);
        let tls = settings("host=h sslmode=verify-full sslrootcert=/x/ca.pem", &[]);
        assert_eq!(tls.verification(), Verification::ChainAndHost);
    }

    #[test]
    fn verify_modes_need_a_root_cert() {
        let e = error("host=h sslmode=verify-full", &[]);
        assert!(
            e.starts_with("TLS: sslmode=verify-full needs the CA"),
            "{e}"
        );
        let e = error("host=h", &[("PGSSLMODE", "verify-ca")]);
        assert!(e.starts_with("TLS: sslmode=verify-ca needs the CA"), "{e}");
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let tls = settings("host=h sslrootcert=system", &[]);
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(RootCert::System));
        let e = error("host=h sslrootcert=system sslmode=require", &[]);
        assert!(e.contains("weak sslmode=require"), "{e}");
    }

    #[test]
    fn disable_ignores_certificates_and_unix_sockets_never_use_tls() {
        let (config, tls) = split("host=h sslmode=disable sslrootcert=/x", &[]).unwrap();
        assert_eq!(tls.root_cert, None);
        assert_eq!(config.get_ssl_mode(), PgSslMode::Disable);
        let (config, tls) = split("host=/run/postgresql sslmode=require", &[]).unwrap();
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(config.get_ssl_mode(), PgSslMode::Disable);
        let (config, _) = split("postgres://h/db?sslmode=allow", &[]).unwrap();
        assert_eq!(config.get_ssl_mode(), PgSslMode::Prefer);
    }

    #[test]
    fn home_defaults_and_client_certificates() {
        let home =
            std::env::temp_dir().join(format!("pgai-trigger-tls-home-{}", std::process::id()));
        let dot = home.join(".postgresql");
        std::fs::create_dir_all(&dot).unwrap();
        let env = [("HOME", home.to_str().unwrap())];
        assert_eq!(settings("host=h", &env).root_cert, None);

        std::fs::write(dot.join("root.crt"), "x").unwrap();
        std::fs::write(dot.join("postgresql.crt"), "x").unwrap();
        let tls = settings("host=h sslmode=require", &env);
        assert_eq!(
            tls.root_cert,
            Some(RootCert::File(dot.join("root.crt"))),
            "~/.postgresql/root.crt is used when it exists"
        );
        assert_eq!(tls.verification(), Verification::Chain);
        assert_eq!(
            tls.client_cert,
            Some(ClientCert {
                cert: dot.join("postgresql.crt"),
                key: dot.join("postgresql.key"),
            })
        );
        let tls = settings("host=h sslcert=/c.pem sslkey=/k.pem", &env);
        assert_eq!(
            tls.client_cert,
            Some(ClientCert {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
            })
        );
        std::fs::remove_dir_all(&home).unwrap();

        let e = error("host=h sslkey=/k.pem", &[]);
        assert!(e.contains("sslkey is set but sslcert is not"), "{e}");
    }

    #[test]
    fn unreadable_files_are_named() {
        let tls = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: file("/nonexistent/ca.pem"),
            client_cert: None,
        };
        let e = make_tls_connect(&tls).err().unwrap().to_string();
        assert_eq!(
            e,
            "TLS: cannot read sslrootcert /nonexistent/ca.pem: no such file"
        );
        // Not read at all when nothing is verified.
        let tls = TlsSettings {
            mode: SslMode::Disable,
            ..tls
        };
        assert!(make_tls_connect(&tls).is_ok());

        let not_pem =
            std::env::temp_dir().join(format!("pgai-trigger-tls-notpem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let tls = TlsSettings {
            mode: SslMode::Require,
            root_cert: Some(RootCert::File(not_pem.clone())),
            client_cert: None,
        };
        let e = make_tls_connect(&tls).err().unwrap().to_string();
        assert!(e.contains("no usable CA certificate"), "{e}");
        std::fs::remove_file(&not_pem).unwrap();
    }

    #[test]
    fn system_roots_load() {
        assert!(!system_roots().is_empty());
        let tls = settings("host=h sslrootcert=system", &[]);
        assert!(make_tls_connect(&tls).is_ok());
    }

    #[test]
    fn certificate_names_are_readable() {
        assert_eq!(pretty_name("DnsName(\"localhost\")"), "DNS:localhost");
        assert_eq!(pretty_name("IpAddress(127.0.0.1)"), "IP:127.0.0.1");
        assert_eq!(pretty_name("DirectoryName"), "DirectoryName");
    }
}
