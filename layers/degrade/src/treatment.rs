//! What a level does to one request: a pure decision, apart from the
//! service that carries it out.

use corral_core::{Endpoint, Level, Priority, RequestMeta};

use crate::config::DegradeConfig;

/// What the level does to one inference request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Treatment<'a> {
    /// Sent as it is, unmarked: the level is Normal, or the class is
    /// critical.
    Untouched,
    /// Answered with this configured text, without the upstream.
    Answer(&'a str),
    /// Refused with a `Retry-After`.
    Refuse,
    /// Sent, marked with the level, its generation capped at `cap` tokens
    /// and its model swapped for `model`, when they are set.
    Send {
        cap: Option<u64>,
        model: Option<&'a str>,
    },
}

/// Decides what `level` does to the request `meta` describes: at Critical,
/// all but the most urgent get the default answer (or a refusal without
/// one); from L2, those below `l2_refuse_above` are refused and the rest
/// go to the smaller model; from L1, generations are capped.
pub(crate) fn treatment<'a>(
    config: &'a DegradeConfig,
    level: Level,
    meta: &RequestMeta,
) -> Treatment<'a> {
    if level == Level::Normal
        || config
            .critical_classes
            .iter()
            .any(|c| c == meta.class.as_str())
    {
        return Treatment::Untouched;
    }
    let above = |limit: u8| Priority::new(limit).is_ok_and(|p| p.is_higher_than(meta.priority));
    if level == Level::Critical && above(config.critical_keep_up_to) {
        return match config.defaults.get(meta.endpoint.as_str()) {
            Some(text) => Treatment::Answer(text),
            None => Treatment::Refuse,
        };
    }
    if level >= Level::L2 && config.l2_refuse_above.is_some_and(above) {
        return Treatment::Refuse;
    }
    if !generates(meta.endpoint) {
        return Treatment::Send {
            cap: None,
            model: None,
        };
    }
    let cap = config
        .l1_max_tokens
        .filter(|&cap| meta.generation.max_tokens.is_none_or(|asked| asked > cap));
    let current = meta.model_str();
    let model = (level >= Level::L2)
        .then(|| config.l2_models.get(current).or(config.l2_model.as_ref()))
        .flatten()
        .map(String::as_str)
        .filter(|target| *target != current && !current.is_empty());
    Treatment::Send { cap, model }
}

/// The highest level below `level` at which the request `meta`
/// describes is not refused: what its `Retry-After` waits for.
pub(crate) fn let_in_at(config: &DegradeConfig, level: Level, meta: &RequestMeta) -> Level {
    [Level::Critical, Level::L2, Level::L1]
        .into_iter()
        .filter(|l| *l < level)
        .find(|l| !matches!(treatment(config, *l, meta), Treatment::Refuse))
        .unwrap_or(Level::Normal)
}

/// Whether the endpoint generates tokens (a cap and a smaller model mean
/// something to it).
pub(crate) fn generates(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Generate
            | Endpoint::Chat
            | Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::AnthropicMessages
            | Endpoint::OpenAiResponses
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::RequestId;

    fn meta(endpoint: Endpoint, priority: u8, max_tokens: Option<u64>) -> RequestMeta {
        let mut meta = RequestMeta::new(RequestId::generate(), endpoint);
        meta.priority = Priority::new(priority).unwrap();
        meta.model = Some("llama3".into());
        meta.generation.max_tokens = max_tokens;
        meta
    }

    #[test]
    fn each_level_treats_each_request_so() {
        let config: DegradeConfig = toml::from_str(
            r#"
            l1_max_tokens = 256
            l2_model = "tinyllama"
            l2_refuse_above = 6
            critical_keep_up_to = 2
            critical_classes = ["oncall"]
            [defaults]
            chat = "Busy: try again later."
            "#,
        )
        .unwrap();
        let send = |cap, model| Treatment::Send { cap, model };
        let chat = |priority, max| meta(Endpoint::Chat, priority, max);
        let table = [
            ("normal", Level::Normal, chat(9, None), Treatment::Untouched),
            ("L1 caps", Level::L1, chat(5, None), send(Some(256), None)),
            (
                "L1 leaves a smaller ask",
                Level::L1,
                chat(5, Some(100)),
                send(None, None),
            ),
            (
                "L1 caps a larger ask",
                Level::L1,
                chat(5, Some(1000)),
                send(Some(256), None),
            ),
            (
                "L1 marks an embedding",
                Level::L1,
                meta(Endpoint::Embed, 5, None),
                send(None, None),
            ),
            (
                "L2 swaps the model",
                Level::L2,
                chat(5, None),
                send(Some(256), Some("tinyllama")),
            ),
            (
                "L2 refuses below 6",
                Level::L2,
                chat(7, None),
                Treatment::Refuse,
            ),
            (
                "critical keeps 1..=2",
                Level::Critical,
                chat(2, None),
                send(Some(256), Some("tinyllama")),
            ),
            (
                "critical answers chat",
                Level::Critical,
                chat(3, None),
                Treatment::Answer("Busy: try again later."),
            ),
            (
                "critical refuses without a default",
                Level::Critical,
                meta(Endpoint::Generate, 3, None),
                Treatment::Refuse,
            ),
        ];
        for (case, level, meta, expected) in table {
            assert_eq!(treatment(&config, level, &meta), expected, "{case}");
        }
        let mut oncall = chat(9, None);
        oncall.class = "oncall".into();
        assert_eq!(
            treatment(&config, Level::Critical, &oncall),
            Treatment::Untouched,
            "a critical class is never degraded"
        );
        let mut tiny = chat(5, None);
        tiny.model = Some("tinyllama".into());
        assert_eq!(
            treatment(&config, Level::L2, &tiny),
            send(Some(256), None),
            "already the smaller model"
        );
    }
}
