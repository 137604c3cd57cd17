//! Checkpoints: one safetensors file per checkpoint holding the model's parameters under their
//! own names (a plain safetensors any candle `VarBuilder` can read), the optimiser's moments
//! under `optim.*`, and the run's position as JSON in the header metadata (`gaze.state`). One
//! file means one atomic write (temp file + rename): an interrupted save leaves the previous
//! checkpoint whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use gaze_tensor::SeededVarMap;

use crate::error::{Result, TrainError};
use crate::optim::Optimizer;

/// Where a run is, and everything beyond the tensors it needs to continue exactly. Every random
/// draw is derived from the experiment seed and the step, so the position is the RNG state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch to run next (or the one under way).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch_in_epoch: usize,
    /// Global steps done.
    pub step: u64,
    /// Optimiser updates done.
    pub opt_t: u64,
    /// The learning rate in force.
    pub lr: f64,
    /// The best value so far of the metric the `best` checkpoint follows (`train.select`); None
    /// before the first validation. (Checkpoints written before the metric was configurable
    /// recorded validation accuracy as `best_val_acc`, -1 before the first validation.)
    #[serde(alias = "best_val_acc")]
    pub best_value: Option<f64>,
    /// Plateau schedule: epochs since the last improvement.
    pub plateau_bad: usize,
    /// Running sums of the epoch under way.
    pub partial: EpochSums,
    /// Seconds spent training so far (excluding evaluation).
    pub train_seconds: f64,
    /// Training examples seen so far.
    pub examples: u64,
    /// Wall-clock seconds of the run so far, summed over its resumes (data preparation,
    /// training, validation), so a resumed run reports the time of the whole run. Checkpoints
    /// written before this field read 0.
    #[serde(default)]
    pub wall_seconds: f64,
}

/// Sums over the steps of an epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Sum of total losses times batch size.
    pub loss: f64,
    /// Sum of each loss term times batch size.
    pub terms: std::collections::BTreeMap<String, f64>,
    /// Correct predictions.
    pub correct: u64,
    /// Examples.
    pub count: u64,
}

const STATE_KEY: &str = "gaze.state";
const CHECKSUM_KEY: &str = "gaze.checksum";

/// FNV-1a (64 bits) over every tensor of safetensors `bytes`, by name: each name, dtype, shape
/// and data. A flipped byte anywhere in the tensors changes it.
fn checksum(bytes: &[u8]) -> std::result::Result<String, safetensors::SafeTensorError> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for n in &names {
        let t = st.tensor(n)?;
        eat(n.as_bytes());
        eat(format!("{:?}{:?}", t.dtype(), t.shape()).as_bytes());
        eat(t.data());
    }
    Ok(format!("fnv1a64:{h:016x}"))
}

/// Serialises the model, optimiser and state to safetensors bytes, with a checksum of the
/// tensors in the metadata (`gaze.checksum`) that [`load`] checks.
pub fn encode(vars: &SeededVarMap, opt: Option<&Optimizer>, state: &TrainState) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> =
        vars.sorted_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    if let Some(o) = opt {
        tensors.extend(o.state_tensors());
    }
    let json = serde_json::to_string(state).map_err(|e| TrainError::Other(format!("state to JSON: {e}")))?;
    let mut meta: HashMap<String, String> = [(STATE_KEY.to_string(), json)].into();
    let err = |e: safetensors::SafeTensorError| TrainError::Other(format!("safetensors: {e}"));
    let plain =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta.clone())).map_err(err)?;
    meta.insert(CHECKSUM_KEY.to_string(), checksum(&plain).map_err(err)?);
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta)).map_err(err)
}

/// Saves a checkpoint atomically, then a readable copy of its state beside it (`last.json` for
/// `last.safetensors`): the position, learning rate and optimiser step. The copy inside the
/// safetensors header is the one a resume reads, so the two can never disagree about a load.
pub fn save(path: &Path, vars: &SeededVarMap, opt: Option<&Optimizer>, state: &TrainState) -> Result<()> {
    let bytes = encode(vars, opt, state)?;
    gaze_data::write_atomic(path, &bytes)
        .map_err(|e| TrainError::Checkpoint { path: path.into(), reason: e.to_string() })?;
    let json = serde_json::json!({
        "state": state,
        "optimizer": opt.map(|o| serde_json::json!({ "t": o.t, "lr": o.lr, "tensors": "optim.m.* / optim.v.* in the safetensors file" })),
        "rng": "every draw is derived from the experiment seed and `step`: the position is the RNG state",
    });
    gaze_data::write_atomic(&path.with_extension("json"), json.to_string().as_bytes())
        .map_err(|e| TrainError::Checkpoint { path: path.with_extension("json"), reason: e.to_string() })
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    /// Every tensor by name.
    pub tensors: HashMap<String, Tensor>,
    /// The position.
    pub state: TrainState,
}

