//! Message templates: `{variable}`, `{event.field}`, `{instance}` and `{state}` placeholders,
//! checked against the definition's names when it loads. [`pieces`] is the syntax itself,
//! shared with the texts configured outside definitions (the SMS templates of delivery).

use super::expr::{self, Env, Guard};
use super::{Segment, Template};

/// A piece of a message template: text (braces unescaped) or a `{placeholder}`'s name, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// The name between braces.
    Name(String),
}

/// Splits a template into text and `{placeholder}` names; `{{` and `}}` are braces. The one
/// reading of the template syntax, for definitions and for configured texts (SMS templates).
pub fn pieces(src: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
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
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Name(name.trim().to_owned()));
            }
            '}' => return Err("a lone `}` in a template must be written `}}`".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

pub(super) fn parse_template(src: &str, env: &Env<'_>) -> Result<Template, String> {
    let mut segs = Vec::new();
    for piece in pieces(src)? {
        segs.push(match piece {
            Piece::Text(t) => Segment::Text(t),
            Piece::Name(name) => match name.as_str() {
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
            },
        });
    }
    Ok(Template(segs))
}
