//! `cargo xtask results check`: which rows of `experiments/RESULTS.md` are stale, that is, made
//! at a revision after which code their experiment runs has changed.
//!
//! The code an experiment runs: `Cargo.lock`, `gaze-tensor`'s manifest, the numeric crates (`gaze-tensor`, `gaze-attention`,
//! `gaze-encoders`), the zoo's shared files and its model's own, the data crate's shared files and
//! those of its data type, the trainer, and its experiment file. Not counted: files no result
//! depends on ([`NEVER`]), other models' and other data types' own files, and changes that leave
//! a file's code as it was: only its test module (`#[cfg(test)] mod tests` at its end), comments,
//! blank lines, `use` and `mod` declarations ([`code_of`]); for `Cargo.lock`, only dependency
//! lists, no package added, removed or of another version ([`locked_packages`]); for an
//! experiment file, only its comments, layout or targets ([`settings_of`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ResultsArgs {
    #[command(subcommand)]
    task: ResultsTask,
}

#[derive(Subcommand)]
enum ResultsTask {
    /// List the experiments whose rows were made before a change to code they run.
    Check {
        /// Name every changed file (default: the first few).
        #[arg(long)]
        verbose: bool,
        /// Exit with an error when a stale experiment's recorded run took at most this many
        /// seconds (CI prints the list without it).
        #[arg(long)]
        fail_within: Option<f64>,
    },
}

/// Every experiment runs the files under these paths (folders end in `/`) ...
const EVERY: &[&str] = &[
    "Cargo.lock",
    // The numeric crate's manifest: the features it asks of its dependencies choose kernels
    // (a matrix product's microkernel, so its summation order) with no source file changed.
    "crates/gaze-tensor/Cargo.toml",
    "crates/gaze-tensor/src/",
    "crates/gaze-attention/src/",
    "crates/gaze-encoders/src/",
    "crates/gaze-zoo/src/",
    "crates/gaze-data/src/",
    "crates/gaze-train/src/",
];

/// ... except these, which no measured number depends on: the command line, reports and
/// pictures, the run record and the results table, exported models, data previews, test helpers.
const NEVER: &[&str] = &[
    "crates/gaze-train/src/bin/",
    "crates/gaze-train/src/report.rs",
    "crates/gaze-train/src/record.rs",
    "crates/gaze-train/src/results.rs",
    "crates/gaze-train/src/export.rs",
    "crates/gaze-data/src/preview.rs",
    "crates/gaze-data/src/catalog.rs",
    "crates/gaze-zoo/src/test_util.rs",
    "crates/gaze-tensor/src/testing.rs",
];

/// Each model type's own files in `crates/gaze-zoo/src/` (its module and those it is built on).
/// A file owned by some model counts only for the experiments of the models that own it.
const MODEL_FILES: &[(&str, &[&str])] = &[
    ("convnet", &["convnet_classifier.rs"]),
    ("soft_attention_mnist", &["soft_attention_mnist.rs"]),
    ("ram", &["ram.rs"]),
    ("dram", &["dram.rs", "ram.rs"]),
    ("han", &["han.rs"]),
    ("relation_net", &["relation_net.rs", "han.rs"]),
    ("show_attend_tell", &["show_attend_tell.rs"]),
    ("learn_to_pay_attention", &["learn_to_pay_attention.rs"]),
];

/// Each data type's own files in `crates/gaze-data/src/`, as [`MODEL_FILES`].
const DATA_FILES: &[(&str, &[&str])] = &[
    ("mnist", &["mnist.rs", "idx.rs"]),
    ("mnist_canvas", &["generate/mnist_canvas.rs", "mnist.rs", "idx.rs"]),
    ("mnist_pairs", &["generate/mnist_canvas.rs", "mnist.rs", "idx.rs"]),
    ("cifar", &["cifar.rs", "mnist.rs"]),
    ("barn_vqa", &["generate/barn.rs", "vqa.rs"]),
    ("sort_of_clevr", &["generate/sort_of_clevr.rs", "vqa.rs"]),
    ("vqa_folder", &["vqa.rs"]),
    ("shape_captions", &["generate/captions.rs", "caption.rs"]),
    ("caption_folder", &["caption.rs"]),
];