/// Reads a checkpoint.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bad = |reason: String| TrainError::Checkpoint { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let state = match header.metadata().as_ref().and_then(|m| m.get(STATE_KEY)) {
        Some(json) => serde_json::from_str(json).map_err(|e| bad(format!("bad `{STATE_KEY}`: {e}")))?,
        None => TrainState::default(),
    };
    // Checkpoints written before the checksum have none to check.
    if let Some(want) = header.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
        let got = checksum(&bytes).map_err(|e| bad(e.to_string()))?;
        if &got != want {
            return Err(bad(format!(
                "its tensors do not match the checksum written with them ({got}, written {want}): the file is \
                 corrupt; resume from another checkpoint"
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
    Ok(Loaded { tensors, state })
}

/// Copies a checkpoint's parameters into the model's variables; every variable must be present
/// with its shape.
pub fn restore_vars(vars: &SeededVarMap, loaded: &Loaded, path: &Path) -> Result<()> {
    for (name, var) in vars.sorted_vars() {
        let t = loaded
            .tensors
            .get(&name)
            .ok_or_else(|| TrainError::Checkpoint { path: path.into(), reason: format!("no parameter `{name}`") })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Checkpoint {
                path: path.into(),
                reason: format!("`{name}` has shape {:?}, the model {:?}", t.dims(), var.dims()),
            });
        }
        var.set(t)?;
    }
    Ok(())
}

/// What [`init_from`] did: the parameters copied and those left as they were, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Initialised {
    /// The file read.
    pub file: PathBuf,
    /// Names copied.
    pub copied: Vec<String>,
    /// Names not copied, each with the reason (absent, or the shapes).
    pub kept: Vec<(String, String)>,
}

