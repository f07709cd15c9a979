//! What an AWS error means, decided before the error is wrapped: whether a resource is
//! missing, already there, still in use or throttled changes what the caller does next.

use aws_sdk_ec2::error::ProvideErrorMetadata;

/// What an AWS error means for the caller, decided before the error is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Duplicate,
    DependencyViolation,
    Throttled,
    Other,
}

pub fn error_kind(err: &impl ProvideErrorMetadata) -> ErrorKind {
    let code = err.code().unwrap_or_default();
    if code.contains("NotFound") || code.starts_with("NoSuch") || code.contains("NonExistent") {
        ErrorKind::NotFound
    } else if code.contains("Duplicate")
        || code.contains("AlreadyExists")
        || code == "BucketAlreadyOwnedByYou"
        || code.ends_with("AlreadyAssociated")
    {
        ErrorKind::Duplicate
    } else if code == "DependencyViolation"
        || code == "ResourceInUse"
        || code.starts_with("Invalid") && code.ends_with("StateFault")
    {
        ErrorKind::DependencyViolation
    } else if code.contains("Throttl") || code == "RequestLimitExceeded" || code == "SlowDown" {
        ErrorKind::Throttled
    } else {
        ErrorKind::Other
    }
}

/// Why a delete did not happen. An AWS error keeps its kind (a missing resource is already
/// deleted; one still in use is retried) and, as the source, the SDK's error itself.
pub(crate) enum DeleteError {
    Aws(ErrorKind, anyhow::Error),
    Other(anyhow::Error),
}

impl DeleteError {
    pub(crate) fn from_sdk<E>(e: E) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let kind = error_kind(&e);
        let code = e.code().unwrap_or("error").to_owned();
        let message = e.message().unwrap_or_default().to_owned();
        DeleteError::Aws(
            kind,
            anyhow::Error::new(e).context(format!("{code}: {message}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::ErrorMetadata;

    #[test]
    fn errors_are_sorted_by_their_code() {
        let kind = |code: &str| error_kind(&ErrorMetadata::builder().code(code).build());
        for (code, expected) in [
            ("InvalidVpcID.NotFound", ErrorKind::NotFound),
            ("NoSuchBucketPolicy", ErrorKind::NotFound),
            ("InvalidGroup.Duplicate", ErrorKind::Duplicate),
            ("Resource.AlreadyAssociated", ErrorKind::Duplicate),
            ("DependencyViolation", ErrorKind::DependencyViolation),
            (
                "InvalidDBInstanceStateFault",
                ErrorKind::DependencyViolation,
            ),
            ("Throttling", ErrorKind::Throttled),
            ("AccessDenied", ErrorKind::Other),
        ] {
            assert_eq!(kind(code), expected, "{code}");
        }
    }
}
