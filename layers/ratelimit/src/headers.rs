//! The IETF rate-limit headers (draft-ietf-httpapi-ratelimit-headers).

use http::HeaderName;

/// The quotas that apply: `"agent-requests";q=10;w=60, ...`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Where they stand: `"agent-requests";r=3;t=12`, remaining and seconds
/// until the quota is whole again.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
