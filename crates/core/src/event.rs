//! Events: what happened to a request, or to the system, as one typed,
//! append-only record each. Layers and the proxy record them through an
//! [`EventSink`]; the event log keeps and replays them.

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the log, from 1; ids only grow.
    pub id: u64,
    /// When, in seconds since the Unix epoch.
    pub timestamp: f64,
    /// What: `received`, `dispatched`, `first_byte`, `completed`,
    /// `refused`, `cache_hit`, `retry`, `breaker`, `degradation`,
    /// `backpressure`, `saga`.
    pub kind: String,
    /// Who asked, for request events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Which request, for request events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The rest.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// An event before the log numbers and stamps it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What.
    pub kind: &'static str,
    /// Who asked.
    pub agent: Option<String>,
    /// Which request.
    pub request_id: Option<String>,
    /// The rest.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` carrying `data`.
    pub fn new(kind: &'static str, data: serde_json::Value) -> Self {
        Self {
            kind,
            agent: None,
            request_id: None,
            data,
        }
    }

    /// The same, about `request_id` from `agent`.
    pub fn about(mut self, agent: &str, request_id: &str) -> Self {
        self.agent = Some(agent.to_string());
        self.request_id = Some(request_id.to_string());
        self
    }
}

/// One value of an event's data, for [`EventSink::record_fields`]: the
/// scalars request events carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    U64(u64),
    /// A whole number that may be negative.
    I64(i64),
    /// A number with a fraction (`null` if not finite, as in `json!`).
    F64(f64),
    /// Text.
    Str(&'a str),
}

impl EventValue<'_> {
    /// The object of `fields`, as `json!({...})` would build it.
    pub fn object(fields: &[(&'static str, EventValue<'_>)]) -> serde_json::Value {
        serde_json::Value::Object(
            fields
                .iter()
                .map(|(key, value)| ((*key).to_string(), value.to_json()))
                .collect(),
        )
    }

    /// The value as `serde_json` would hold it.
    pub fn to_json(self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            EventValue::Null => Value::Null,
            EventValue::Bool(b) => Value::Bool(b),
            EventValue::U64(n) => Value::from(n),
            EventValue::I64(n) => Value::from(n),
            EventValue::F64(x) => {
                serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
            }
            EventValue::Str(s) => Value::from(s),
        }
    }
}

impl<'a> From<&'a str> for EventValue<'a> {
    fn from(s: &'a str) -> Self {
        EventValue::Str(s)
    }
}

impl From<u64> for EventValue<'_> {
    fn from(n: u64) -> Self {
        EventValue::U64(n)
    }
}

impl From<u16> for EventValue<'_> {
    fn from(n: u16) -> Self {
        EventValue::U64(n.into())
    }
}

impl From<u8> for EventValue<'_> {
    fn from(n: u8) -> Self {
        EventValue::U64(n.into())
    }
}

impl From<f64> for EventValue<'_> {
    fn from(x: f64) -> Self {
        EventValue::F64(x)
    }
}

impl<'a, T: Into<EventValue<'a>>> From<Option<T>> for EventValue<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(EventValue::Null, Into::into)
    }
}

/// Where events go. Recording never blocks nor fails the request path.
pub trait EventSink: Send + Sync + 'static {
    /// Records `event`.
    fn record(&self, event: NewEvent);

    /// Records an event of `kind` about `request_id` from `agent` whose
    /// data is the object of `fields`: the same event as
    /// `record(NewEvent::new(kind, json!({...})).about(agent, request_id))`.
    ///
    /// Every inference request records three or four such events; a sink
    /// may take them without building a `serde_json::Value` (the event
    /// log does). The default builds the value and calls
    /// [`record`](Self::record).
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use corral_core::{EventSink, EventValue, NewEvent};
    ///
    /// #[derive(Default)]
    /// struct Keep(Mutex<Vec<NewEvent>>);
    /// impl EventSink for Keep {
    ///     fn record(&self, event: NewEvent) {
    ///         self.0.lock().unwrap().push(event);
    ///     }
    /// }
    ///
    /// let sink = Keep::default();
    /// let model: Option<&str> = None;
    /// sink.record_fields("received", "planner", "r1", &[("endpoint", "chat".into()), ("model", model.into())]);
    /// let expected = NewEvent::new("received", serde_json::json!({"endpoint": "chat", "model": null}))
    ///     .about("planner", "r1");
    /// assert_eq!(sink.0.lock().unwrap()[0], expected);
    /// ```
    fn record_fields(
        &self,
        kind: &'static str,
        agent: &str,
        request_id: &str,
        fields: &[(&'static str, EventValue<'_>)],
    ) {
        self.record(NewEvent::new(kind, EventValue::object(fields)).about(agent, request_id));
    }
}
