//! The second provider: any OpenAI-compatible `POST /v1/embeddings` endpoint (OpenAI, Ollama,
//! vLLM, text-embeddings-inference, or another pgai-trigger's own `/v1/embeddings`).
//!
//! Synchronous HTTP (ureq): the [`Embedder`] trait runs on the model thread, never on the async
//! runtime. The dimension is learnt once at construction (a probe request, or the configured
//! `dimensions` checked against the probe), so the daemon's schema check compares it with the
//! table's vector column before any row is claimed.
//!
//! Credentials (the API key, a `user:password@` in the URL, key-like query parameters) never
//! reach an error message, and so never a row's `last_error` or a log line. An answer's size is
//! bounded in proportion to the vectors asked for.

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;

use crate::error::one_line;
use crate::{EmbedError, Embedder};

/// Where and how to reach the endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL (`https://api.openai.com/v1`, `http://localhost:11434/v1`) or the full
    /// `…/embeddings` URL.
    pub url: String,
    /// The `model` field of each request.
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set. Never printed.
    pub api_key: Option<String>,
    /// Whole-request timeout (connect included).
    pub timeout: Duration,
    /// Expected dimension. When set it is also sent as the request's `dimensions` field (OpenAI's
    /// `text-embedding-3-*` shorten their vectors to it); every answer is checked against it.
    pub dimensions: Option<usize>,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("url", &redact_endpoint(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("dimensions", &self.dimensions)
            .finish()
    }
}

impl OpenAiConfig {
    /// The URL requests go to.
    pub fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with("/embeddings") {
            base.to_string()
        } else {
            format!("{base}/embeddings")
        }
    }
}

/// `url` with any userinfo (`user:password@`, or a token as user name) and the values of
/// key-like query parameters replaced by `***`: what errors show of the endpoint.
pub fn redact_endpoint(url: &str) -> String {
    let Some(i) = url.find("://") else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(i + 3);
    // The userinfo ends at the last '@' (a password may hold raw '/', '?', '#', '@'). When
    // unsure ("h:8080/v1?user=a@b") this hides more than the userinfo, never less.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest
        .rfind('@')
        .filter(|&at| rest[..authority_end].contains('@') || rest[..at].contains(':'));
    let rest = match at {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    let Some(q) = rest.find('?') else {
        return format!("{head}{rest}");
    };
    let (path, query) = rest.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}{path}{}{fragment}", query.join("&"))
}

fn is_secret_name(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["key", "token", "secret", "password", "sig", "auth"]
        .iter()
        .any(|s| k.contains(s))
}

/// Largest error body read from the endpoint (only its message is kept).
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Largest answer for `texts` vectors of `dim` dimensions: 32 bytes a float is more than any
/// JSON float takes, plus room for the envelope.
fn max_answer_bytes(texts: usize, dim: usize) -> u64 {
    64 * 1024 + texts as u64 * (dim as u64 * 32 + 256)
}

