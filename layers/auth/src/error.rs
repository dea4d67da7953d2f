//! The layer's refusals.

use std::fmt;

use corral_core::Refusal;
use http::StatusCode;

/// The agent's class may not call this endpoint or use this model: 403.
#[derive(Debug)]
pub struct Forbidden {
    pub(crate) message: String,
}

impl Forbidden {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Forbidden {}

impl Refusal for Forbidden {
    fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }

    fn reason(&self) -> &'static str {
        "forbidden"
    }
}

/// What is wrong with a request's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureProblem {
    /// The agent must sign and did not.
    Missing,
    /// The signature, or a header it needs, is wrong.
    Invalid,
    /// `X-Timestamp` is outside the freshness window.
    Stale,
    /// This agent already sent this `X-Request-Id` within the window.
    Replayed,
}

/// A signed request Corral does not accept: 401, with the reason.
#[derive(Debug)]
pub struct SignatureRefused {
    pub(crate) problem: SignatureProblem,
    pub(crate) message: String,
}

impl SignatureRefused {
    pub(crate) fn new(problem: SignatureProblem, message: impl Into<String>) -> Self {
        Self {
            problem,
            message: message.into(),
        }
    }

    /// What was wrong.
    pub fn problem(&self) -> SignatureProblem {
        self.problem
    }
}

impl fmt::Display for SignatureRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SignatureRefused {}

impl Refusal for SignatureRefused {
    fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn reason(&self) -> &'static str {
        match self.problem {
            SignatureProblem::Missing => "signature_required",
            SignatureProblem::Invalid => "bad_signature",
            SignatureProblem::Stale => "stale_request",
            SignatureProblem::Replayed => "replayed_request",
        }
    }
}