/// What an experiment is made of, for deciding which files it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub model: String,
    pub data: String,
}

impl Recipe {
    /// Reads `[model] type` and `[data] type` from an experiment file.
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let ty = |section: &str| {
            v.get(section)
                .and_then(|s| s.get("type"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .with_context(|| format!("{}: no `type` in [{section}]", path.display()))
        };
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        Ok(Self { name, model: ty("model")?, data: ty("data")? })
    }

    /// Whether `path` (relative to the repository root, `/`-separated) is code this experiment
    /// runs.
    pub fn runs(&self, path: &str) -> bool {
        if path == format!("experiments/{}.toml", self.name) {
            return true;
        }
        if !EVERY.iter().any(|p| path == *p || (p.ends_with('/') && path.starts_with(p))) {
            return false;
        }
        if NEVER.iter().any(|p| path == *p || (p.ends_with('/') && path.starts_with(p))) {
            return false;
        }
        let owned = |root: &str, table: &[(&str, &[&str])], mine: &str| match path.strip_prefix(root) {
            Some(rel) => {
                let owners: Vec<&str> = table.iter().filter(|(_, fs)| fs.contains(&rel)).map(|(t, _)| *t).collect();
                owners.is_empty() || owners.contains(&mine)
            }
            None => true,
        };
        owned("crates/gaze-zoo/src/", MODEL_FILES, &self.model)
            && owned("crates/gaze-data/src/", DATA_FILES, &self.data)
    }
}

/// One experiment's rows: the revision they name and the recorded run's wall time.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub experiment: String,
    /// The revision the run started at (the first word of `git_rev`).
    pub rev: String,
    pub wall_s: f64,
}

/// The experiments of a results table, one entry each.
pub fn recorded(table: &str) -> Vec<Recorded> {
    let mut seen = BTreeMap::new();
    for r in gaze_train::results::rows(table) {
        let rev = r[6].split_whitespace().next().unwrap_or_default().to_string();
        seen.entry(r[0].clone()).or_insert(Recorded {
            experiment: r[0].clone(),
            rev,
            wall_s: r[4].parse().unwrap_or(f64::NAN),
        });
    }
    seen.into_values().collect()
}

/// Why an experiment's rows are stale, or that they are not.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// No code it runs changed since its revision.
    Fresh,
    /// These files it runs changed since its revision.
    Stale(Vec<String>),
    /// Recorded from uncommitted code: what ran cannot be known.
    Dirty,
    /// The revision is not in this repository (a shallow clone, or history rewritten).
    UnknownRevision,
    /// The experiment file is gone or unreadable.
    NoExperiment(String),
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<Option<String>> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().context("running git")?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The 0-based line where a file's trailing test module starts (its `#[cfg(test)]`), if the
/// module runs to the end of the file.
fn test_module_start(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.windows(2).position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests"))?;
    let last = lines.iter().rposition(|l| !l.trim().is_empty())?;
    (lines[last] == "}").then_some(at)
}

/// The code of a Rust file that can change what it computes: its lines before the trailing test
/// module, trimmed, without blank lines, comments (`//`, `///`, `//!` lines), `use` declarations
/// (also over several lines) and `mod name;` lines.
pub fn code_of(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = test_module_start(text).unwrap_or(lines.len());
    let mut out = vec![];
    let mut in_use = false;
    for l in lines[..end].iter().map(|l| l.trim()) {
        let starts_use = ["use ", "pub use ", "pub(crate) use "].iter().any(|p| l.starts_with(p));
        if in_use || starts_use {
            in_use = !l.ends_with(';');
            continue;
        }
        let is_mod = (l.starts_with("mod ") || l.starts_with("pub mod ")) && l.ends_with(';');
        if l.is_empty() || l.starts_with("//") || is_mod {
            continue;
        }
        out.push(l);
    }
    out
}

