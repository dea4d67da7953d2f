//! The layer's refusals.

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

corral_core::refusal! {
    Forbidden as forbidden {
        status: StatusCode::FORBIDDEN,
        reason: "forbidden",
        message(f): f.write_str(&forbidden.message),
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

corral_core::refusal! {
    SignatureRefused as refused {
        status: StatusCode::UNAUTHORIZED,
        reason: match refused.problem {
            SignatureProblem::Missing => "signature_required",
            SignatureProblem::Invalid => "bad_signature",
            SignatureProblem::Stale => "stale_request",
            SignatureProblem::Replayed => "replayed_request",
        },
        message(f): f.write_str(&refused.message),
    }
}
