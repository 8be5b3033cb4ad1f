//! Lamina's domain model: the AWS Lambda wire shapes, their validation, function names
//! and ARNs. No I/O happens here, so everything in this crate is testable in isolation.

pub mod alias;
pub mod arn;
pub mod function;
pub mod layer;
pub mod policy;
pub mod runtime;
pub mod validation;

pub use arn::{Account, FunctionRef, NameShape, Qualifier};
pub use function::{FunctionConfiguration, FunctionVersion, LATEST, RequestError};
pub use validation::{ValidationError, Violations};

/// A point in time as AWS prints `LastModified`: `2024-05-01T12:34:56.789+0000`.
pub fn aws_timestamp(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .expect("a UTC timestamp always formats")
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_look_like_aws() {
        let at = time::macros::datetime!(2024-05-01 12:34:56.789 UTC);
        assert_eq!(super::aws_timestamp(at), "2024-05-01T12:34:56.789+0000");
    }
}
