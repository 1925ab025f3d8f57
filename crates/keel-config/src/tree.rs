//! The merged configuration tree: defaults < file < environment, with where each value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::Source;
use super::interpolate::{Interpolated, interpolate};

/// A dotted key path (`http.port`).
pub(crate) type KeyPath = String;

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

/// The configuration as one YAML tree, plus the source of every value that is not a default.
pub(crate) struct Tree {
    pub(crate) root: Value,
    pub(crate) defaults: Value,
    pub(crate) sources: BTreeMap<KeyPath, Source>,
    /// Each variable's value the file took from the environment through `${VAR}`: a problem
    /// never shows one (it may be a secret).
    pub(crate) taken: Vec<String>,
    /// Each whole value such a variable went into.
    pub(crate) holding: Vec<String>,
}

impl Tree {
    pub(crate) fn new(defaults: Value) -> Self {
        Self { root: defaults.clone(), defaults, sources: BTreeMap::new(), taken: Vec::new(), holding: Vec::new() }
    }

    /// Where the value at `path` (or the nearest value below or above it) came from.
    pub(crate) fn source_of(&self, path: &str) -> Option<&Source> {
        if let Some(s) = self.sources.get(path) {
            return Some(s);
        }
        let below = format!("{path}.");
        if let Some((_, s)) = self.sources.range(below.clone()..).next().filter(|(k, _)| k.starts_with(&below)) {
            return Some(s);
        }
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('.') {
            if let Some(s) = self.sources.get(parent) {
                return Some(s);
            }
            p = parent;
        }
        None
    }

    /// Layers a parsed YAML file over the tree, interpolating `${VAR}` in string values.
    pub(crate) fn merge_file(
        &mut self,
        file: &Path,
        value: Value,
        lookup: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<(KeyPath, String)>,
    ) {
        let Value::Mapping(map) = value else {
            if !value.is_null() {
                problems.push((String::new(), "the file must hold a mapping of sections".into()));
            }
            return;
        };
        let defaults = self.defaults.clone();
        let mut root = std::mem::take(&mut self.root);
        self.merge_map(&mut root, map, "", Some(&defaults), file, lookup, problems);
        self.root = root;
    }

    #[allow(clippy::too_many_arguments)]
    fn merge_map(
        &mut self,
        target: &mut Value,
        map: Mapping,
        prefix: &str,
        defaults: Option<&Value>,
        file: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<(KeyPath, String)>,
    ) {
        if !target.is_mapping() {
            *target = Value::Mapping(Mapping::new());
        }
        for (k, v) in map {
            let key = match k {
                Value::String(s) => s,
                other => {
                    problems.push((prefix.to_owned(), format!("key {} is not a string", render(&other))));
                    continue;
                }
            };
            let path = join(prefix, &key);
            let default = defaults.and_then(|d| d.get(key.as_str()));
            let Some(slot) =
                target.as_mapping_mut().map(|m| m.entry(Value::String(key.clone())).or_insert(Value::Null))
            else {
                continue;
            };
            match v {
                Value::Mapping(inner) if slot.is_mapping() || default.is_none_or(Value::is_null) => {
                    self.merge_map(slot, inner, &path, default, file, lookup, problems);
                }
                other => {
                    let v = self.interpolate_leaf(other, &path, default, file, lookup, problems);
                    *slot = v;
                }
            }
        }
    }