/// The packages of a `Cargo.lock` (name, version, source): what a change to it can change in
/// the build. Dependency lists alone (a dev-dependency on a package already locked) cannot.
pub fn locked_packages(text: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for block in text.split("[[package]]").skip(1) {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = ")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        out.insert((field("name"), field("version"), field("source")));
    }
    out
}

/// Whether the change to `path` between `rev` and HEAD leaves what it computes as it was: for a
/// Rust file, equal [`code_of`]; for `Cargo.lock`, equal [`locked_packages`].
fn same_code(root: &Path, rev: &str, path: &str) -> anyhow::Result<bool> {
    let (Some(old), Some(new)) =
        (git(root, &["show", &format!("{rev}:{path}")])?, git(root, &["show", &format!("HEAD:{path}")])?)
    else {
        return Ok(false); // added or removed
    };
    Ok(if path.ends_with(".rs") {
        code_of(&old) == code_of(&new)
    } else if path.ends_with("Cargo.lock") {
        locked_packages(&old) == locked_packages(&new)
    } else if path.starts_with("experiments/") && path.ends_with(".toml") {
        settings_of(&old).is_some_and(|o| Some(o) == settings_of(&new))
    } else {
        false
    })
}

/// An experiment file's settings: the parsed TOML without its targets (`targets`,
/// `targets_data`), which change what a row is compared with, never what a run computes.
/// Comments and layout do not count either. None for a file that does not parse.
pub fn settings_of(text: &str) -> Option<toml::Table> {
    let mut t: toml::Table = toml::from_str(text).ok()?;
    t.remove("targets");
    t.remove("targets_data");
    Some(t)
}

/// What `git` says of the repository at `root`, asked once per revision and file.
struct History<'a> {
    root: &'a Path,
    /// The files changed between a revision and HEAD (None: the revision is unknown).
    changed: BTreeMap<String, Option<Vec<String>>>,
    /// Whether a file's change since a revision left its code as it was (see [`same_code`]).
    same: BTreeMap<(String, String), bool>,
}

impl History<'_> {
    fn changed_since(&mut self, rev: &str) -> anyhow::Result<Option<Vec<String>>> {
        if !self.changed.contains_key(rev) {
            let known = git(self.root, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])?.is_some();
            let names = if known {
                git(self.root, &["diff", "--name-only", rev, "HEAD"])?
                    .map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
            } else {
                None
            };
            self.changed.insert(rev.to_string(), names);
        }
        Ok(self.changed.get(rev).cloned().flatten())
    }

    fn same(&mut self, rev: &str, file: &str) -> anyhow::Result<bool> {
        let key = (rev.to_string(), file.to_string());
        if let Some(&t) = self.same.get(&key) {
            return Ok(t);
        }
        let t = same_code(self.root, rev, file)?;
        self.same.insert(key, t);
        Ok(t)
    }

    fn status(&mut self, r: &Recorded) -> anyhow::Result<Status> {
        if r.rev.ends_with("+dirty") {
            return Ok(Status::Dirty);
        }
        let recipe = match Recipe::load(&self.root.join("experiments").join(format!("{}.toml", r.experiment))) {
            Ok(recipe) => recipe,
            Err(e) => return Ok(Status::NoExperiment(format!("{e:#}"))),
        };
        let Some(files) = self.changed_since(&r.rev)? else { return Ok(Status::UnknownRevision) };
        let mut hits = vec![];
        for f in files.iter().filter(|f| recipe.runs(f)) {
            if !self.same(&r.rev, f)? {
                hits.push(f.clone());
            }
        }
        Ok(if hits.is_empty() { Status::Fresh } else { Status::Stale(hits) })
    }
}

