//! The configuration file of `serve` (`--config FILE`, or `SHENGUAN_CONFIG`): TOML whose keys
//! are `serve`'s options without their dashes (`listen = "0.0.0.0:50051"`, `lease = "5s"`,
//! `credit-grade = ["A", "B"]`, `production = true`).
//!
//! The options themselves are defined once, as clap arguments in [`crate::cli`]; this module
//! reads them from there. A file's key is checked with the same value parser as the flag, so a
//! value the command line would refuse is refused in the file too, named `FILE:LINE`. Order of
//! precedence, lowest first: the default, the file, the environment variable, the flag — a file
//! value is applied only where clap found none in the environment or on the command line.
//! `config print` shows the result with where each value came from, and `config check FILE`
//! checks a file without starting anything.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command, ConfigCommand};

/// A problem in a configuration file, where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub(crate) struct FileError {
    /// The file, as given.
    pub(crate) file: String,
    /// 1-based line.
    pub(crate) line: usize,
    /// What is wrong and what is expected.
    pub(crate) message: String,
}

/// A file that could not be read, or the problems in it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// Unreadable.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// Read, and wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FileError>),
}

/// One setting read from a file: the values as the command line would give them.
#[derive(Debug, Clone)]
pub(crate) struct Setting {
    /// The option's long name.
    pub(crate) key: String,
    /// The option's clap id.
    pub(crate) id: String,
    /// Whether it is a flag (its values: `true`, or none).
    pub(crate) flag: bool,
    /// Its values (none for a flag set to false).
    pub(crate) values: Vec<String>,
    /// `FILE:LINE`.
    pub(crate) at: String,
}

/// One line of `config print`: an option, its effective value(s), and where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shown {
    /// The option's long name.
    pub(crate) key: String,
    /// The value as TOML, secrets redacted; `None`: not set.
    pub(crate) value: Option<String>,
    /// `default`, `flag`, `env NAME` or `file FILE:LINE`.
    pub(crate) source: String,
    /// The option's help text.
    pub(crate) help: String,
}

/// The `serve` command as clap defines it: the options a file may set.
fn serve_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve").cloned().expect("serve is a subcommand")
}

/// The options a file may set: every `serve` option with a long name but `--config` itself
/// and the hidden ones (test hooks).
fn settable(serve: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    serve
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help" && l != "version") && !a.is_hide_set())
}

fn is_flag(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn takes_many(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append) || arg.get_num_args().is_some_and(|n| n.max_values() > 1)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1)
}

/// Reads and checks `path` against `serve`'s options; every problem is reported, each at its
/// line.
pub(crate) fn load(path: &Path) -> Result<Vec<Setting>, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
    check_text(&name, &text)
}

fn check_text(name: &str, text: &str) -> Result<Vec<Setting>, ConfigError> {
    use toml::Spanned;
    let at = |offset: usize| format!("{name}:{}", line_of(text, offset));
    let error =
        |offset: usize, message: String| FileError { file: name.to_owned(), line: line_of(text, offset), message };
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigError::Invalid(vec![error(offset, e.message().trim().to_owned())])
    })?;
    let serve = serve_command();
    let mut problems = Vec::new();
    let mut settings = Vec::new();
    for (key, value) in &table {
        let offset = key.span().start;
        let Some(arg) = settable(&serve).find(|a| a.get_long() == Some(key.get_ref().as_str())) else {
            let known: Vec<&str> = settable(&serve).filter_map(clap::Arg::get_long).collect();
            // As clap suggests a flag: the most similar name, if similar enough.
            let near = known
                .iter()
                .map(|k| (strsim::jaro_winkler(k, key.get_ref()), k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k);
            let hint = match near {
                Some(k) => format!(" (did you mean {k:?}?)"),
                None => format!("; the keys are serve's options: {}", known.join(", ")),
            };
            problems.push(error(offset, format!("unknown key {:?}{hint}", key.get_ref())));
            continue;
        };
        match values_of(arg, value.get_ref()) {
            Ok(values) => {
                let bad = values.iter().find_map(|v| {
                    if is_flag(arg) {
                        None
                    } else {
                        parses(arg, v).err().map(|e| (v.clone(), e))
                    }
                });
                match bad {
                    Some((v, e)) => problems
                        .push(error(value.span().start, format!("{}: {v:?}: {}", key.get_ref(), clap_reason(&e)))),
                    None => settings.push(Setting {
                        key: key.get_ref().clone(),
                        id: arg.get_id().as_str().to_owned(),
                        flag: is_flag(arg),
                        values,
                        at: at(offset),
                    }),
                }
            }
            Err(why) => problems.push(error(value.span().start, format!("{}: {why}", key.get_ref()))),
        }
    }
    problems.sort_by_key(|p| p.line);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Parses `value` with `arg`'s own value parser, alone: what the flag would say of it.
fn parses(arg: &clap::Arg, value: &str) -> Result<(), clap::Error> {
    let alone = clap::Command::new("serve").no_binary_name(true).arg(
        clap::Arg::new("value")
            .value_parser(arg.get_value_parser().clone())
            .action(ArgAction::Set)
            .allow_hyphen_values(true),
    );
    alone.try_get_matches_from([value]).map(|_| ())
}

/// A clap error's reason, without its "error:" prefix and usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "invalid value 'x' for '[value]': why": the key and the value are said already.
    first.split_once("for '[value]': ").map_or(first, |(_, why)| why).to_owned()
}

