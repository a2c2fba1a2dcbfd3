//! The file of upstreams and model routes (`--config` / `CHATGATE_CONFIG`), in TOML:
//!
//! ```toml
//! default_model = "smart"
//!
//! [upstreams.main]
//! kind = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//!
//! [models.smart]
//! targets = ["main/gpt-4o"]
//! ```
//!
//! Read once at start-up and checked whole: a typo must stop the gateway, not be ignored,
//! so every error names the file, the line and column of the offending key, and why. The
//! raw file (`deny_unknown_fields`) is validated into [`Routing`], which the rest trusts.

use indexmap::IndexMap;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Which API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiKind {
    /// Any OpenAI-compatible `/chat/completions` API.
    #[serde(rename = "openai")]
    OpenAi,
    /// The Anthropic Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::OpenAi => "openai",
            ApiKind::Anthropic => "anthropic",
        }
    }
}

/// One upstream of the file, its key read.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamEntry {
    pub name: String,
    pub kind: ApiKind,
    /// Without a trailing `/`.
    pub base_url: String,
    pub key: Option<String>,
}

impl fmt::Debug for UpstreamEntry {
    // The key is never printed, not even in a debug dump of the settings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamEntry")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "[set]"))
            .finish()
    }
}

/// Where a model name is sent: an upstream (an index into [`Routing::upstreams`]) and the
/// model name that upstream knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub upstream: usize,
    pub model: String,
}

/// A model clients may name, and its targets in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub name: String,
    pub targets: Vec<Target>,
}

/// The validated file: at least one upstream (the first takes models not under
/// `[models]`), and routes whose targets all name one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub default_model: Option<String>,
    pub upstreams: Vec<UpstreamEntry>,
    pub models: Vec<ModelRoute>,
}

/// What is wrong with the file, and where.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {reason}", .at.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default())]
pub struct ConfigFileError {
    pub file: PathBuf,
    /// Line and column, from 1.
    pub at: Option<(usize, usize)>,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default_model: Option<Spanned<String>>,
    #[serde(default)]
    upstreams: IndexMap<Spanned<String>, RawUpstream>,
    #[serde(default)]
    models: IndexMap<Spanned<String>, RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: ApiKind,
    base_url: Spanned<String>,
    api_key_env: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    targets: Spanned<Vec<Spanned<String>>>,
}

/// Reads and checks the file at `path`, taking `api_key_env` variables from the process
/// environment.
pub fn load(path: &Path) -> Result<Routing, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        file: path.to_owned(),
        at: None,
        reason: format!("cannot read the config file: {e}"),
    })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// Checks the file's `text`; `path` names it in errors and anchors relative
