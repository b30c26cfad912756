//! Configured texts (the outbound configuration's `sms_templates`): a message whose name — or,
//! without one, whose type — has a configured text says that text, filled from the instance's
//! variables and the record's data. It is filled once, when the writer writes the message, so
//! that the timeline and the stream show exactly what the receiver is sent.

use std::collections::BTreeMap;

use super::send::fill;
use crate::machine::Message;

/// Replaces `message.body` with its configured text, filled; leaves it as the workflow wrote
/// it when no text is configured for it or a placeholder has no value (logged).
pub fn apply(
    texts: &BTreeMap<String, String>,
    message: &mut Message,
    instance: &str,
    vars: Option<&serde_json::Map<String, serde_json::Value>>,
) {
    let key = message.template.as_deref().or(message.kind.as_deref());
    let Some(template) = key.and_then(|k| texts.get(k)) else { return };
    let data = message.data.as_ref();
    let lookup = |name: &str| -> Option<String> {
        let present = |v: &&serde_json::Value| !v.is_null();
        vars.and_then(|v| v.get(name))
            .filter(present)
            .or_else(|| data.and_then(|d| d.get(name)).filter(present))
            .map(display)
            .or_else(|| matches!(name, "instance" | "case_id").then(|| instance.to_owned()))
    };
    match fill(template, lookup) {
        Ok(text) => message.body = text,
        Err(e) => tracing::warn!(
            %instance,
            template = key.unwrap_or_default(),
            error = %e,
            "a configured text cannot be filled; the workflow's text is sent"
        ),
    }
}

/// A value as a text shows it: a string as it is, a list joined with `、`, an object's values
/// joined with `/`.
pub fn display(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join("、"),
        serde_json::Value::Object(fields) => {
            fields.values().map(display).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> Message {
        let mut m = Message::text("sms", Some("13800138000".into()), "workflow text");
        m.template = Some("commitment_reminder".into());
        m.kind = Some("commitment_reminder".into());
        m.data = json!({"commitment_deadline": "2026-10-09", "reason": null}).as_object().cloned();
        m
    }

    #[test]
    fn a_configured_text_is_filled_from_the_variables_and_the_data() {
        let texts = BTreeMap::from([(
            "commitment_reminder".to_owned(),
            "{applicant_name}：请于{commitment_deadline}前补交".to_owned(),
        )]);
        let vars = json!({"applicant_name": "张三"}).as_object().cloned();
        let mut m = message();
        apply(&texts, &mut m, "320700/A-1", vars.as_ref());
        assert_eq!(m.body, "张三：请于2026-10-09前补交");
    }

    #[test]
    fn without_a_value_or_a_text_the_workflow_text_stays() {
        let mut m = message();
        let texts = BTreeMap::from([("commitment_reminder".to_owned(), "{reason}".to_owned())]);
        apply(&texts, &mut m, "320700/A-1", None);
        assert_eq!(m.body, "workflow text", "a null is no value");
        apply(&BTreeMap::new(), &mut m, "320700/A-1", None);
        assert_eq!(m.body, "workflow text");
    }

    #[test]
    fn lists_of_objects_read_as_people_write_them() {
        let v = json!([{"department": "市场监管局", "office": "食品处"}, {"department": "卫健委", "office": ""}]);
        assert_eq!(display(&v), "市场监管局/食品处、卫健委");
    }
}