/// A TOML value as the command line's values for `arg`.
fn values_of(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value as V;
    if is_flag(arg) {
        return match value {
            V::Boolean(true) => Ok(vec!["true".into()]),
            V::Boolean(false) => Ok(vec![]),
            _ => Err("true or false".into()),
        };
    }
    let one = |v: &toml::Value| match v {
        V::String(s) => Ok(s.clone()),
        V::Integer(n) => Ok(n.to_string()),
        V::Float(f) => Ok(f.to_string()),
        V::Boolean(b) => Ok(b.to_string()),
        V::Datetime(d) => Ok(d.to_string()),
        V::Array(_) | V::Table(_) => Err("one value, not a list or a table".to_owned()),
    };
    match value {
        V::Array(items) if takes_many(arg) => items.iter().map(one).collect(),
        V::Array(_) => Err("takes one value, not a list".into()),
        V::Table(_) => Err("a table; the keys are flat, one per option".into()),
        other => one(other).map(|v| vec![v]),
    }
}

/// The `serve` matches inside `matches`, for `serve` and `config print`.
fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("serve", m)) => Some(m),
        Some(("config", m)) => m.subcommand_matches("print"),
        _ => None,
    }
}

/// Parses the command line, applying `--config`'s file where it is given; clap's own errors
/// (and `--help`) exit as clap does. A file's problems are an error naming `FILE:LINE`.
pub(crate) fn parse(argv: Vec<OsString>) -> Result<Cli, ConfigError> {
    let first = Cli::command().get_matches_from(argv.clone());
    let Some(serve) = serve_matches(&first) else {
        return Ok(Cli::from_arg_matches(&first).unwrap_or_else(|e| e.exit()));
    };
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let mut argv = argv;
    if let Some(path) = serve.get_one::<PathBuf>("config") {
        for s in load(path)? {
            // The environment and the command line override the file.
            if !matches!(serve.value_source(&s.id), None | Some(ValueSource::DefaultValue)) {
                continue;
            }
            if s.flag {
                if !s.values.is_empty() {
                    argv.push(format!("--{}", s.key).into());
                }
            } else {
                argv.extend(s.values.iter().map(|v| OsString::from(format!("--{}={v}", s.key))));
            }
            applied.insert(s.id, s.at);
        }
    }
    let matches = Cli::command().get_matches_from(argv);
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Config(ConfigCommand::Print { shown, .. }) = &mut cli.command {
        *shown = show(serve_matches(&matches).expect("print"), &applied);
    }
    Ok(cli)
}