/// `api_key_file` paths (they are relative to the file's folder); `env` looks up
/// `api_key_env` variables.
pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Routing, ConfigFileError> {
    let fail = |span: Option<std::ops::Range<usize>>, reason: String| ConfigFileError {
        file: path.to_owned(),
        at: span.map(|s| line_and_column(text, s.start)),
        reason,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| fail(e.span(), e.message().trim().to_owned()))?;
    if raw.upstreams.is_empty() {
        return Err(fail(None, "no upstream: add an [upstreams.NAME] table".into()));
    }

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, upstream) in &raw.upstreams {
        if name.get_ref().is_empty() || name.get_ref().contains('/') {
            return Err(fail(
                Some(name.span()),
                format!(
                    "the upstream name {:?} must be non-empty and without `/`",
                    name.get_ref()
                ),
            ));
        }
        let base_url = upstream.base_url.get_ref().trim();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(fail(
                Some(upstream.base_url.span()),
                format!("base_url must start with http:// or https://, got {base_url:?}"),
            ));
        }
        let key = match (&upstream.api_key_env, &upstream.api_key_file) {
            (Some(_), Some(file)) => {
                return Err(fail(
                    Some(file.span()),
                    "give api_key_env or api_key_file, not both".into(),
                ));
            }
            (Some(var), None) => match env(var.get_ref()).filter(|k| !k.trim().is_empty()) {
                Some(key) => Some(key.trim().to_owned()),
                None => {
                    return Err(fail(
                        Some(var.span()),
                        format!("the environment variable {} (api_key_env) is not set", var.get_ref()),
                    ));
                }
            },
            (None, Some(file)) => {
                let key_path = path.parent().unwrap_or(Path::new("")).join(file.get_ref());
                match std::fs::read_to_string(&key_path) {
                    Ok(key) if !key.trim().is_empty() => Some(key.trim().to_owned()),
                    Ok(_) => {
                        return Err(fail(
                            Some(file.span()),
                            format!("the key file {} is empty", key_path.display()),
                        ));
                    }
                    Err(e) => {
                        return Err(fail(
                            Some(file.span()),
                            format!("cannot read the key file {}: {e}", key_path.display()),
                        ));
                    }
                }
            }
            (None, None) => None,
        };
        upstreams.push(UpstreamEntry {
            name: name.get_ref().clone(),
            kind: upstream.kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        });
    }

    let mut models = Vec::with_capacity(raw.models.len());
    for (name, model) in &raw.models {
        if model.targets.get_ref().is_empty() {
            return Err(fail(
                Some(model.targets.span()),
                format!(
                    "the model {:?} has no targets: name at least one \"upstream/model\"",
                    name.get_ref()
                ),
            ));
        }
        let mut targets = Vec::with_capacity(model.targets.get_ref().len());
        for target in model.targets.get_ref() {
            let split = target.get_ref().split_once('/');
            let Some((upstream, upstream_model)) = split.filter(|(u, m)| !u.is_empty() && !m.trim().is_empty()) else {
                return Err(fail(
                    Some(target.span()),
                    format!("the target {:?} must be \"upstream/model\"", target.get_ref()),
                ));
            };
            let Some(index) = upstreams.iter().position(|u| u.name == upstream) else {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return Err(fail(
                    Some(target.span()),
                    format!(
                        "the target {:?} names the upstream {upstream:?}, which is not under [upstreams] (there are: {})",
                        target.get_ref(),
                        known.join(", ")
                    ),
                ));
            };
            targets.push(Target {
                upstream: index,
                model: upstream_model.to_owned(),
            });
        }
        models.push(ModelRoute {
            name: name.get_ref().clone(),
            targets,
        });
    }

    let default_model = match raw.default_model {
        Some(m) if m.get_ref().trim().is_empty() => {
            return Err(fail(Some(m.span()), "default_model must not be empty".into()));
        }
        Some(m) => Some(m.into_inner().trim().to_owned()),
        None => None,
    };
    Ok(Routing {
        default_model,
        upstreams,
        models,
    })
}

/// The line and column (from 1, the column in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"default_model = "smart"

[upstreams.main]
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"

[upstreams.claude]
kind = "anthropic"
base_url = "https://api.anthropic.com"

[models.smart]
targets = ["claude/claude-sonnet-4-5", "main/gpt-4o"]

