//! Runtime identifiers as the service model lists them, and which of them AWS still
//! lets you create or update a function with.

/// Every value of the model's `Runtime` enum, in the model's order: AWS quotes this list
/// when it refuses an unknown runtime.
pub const MODEL_RUNTIMES: &[&str] = &[
    "nodejs",
    "nodejs4.3",
    "nodejs6.10",
    "nodejs8.10",
    "nodejs10.x",
    "nodejs12.x",
    "nodejs14.x",
    "nodejs16.x",
    "java8",
    "java8.al2",
    "java11",
    "python2.7",
    "python3.6",
    "python3.7",
    "python3.8",
    "python3.9",
    "dotnetcore1.0",
    "dotnetcore2.0",
    "dotnetcore2.1",
    "dotnetcore3.1",
    "dotnet6",
    "dotnet8",
    "nodejs4.3-edge",
    "go1.x",
    "ruby2.5",
    "ruby2.7",
    "provided",
    "provided.al2",
    "nodejs18.x",
    "python3.10",
    "java17",
    "ruby3.2",
    "ruby3.3",
    "ruby3.4",
    "python3.11",
    "nodejs20.x",
    "provided.al2023",
    "python3.12",
    "java21",
    "python3.13",
    "nodejs22.x",
    "nodejs24.x",
    "python3.14",
    "java25",
    "dotnet10",
    "ruby4.0",
];

/// Runtimes AWS has deprecated to the point of refusing new functions and updates.
const BLOCKED_RUNTIMES: &[&str] = &[
    "nodejs",
    "nodejs4.3",
    "nodejs6.10",
    "nodejs8.10",
    "nodejs10.x",
    "nodejs12.x",
    "nodejs14.x",
    "nodejs16.x",
    "java8",
    "python2.7",
    "python3.6",
    "python3.7",
    "python3.8",
    "dotnetcore1.0",
    "dotnetcore2.0",
    "dotnetcore2.1",
    "dotnetcore3.1",
    "dotnet6",
    "nodejs4.3-edge",
    "go1.x",
    "ruby2.5",
    "ruby2.7",
    "provided",
];

/// Why a runtime identifier cannot be used for a new or updated function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeRejection {
    /// Not a value of the model's enum: AWS lists the valid ones.
    Unknown(String),
    /// A deprecated runtime AWS no longer accepts.
    Blocked(String),
}

impl RuntimeRejection {
    /// The message AWS answers with, as an `InvalidParameterValueException`.
    pub fn message(&self) -> String {
        match self {
            RuntimeRejection::Unknown(runtime) => format!(
                "Value {runtime} at 'runtime' failed to satisfy constraint: Member must satisfy \
                 enum value set: [{}] or be a valid ARN",
                MODEL_RUNTIMES.join(", ")
            ),
            RuntimeRejection::Blocked(runtime) => format!(
                "The runtime parameter of {runtime} is no longer supported for creating or \
                 updating AWS Lambda functions. We recommend you use a supported runtime while \
                 creating or updating functions."
            ),
        }
    }
}

/// Accepts the runtimes AWS accepts for creating or updating a function today.
pub fn check_runtime(runtime: &str) -> Result<(), RuntimeRejection> {
    if !MODEL_RUNTIMES.contains(&runtime) {
        return Err(RuntimeRejection::Unknown(runtime.to_owned()));
    }
    if BLOCKED_RUNTIMES.contains(&runtime) {
        return Err(RuntimeRejection::Blocked(runtime.to_owned()));
    }
    Ok(())
}

/// `provided*` runtimes run the archive's own `bootstrap`; they need no handler.
pub fn is_os_only(runtime: &str) -> bool {
    runtime.starts_with("provided")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_runtimes_pass_and_old_ones_do_not() {
        for ok in [
            "python3.12",
            "nodejs20.x",
            "provided.al2023",
            "java21",
            "ruby3.3",
        ] {
            assert_eq!(check_runtime(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_runtime("python2.7"),
            Err(RuntimeRejection::Blocked("python2.7".into()))
        );
        let unknown = check_runtime("cobol85").unwrap_err();
        assert!(
            unknown
                .message()
                .starts_with("Value cobol85 at 'runtime' failed to satisfy constraint")
        );
        assert!(unknown.message().contains("python3.12, java21"));
    }
}
