//! The shared corpus of invalid documents (`testdata/invalid/*.yaml` at the repository root),
//! read by the model, REST and kumactl tests alike. Each file starts with comment lines
//! `# field: <path>` and `# message: <text the message contains>`; `# level: store` marks a
//! document that is well-formed but refused by the store (e.g. its mesh does not exist).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct InvalidDocument {
    pub path: PathBuf,
    pub text: String,
    pub field: String,
    pub message: String,
    pub store_level: bool,
}

/// Reads every document of the corpus, sorted by file name.
pub fn invalid_documents(dir: &Path) -> std::io::Result<Vec<InvalidDocument>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path)?;
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
                .unwrap_or_default()
        };
        out.push(InvalidDocument {
            field: header("field"),
            message: header("message"),
            store_level: header("level") == "store",
            path,
            text,
        });
    }
    Ok(out)
}

/// The first resource of `testdata/resources/<name>` (the golden inputs at the repository
/// root), parsed and validated; panics when it is not (test fixtures only).
pub fn resource_fixture(name: &str) -> crate::Resource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/resources")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value = crate::parse_documents(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0);
    let r =
        crate::Resource::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crate::validate(&r).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r
}
