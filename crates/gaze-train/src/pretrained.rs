//! Pretrained weights a model asks for ([`gaze_zoo::Model::pretrained`]): read once when a run
//! starts, into the parameters under a name prefix. A run's checkpoints then hold them, so a resume,
//! `gaze eval` or `gaze infer` never reads the weights again.

use std::path::{Path, PathBuf};

use candle_core::Device;
use gaze_tensor::SeededVarMap;

use crate::error::{Result, TrainError};

/// Which file a source names: an existing path, or (with the `hub` feature) the
/// `model.safetensors` of a hub model id `owner/name[@revision]`.
pub fn resolve(source: &str) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if crate::export::is_hub_id(source) {
        #[cfg(feature = "hub")]
        {
            return fetch_weights(source);
        }
        #[cfg(not(feature = "hub"))]
        {
            return Err(TrainError::Other(format!(
                "weights `{source}`: no such file; as a hub model id it needs gaze built with the `hub` feature \
                 (cargo build --release -p gaze-train --features hub)"
            )));
        }
    }
    Err(TrainError::Other(format!("weights `{source}`: no such file")))
}

#[cfg(feature = "hub")]
fn fetch_weights(repo: &str) -> Result<PathBuf> {
    crate::export::hub_file(repo, "model.safetensors", gaze_data::mnist::hub_offline())
        .map_err(|e| TrainError::Other(format!("pretrained weights: {e}")))
}

/// What [`load`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The file read.
    pub file: PathBuf,
    /// Parameters filled.
    pub filled: usize,
    /// Tensors of the file no parameter takes (a classifier head, batch counters).
    pub unused: usize,
}

/// Fills every parameter of `vars` named `prefix` + K with the tensor K of the weights `source`.
/// Errors name the file and the tensors at fault: one the model needs and the file lacks (the
/// first few of them, with how many), or one of another shape.
pub fn load(vars: &SeededVarMap, prefix: &str, source: &str, device: &Device) -> Result<Loaded> {
    let file = resolve(source)?;
    let fault = |reason: String| TrainError::Checkpoint { path: file.clone(), reason };
    let tensors = candle_core::safetensors::load(&file, device)
        .map_err(|e| fault(format!("not readable as safetensors weights: {e}")))?;
    let wanted: Vec<_> = vars
        .sorted_vars()
        .into_iter()
        .filter_map(|(n, v)| n.strip_prefix(prefix).map(|k| (k.to_string(), v)))
        .collect();
    if wanted.is_empty() {
        return Err(TrainError::Other(format!("pretrained weights for `{prefix}*`: the model has no such parameter")));
    }
    let missing: Vec<&str> = wanted.iter().filter(|(k, _)| !tensors.contains_key(k)).map(|(k, _)| k.as_str()).collect();
    if !missing.is_empty() {
        let some: Vec<&str> = tensors.keys().take(3).map(String::as_str).collect();
        return Err(fault(format!(
            "lacks {} of the {} tensors the model's `{prefix}*` needs, among them {:?} (the file has names like {some:?}; \
             torchvision's names are expected)",
            missing.len(),
            wanted.len(),
            &missing[..missing.len().min(4)]
        )));
    }
    for (k, var) in &wanted {
        let t = &tensors[k];
        if t.dims() != var.dims() {
            return Err(fault(format!(
                "tensor `{k}` has shape {:?}, the model's `{prefix}{k}` {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(Loaded { file, filled: wanted.len(), unused: tensors.len() - wanted.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use gaze_tensor::Seed;

    #[test]
    fn fills_the_prefix_and_names_what_is_missing_or_misshapen() -> Result<()> {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
        let vars = SeededVarMap::new(Seed(1));
        let vb = vars.builder(&dev);
        candle_nn::linear(3, 2, vb.pp("encoder.a"))?;
        candle_nn::linear(2, 2, vb.pp("head"))?;
        let file = dir.path().join("w.safetensors");
        let w = Tensor::full(0.5f32, (2, 3), &dev)?;
        let b = Tensor::full(-1f32, 2, &dev)?;
        let fc = Tensor::zeros(7, candle_core::DType::F32, &dev)?;
        candle_core::safetensors::save(
            &[("a.weight", w.clone()), ("a.bias", b), ("fc.weight", fc)].into_iter().collect(),
            &file,
        )?;
        let head = || vars.sorted_vars().into_iter().find(|(n, _)| n == "head.weight").map(|(_, v)| v);
        let head_before = head().map(|v| v.as_tensor().to_vec2::<f32>()).transpose()?;
        let done = load(&vars, "encoder.", &file.to_string_lossy(), &dev)?;
        assert_eq!((done.filled, done.unused), (2, 1));
        let got = |i: usize| vars.sorted_vars()[i].1.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
        assert_eq!((got(0)?, got(1)?), (vec![-1.0; 2], vec![0.5; 6]));
        let head_after = head().map(|v| v.as_tensor().to_vec2::<f32>()).transpose()?;
        assert!(head_after.is_some() && head_after == head_before, "other parameters untouched");
        // A file without one of them, one of another shape, a path that is not there.
        let short = dir.path().join("short.safetensors");
        candle_core::safetensors::save(&[("a.weight", w)].into_iter().collect(), &short)?;
        let e =
            load(&vars, "encoder.", &short.to_string_lossy(), &dev).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("short.safetensors") && e.contains("lacks 1 of the 2") && e.contains("a.bias"), "{e}");
        let wrong = dir.path().join("wrong.safetensors");
        let w4 = Tensor::zeros((2, 4), candle_core::DType::F32, &dev)?;
        let b2 = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
        candle_core::safetensors::save(&[("a.weight", w4), ("a.bias", b2)].into_iter().collect(), &wrong)?;
        let e =
            load(&vars, "encoder.", &wrong.to_string_lossy(), &dev).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("`a.weight` has shape [2, 4]") && e.contains("[2, 3]"), "{e}");
        let e = load(&vars, "encoder.", "nowhere/deeper/w.safetensors", &dev)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nowhere/deeper/w.safetensors") && e.contains("no such file"), "{e}");
        Ok(())
    }
}
