//! Load options pinned per model (`[models."name"]`): `options.num_ctx`
//! and `keep_alive` written into every request for the model, or clamped.
//!
//! Why: Ollama keeps one runner per loaded model and restarts it when a
//! request asks for other load-time options than it was started with
//! (`server/sched.go`, `needsReload` compares `api.Runner`). One client
//! asking for `num_ctx: 4096` on a model others use at 8192 costs them a
//! reload of seconds, twice (ollama#12783, #8903, #9977, #10263); one
//! sending `keep_alive: 0` unloads the model when its request ends.
//!
//! Where Ollama reads them (its `api/types.go` and `server/routes.go`):
//! `keep_alive` and `options` (of which `num_ctx`) are fields of
//! `GenerateRequest`, `ChatRequest`, `EmbedRequest` and
//! `EmbeddingRequest`, the bodies of `/api/generate`, `/api/chat`,
//! `/api/embed` and `/api/embeddings`; those four handlers pass them to
//! `scheduleRunner`. The compatibility endpoints (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/messages`)
//! build their own Ollama request from a fixed set of fields (`openai/`,
//! `anthropic/`, `middleware/`): neither `keep_alive` nor `num_ctx` is
//! among them, so a client cannot change them there and there is nothing
//! to pin; those requests get the server's defaults.
//!
//! A runner is also reloaded, by the same comparison, for the other
//! load-time options of `api.Runner`: `num_batch`, `num_gpu` (unless
//! negative), `main_gpu`, `use_mmap`, `num_thread`, `draft_num_predict`,
//! and for a change of the top-level `shift` of generate and chat. They
//! are not pinned here (yet): the reports of thrash are about `num_ctx`
//! and `keep_alive`, and a request's options override the Modelfile's,
//! so until they are, a client that sends them still reloads the runner.
//! The splice below rewrites any member, so each is a few lines more.
//!
//! The rest of the body is kept byte for byte: the members changed are
//! cut out and the new ones appended, nothing is re-serialized (the
//! workspace's `serde_json` is built without `preserve_order`, and would
//! also rewrite numbers and escapes). With `[models."llama3"] num_ctx =
//! 8192` and `keep_alive = "30m"`:
//!
//! ```text
//! client:   {"model":"llama3","prompt":"hi","keep_alive":0,"options":{"seed":1,"num_ctx":2048}}
//! upstream: {"model":"llama3","prompt":"hi","options":{"seed":1,"num_ctx":8192},"keep_alive":1800}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use corral_core::{go_key_fold, Body, Endpoint, RequestMeta};
use http::{header::CONTENT_LENGTH, HeaderValue, Request};
use serde::de::IgnoredAny;

use crate::config::{KeepAlive, ModelOptions, Setting};
use crate::svc::StackService;

mod ollama;
mod splice;

use ollama::{asked_keep_alive, keep_alive_json, Asked};
use splice::{object_at, rebuild, skip_ws, Change, Member, Object};

/// The endpoints whose bodies carry `keep_alive` and `options.num_ctx`
/// to the scheduler (see the module's docs for the evidence).
pub(crate) const PINNED_ENDPOINTS: [Endpoint; 4] = [
    Endpoint::Generate,
    Endpoint::Chat,
    Endpoint::Embed,
    Endpoint::Embeddings,
];

/// The pinned options of every model, by the name Ollama compares
/// ([`corral_core::canonical_model`]).
#[derive(Debug, Default)]
pub(crate) struct Pinned {
    by_model: HashMap<String, ModelOptions>,
}

impl Pinned {
    /// The `[models."name"]` tables, keyed as Ollama compares names.
    pub(crate) fn new(models: &BTreeMap<String, ModelOptions>) -> Self {
        Self {
            by_model: models
                .iter()
                .map(|(name, options)| (corral_core::canonical_model(name), options.clone()))
                .collect(),
        }
    }

    fn get(&self, model: &str) -> Option<&ModelOptions> {
        self.by_model.get(&corral_core::canonical_model(model))
    }
}