/// At most `limit` bytes of `reader`, or `None` when there are more.
fn read_bounded(reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    reader.take(limit + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// An [`Embedder`] backed by a remote OpenAI-compatible endpoint.
pub struct OpenAiEmbedder {
    agent: ureq::Agent,
    config: OpenAiConfig,
    endpoint: String,
    /// The endpoint as errors show it ([`redact_endpoint`]).
    shown: String,
    /// Strings that must never appear in a message: the key, the URL's userinfo parts.
    secrets: Vec<String>,
    dim: usize,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl OpenAiEmbedder {
    /// Connects and learns the dimension with one probe request. Fails (one line, classified)
    /// when the endpoint is unreachable, refuses the credentials or model, or answers a
    /// dimension other than `config.dimensions`.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiEmbedder, EmbedError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.timeout.min(Duration::from_secs(10)))
            .timeout(config.timeout)
            .build();
        let endpoint = config.endpoint();
        let shown = redact_endpoint(&endpoint);
        let secrets = secrets_of(&config);
        let mut e = OpenAiEmbedder {
            agent,
            endpoint,
            shown,
            secrets,
            dim: 0,
            config,
        };
        let probe = e.request(&["dimension probe"])?;
        let got = probe[0].len();
        if let Some(want) = e.config.dimensions {
            if got != want {
                return Err(e.remote(
                    None,
                    format!(
                        "model {} gives {got} dimensions, configured {want}",
                        e.config.model
                    ),
                ));
            }
        }
        e.dim = got;
        Ok(e)
    }

    fn remote(&self, status: Option<u16>, message: String) -> EmbedError {
        let mut message = message;
        for s in &self.secrets {
            message = message.replace(s.as_str(), "***");
        }
        EmbedError::Remote {
            url: self.shown.clone(),
            status,
            message,
        }
    }

    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut body = serde_json::json!({
            "input": texts,
            "model": self.config.model,
            "encoding_format": "float",
        });
        if let Some(d) = self.config.dimensions {
            body["dimensions"] = d.into();
        }
        let mut req = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_string(&body.to_string()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let mut text = Vec::new();
                let _ = r.into_reader().take(MAX_ERROR_BODY).read_to_end(&mut text);
                let text = String::from_utf8_lossy(&text);
                return Err(self.remote(Some(code), error_message(&text)));
            }
            // Not `t.to_string()`: it starts with the URL, credentials included.
            Err(ureq::Error::Transport(t)) => {
                let mut m = t.kind().to_string();
                if let Some(msg) = t.message() {
                    m = format!("{m}: {msg}");
                }
                if let Some(src) = std::error::Error::source(&t) {
                    m = format!("{m}: {src}");
                }
                return Err(self.remote(None, one_line(m)));
            }
        };
        let dim = match (self.dim, self.config.dimensions) {
            (0, Some(d)) => d,
            (0, None) => 4096,
            (d, _) => d,
        };
        let limit = max_answer_bytes(texts.len(), dim);
        let answer = read_bounded(resp.into_reader(), limit)
            .map_err(|e| self.remote(None, format!("unreadable answer: {}", one_line(e))))?
            .ok_or_else(|| {
                self.remote(
                    None,
                    format!(
                        "answer larger than {limit} bytes for {} vectors of {dim} dimensions",
                        texts.len()
                    ),
                )
            })?;
        let parsed: Response = serde_json::from_slice(&answer)
            .map_err(|e| self.remote(None, format!("unreadable answer: {}", one_line(e))))?;
        if parsed.data.len() != texts.len() {
            return Err(self.remote(
                None,
                format!(
                    "asked for {} vectors, got {}",
                    texts.len(),
                    parsed.data.len()
                ),
            ));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (pos, d) in parsed.data.into_iter().enumerate() {
            let i = d.index.unwrap_or(pos);
            if i >= out.len() || out[i].is_some() {
                return Err(self.remote(None, format!("answer has a bad or repeated index {i}")));
            }
            out[i] = Some(normalize(d.embedding));
        }
        let out: Vec<Vec<f32>> = out.into_iter().map(|v| v.unwrap_or_default()).collect();
        if self.dim != 0 {
            if let Some(v) = out.iter().find(|v| v.len() != self.dim) {
                return Err(self.remote(
                    None,
                    format!("answered {} dimensions, expected {}", v.len(), self.dim),
                ));
            }
        }
        Ok(out)
    }
}

/// What must not appear in messages: the key and the URL's userinfo (raw and decoded parts).
fn secrets_of(config: &OpenAiConfig) -> Vec<String> {
    let mut out: Vec<String> = config.api_key.iter().cloned().collect();
    if let Some(i) = config.url.find("://") {
        let rest = &config.url[i + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            out.push(userinfo.to_string());
            out.extend(userinfo.split(':').map(str::to_string));
            out.extend(userinfo.split(':').map(percent_decode));
        }
    }
    // Short strings would blank out ordinary words.
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str().map(str::to_string))
        });
    let msg = one_line(from_json.unwrap_or_else(|| body.to_string()));
    if msg.len() > 300 {
        let mut end = 300;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &msg[..end])
    } else if msg.is_empty() {
        "(empty body)".into()
    } else {
        msg
    }
}

/// Some servers (Ollama) do not normalise; the trait promises unit vectors.
fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

impl Embedder for OpenAiEmbedder {
    fn model_name(&self) -> &str {
        &self.config.model
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        self.request(texts)
    }

    /// An estimate (4 bytes a token): the remote tokenizer is unknown here. Used only to size
    /// batches.
    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        Ok(text.len().div_ceil(4) + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-connection-per-answer HTTP server returning the canned (status, body) answers in
    /// order; returns its base URL.
    fn fake_server(answers: Vec<(u16, String)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut req = vec![0; len];
                let _ = r.read_exact(&mut req);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}/v1")
    }

    fn config(url: String) -> OpenAiConfig {
        OpenAiConfig {
            url,
            model: "m".into(),
            api_key: Some("k".into()),
            timeout: Duration::from_secs(5),
            dimensions: None,
        }
    }

    const TWO_D: &str = r#"{"data":[{"index":0,"embedding":[3.0,4.0]}]}"#;