    fn interpolate_leaf(
        &mut self,
        value: Value,
        path: &str,
        default: Option<&Value>,
        file: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<(KeyPath, String)>,
    ) -> Value {
        // "Interpolated" means "came from the environment": a `${VAR:-default}` that used its
        // default is text written in the file, and counts as inline (for the secrets rule).
        let mut interpolated = false;
        let value = match value {
            Value::String(s) => match interpolate(&s, lookup) {
                Ok(Some(out)) => {
                    interpolated = self.take(&out);
                    coerce(&out.value, default)
                }
                Ok(None) => Value::String(s),
                Err(e) => {
                    problems.push((path.to_owned(), e));
                    Value::String(s)
                }
            },
            Value::Sequence(items) => Value::Sequence(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(s) => match interpolate(&s, lookup) {
                            Ok(Some(out)) => {
                                interpolated |= self.take(&out);
                                Value::String(out.value)
                            }
                            Ok(None) => Value::String(s),
                            Err(e) => {
                                problems.push((path.to_owned(), e));
                                Value::String(s)
                            }
                        },
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        };
        self.record_leaves(&value, path, &Source::File { path: file.to_path_buf(), interpolated });
        value
    }

    /// Remembers what `out` took from the environment; whether the value counts as
    /// interpolated (some variable read, no default used: no part of it is written in the file).
    fn take(&mut self, out: &Interpolated) -> bool {
        if out.taken.is_empty() {
            return false;
        }
        self.taken.extend(out.taken.iter().cloned());
        self.holding.push(out.value.clone());
        !out.used_default
    }

    fn record_leaves(&mut self, value: &Value, path: &str, source: &Source) {
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    self.record_leaves(v, &join(path, &render_key(k)), source);
                }
            }
            _ => {
                self.sources.insert(path.to_owned(), source.clone());
            }
        }
    }

    /// Layers `<PREFIX>__SECTION__KEY=value` variables over the tree.
    pub(crate) fn merge_env<'a>(&mut self, prefix: &str, env: impl Iterator<Item = (&'a str, &'a str)>) {
        let want = format!("{prefix}__");
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(&want) else { continue };
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let default = lookup_path(&self.defaults, &segments);
            let value = coerce(raw, default);
            let path = segments.join(".");
            set_path(&mut self.root, &segments, value);
            self.sources.retain(|k, _| !(k == &path || k.starts_with(&format!("{path}."))));
            self.sources.insert(path, Source::Env(name.to_owned()));
        }
    }

    /// Replaces every `<key>_file: PATH` whose `<key>` is a known setting with the file's
    /// contents (trailing newline removed), the Docker/Kubernetes secrets convention.
    pub(crate) fn resolve_files(&mut self, problems: &mut Vec<(KeyPath, String)>) {
        let defaults = self.defaults.clone();
        let mut root = std::mem::take(&mut self.root);
        self.resolve_files_in(&mut root, Some(&defaults), "", problems);
        self.root = root;
    }

    fn resolve_files_in(
        &mut self,
        node: &mut Value,
        defaults: Option<&Value>,
        prefix: &str,
        problems: &mut Vec<(KeyPath, String)>,
    ) {
        let Value::Mapping(map) = node else { return };
        let keys: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
        for key in keys {
            let path = join(prefix, &key);
            let default = defaults.and_then(|d| d.get(key.as_str()));
            if let Some(base) = key.strip_suffix("_file") {
                let known = defaults.is_some_and(|d| d.get(base).is_some() && d.get(key.as_str()).is_none());
                if known {
                    let base_path = join(prefix, base);
                    let Some(file_value) = map.remove(key.as_str()) else { continue };
                    let file_source = self.sources.remove(&path);
                    if file_value.is_null() {
                        continue;
                    }
                    let Some(file) = file_value.as_str().map(PathBuf::from) else {
                        problems.push((path, "expected a file path".into()));
                        continue;
                    };
                    if self.sources.contains_key(&base_path) {
                        problems
                            .push((base_path.clone(), format!("both `{base_path}` and `{path}` are set; keep one")));
                        continue;
                    }
                    match std::fs::read_to_string(&file) {
                        Ok(text) => {
                            let text = text.strip_suffix('\n').unwrap_or(&text);
                            let text = text.strip_suffix('\r').unwrap_or(text);
                            map.insert(Value::String(base.to_owned()), Value::String(text.to_owned()));
                            self.sources.insert(base_path, Source::SecretFile(file));
                        }
                        Err(e) => {
                            let from = file_source.map(|s| format!(" (set in {s})")).unwrap_or_default();
                            problems.push((path, format!("cannot read {}{from}: {e}", file.display())));
                        }
                    }
                    continue;
                }
            }
            if let Some(child) = map.get_mut(key.as_str()) {
                self.resolve_files_in(child, default, &path, problems);
            }
        }
    }
}

/// Turns an untyped string (from env or interpolation) into the YAML type its default has.
pub(crate) fn coerce(raw: &str, default: Option<&Value>) -> Value {
    match default {
        Some(Value::String(_)) => Value::String(raw.to_owned()),
        Some(Value::Sequence(items)) => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match items.first() {
                    Some(first) if !first.is_string() => coerce(s, Some(first)),
                    _ => Value::String(s.to_owned()),
                })
                .collect(),
        ),
        Some(Value::Bool(_)) | Some(Value::Number(_)) => scalar(raw).unwrap_or_else(|| Value::String(raw.to_owned())),
        // Unknown type (an optional setting): keep the text. Tokens like `0x1f`, `1e5` or `null`
        // must not be reinterpreted; a typed optional setting is retried as a scalar when the
        // text does not fit (see `config::section`).
        _ => Value::String(raw.to_owned()),
    }
}

/// `raw` read as a YAML bool or number, if it is one.
pub(crate) fn scalar(raw: &str) -> Option<Value> {
    match serde_norway::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) if !raw.trim().is_empty() => Some(v),
        _ => None,
    }
}

fn lookup_path<'a>(root: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments.iter().try_fold(root, |node, s| node.get(s.as_str()))
}

fn set_path(root: &mut Value, segments: &[String], value: Value) {
    let Some((last, parents)) = segments.split_last() else { return };
    let mut node = root;
    for s in parents {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Some(map) = node.as_mapping_mut() else { return };
        node = map.entry(Value::String(s.clone())).or_insert(Value::Null);
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    if let Some(map) = node.as_mapping_mut() {
        map.insert(Value::String(last.clone()), value);
    }
}

fn render_key(k: &Value) -> String {
    k.as_str().map(str::to_owned).unwrap_or_else(|| render(k))
}

fn render(v: &Value) -> String {
    serde_norway::to_string(v).map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coercion_follows_the_default_type() {
        let s = Value::String("x".into());
        let n: Value = serde_norway::from_str("8080").unwrap();
        let seq: Value = serde_norway::from_str("[]").unwrap();
        assert_eq!(coerce("123", Some(&s)), Value::String("123".into()));
        assert_eq!(coerce("9000", Some(&n)), serde_norway::from_str::<Value>("9000").unwrap());
        assert_eq!(coerce("abc", Some(&n)), Value::String("abc".into()));
        assert_eq!(
            coerce("https://a.example, https://b.example", Some(&seq)),
            serde_norway::from_str::<Value>("[https://a.example, https://b.example]").unwrap()
        );
        assert_eq!(coerce("true", None), Value::String("true".into()), "unknown type stays text");
        assert_eq!(coerce("0x1f", None), Value::String("0x1f".into()));
        assert_eq!(coerce("null", None), Value::String("null".into()));
    }
}