/// The status of each recorded experiment against HEAD of the repository at `root`.
pub fn check(root: &Path, rows: &[Recorded]) -> anyhow::Result<Vec<(Recorded, Status)>> {
    let mut history = History { root, changed: BTreeMap::new(), same: BTreeMap::new() };
    rows.iter().map(|r| Ok((r.clone(), history.status(r)?))).collect()
}

pub fn run(a: ResultsArgs) -> anyhow::Result<()> {
    let ResultsTask::Check { verbose, fail_within } = a.task;
    let root = crate::experiment::root();
    let path = root.join("experiments").join("RESULTS.md");
    let table = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows = recorded(&table);
    let head = git(&root, &["rev-parse", "--short=10", "HEAD"])?.unwrap_or_default();
    println!("{} experiments in {}, against HEAD {}", rows.len(), path.display(), head.trim());
    let checked = check(&root, &rows)?;
    let mut stale_within = BTreeSet::new();
    let mut stale = 0;
    for (r, s) in &checked {
        let what = match s {
            Status::Fresh => "fresh".to_string(),
            Status::Stale(files) => {
                stale += 1;
                if fail_within.is_some_and(|t| r.wall_s <= t) {
                    stale_within.insert(r.experiment.clone());
                }
                let shown: Vec<&str> =
                    files.iter().take(if verbose { usize::MAX } else { 3 }).map(String::as_str).collect();
                let more = files.len() - shown.len();
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                format!("STALE: {} file(s) changed: {}{more}", files.len(), shown.join(", "))
            }
            Status::Dirty => {
                stale += 1;
                "STALE: recorded from uncommitted code".into()
            }
            Status::UnknownRevision => {
                stale += 1;
                "STALE?: the revision is not in this clone's history".into()
            }
            Status::NoExperiment(e) => format!("no experiment file: {e}"),
        };
        println!("{:<24} {:<10} {:>8.0} s  {what}", r.experiment, r.rev, r.wall_s);
    }
    println!("{stale} of {} experiments stale", checked.len());
    if !stale_within.is_empty() {
        anyhow::bail!(
            "stale rows of experiments that ran in at most {} s: {}",
            fail_within.unwrap_or_default(),
            stale_within.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(name: &str, model: &str, data: &str) -> Recipe {
        Recipe { name: name.into(), model: model.into(), data: data.into() }
    }

    #[test]
    fn an_experiment_runs_the_shared_code_and_its_own_files_only() {
        let ram = recipe("ram-x", "ram", "mnist_canvas");
        for f in [
            "Cargo.lock",
            "crates/gaze-tensor/src/ops.rs",
            "crates/gaze-zoo/src/ram.rs",
            "crates/gaze-zoo/src/model.rs",
            "crates/gaze-data/src/generate/mnist_canvas.rs",
            "crates/gaze-data/src/image.rs",
            "crates/gaze-train/src/trainer.rs",
            "experiments/ram-x.toml",
        ] {
            assert!(ram.runs(f), "{f}");
        }
        for f in [
            "crates/gaze-zoo/src/han.rs",
            "crates/gaze-zoo/src/dram.rs",
            "crates/gaze-data/src/generate/barn.rs",
            "crates/gaze-data/src/vqa.rs",
            "crates/gaze-train/src/report.rs",
            "crates/gaze-train/src/bin/gaze.rs",
            "experiments/ram-y.toml",
            "experiments/notes/ram-x.md",
            "README.md",
            "xtask/src/main.rs",
            "tests/tests/it/ram.rs",
        ] {
            assert!(!ram.runs(f), "{f}");
        }
        // DRAM is built on RAM's parts; the Relation Network on HAN's.
        assert!(recipe("d", "dram", "mnist_pairs").runs("crates/gaze-zoo/src/ram.rs"));
        assert!(recipe("r", "relation_net", "sort_of_clevr").runs("crates/gaze-zoo/src/han.rs"));
        // A model the tables do not know counts every zoo file that is no other model's own.
        assert!(recipe("n", "new_model", "mnist").runs("crates/gaze-zoo/src/new_model.rs"));
    }

    /// Every zoo and data file is either shared or owned by a type, and every type the checked-in
    /// experiments use is in the tables, so the tables cannot fall behind the code unnoticed.
    #[test]
    fn the_tables_know_every_model_and_data_type_in_use() -> anyhow::Result<()> {
        let root = crate::experiment::root();
        let models: Vec<&str> = MODEL_FILES.iter().map(|(t, _)| *t).collect();
        let data: Vec<&str> = DATA_FILES.iter().map(|(t, _)| *t).collect();
        for e in std::fs::read_dir(root.join("experiments"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let r = Recipe::load(&p)?;
                assert!(models.contains(&r.model.as_str()), "{}: model {}", p.display(), r.model);
                assert!(data.contains(&r.data.as_str()), "{}: data {}", p.display(), r.data);
            }
        }
        for (_, files) in MODEL_FILES {
            for f in *files {
                assert!(root.join("crates/gaze-zoo/src").join(f).is_file(), "{f}");
            }
        }
        for (_, files) in DATA_FILES {
            for f in *files {
                assert!(root.join("crates/gaze-data/src").join(f).is_file(), "{f}");
            }
        }
        Ok(())
    }

    #[test]
    fn an_experiments_targets_are_not_its_settings() {
        let base = "name = \"x\"\n[model]\ntype = \"convnet\"\n[targets]\ntest_error_pct = \"<= 1\"\n";
        let retargeted = "# set for MNIST\nname = \"x\"\ntargets_data = \"0123456789ab\"\n[model]\ntype = \"convnet\"\n\n[targets]\ntest_error_pct = \"<= 2\"\n";
        assert_eq!(settings_of(base), settings_of(retargeted));
        assert_ne!(settings_of(base), settings_of(&base.replace("convnet", "ram")));
        assert_eq!(settings_of("not = [toml"), None);
    }

    #[test]
    fn code_leaves_out_tests_comments_and_declarations() {
        assert_eq!(test_module_start("fn a() {}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n"), Some(2));
        assert_eq!(test_module_start("fn a() {}\n"), None);
        assert_eq!(test_module_start("#[cfg(test)]\nmod tests {\n}\nfn after() {}\n"), None);
        let a = "//! Docs.\nuse a::b;\npub use c::{\n    D,\n    E,\n};\nmod m;\n\n/// f.\nfn f() -> u32 {\n    1 // one\n}\n";
        assert_eq!(code_of(a), ["fn f() -> u32 {", "1 // one", "}"]);
        let b = "//! Other docs.\nuse a::{b, c};\npub mod m;\nfn f() -> u32 {\n    1 // one\n}\n#[cfg(test)]\nmod tests {\n}\n";
        assert_eq!(code_of(a), code_of(b));
        assert_ne!(code_of(a), code_of(&a.replace("    1 //", "    2 //")));
    }

    #[test]
    fn a_lock_file_changes_the_build_only_through_its_packages() {
        let one = "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\ndependencies = [\n \"b\",\n]\n\n[[package]]\nname = \"b\"\nversion = \"0.2.0\"\nsource = \"registry+x\"\n";
        let more_deps = one.replace(" \"b\",\n", " \"b\",\n \"c\",\n");
        assert_eq!(locked_packages(one), locked_packages(&more_deps));
        assert_ne!(locked_packages(one), locked_packages(&one.replace("0.2.0", "0.2.1")));
        assert_eq!(locked_packages(one).len(), 2);
    }

    /// A fixture repository: two experiments recorded at one revision, then changes of each kind.
    #[test]
    fn rows_go_stale_when_code_they_run_changes_and_only_then() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        let sh = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .output()?;
            anyhow::ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let write = |p: &str, text: &str| -> anyhow::Result<()> {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().context("parent")?)?;
            Ok(std::fs::write(p, text)?)
        };
        let code = "pub fn f() -> u32 {\n    1\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
        sh(&["init", "-q"])?;
        write("crates/gaze-zoo/src/ram.rs", code)?;
        write("crates/gaze-zoo/src/han.rs", code)?;
        write("experiments/ram-a.toml", "[model]\ntype = \"ram\"\n[data]\ntype = \"mnist\"\n")?;
        write("experiments/han-b.toml", "[model]\ntype = \"han\"\n[data]\ntype = \"barn_vqa\"\n")?;
        write("README.md", "x\n")?;
        sh(&["add", "-A"])?;
        sh(&["commit", "-qm", "one"])?;
        let rev = sh(&["rev-parse", "--short=10", "HEAD"])?;
        let table = format!(
            "| experiment | metric | value | target | wall_s | samples_per_s | git_rev | date | command |\n\
             |---|---|---|---|---|---|---|---|---|\n\
             | han-b | acc | 1 |  | 10.0 | 1 | {rev} | d | `c` |\n\
             | ram-a | acc | 1 |  | 20.0 | 1 | {rev} (resumed at abc) | d | `c` |\n\
             | gone | acc | 1 |  | 20.0 | 1 | {rev} | d | `c` |\n\
             | wip | acc | 1 |  | 20.0 | 1 | {rev}+dirty | d | `c` |\n\
             | old | acc | 1 |  | 20.0 | 1 | 0123456789 | d | `c` |\n"
        );
        let rows = recorded(&table);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows.iter().find(|r| r.experiment == "ram-a").map(|r| r.rev.clone()), Some(rev.clone()));
        write("experiments/old.toml", "[model]\ntype = \"ram\"\n[data]\ntype = \"mnist\"\n")?;
        write("experiments/wip.toml", "[model]\ntype = \"ram\"\n[data]\ntype = \"mnist\"\n")?;
        sh(&["add", "-A"])?;
        sh(&["commit", "-qm", "two"])?;
        let status = |name: &str| -> anyhow::Result<Status> {
            let all = check(root, &rows)?;
            all.into_iter().find(|(r, _)| r.experiment == name).map(|(_, s)| s).context("row")
        };
        assert_eq!(status("ram-a")?, Status::Fresh);
        assert_eq!(status("han-b")?, Status::Fresh);
        assert!(matches!(status("gone")?, Status::NoExperiment(_)));
        assert_eq!(status("wip")?, Status::Dirty);
        assert_eq!(status("old")?, Status::UnknownRevision);
        // Docs and a test module: nothing goes stale.
        write("README.md", "y\n")?;
        write(
            "crates/gaze-zoo/src/ram.rs",
            &code.replace("fn t() {}", "fn t() {\n        assert_eq!(super::f(), 1);\n    }"),
        )?;
        sh(&["commit", "-qam", "three"])?;
        assert_eq!(status("ram-a")?, Status::Fresh);
        // HAN's code: its rows go stale, RAM's do not.
        write("crates/gaze-zoo/src/han.rs", &code.replace("    1\n", "    2\n"))?;
        sh(&["commit", "-qam", "four"])?;
        assert_eq!(status("han-b")?, Status::Stale(vec!["crates/gaze-zoo/src/han.rs".into()]));
        assert_eq!(status("ram-a")?, Status::Fresh);
        // Shared code: both.
        write("crates/gaze-tensor/src/ops.rs", "pub fn g() {}\n")?;
        sh(&["add", "-A"])?;
        sh(&["commit", "-qm", "five"])?;
        assert_eq!(status("ram-a")?, Status::Stale(vec!["crates/gaze-tensor/src/ops.rs".into()]));
        Ok(())
    }
}
