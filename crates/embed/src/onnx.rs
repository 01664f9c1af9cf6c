use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Ix2, Ix3};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use crate::error::one_line;
use crate::{pool, tokenize, EmbedError, Embedder, ModelFiles, DIM, MODEL_NAME};

/// The ONNX Runtime environment: one per process, and the shared library can be loaded only
/// once, so the first [`OnnxEmbedder::load`] decides which library every later one uses (and a
/// failure to load it is final).
static RUNTIME: OnceLock<Result<Environment, EmbedError>> = OnceLock::new();

fn runtime(dylib: &Path) -> Result<&'static Environment, EmbedError> {
    let failed = |e: &dyn Display| EmbedError::Runtime {
        path: dylib.to_path_buf(),
        reason: one_line(e),
    };
    RUNTIME
        .get_or_init(|| {
            let builder = ort::init_from(dylib).map_err(|e| failed(&e))?;
            builder
                .with_name("pgai-embed")
                .build()
                .map_err(|e| failed(&e))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Which output the graph has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `sentence_embedding` `[batch, 384]`, pooled and normalised in the graph (scripts/build_onnx.py).
    Pooled,
    /// `last_hidden_state` `[batch, seq, 384]` (the Hugging Face export): pooled here.
    Hidden,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Self::Pooled => "sentence_embedding",
            Self::Hidden => "last_hidden_state",
        }
    }
}

/// all-MiniLM-L6-v2 on ONNX Runtime (CPU). Not `Sync`: one thread owns it and calls
/// [`Embedder::embed`], which takes `&mut self` as `Session::run` does.
pub struct OnnxEmbedder {
    session: Session,
    tokenizer: Tokenizer,
    output: Output,
    /// The Hugging Face export also takes `token_type_ids` (all zeros for one sentence).
    wants_token_type_ids: bool,
    onnx_path: PathBuf,
}

impl OnnxEmbedder {
    /// Loads the runtime (once per process), the graph and the tokenizer. `intra_threads` is
    /// ONNX Runtime's intra-op pool size (0 = one per core); inter-op parallelism is off.
    pub fn load(files: &ModelFiles, intra_threads: usize) -> Result<Self, EmbedError> {
        let env = runtime(&files.ort_dylib)?;
        let tokenizer = tokenize::load(&files.tokenizer)?;

        let rt = |e: &dyn Display| EmbedError::Runtime {
            path: files.ort_dylib.clone(),
            reason: one_line(e),
        };
        let bad = |reason: String| EmbedError::BadModel {
            path: files.onnx.clone(),
            reason,
        };
        let session = Session::builder(env)
            .map_err(|e| rt(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| rt(&e))?
            .with_intra_threads(intra_threads)
            .map_err(|e| rt(&e))?
            .with_inter_threads(1)
            .map_err(|e| rt(&e))?
            .commit_from_file(&files.onnx)
            .map_err(|e| bad(one_line(e)))?;

        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.contains(&required) {
                return Err(bad(format!(
                    "graph has no input `{required}` (inputs: {inputs:?})"
                )));
            }
        }
        let wants_token_type_ids = inputs.contains(&"token_type_ids");
        if let Some(other) = inputs
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(n))
        {
            return Err(bad(format!("graph wants an unknown input `{other}`")));
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output = [Output::Pooled, Output::Hidden]
            .into_iter()
            .find(|o| outputs.contains(&o.name()))
            .ok_or_else(|| bad(format!("graph has neither `sentence_embedding` nor `last_hidden_state` (outputs: {outputs:?})")))?;

        Ok(Self {
            session,
            tokenizer,
            output,
            wants_token_type_ids,
            onnx_path: files.onnx.clone(),
        })
    }
}

impl Embedder for OnnxEmbedder {
    fn model_name(&self) -> &str {
        MODEL_NAME
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = tokenize::encode(&self.tokenizer, texts)?;
        let failed = |e: ort::Error| EmbedError::Inference(one_line(e));
        let zeros = self
            .wants_token_type_ids
            .then(|| Array2::<i64>::zeros(batch.ids.dim()));
        let mut inputs: Vec<(&str, SessionInputValue)> = vec![
            (
                "input_ids",
                TensorRef::from_array_view(batch.ids.view())
                    .map_err(failed)?
                    .into(),
            ),
            (
                "attention_mask",
                TensorRef::from_array_view(batch.mask.view())
                    .map_err(failed)?
                    .into(),
            ),
        ];
        if let Some(zeros) = &zeros {
            inputs.push((
                "token_type_ids",
                TensorRef::from_array_view(zeros.view())
                    .map_err(failed)?
                    .into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(failed)?;
        let out = outputs[self.output.name()]
            .try_extract_array::<f32>()
            .map_err(failed)?;

        let shape = out.shape().to_vec();
        let shape_error = || EmbedError::BadModel {
            path: self.onnx_path.clone(),
            reason: format!(
                "`{}` has shape {shape:?}, expected {DIM} wide",
                self.output.name()
            ),
        };
        if shape.last() != Some(&DIM) {
            return Err(shape_error());
        }
        let vectors = match self.output {
            Output::Pooled => {
                let out = out
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| shape_error())?;
                out.outer_iter().map(|row| row.to_vec()).collect()
            }
            Output::Hidden => {
                let out = out
                    .into_dimensionality::<Ix3>()
                    .map_err(|_| shape_error())?;
                pool::mean_pool_normalised(out, batch.mask.view())
            }
        };
        if vectors.len() != texts.len() {
            return Err(EmbedError::Inference(format!(
                "{} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        tokenize::count(&self.tokenizer, text)
    }
}
