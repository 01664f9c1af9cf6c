use std::path::{Path, PathBuf};

use crate::dist::{self, non_empty_var, user_home};
use crate::EmbedError;

/// The three files an [`crate::OnnxEmbedder`] needs, all checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `model.onnx`: either our graph (output `sentence_embedding`) or the Hugging Face export
    /// (output `last_hidden_state`, pooled in Rust).
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    /// `libonnxruntime.so`, loaded at run time.
    pub ort_dylib: PathBuf,
}

const HF_REPO_DIR: &str = "models--sentence-transformers--all-MiniLM-L6-v2";

impl ModelFiles {
    /// `model_dir` holds `model.onnx` (or `onnx/model.onnx`, as in the Hugging Face repo) and
    /// `tokenizer.json`.
    pub fn from_dir(model_dir: &Path, ort_dylib: &Path) -> Result<Self, EmbedError> {
        let (onnx, tokenizer) = model_in(model_dir)?;
        if !ort_dylib.is_file() {
            return Err(missing("ONNX Runtime library", ort_dylib));
        }
        Ok(Self {
            onnx,
            tokenizer,
            ort_dylib: ort_dylib.to_path_buf(),
        })
    }

    /// The model from `$PGAI_MODEL_DIR` if set (nowhere else then), else `dist::home()/model`,
    /// else the Hugging Face cache. The runtime from `$ORT_DYLIB_PATH`, else
    /// `dist::home()/onnxruntime/libonnxruntime.so`.
    pub fn locate() -> Result<Self, EmbedError> {
        let ort_dylib = non_empty_var("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| dist::home().join("onnxruntime/libonnxruntime.so"));
        let model_dir = match non_empty_var("PGAI_MODEL_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let ours = dist::home().join("model");
                if model_in(&ours).is_ok() {
                    ours
                } else {
                    // When the cache has nothing either, report our own path: that is what
                    // `make setup` fills.
                    hf_snapshot(&hf_hub_dir()).unwrap_or(ours)
                }
            }
        };
        Self::from_dir(&model_dir, &ort_dylib)
    }
}

fn missing(what: &str, path: &Path) -> EmbedError {
    EmbedError::MissingFiles {
        what: what.into(),
        path: path.to_path_buf(),
    }
}

/// (model.onnx, tokenizer.json) inside `dir`.
fn model_in(dir: &Path) -> Result<(PathBuf, PathBuf), EmbedError> {
    if !dir.is_dir() {
        return Err(missing("model directory", dir));
    }
    let onnx = [dir.join("model.onnx"), dir.join("onnx/model.onnx")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| missing("model.onnx", &dir.join("model.onnx")))?;
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(missing("tokenizer.json", &tokenizer));
    }
    Ok((onnx, tokenizer))
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `${XDG_CACHE_HOME:-~/.cache}/huggingface/hub`
/// (huggingface_hub's rule).
fn hf_hub_dir() -> PathBuf {
    if let Some(dir) = non_empty_var("HF_HUB_CACHE") {
        return dir.into();
    }
    let hf_home = non_empty_var("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = non_empty_var("XDG_CACHE_HOME").map(PathBuf::from);
            cache
                .unwrap_or_else(|| user_home().join(".cache"))
                .join("huggingface")
        });
    hf_home.join("hub")
}

/// A complete snapshot of all-MiniLM-L6-v2 in a hub cache: the one `refs/main` names first,
/// then any other, in name order.
fn hf_snapshot(hub: &Path) -> Option<PathBuf> {
    let repo = hub.join(HF_REPO_DIR);
    let snapshots = repo.join("snapshots");
    let main = std::fs::read_to_string(repo.join("refs/main")).ok();
    let mut others: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    others.sort();
    main.map(|rev| snapshots.join(rev.trim()))
        .into_iter()
        .chain(others)
        .find(|dir| model_in(dir).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgai-embed-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn hf_cache_prefers_refs_main_and_skips_incomplete_snapshots() {
        let hub = scratch("hub");
        let snaps = hub.join(HF_REPO_DIR).join("snapshots");
        touch(&snaps.join("aaa/tokenizer.json")); // no onnx: skipped
        touch(&snaps.join("bbb/onnx/model.onnx"));
        touch(&snaps.join("bbb/tokenizer.json"));
        assert_eq!(hf_snapshot(&hub), Some(snaps.join("bbb")));

        touch(&snaps.join("ccc/onnx/model.onnx"));
        touch(&snaps.join("ccc/tokenizer.json"));
        let main_ref = hub.join(HF_REPO_DIR).join("refs/main");
        touch(&main_ref);
        fs::write(&main_ref, "ccc\n").unwrap();
        assert_eq!(hf_snapshot(&hub), Some(snaps.join("ccc")));
        assert_eq!(hf_snapshot(&scratch("empty-hub")), None);
    }

    #[test]
    fn from_dir_accepts_both_layouts_and_names_what_is_missing() {
        let dir = scratch("layout");
        let ort = dir.join("libonnxruntime.so");
        touch(&ort);
        touch(&dir.join("tokenizer.json"));
        let err = ModelFiles::from_dir(&dir, &ort).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.to_string().contains("model.onnx"), "{err}");

        touch(&dir.join("onnx/model.onnx"));
        assert_eq!(
            ModelFiles::from_dir(&dir, &ort).unwrap().onnx,
            dir.join("onnx/model.onnx")
        );
        touch(&dir.join("model.onnx"));
        assert_eq!(
            ModelFiles::from_dir(&dir, &ort).unwrap().onnx,
            dir.join("model.onnx")
        );

        let err = ModelFiles::from_dir(&dir, &dir.join("nope.so")).unwrap_err();
        assert!(
            err.to_string().contains("nope.so") && err.to_string().contains("make setup"),
            "{err}"
        );
    }
}
