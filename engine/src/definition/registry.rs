//! The versioned [`Registry`] of loaded definitions, and the ones compiled into the binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{parse, Definition, Diagnostic, Error};

/// Every loaded definition, by name and version.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    defs: BTreeMap<String, BTreeMap<u32, Arc<Definition>>>,
}

/// The definitions shipped in the binary (`workflows/*.toml` at build time), as (name, text).
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_workflows.rs"));
}

impl Registry {
    /// Parses and validates every source; all problems of all files are reported together.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Self, Error> {
        let mut registry = Registry::default();
        let mut diags = Vec::new();
        for (file, text) in sources {
            match parse(file, text) {
                Ok(def) => {
                    let versions = registry.defs.entry(def.name.clone()).or_default();
                    if let Some(other) = versions.get(&def.version) {
                        diags.push(Diagnostic {
                            file: (*file).to_owned(),
                            line: 0,
                            message: format!(
                                "workflow `{}` version {} is already defined in {}",
                                def.name, def.version, other.file
                            ),
                        });
                    } else {
                        versions.insert(def.version, Arc::new(def));
                    }
                }
                Err(mut d) => diags.append(&mut d),
            }
        }
        if diags.is_empty() {
            Ok(registry)
        } else {
            Err(Error::Invalid(diags))
        }
    }

    /// Loads the given files.
    pub fn from_files(paths: &[&Path]) -> Result<Self, Error> {
        let mut texts = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            texts.push((path.display().to_string(), text));
        }
        let sources: Vec<(&str, &str)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        Self::from_sources(&sources)
    }

    /// Loads every `*.toml` directly in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io { path: dir.display().to_string(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        Self::from_files(&refs)
    }

    /// The definitions compiled into the binary.
    pub fn embedded() -> Result<Self, Error> {
        Self::from_sources(embedded::WORKFLOWS)
    }

    /// The newest version of `name`: what a new instance starts on.
    pub fn latest(&self, name: &str) -> Option<&Arc<Definition>> {
        self.defs.get(name).and_then(|v| v.values().next_back())
    }

    /// A specific version.
    pub fn get(&self, name: &str, version: u32) -> Option<&Arc<Definition>> {
        self.defs.get(name).and_then(|v| v.get(&version))
    }

    /// Every definition, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.defs.values().flat_map(BTreeMap::values)
    }
}