/// `inner` with every request pinned first, when `models` pins anything;
/// `inner` itself otherwise. Placed right below `classify`, which has
/// read the body (bounded, after the client is known) and named the
/// model: every layer below (the cache's key, the retry's replay) and
/// the upstream see the same, pinned, body.
pub(crate) fn wrap(models: &BTreeMap<String, ModelOptions>, inner: StackService) -> StackService {
    if models.is_empty() {
        return inner;
    }
    let pinned = Arc::new(Pinned::new(models));
    crate::svc::shared(tower::util::MapRequest::new(
        inner,
        move |mut request: Request<Body>| {
            pin_request(&pinned, &mut request);
            request
        },
    ))
}

/// Rewrites `request`'s buffered body for its model's pinned options, in
/// place, and its `Content-Length` if it has one. The model is the one
/// `classify` read (its [`RequestMeta`]), else the body's `model`. A
/// streamed body, or one that is not a JSON object, is left as it is
/// (Ollama judges it).
pub(crate) fn pin_request(pinned: &Pinned, request: &mut Request<Body>) {
    let endpoint = Endpoint::from_request(request.method(), request.uri().path());
    if !PINNED_ENDPOINTS.contains(&endpoint) {
        return;
    }
    let Some(bytes) = request.body().buffered().cloned() else {
        return;
    };
    let model = match request.extensions().get::<RequestMeta>() {
        Some(meta) => meta.model.as_deref().map(str::to_string),
        None => model_of(&bytes),
    };
    let Some(model) = model else {
        return;
    };
    let Some(rewritten) = pinned_body(pinned, endpoint, &model, &bytes) else {
        return;
    };
    let len = rewritten.len();
    *request.body_mut() = Body::from(rewritten);
    if request.headers().contains_key(CONTENT_LENGTH) {
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(meta) = request.extensions_mut().get_mut::<RequestMeta>() {
        meta.body_bytes = len;
    }
}

/// The body's `model`, for a request no `classify` has read.
fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct View {
        model: Option<String>,
    }
    serde_json::from_slice::<View>(body).ok()?.model
}

/// `body` of a request to `endpoint` for `model`, with the model's pinned
/// options; `None` when nothing is to change (no pin for the model or the
/// endpoint, the request already asks for what is pinned, or the body is
/// not a JSON object).
pub(crate) fn pinned_body(
    pinned: &Pinned,
    endpoint: Endpoint,
    model: &str,
    body: &[u8],
) -> Option<Vec<u8>> {
    if !PINNED_ENDPOINTS.contains(&endpoint) {
        return None;
    }
    rewrite(pinned.get(model)?, body)
}

/// `body` with `options` applied; `None` when it already conforms or is
/// not a JSON object.
fn rewrite(options: &ModelOptions, body: &[u8]) -> Option<Vec<u8>> {
    // Checked whole first: the scan below trusts the JSON to be valid.
    serde_json::from_slice::<IgnoredAny>(body).ok()?;
    let top = object_at(body, skip_ws(body, 0))?;
    let keep_alive = options
        .keep_alive
        .and_then(|setting| keep_alive_target(&setting, body, &top));
    let num_ctx = options
        .num_ctx
        .and_then(|setting| num_ctx_target(&setting, body, &top));
    if keep_alive.is_none() && num_ctx.is_none() {
        return None;
    }

    let options_members = members_named(&top, "options");
    let last_options = options_members.last().copied();
    let mut appended: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(keep_alive) = keep_alive {
        appended.push(("keep_alive", keep_alive_json(keep_alive)));
    }
    if let (Some(n), None) = (num_ctx, last_options) {
        appended.push(("options", format!("{{\"num_ctx\":{n}}}").into_bytes()));
    }
    let object = rebuild(
        body,
        &top,
        |i, member| {
            if keep_alive.is_some() && go_key_fold(&member.key) == "keep_alive" {
                return Change::Drop;
            }
            let Some(n) = num_ctx.filter(|_| options_members.contains(&i)) else {
                return Change::Keep;
            };
            pinned_options(body, member, n, Some(i) == last_options)
        },
        &appended,
    );
    let mut out = Vec::with_capacity(body.len() + 48);
    out.extend_from_slice(&body[..top.open]);
    out.extend_from_slice(&object);
    out.extend_from_slice(&body[top.close + 1..]);
    Some(out)
}

