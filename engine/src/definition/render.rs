//! Drawing a definition: Mermaid `stateDiagram-v2` text for `shenguan workflow graph`.
//!
//! Transitions are labelled `event [guard]`; a transition taken on a timer's event is marked
//! with the timer's name and due expression, so the deadlines are visible on the diagram.

use std::fmt::Write;

use super::Definition;

/// Mermaid labels end at a newline and treat `:` specially after the first one in some
/// renderers; keep labels on one line and free of characters that break the syntax.
fn label(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace(':', "∶").replace(';', ",")
}

/// The definition as a Mermaid state diagram.
pub fn mermaid(def: &Definition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: {} v{}\n---", label(&def.name), def.version);
    out.push_str("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", def.initial);
    for state in &def.states {
        if !state.description.is_empty() {
            let _ = writeln!(out, "    {}: {} — {}", state.name, state.name, label(&state.description));
        }
    }
    for t in &def.transitions {
        for from in &t.from {
            let timer = def.state(from).and_then(|s| s.timers.iter().find(|timer| timer.event == t.event));
            let mut text = t.event.clone();
            if let Some(g) = &t.guard_text {
                let _ = write!(text, " [{g}]");
            }
            if let Some(timer) = timer {
                let _ = write!(text, " ⏰ {} @ {}", timer.name, timer.at.text());
            }
            let _ = writeln!(out, "    {from} --> {}: {}", t.to, label(&text));
        }
    }
    for state in def.states.iter().filter(|s| s.terminal) {
        let _ = writeln!(out, "    {} --> [*]", state.name);
    }
    out
}
