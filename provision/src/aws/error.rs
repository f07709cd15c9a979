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

/// The codes AWS answers a request with when the credentials that signed it are no longer
/// valid: a session token that expired (an AWS Academy lab's last 4 hours) or keys
/// replaced since (each lab session gets new ones).
const STALE_CREDENTIALS: [&str; 6] = [
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "AuthFailure",
];

/// The one line to print instead of `error` when AWS refused the credentials, for every
/// command: where new ones come from, and that running the command again is safe.
pub fn stale_credentials(error: &anyhow::Error) -> Option<String> {
    let code = error.chain().find_map(|cause| {
        let text = cause.to_string();
        STALE_CREDENTIALS.iter().find(|code| {
            // The SDK shows an unmodelled error as "unhandled error (Code)"; provision's
            // own contexts as "Code: message".
            text.contains(&format!("({code})")) || text.starts_with(&format!("{code}:"))
        })
    })?;
    Some(format!(
        "AWS refused this machine's credentials ({code}): they have expired or been \
         replaced (an AWS Academy lab's last 4 hours). Copy the new ones from the lab's \
         \"AWS Details\" (AWS CLI: Show) into ~/.aws/credentials, then run the same command \
         again: it continues where it stopped."
    ))
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
    fn expired_or_replaced_credentials_say_what_to_do() {
        use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError;
        for code in ["ExpiredToken", "InvalidClientTokenId", "AuthFailure"] {
            let sdk = GetCallerIdentityError::generic(
                ErrorMetadata::builder()
                    .code(code)
                    .message("The security token included in the request is expired")
                    .build(),
            );
            let error = anyhow::Error::new(sdk).context("read the account id");
            let line = stale_credentials(&error).expect(code);
            assert!(line.contains(&format!("({code})")), "{line}");
            assert!(line.contains("\"AWS Details\""), "{line}");
            assert!(line.contains("run the same command again"), "{line}");
        }
        let delete = anyhow::anyhow!("ExpiredToken: The security token is expired")
            .context("delete alarm anb-dead-letters");
        assert!(stale_credentials(&delete).is_some());
        for other in ["DependencyViolation", "AccessDenied", "Throttling"] {
            let sdk = GetCallerIdentityError::generic(ErrorMetadata::builder().code(other).build());
            assert_eq!(stale_credentials(&anyhow::Error::new(sdk)), None, "{other}");
        }
        assert_eq!(
            stale_credentials(&anyhow::anyhow!("the stack has no VPC")),
            None
        );
    }

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
