//! A request's span, handed to the trace exporter when its answer ends.

use corral_core::Usage;

use super::Observation;

impl Observation {
    /// Hands the request's span to the exporter, if it has one.
    pub(super) fn export_span(
        &self,
        elapsed: std::time::Duration,
        outcome: &'static str,
        usage: &Usage,
    ) {
        let Some((context, exporter)) = &self.trace else {
            return;
        };
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut attributes = vec![
            ("corral.request_id", self.request_id.as_str().into()),
            ("corral.endpoint", self.endpoint.as_str().into()),
            ("http.response.status_code", self.status.as_u16().into()),
            ("corral.outcome", outcome.into()),
        ];
        if let Some(meta) = &self.meta {
            attributes.push(("corral.agent", meta.agent.as_str().into()));
            attributes.push(("corral.class", meta.class.as_str().into()));
            attributes.push(("corral.priority", meta.priority.get().into()));
            if let Some(model) = &meta.model {
                attributes.push(("gen_ai.request.model", model.as_ref().into()));
            }
        }
        if let Some(reason) = &self.reason {
            attributes.push(("corral.reason", reason.as_str().into()));
        }
        if let Some(generated) = usage.generated {
            attributes.push(("gen_ai.usage.output_tokens", generated.into()));
        }
        if let Some(prompt) = usage.prompt {
            attributes.push(("gen_ai.usage.input_tokens", prompt.into()));
        }
        exporter.export(crate::trace::FinishedSpan {
            context: *context,
            name: self.endpoint.as_str().to_string(),
            start_unix_nanos: end.saturating_sub(elapsed.as_nanos()),
            end_unix_nanos: end,
            attributes,
            error: outcome == "error" || self.status.is_server_error(),
        });
    }
}
