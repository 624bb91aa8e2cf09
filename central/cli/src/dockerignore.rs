//! What an upload leaves out: `node_modules/` and `.git/` wherever they are (dependencies
//! are installed by the build, for Linux; history is not source), and what a
//! `.dockerignore` at the stack's root names, read as Docker reads it: patterns relative to
//! that root, `*`/`?` within one path segment, `**` across segments, `!` to take a path
//! back, later lines winning, and a directory's exclusion covering what is below it.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use globset::{GlobBuilder, GlobMatcher};

/// Directories never uploaded, at any depth.
const ALWAYS: [&str; 2] = ["node_modules", ".git"];

/// The rules of one upload.
pub struct Ignore {
    /// Each pattern, and whether it takes paths back (`!`).
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    /// The rules of the stack at `root` (its `.dockerignore`, if any).
    pub fn of(root: &Path) -> Result<Self> {
        let path = root.join(".dockerignore");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The rules in a `.dockerignore`'s text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut rules = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            // Cleaned as Docker cleans it: "./a/" is "a".
            let cleaned: Vec<&str> = pattern
                .split('/')
                .filter(|part| !part.is_empty() && *part != ".")
                .collect();
            if cleaned.is_empty() {
                bail!("line {}: {line:?} names no path", number + 1);
            }
            if cleaned.contains(&"..") {
                bail!(
                    "line {}: {line:?} reaches above the stack's directory, where nothing is \
                     uploaded anyway; remove it",
                    number + 1
                );
            }
            let pattern = cleaned.join("/");
            let pattern = pattern.as_str();
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .with_context(|| format!("line {}: {line:?} is not a pattern", number + 1))?;
            rules.push((glob.compile_matcher(), keep));
        }
        Ok(Self { rules })
    }

    /// Whether `relative` (a path below the root, `/`-separated) is left out.
    pub fn excludes(&self, relative: &Path) -> bool {
        if relative
            .components()
            .any(|c| ALWAYS.iter().any(|a| c.as_os_str() == *a))
        {
            return true;
        }
        // A path is out when it, or a directory above it, matches the last rule that
        // matches it at all, and that rule is not a `!` one.
        let mut out = false;
        let mut prefix = std::path::PathBuf::new();
        for component in relative.components() {
            prefix.push(component);
            for (glob, keep) in &self.rules {
                if glob.is_match(&prefix) {
                    out = !keep;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patterns_as_docker_does() {
        let ignore =
            Ignore::parse("# comment\n*.log\n/tmp/\ndocs/**/*.md\nsecrets\n!secrets/public.txt\n")
                .unwrap();
        let out = |p: &str| ignore.excludes(Path::new(p));
        assert!(out("node_modules/express/index.js"));
        assert!(out("web/node_modules/x.js"));
        assert!(out(".git/HEAD"));
        assert!(out("app.log"));
        assert!(!out("web/app.log"), "* does not cross a /");
        assert!(out("tmp/cache/x"));
        assert!(out("docs/a/b/c.md"));
        assert!(!out("docs/a/b/c.txt"));
        assert!(out("secrets/key.pem"));
        assert!(!out("secrets/public.txt"), "! takes a path back");
        assert!(!out("src/app.js"));
        assert!(Ignore::parse("[unclosed\n").is_err());
        // Cleaned as Docker cleans patterns; what names nothing, or leaves the root, is refused.
        let cleaned = Ignore::parse("./assets/\n").unwrap();
        assert!(cleaned.excludes(Path::new("assets/big.bin")));
        assert!(Ignore::parse("!\n").is_err());
        assert!(Ignore::parse("/\n").is_err());
        assert!(Ignore::parse("../assets\n").is_err());
    }
}