/// Copies into `vars` every parameter of the same name and shape from `from`: a run folder (its
/// `best` checkpoint) or a `.safetensors` file. An error when the file is missing or unreadable,
/// or when nothing matches (the wrong run, surely).
pub fn init_from(vars: &SeededVarMap, from: &Path, device: &Device) -> Result<Initialised> {
    let file = if from.is_dir() { from.join("checkpoints").join("best.safetensors") } else { from.to_path_buf() };
    if !file.is_file() {
        return Err(TrainError::Other(format!(
            "train.init_from: {} is neither a run folder with a best checkpoint nor a .safetensors file",
            from.display()
        )));
    }
    let loaded = load(&file, device)?;
    let (mut copied, mut kept) = (vec![], vec![]);
    for (name, var) in vars.sorted_vars() {
        match loaded.tensors.get(&name) {
            Some(t) if t.dims() == var.dims() => {
                var.set(t)?;
                copied.push(name);
            }
            Some(t) => kept.push((name, format!("{:?} there, {:?} here", t.dims(), var.dims()))),
            None => kept.push((name, "not there".into())),
        }
    }
    if copied.is_empty() {
        return Err(TrainError::Checkpoint {
            path: file,
            reason: "train.init_from: no parameter of this model has its name and shape there".into(),
        });
    }
    Ok(Initialised { file, copied, kept })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gaze_tensor::Seed;

    fn model(seed: u64) -> Result<SeededVarMap> {
        let vm = SeededVarMap::new(Seed(seed));
        candle_nn::linear(3, 2, vm.builder(&Device::Cpu).pp("l"))?;
        Ok(vm)
    }

    #[test]
    fn roundtrip_and_interrupted_write() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
        let path = dir.path().join("last.safetensors");
        let a = model(1)?;
        let state = TrainState { step: 7, lr: 0.5, ..TrainState::default() };
        save(&path, &a, None, &state)?;
        // An interrupted write: the new bytes only reach the temporary file, never renamed.
        let b = model(2)?;
        let bytes = encode(&b, None, &TrainState { step: 9, ..TrainState::default() })?;
        std::fs::write(dir.path().join(".last.safetensors.123.tmp"), &bytes[..bytes.len() / 2])
            .map_err(|e| TrainError::io("tmp", e))?;
        // A save that fails part-way (here: its temporary file cannot be created) reports the
        // error and leaves the previous checkpoint as it was.
        std::fs::create_dir(dir.path().join(format!(".last.safetensors.{}.tmp", std::process::id())))
            .map_err(|e| TrainError::io("tmp", e))?;
        let e = save(&path, &b, None, &TrainState::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("last.safetensors"), "{e}");
        let loaded = load(&path, &Device::Cpu)?;
        assert_eq!(loaded.state, state);
        let c = model(3)?;
        restore_vars(&c, &loaded, &path)?;
        for ((_, x), (_, y)) in a.sorted_vars().iter().zip(c.sorted_vars()) {
            assert_eq!(x.as_tensor().flatten_all()?.to_vec1::<f32>()?, y.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        // A truncated checkpoint file is an error naming it, not a panic.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).map_err(|e| TrainError::io("w", e))?;
        let e = load(&path, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("last.safetensors: checkpoint"), "{e}");
        Ok(())
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_checksum_and_old_checkpoints_still_load() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
        let path = dir.path().join("best.safetensors");
        let a = model(1)?;
        save(&path, &a, None, &TrainState::default())?;
        let mut bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let last = bytes.len() - 1; // the data section ends the file
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).map_err(|e| TrainError::io(&path, e))?;
        let e = load(&path, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("best.safetensors") && e.contains("checksum"), "{e}");
        // Written without a checksum (as before it existed): loads unchecked.
        let tensors: Vec<(String, Tensor)> =
            a.sorted_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let old = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        std::fs::write(&path, &old).map_err(|e| TrainError::io(&path, e))?;
        assert_eq!(load(&path, &Device::Cpu)?.tensors.len(), 2);
        Ok(())
    }

    #[test]
    fn init_from_copies_what_matches_and_names_the_rest() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
        let path = dir.path().join("best.safetensors");
        let a = model(1)?;
        save(&path, &a, None, &TrainState::default())?;
        // Another model: the same layer "l", and a layer "m" the checkpoint lacks.
        let b = SeededVarMap::new(Seed(9));
        candle_nn::linear(3, 2, b.builder(&Device::Cpu).pp("l"))?;
        candle_nn::linear(2, 4, b.builder(&Device::Cpu).pp("m"))?;
        let done = init_from(&b, &path, &Device::Cpu)?;
        assert_eq!(done.copied, vec!["l.bias".to_string(), "l.weight".to_string()]);
        assert_eq!(done.kept.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(), ["m.bias", "m.weight"]);
        let w = |vm: &SeededVarMap, n: &str| -> Result<Vec<f32>> {
            let vars = vm.sorted_vars();
            let v = vars.iter().find(|(k, _)| k == n).ok_or_else(|| TrainError::Other(n.into()))?;
            Ok(v.1.as_tensor().flatten_all()?.to_vec1::<f32>()?)
        };
        assert_eq!(w(&a, "l.weight")?, w(&b, "l.weight")?);
        // Shapes that differ are kept and said; a model with nothing in common is an error.
        let c = SeededVarMap::new(Seed(9));
        candle_nn::linear(5, 3, c.builder(&Device::Cpu).pp("l"))?;
        let e = init_from(&c, &path, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no parameter") && e.contains("best.safetensors"), "{e}");
        let e = init_from(&c, &dir.path().join("none"), &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("neither a run folder"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A checkpoint with one byte changed, or cut short, is an error naming the file, or it
        /// loads the very tensors written (a change the header tolerates): never a panic, never
        /// other values.
        #[test]
        fn a_mutated_checkpoint_fails_by_name_or_loads_what_was_written(at in proptest::prelude::any::<proptest::sample::Index>(), value in proptest::prelude::any::<u8>(), cut in 0usize..64) {
            let vm = model(5)?;
            let mut bytes = encode(&vm, None, &TrainState { step: 3, ..TrainState::default() })?;
            let i = at.index(bytes.len());
            bytes[i] = value;
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            let dir = tempfile::tempdir().map_err(|e| TrainError::io("tmp", e))?;
            let path = dir.path().join("last.safetensors");
            std::fs::write(&path, &bytes).map_err(|e| TrainError::io(&path, e))?;
            match load(&path, &Device::Cpu) {
                Ok(loaded) => {
                    for (name, var) in vm.sorted_vars() {
                        let got = loaded.tensors.get(&name).map(|t| t.flatten_all().and_then(|t| t.to_vec1::<f32>()));
                        let want = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                        proptest::prop_assert!(matches!(&got, Some(Ok(g)) if *g == want), "{name}: {got:?}");
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("last.safetensors"), "{}", e),
            }
        }
    }
}
