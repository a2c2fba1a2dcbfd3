//! Prompt presets: `prompts/NAME.md` files whose first heading is the title and whose text
//! after it becomes the system message. The repository's presets are built into the
//! binary too, for when it runs where no `prompts/` directory exists.

use std::path::Path;

/// Built in from the repository's `prompts/`.
const BUILT_IN: &[(&str, &str)] = &[
    ("default", include_str!("../prompts/default.md")),
    ("translator", include_str!("../prompts/translator.md")),
    ("code-reviewer", include_str!("../prompts/code-reviewer.md")),
];

/// The preset applied when a request names none, if it exists.
pub const DEFAULT: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub name: String,
    pub title: String,
    pub text: String,
}

impl Preset {
    fn parse(name: &str, file: &str) -> Self {
        let mut title = None;
        let mut body = Vec::new();
        for line in file.lines() {
            match line.trim_start().strip_prefix("# ") {
                Some(heading) if title.is_none() && body.iter().all(|l: &&str| l.trim().is_empty()) => {
                    title = Some(heading.trim().to_owned());
                    body.clear();
                }
                _ => body.push(line),
            }
        }
        Self {
            name: name.to_owned(),
            title: title.unwrap_or_else(|| name.to_owned()),
            text: body.join("\n").trim().to_owned(),
        }
    }
}

/// Every preset, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Presets {
    items: Vec<Preset>,
}

impl Presets {
    /// Reads `dir/*.md`; falls back to the built-in presets when `dir` does not exist.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        if !dir.is_dir() {
            log::info!("no prompts directory at {}; using the built-in presets", dir.display());
            return Ok(Self::built_in());
        }
        let mut items = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let file = std::fs::read_to_string(&path)?;
            items.push(Preset::parse(name, &file));
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        log::info!("loaded {} prompt preset(s) from {}", items.len(), dir.display());
        Ok(Self { items })
    }

    pub fn built_in() -> Self {
        let mut items: Vec<Preset> = BUILT_IN.iter().map(|(name, file)| Preset::parse(name, file)).collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Self { items }
    }

    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.items.iter().find(|p| p.name == name)
    }

    pub fn all(&self) -> &[Preset] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_heading_is_the_title_and_the_rest_the_text() {
        let p = Preset::parse("t", "\n# Translator\n\nTranslate.\n# Not a title\n");
        assert_eq!(p.title, "Translator");
        assert_eq!(p.text, "Translate.\n# Not a title");
        assert_eq!(Preset::parse("bare", "Just text").title, "bare");
    }

    #[test]
    fn built_in_presets_include_the_three_documented_ones() {
        let presets = Presets::built_in();
        for name in ["default", "translator", "code-reviewer"] {
            let p = presets.get(name).unwrap();
            assert!(!p.text.is_empty() && !p.title.is_empty());
        }
    }
}