[models.router]
targets = ["main/openai/gpt-4o-mini"]
"#;

    fn env(name: &str) -> Option<String> {
        (name == "OPENAI_API_KEY").then(|| "sk-from-env".to_owned())
    }

    fn parse_str(text: &str) -> Result<Routing, ConfigFileError> {
        parse(text, Path::new("conf/routes.toml"), env)
    }

    /// The error's text, which must begin with the file and the position.
    fn error(text: &str) -> String {
        parse_str(text).expect_err("the file is refused").to_string()
    }

    #[test]
    fn the_contracts_shape_is_read_in_order() {
        let routing = parse_str(GOOD).unwrap();
        assert_eq!(routing.default_model.as_deref(), Some("smart"));
        let names: Vec<&str> = routing.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["main", "claude"]);
        assert_eq!(routing.upstreams[0].base_url, "https://api.openai.com/v1");
        assert_eq!(routing.upstreams[0].key.as_deref(), Some("sk-from-env"));
        assert_eq!(routing.upstreams[1].kind, ApiKind::Anthropic);
        assert_eq!(routing.upstreams[1].key, None, "neither key setting: no key");
        assert_eq!(routing.models[0].name, "smart");
        assert_eq!(
            routing.models[0].targets,
            [
                Target {
                    upstream: 1,
                    model: "claude-sonnet-4-5".into()
                },
                Target {
                    upstream: 0,
                    model: "gpt-4o".into()
                }
            ]
        );
        assert_eq!(
            routing.models[1].targets[0].model, "openai/gpt-4o-mini",
            "split at the first /"
        );
        assert!(
            !format!("{routing:?}").contains("sk-from-env"),
            "no key in debug output"
        );
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_line_and_column() {
        let text = GOOD.replace("api_key_env", "api_key_enw");
        let e = error(&text);
        assert!(e.starts_with("conf/routes.toml:6:1: "), "{e}");
        assert!(e.contains("unknown field `api_key_enw`"), "{e}");
        let e = error("defualt_model = \"x\"\n");
        assert!(
            e.starts_with("conf/routes.toml:1:1: ") && e.contains("defualt_model"),
            "{e}"
        );
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = error("[upstreams.main\nkind = \"openai\"\n");
        assert!(e.starts_with("conf/routes.toml:1:"), "{e}");
    }

    #[test]
    fn a_bad_kind_is_refused_where_it_is() {
        let e = error(&GOOD.replace("kind = \"anthropic\"", "kind = \"antropic\""));
        assert!(e.starts_with("conf/routes.toml:9:8: "), "{e}");
        assert!(e.contains("antropic") && e.contains("anthropic"), "{e}");
    }

    #[test]
    fn a_target_naming_an_unknown_upstream_is_refused_where_it_is() {
        let e = error(&GOOD.replace("\"main/gpt-4o\"", "\"mian/gpt-4o\""));
        assert!(e.starts_with("conf/routes.toml:13:40: "), "{e}");
        assert!(e.contains("\"mian\"") && e.contains("main, claude"), "{e}");
        let e = error(&GOOD.replace("\"main/gpt-4o\"", "\"gpt-4o\""));
        assert!(
            e.starts_with("conf/routes.toml:13:40: ") && e.contains("upstream/model"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_targets_list_is_refused() {
        let e = error(&GOOD.replace("[\"main/openai/gpt-4o-mini\"]", "[]"));
        assert!(
            e.starts_with("conf/routes.toml:16:11: ") && e.contains("no targets"),
            "{e}"
        );
    }

    #[test]
    fn an_unset_key_variable_is_refused() {
        let e = error(&GOOD.replace("\"OPENAI_API_KEY\"", "\"NOT_SET_ANYWHERE\""));
        assert!(e.starts_with("conf/routes.toml:6:15: "), "{e}");
        assert!(e.contains("NOT_SET_ANYWHERE") && e.contains("not set"), "{e}");
    }

    #[test]
    fn a_key_file_is_read_beside_the_config_and_an_unreadable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("claude.key"), "sk-ant-file\n").unwrap();
        let with_file = GOOD.replace(
            "base_url = \"https://api.anthropic.com\"",
            "base_url = \"https://api.anthropic.com\"\napi_key_file = \"claude.key\"",
        );
        let config = dir.path().join("routes.toml");
        let routing = parse(&with_file, &config, env).unwrap();
        assert_eq!(routing.upstreams[1].key.as_deref(), Some("sk-ant-file"));

        let missing = with_file.replace("claude.key", "missing.key");
        let e = parse(&missing, &config, env).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:11:16: ", config.display())), "{e}");
        assert!(
            e.contains("cannot read the key file") && e.contains("missing.key"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_upstreams_or_with_a_bad_url_is_refused() {
        assert!(error("default_model = \"x\"\n").contains("no upstream"));
        let e = error(&GOOD.replace("https://api.anthropic.com", "api.anthropic.com"));
        assert!(
            e.starts_with("conf/routes.toml:10:12: ") && e.contains("http://"),
            "{e}"
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(line_and_column("é = 1\nab", 7), (2, 1));
        assert_eq!(line_and_column("é = 1", 5), (1, 5));
    }
}
