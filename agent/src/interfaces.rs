//! Which interfaces get the TC program: names or globs (`veth*`, `eth?`).

use glob::{MatchOptions, Pattern};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("`{pattern}` is not a valid interface glob")]
pub struct PatternError {
    pub pattern: String,
    #[source]
    source: glob::PatternError,
}

#[derive(Debug, Clone)]
pub struct InterfaceMatcher {
    patterns: Vec<Pattern>,
}

impl InterfaceMatcher {
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                Pattern::new(p).map_err(|source| PatternError {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn matches(&self, name: &str) -> bool {
        let opts = MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        self.patterns.iter().any(|p| p.matches_with(name, opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_globs() {
        let m = InterfaceMatcher::new(&["veth*".into(), "eth0".into(), "lxc?".into()]).unwrap();
        assert!(
            m.matches("veth0a1b") && m.matches("veth") && m.matches("eth0") && m.matches("lxc1")
        );
        assert!(
            !m.matches("eth01") && !m.matches("lo") && !m.matches("lxc12") && !m.matches("xveth")
        );
        assert!(InterfaceMatcher::new(&["[".into()]).is_err());
    }
}