/// An `options` member with `num_ctx` pinned to `n`: dropped from every
/// `options` object, written in the `last` one Go's decoder keeps (which
/// `null` would have emptied).
fn pinned_options(body: &[u8], member: &Member, n: u64, last: bool) -> Change {
    match body[member.value.start] {
        b'{' => match object_at(body, member.value.start) {
            Some(inner) => {
                let add = match last {
                    true => vec![("num_ctx", format!("{n}").into_bytes())],
                    false => Vec::new(),
                };
                Change::Replace(rebuild(
                    body,
                    &inner,
                    |_, m| {
                        if m.key == "num_ctx" {
                            Change::Drop
                        } else {
                            Change::Keep
                        }
                    },
                    &add,
                ))
            }
            None => Change::Keep,
        },
        _ if last => Change::Replace(format!("{{\"num_ctx\":{n}}}").into_bytes()),
        _ => Change::Keep,
    }
}

/// The indices of `object`'s members Ollama reads as the field `field`
/// (Go matches keys without case).
fn members_named(object: &Object, field: &str) -> Vec<usize> {
    object
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| go_key_fold(&m.key) == field)
        .map(|(i, _)| i)
        .collect()
}

/// The `keep_alive` to write, if any.
fn keep_alive_target(setting: &Setting<KeepAlive>, body: &[u8], top: &Object) -> Option<KeepAlive> {
    let found = members_named(top, "keep_alive");
    // Go's decoder keeps the last of repeated keys.
    let asked = found.last().map_or(Asked::Absent, |&i| {
        asked_keep_alive(&body[top.members[i].value.clone()])
    });
    match (setting, asked) {
        (Setting::Set(pin), Asked::Value { value, exact: true })
            if value == *pin && found.len() == 1 && top.members[found[0]].key == "keep_alive" =>
        {
            None
        }
        (Setting::Set(pin), _) => Some(*pin),
        (Setting::Clamp { .. }, Asked::Value { value, exact }) => {
            let given = setting.apply(Some(value))?;
            (given != value || !exact).then_some(given)
        }
        (Setting::Clamp { .. }, Asked::Absent | Asked::Invalid) => None,
    }
}

/// The `num_ctx` to write, if any.
fn num_ctx_target(setting: &Setting<u64>, body: &[u8], top: &Object) -> Option<u64> {
    let mut asked = Asked::Absent;
    // Go decodes repeated `options` into the same map; `null` empties it.
    for i in members_named(top, "options") {
        let value = top.members[i].value.clone();
        match body[value.start] {
            b'n' => asked = Asked::Absent,
            b'{' => {
                let inner = object_at(body, value.start)?;
                for m in inner.members.iter().filter(|m| m.key == "num_ctx") {
                    asked =
                        match serde_json::from_slice::<serde_json::Value>(&body[m.value.clone()]) {
                            // Ollama's `FromMap` skips a null option.
                            Ok(serde_json::Value::Null) => Asked::Invalid,
                            Ok(serde_json::Value::Number(n)) => {
                                n.as_f64().map_or(Asked::Invalid, |x| {
                                    Asked::Value {
                                        // `int64(float64)`, as `FromMap` converts it.
                                        value: x.trunc(),
                                        exact: true,
                                    }
                                })
                            }
                            _ => Asked::Invalid,
                        };
                }
            }
            // Not a map: Ollama refuses the request.
            _ => return None,
        }
    }
    match (setting, asked) {
        (Setting::Set(pin), Asked::Value { value, .. }) if value == *pin as f64 => None,
        (Setting::Set(pin), _) => Some(*pin),
        (Setting::Clamp { min, max }, Asked::Value { value, .. }) => {
            if let Some(min) = min.filter(|min| value < *min as f64) {
                Some(min)
            } else {
                max.filter(|max| value > *max as f64)
            }
        }
        (Setting::Clamp { .. }, Asked::Absent | Asked::Invalid) => None,
    }
}

#[cfg(test)]
mod tests;
