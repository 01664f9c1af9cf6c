//! The second provider: any OpenAI-compatible `POST /v1/embeddings` endpoint (OpenAI, Ollama,
//! vLLM, text-embeddings-inference, or another pgai-trigger's own `/v1/embeddings`).
//!
//! Synchronous HTTP (ureq): the [`Embedder`] trait runs on the model thread, never on the async
//! runtime. The dimension is learnt once at construction (a probe request, or the configured
//! `dimensions` checked against the probe), so the daemon's schema check compares it with the
//! table's vector column before any row is claimed.

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
            .field("url", &self.url)
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

/// An [`Embedder`] backed by a remote OpenAI-compatible endpoint.
pub struct OpenAiEmbedder {
    agent: ureq::Agent,
    config: OpenAiConfig,
    endpoint: String,
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
        let mut e = OpenAiEmbedder {
            agent,
            endpoint,
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
        EmbedError::Remote {
            url: self.endpoint.clone(),
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
                let text = r.into_string().unwrap_or_default();
                return Err(self.remote(Some(code), error_message(&text)));
            }
            Err(ureq::Error::Transport(t)) => return Err(self.remote(None, one_line(t))),
        };
        let parsed: Response = serde_json::from_reader(resp.into_reader())
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
    fn endpoint_and_debug() {
        let mut c = config("http://h/v1/".into());
        assert_eq!(c.endpoint(), "http://h/v1/embeddings");
        c.url = "http://h/v1/embeddings".into();
        assert_eq!(c.endpoint(), "http://h/v1/embeddings");
        c.api_key = Some("sk-secret".into());
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
