//! CloudWatch Logs filter patterns for unstructured log events.
//!
//! Supported, as AWS documents them ("Filter pattern syntax for unstructured log events"):
//! - an empty pattern (or `""`) matches every event;
//! - space-separated terms must all occur: `ERROR ARGUMENTS`;
//! - `"quoted phrases"` match literally, spaces and punctuation included (`\"` escapes a quote);
//! - `?term` terms are alternatives: `?ERROR ?WARN` matches events containing either;
//! - `-term` excludes: `ERROR -Exiting`;
//! - `%regex%` matches a regular expression anywhere in the message.
//!
//! Mixed forms combine as: every plain term, at least one `?` term (if any), no `-` term.
//! Matching is case-sensitive and by substring, as CloudWatch's is for quoted terms.
//!
//! JSON patterns (`{ $.level = "error" }`) and space-delimited patterns (`[ip, user, ...]`)
//! are not supported; parsing them fails with an error that says so, rather than matching
//! nothing silently.

/// AWS's limit on a filter pattern's length.
pub const MAX_PATTERN_LENGTH: usize = 1024;

/// A parsed filter pattern.
#[derive(Debug, Clone)]
pub struct FilterPattern {
    kind: PatternKind,
}

#[derive(Debug, Clone)]
enum PatternKind {
    All,
    Terms {
        required: Vec<String>,
        any_of: Vec<String>,
        excluded: Vec<String>,
    },
    Regex(regex::Regex),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterPatternError {
    #[error(
        "{kind} filter patterns are not supported by lamina (pattern: {pattern}); \
         use plain terms, \"quoted phrases\", ?alternatives, -exclusions or a %regex%"
    )]
    Unsupported { kind: &'static str, pattern: String },
    #[error("filter pattern has an unterminated quoted phrase: {pattern}")]
    UnterminatedQuote { pattern: String },
    #[error("filter pattern regular expression is invalid ({detail}): {pattern}")]
    InvalidRegex { pattern: String, detail: String },
    #[error("filter pattern is {length} characters long; the limit is {MAX_PATTERN_LENGTH}")]
    TooLong { length: usize },
}

impl FilterPattern {
    /// The pattern that matches every event.
    pub fn all() -> Self {
        FilterPattern {
            kind: PatternKind::All,
        }
    }

