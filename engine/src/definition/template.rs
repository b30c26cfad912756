//! Message templates: `{variable}`, `{event.field}`, `{instance}` and `{state}` placeholders,
//! checked against the definition's names when it loads.

use super::expr::{self, Env, Guard};
use super::{Segment, Template};

pub(super) fn parse_template(src: &str, env: &Env<'_>) -> Result<Template, String> {
    let mut segs = Vec::new();
    let mut text = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed `{{{name}` in template")),
                    }
                }
                if !text.is_empty() {
                    segs.push(Segment::Text(std::mem::take(&mut text)));
                }
                let name = name.trim();
                segs.push(match name {
                    "instance" | "case_id" => Segment::InstanceId,
                    "state" => Segment::State,
                    _ => {
                        let g = expr::parse_guard(&format!("{name} is set"), env)
                            .map_err(|e| format!("template placeholder {{{name}}}: {e}"))?;
                        match g {
                            Guard::IsSet(o) => Segment::Value(o),
                            _ => return Err(format!("template placeholder {{{name}}} must be a name")),
                        }
                    }
                });
            }
            '}' => return Err("a lone `}` in a template must be written `}}`".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        segs.push(Segment::Text(text));
    }
    Ok(Template(segs))
}
