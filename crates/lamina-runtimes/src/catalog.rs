//! The runtime identifiers AWS accepts today, and what each one promises: a language and
//! a language version.

use serde::Serialize;

/// A language family. Each runtime identifier belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `provided.*`: the function brings its own `bootstrap`.
    OsOnly,
    Python,
    NodeJs,
    Java,
    Ruby,
    DotNet,
}

impl Language {
    /// Why Lamina cannot run this language yet; `None` when it can.
    pub fn unsupported_reason(self) -> Option<&'static str> {
        match self {
            Language::OsOnly
            | Language::Python
            | Language::NodeJs
            | Language::Java
            | Language::Ruby => None,
            Language::DotNet => Some("Lamina has no .NET runtime yet"),
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Language::OsOnly => "OS-only",
            Language::Python => "Python",
            Language::NodeJs => "Node.js",
            Language::Java => "Java",
            Language::Ruby => "Ruby",
            Language::DotNet => ".NET",
        }
    }
}

/// One runtime identifier and the language version it promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSpec {
    pub id: &'static str,
    pub language: Language,
    /// `"3.12"` for Python, the major version for Node.js (`"22"`), Java (`"21"`), .NET
    /// (`"8"`), `"3.3"` for Ruby; empty for `provided.*`.
    pub version: &'static str,
    /// Why Lamina does not run this identifier although it runs its language.
    pub not_yet: Option<&'static str>,
}

impl RuntimeSpec {
    const fn new(id: &'static str, language: Language, version: &'static str) -> RuntimeSpec {
        RuntimeSpec {
            id,
            language,
            version,
            not_yet: None,
        }
    }

    /// Why this identifier cannot run on any Lamina of this build; `None` when it can
    /// (given an interpreter).
    pub fn unsupported_reason(&self) -> Option<&'static str> {
        self.language.unsupported_reason().or(self.not_yet)
    }
}

/// Every runtime identifier AWS lets you create a function with today (the service
/// model's enum minus the deprecated ones `lamina_model::runtime` blocks), in the order
/// `lamina runtimes` lists them.
pub const RUNTIMES: &[RuntimeSpec] = &[
    RuntimeSpec::new("python3.9", Language::Python, "3.9"),
    RuntimeSpec::new("python3.10", Language::Python, "3.10"),
    RuntimeSpec::new("python3.11", Language::Python, "3.11"),
    RuntimeSpec::new("python3.12", Language::Python, "3.12"),
    RuntimeSpec::new("python3.13", Language::Python, "3.13"),
    RuntimeSpec::new("python3.14", Language::Python, "3.14"),
    RuntimeSpec::new("nodejs18.x", Language::NodeJs, "18"),
    RuntimeSpec::new("nodejs20.x", Language::NodeJs, "20"),
    RuntimeSpec::new("nodejs22.x", Language::NodeJs, "22"),
    RuntimeSpec {
        not_yet: Some(
            "Node.js 24 drops callback handlers on Lambda, which Lamina's Node.js runtime does not model yet",
        ),
        ..RuntimeSpec::new("nodejs24.x", Language::NodeJs, "24")
    },
    RuntimeSpec {
        not_yet: Some("Lamina's Java runtime needs Java 11 or later"),
        ..RuntimeSpec::new("java8.al2", Language::Java, "8")
    },
    RuntimeSpec::new("java11", Language::Java, "11"),
    RuntimeSpec::new("java17", Language::Java, "17"),
    RuntimeSpec::new("java21", Language::Java, "21"),
    RuntimeSpec::new("java25", Language::Java, "25"),
    RuntimeSpec::new("ruby3.2", Language::Ruby, "3.2"),
    RuntimeSpec::new("ruby3.3", Language::Ruby, "3.3"),
    RuntimeSpec::new("ruby3.4", Language::Ruby, "3.4"),
    RuntimeSpec::new("ruby4.0", Language::Ruby, "4.0"),
    RuntimeSpec::new("dotnet8", Language::DotNet, "8"),
    RuntimeSpec::new("dotnet10", Language::DotNet, "10"),
    RuntimeSpec::new("provided.al2", Language::OsOnly, ""),
    RuntimeSpec::new("provided.al2023", Language::OsOnly, ""),
];

/// The catalog entry of a runtime identifier AWS accepts.
pub fn spec(runtime: &str) -> Option<&'static RuntimeSpec> {
    RUNTIMES.iter().find(|spec| spec.id == runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_exactly_what_aws_accepts() {
        for spec in RUNTIMES {
            assert_eq!(
                lamina_model::runtime::check_runtime(spec.id),
                Ok(()),
                "{}",
                spec.id
            );
        }
        for id in lamina_model::runtime::MODEL_RUNTIMES {
            if lamina_model::runtime::check_runtime(id).is_ok() {
                assert!(
                    spec(id).is_some(),
                    "{id} accepted by AWS but not catalogued"
                );
            }
        }
        assert_eq!(spec("python3.12").unwrap().language, Language::Python);
        assert_eq!(spec("nodejs22.x").unwrap().version, "22");
        assert!(spec("java21").unwrap().unsupported_reason().is_none());
        assert!(spec("java8.al2").unwrap().unsupported_reason().is_some());
        assert!(spec("dotnet8").unwrap().unsupported_reason().is_some());
        assert!(spec("python3.14").unwrap().unsupported_reason().is_none());
        assert!(spec("python2.7").is_none());
    }
}