/// Every settable option's effective value and its source.
fn show(matches: &ArgMatches, applied: &BTreeMap<String, String>) -> Vec<Shown> {
    let serve = serve_command();
    settable(&serve)
        .map(|arg| {
            let id = arg.get_id().as_str();
            let key = arg.get_long().unwrap_or(id).to_owned();
            let source = match (applied.get(id), matches.value_source(id)) {
                (Some(at), _) => format!("file {at}"),
                (None, Some(ValueSource::CommandLine)) => "flag".into(),
                (None, Some(ValueSource::EnvVariable)) => {
                    format!("env {}", arg.get_env().map(OsStr::to_string_lossy).unwrap_or_default())
                }
                (None, Some(ValueSource::DefaultValue)) => "default".into(),
                _ => "not set".into(),
            };
            let raw: Vec<String> = matches
                .get_raw(id)
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let value = if raw.is_empty() {
                None
            } else if is_flag(arg) {
                Some(raw[0].clone())
            } else {
                let rendered: Vec<String> = raw.iter().map(|v| toml_value(&key, v)).collect();
                Some(if takes_many(arg) { format!("[{}]", rendered.join(", ")) } else { rendered[0].clone() })
            };
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            Shown { key, value, source, help }
        })
        .collect()
}

/// A value as TOML: integers bare, everything else a string; a database URL's password hidden.
fn toml_value(key: &str, value: &str) -> String {
    if value.parse::<i64>().is_ok() {
        return value.to_owned();
    }
    let value = if key == "database" { shenguan::store::postgres::redact(value) } else { value.to_owned() };
    toml::Value::String(value).to_string()
}

/// `config print`'s text: a configuration file itself, each line commented with its source;
/// with `explain`, each option's help above it.
pub(crate) fn render(shown: &[Shown], explain: bool) -> String {
    let mut out = String::from(
        "# shenguan serve: the effective configuration (secrets redacted); after each value, where it came from\n",
    );
    for s in shown {
        if explain {
            out.push('\n');
            out.push_str(&wrap(&s.help, 96));
        }
        match &s.value {
            Some(v) => out.push_str(&format!("{} = {v}  # {}\n", s.key, s.source)),
            None => out.push_str(&format!("# {} =  # not set\n", s.key)),
        }
    }
    out
}

/// `text` as comment lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `config check FILE`.
pub(crate) fn check(path: &Path) -> Result<usize, ConfigError> {
    load(path).map(|s| s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_named_at_its_line() {
        let text = "listen = \"127.0.0.1:1\"\nlisten-addr = \"x\"\nlease = \"five seconds\"\nshards = [1, 2]\nproduction = \"yes\"\n[tls]\ncert = \"x\"\n";
        let Err(ConfigError::Invalid(problems)) = check_text("f.toml", text) else { panic!("invalid") };
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6], "{problems:#?}");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("unknown key \"listen-addr\""), "{text:?}");
        assert!(text[1].starts_with("f.toml:3: lease: \"five seconds\":"), "{text:?}");
        assert!(text[2].contains("not a list"), "{text:?}");
        assert!(text[3].contains("true or false"), "{text:?}");
        assert!(text[4].contains("unknown key \"tls\""), "{text:?}");
    }

    #[test]
    fn a_misspelt_key_gets_the_nearest_option() {
        let Err(ConfigError::Invalid(p)) = check_text("f.toml", "lisen = \"x\"\n") else { panic!("invalid") };
        assert!(p[0].message.contains("did you mean \"listen\""), "{p:?}");
        let Err(ConfigError::Invalid(p)) = check_text("f.toml", "[broken\n") else { panic!("invalid") };
        assert_eq!(p[0].line, 1, "{p:?}");
    }

    #[test]
    fn values_are_the_command_lines() {
        let settings =
            check_text("f.toml", "shards = 32\ncredit-grade = [\"A\", \"B\"]\nproduction = false\n").expect("valid");
        let by: BTreeMap<&str, &Vec<String>> = settings.iter().map(|s| (s.key.as_str(), &s.values)).collect();
        assert_eq!(by["shards"], &vec!["32".to_owned()]);
        assert_eq!(by["credit-grade"], &vec!["A".to_owned(), "B".to_owned()]);
        assert!(by["production"].is_empty());
    }
}