    pub fn parse(pattern: &str) -> Result<Self, FilterPatternError> {
        let length = pattern.chars().count();
        if length > MAX_PATTERN_LENGTH {
            return Err(FilterPatternError::TooLong { length });
        }
        let trimmed = pattern.trim();
        if trimmed.is_empty() {
            return Ok(Self::all());
        }
        if trimmed.starts_with('{') {
            return Err(FilterPatternError::Unsupported {
                kind: "JSON",
                pattern: pattern.to_owned(),
            });
        }
        if trimmed.starts_with('[') {
            return Err(FilterPatternError::Unsupported {
                kind: "space-delimited",
                pattern: pattern.to_owned(),
            });
        }
        if trimmed.len() >= 2 && trimmed.starts_with('%') && trimmed.ends_with('%') {
            let expression = &trimmed[1..trimmed.len() - 1];
            let regex =
                regex::Regex::new(expression).map_err(|e| FilterPatternError::InvalidRegex {
                    pattern: pattern.to_owned(),
                    detail: e.to_string(),
                })?;
            return Ok(FilterPattern {
                kind: PatternKind::Regex(regex),
            });
        }
        let (mut required, mut any_of, mut excluded) = (Vec::new(), Vec::new(), Vec::new());
        let mut chars = trimmed.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let Some(&first) = chars.peek() else { break };
            // `?` and `-` are operators only when a term follows them directly.
            let mut operator = None;
            if first == '?' || first == '-' {
                chars.next();
                match chars.peek() {
                    Some(c) if !c.is_whitespace() => operator = Some(first),
                    _ => {
                        required.push(first.to_string());
                        continue;
                    }
                }
            }
            let mut term = String::new();
            if chars.next_if_eq(&'"').is_some() {
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                term.push(escaped);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        other => term.push(other),
                    }
                }
                if !closed {
                    return Err(FilterPatternError::UnterminatedQuote {
                        pattern: pattern.to_owned(),
                    });
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    term.push(c);
                }
            }
            match operator {
                Some('?') => any_of.push(term),
                Some(_) => excluded.push(term),
                None => required.push(term),
            }
        }
        Ok(FilterPattern {
            kind: PatternKind::Terms {
                required,
                any_of,
                excluded,
            },
        })
    }

    pub fn matches_all(&self) -> bool {
        matches!(self.kind, PatternKind::All)
    }

    pub fn matches(&self, message: &str) -> bool {
        match &self.kind {
            PatternKind::All => true,
            PatternKind::Regex(regex) => regex.is_match(message),
            PatternKind::Terms {
                required,
                any_of,
                excluded,
            } => {
                required.iter().all(|term| message.contains(term.as_str()))
                    && (any_of.is_empty() || any_of.iter().any(|t| message.contains(t.as_str())))
                    && !excluded.iter().any(|term| message.contains(term.as_str()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, message: &str) -> bool {
        FilterPattern::parse(pattern).unwrap().matches(message)
    }

    #[test]
    fn empty_and_quoted_empty_match_everything() {
        assert!(matches("", "anything"));
        assert!(matches("   ", "anything"));
        assert!(matches("\"\"", "anything"));
    }

    #[test]
    fn plain_terms_are_all_required_and_case_sensitive() {
        assert!(matches("ERROR", "[ERROR] disk full"));
        assert!(!matches("ERROR", "error: disk full"));
        assert!(matches("ERROR disk", "[ERROR] disk full"));
        assert!(!matches("ERROR memory", "[ERROR] disk full"));
    }

    #[test]
    fn quoted_phrases_match_literally() {
        assert!(matches(
            "\"Task timed out\"",
            "Task timed out after 3.00 seconds"
        ));
        assert!(!matches("\"Task timed out\"", "Task out timed"));
        assert!(matches(r#""say \"hi\"""#, r#"say "hi" now"#));
        assert!(matches(
            "\"RequestId: 42\" REPORT",
            "REPORT RequestId: 42\tDuration"
        ));
    }

    #[test]
    fn question_mark_terms_are_alternatives() {
        assert!(matches("?ERROR ?WARN", "WARN low memory"));
        assert!(matches("?ERROR ?WARN", "ERROR oom"));
        assert!(!matches("?ERROR ?WARN", "INFO ok"));
        assert!(matches("REPORT ?Init ?Billed", "REPORT Billed Duration"));
        assert!(!matches("REPORT ?Init ?Billed", "START Init"));
    }

    #[test]
    fn minus_terms_exclude() {
        assert!(matches("ERROR -Exiting", "ERROR disk"));
        assert!(!matches("ERROR -Exiting", "ERROR Exiting now"));
        assert!(!matches("-\"RequestId: 1\"", "END RequestId: 1"));
        assert!(matches("-\"RequestId: 1\"", "END RequestId: 2"));
        // A lone operator is a literal term.
        assert!(matches("a - b", "a - b"));
        assert!(!matches("a - b", "a b"));
    }

    #[test]
    fn regex_patterns() {
        assert!(matches(
            "%Duration: [0-9]+\\.[0-9]{2} ms%",
            "Duration: 3.01 ms"
        ));
        assert!(!matches("%^START%", "END START"));
        assert!(matches!(
            FilterPattern::parse("%(unclosed%"),
            Err(FilterPatternError::InvalidRegex { .. })
        ));
    }

    #[test]
    fn unsupported_and_malformed_patterns_are_refused() {
        let json = FilterPattern::parse("{ $.level = \"error\" }").unwrap_err();
        assert!(
            json.to_string()
                .contains("JSON filter patterns are not supported")
        );
        assert!(matches!(
            FilterPattern::parse("[ip, user, ...]"),
            Err(FilterPatternError::Unsupported {
                kind: "space-delimited",
                ..
            })
        ));
        assert!(matches!(
            FilterPattern::parse("\"open"),
            Err(FilterPatternError::UnterminatedQuote { .. })
        ));
        assert!(matches!(
            FilterPattern::parse(&"x".repeat(1025)),
            Err(FilterPatternError::TooLong { length: 1025 })
        ));
    }
}