    #[test]
    fn learns_the_dimension_and_normalises() {
        let url = fake_server(vec![
            (200, TWO_D.into()),
            (
                200,
                r#"{"data":[{"index":1,"embedding":[0,2]},{"index":0,"embedding":[1,0]}]}"#.into(),
            ),
        ]);
        let mut e = OpenAiEmbedder::new(config(url)).unwrap();
        assert_eq!(e.dim(), 2);
        let v = e.embed(&["a", "b"]).unwrap();
        assert_eq!(
            v,
            vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            "ordered by index, unit length"
        );
    }

    #[test]
    fn classifies_errors() {
        let url = fake_server(vec![
            (200, TWO_D.into()),
            (401, r#"{"error":{"message":"Incorrect API key"}}"#.into()),
            (429, "slow down".into()),
            (503, "".into()),
            (200, r#"{"data":[{"embedding":[1,2,3]}]}"#.into()),
        ]);
        let mut e = OpenAiEmbedder::new(config(url)).unwrap();
        let auth = e.embed(&["x"]).unwrap_err();
        assert!(
            auth.is_permanent() && auth.to_string().contains("HTTP 401: Incorrect API key"),
            "{auth}"
        );
        let rate = e.embed(&["x"]).unwrap_err();
        assert!(
            !rate.is_permanent() && rate.to_string().contains("429"),
            "{rate}"
        );
        assert!(!e.embed(&["x"]).unwrap_err().is_permanent());
        let dim = e.embed(&["x"]).unwrap_err();
        assert!(
            dim.to_string().contains("3 dimensions, expected 2"),
            "{dim}"
        );
    }

    #[test]
    fn unreachable_is_transient_and_wrong_dimension_is_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = OpenAiEmbedder::new(config(format!("http://127.0.0.1:{port}/v1")))
            .err()
            .unwrap();
        assert!(!e.is_permanent(), "{e}");
        let mut c = config(fake_server(vec![(200, TWO_D.into())]));
        c.dimensions = Some(384);
        let e = OpenAiEmbedder::new(c).err().unwrap();
        assert!(
            e.to_string().contains("gives 2 dimensions, configured 384"),
            "{e}"
        );
    }

    #[test]
    fn credentials_never_reach_errors() {
        // The server echoes the key and the URL's password in its error, as some do.
        let echo = r#"{"error":{"message":"bad key sk-secret-key for user bob:pa55word"}}"#;
        let base = fake_server(vec![(401, echo.into())]);
        let url = base.replace("http://", "http://bob:pa55word@");
        let mut c = config(url);
        c.api_key = Some("sk-secret-key".into());
        let e = OpenAiEmbedder::new(c).err().unwrap().to_string();
        assert!(e.contains("401") && e.contains("***@127.0.0.1"), "{e}");
        assert!(
            !e.contains("pa55word") && !e.contains("sk-secret-key"),
            "{e}"
        );
        // Unreachable: ureq's own message starts with the URL.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = OpenAiEmbedder::new(config(format!(
            "http://bob:pa%2F55word@127.0.0.1:{port}/v1?api-key=k3y&api-version=1"
        )))
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("55word") && !e.contains("k3y"), "{e}");
        assert!(e.contains("api-version=1"), "{e}");
        assert_eq!(
            redact_endpoint("https://u:p@ss/w?rd#x@h/v1"),
            "https://***@h/v1"
        );
        assert_eq!(redact_endpoint("https://sk-token@h/v1"), "https://***@h/v1");
        assert_eq!(
            redact_endpoint("https://h/v1?user=a@b"),
            "https://h/v1?user=a@b"
        );
    }

    #[test]
    fn answers_are_bounded_by_what_was_asked() {
        // A valid answer padded to 1 MB: far more than 2 dimensions take.
        let padded = format!("{TWO_D}{}", " ".repeat(1 << 20));
        let mut c = config(fake_server(vec![(200, padded)]));
        c.dimensions = Some(2);
        let e = OpenAiEmbedder::new(c).err().unwrap().to_string();
        assert!(e.contains("answer larger than"), "{e}");
        assert!(max_answer_bytes(2048, 384) < 32 << 20);
    }

    #[test]
    fn endpoint_and_debug() {
        let mut c = config("http://h/v1/".into());
        assert_eq!(c.endpoint(), "http://h/v1/embeddings");
        c.url = "http://h/v1/embeddings".into();
        assert_eq!(c.endpoint(), "http://h/v1/embeddings");
        c.api_key = Some("sk-secret".into());
        c.url = "https://u:pw-secret@h/v1".into();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("sk-secret") && !debug.contains("pw-secret"),
            "{debug}"
        );
    }
}
