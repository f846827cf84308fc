//! `--config FILE`: a TOML file of settings under the command line and the environment.
//!
//! Keys are the long option names of the subcommand (`cache-dir`, `stop-timeout`;
//! `cache_dir` is read as `cache-dir`). A key becomes `--key=value` on the command line
//! unless the option is already there as a flag or its `BUCKETFS_*` variable is set, so clap
//! parses and checks file values exactly as flags, and the order of precedence is flag, then
//! variable, then file, then default. Arrays are for repeatable options; `true` gives a
//! switch, `false` leaves it off.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml_edit::{DocumentMut, Item, Value};

use super::Cli;

/// Subcommands that take `--config`.
const WITH_CONFIG: [&str; 2] = ["mount", "run"];

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        })
    }
}

/// The parsed command line, and where each of the subcommand's settings came from.
pub struct Parsed {
    pub cli: Cli,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// Every option of the subcommand that has a value, in the order of `--help`.
    pub sources: Vec<Setting>,
}

impl Parsed {
    /// The settings line the log starts with: every option given (not a default), and where
    /// it came from; empty when none was.
    pub fn settings_line(&self) -> String {
        let given: Vec<String> = self
            .sources
            .iter()
            .filter(|s| s.source != Source::Default)
            .map(|s| s.to_string())
            .collect();
        given.join(" ")
    }
}

/// One option's value and where it came from.
#[derive(Clone, Debug)]
pub struct Setting {
    pub long: String,
    pub source: Source,
    pub values: Vec<String>,
}

/// Options whose value may hold a credential (a replica's libpq connection string, with its
/// `password=` or `user:password@`): logged as given, never with their value.
const NOT_SHOWN: &[&str] = &["primary-conninfo"];

impl std::fmt::Display for Setting {
    /// As the settings line logs it: `--NAME=VALUE (SOURCE)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match NOT_SHOWN.contains(&self.long.as_str()) {
            true => write!(f, "--{}=<not shown> ({})", self.long, self.source),
            false => write!(
                f,
                "--{}={} ({})",
                self.long,
                self.values.join(","),
                self.source
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Bad flags, `--help` or `--version`: clap prints and exits as usual.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("config {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Parses `args` (program name first), with the settings of a `--config` file (or
/// `BUCKETFS_CONFIG`) merged in.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, ParseError> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let mut injected = BTreeSet::new();
    let mut file = None;
    let sub = subcommand_at(&args);
    if let Some(at) = sub.filter(|&i| WITH_CONFIG.contains(&args[i].to_str().unwrap_or(""))) {
        let name = args[at].to_string_lossy().into_owned();
        let given = &args[at + 1..end_of_options(&args, at)];
        let path = option_value(given, "config")
            .or_else(|| std::env::var_os("BUCKETFS_CONFIG").filter(|v| !v.is_empty()))
            .map(PathBuf::from);
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|e| ParseError::File {
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let flags = config_args(&name, &text, given).map_err(|message| ParseError::File {
                path: path.clone(),
                message,
            })?;
            for (key, tokens) in flags {
                injected.insert(key);
                let at = at + 1;
                args.splice(at..at, tokens);
            }
            file = Some(path);
        }
    }
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let sources = match matches.subcommand() {
        Some((name, sub)) => sources_of(name, sub, &injected),
        None => Vec::new(),
    };
    Ok(Parsed { cli, file, sources })
}

/// Index of the subcommand's name in `args`: the first word that is not an option of the
/// top level (`--log-format` takes a value).
fn subcommand_at(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--log-format" {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Index of the `--` that ends the options after `at` (or the end).
fn end_of_options(args: &[OsString], at: usize) -> usize {
    args.iter()
        .skip(at + 1)
        .position(|a| a == "--")
        .map_or(args.len(), |p| at + 1 + p)
}

/// The value of `--long VALUE` or `--long=VALUE` among `given`.
fn option_value(given: &[OsString], long: &str) -> Option<OsString> {
    let flag = format!("--{long}");
    let prefix = format!("--{long}=");
    given.iter().enumerate().find_map(|(i, a)| {
        let s = a.to_str()?;
        if s == flag {
            given.get(i + 1).cloned()
        } else {
            s.strip_prefix(&prefix).map(OsString::from)
        }
    })
}

/// Is `--long` among `given`, with or without `=VALUE`?
fn on_command_line(given: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let prefix = format!("--{long}=");
    given
        .iter()
        .filter_map(|a| a.to_str())
        .any(|s| s == flag || s.starts_with(&prefix))
}

/// The file's settings as command-line words for subcommand `sub`, by key, leaving out the
/// options that `given` (the command line) or the environment set. Messages name keys,
/// never values: a file may sit beside secrets.
fn config_args(
    sub: &str,
    text: &str,
    given: &[OsString],
) -> Result<Vec<(String, Vec<OsString>)>, String> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("not valid TOML: {}", e.message()))?;
    let root = Cli::command();
    let cmd = root
        .find_subcommand(sub)
        .expect("WITH_CONFIG names subcommands");
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .chain(root.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version));
        let Some(arg) = arg else {
            return Err(format!(
                "unknown key {key:?}: keys are the long options of `bucketfs {sub}` (see \
                 `bucketfs {sub} --help`)"
            ));
        };
        if long == "config" {
            return Err("a config file cannot name another one (key \"config\")".into());
        }
        if on_command_line(given, &long) {
            continue;
        }
        let env_set = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| !v.is_empty());
        if env_set {
            continue;
        }
        let value = match item {
            Item::Value(v) => v,
            _ => return Err(format!("key {key:?}: expected a value, not a table")),
        };
        let switch = !arg.get_action().takes_values();
        let mut tokens = Vec::new();
        match value {
            Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(format!(
                        "key {key:?}: an array, but --{long} takes a single value"
                    ));
                }
                for v in items.iter() {
                    tokens.push(word(&long, scalar(key, v)?));
                }
            }
            Value::Boolean(b) if switch => {
                if *b.value() {
                    tokens.push(OsString::from(format!("--{long}")));
                }
            }
            _ if switch => return Err(format!("key {key:?}: expected true or false")),
            v => tokens.push(word(&long, scalar(key, v)?)),
        }
        out.push((long, tokens));
    }
    Ok(out)
}

fn word(long: &str, value: String) -> OsString {
    OsString::from(format!("--{long}={value}"))
}

fn scalar(key: &str, v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.value().clone(),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        _ => {
            return Err(format!(
                "key {key:?}: expected a string, a number or a boolean, not {}",
                v.type_name()
            ))
        }
    })
}

/// Where each option of subcommand `name` got its value.
fn sources_of(name: &str, m: &ArgMatches, injected: &BTreeSet<String>) -> Vec<Setting> {
    let root = Cli::command();
    let Some(cmd) = root.find_subcommand(name) else {
        return Vec::new();
    };
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let id = a.get_id().as_str();
            let source = match m.value_source(id)? {
                clap::parser::ValueSource::CommandLine if injected.contains(long) => Source::File,
                clap::parser::ValueSource::CommandLine => Source::Flag,
                clap::parser::ValueSource::EnvVariable => Source::Env,
                _ => Source::Default,
            };
            let values = m
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            Some(Setting {
                long: long.to_string(),
                source,
                values,
            })
        })
        .collect()
}

impl ParseError {
    /// Prints the error the way clap would and exits: 0 for --help and --version, 2 else.
    pub fn exit(self) -> ! {
        match self {
            ParseError::Clap(e) => e.exit(),
            e @ ParseError::File { .. } => {
                eprintln!("bucketfs: error: {e}");
                std::process::exit(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_become_flags_unless_given() {
        let given = args(&["/mnt", "--stop-timeout", "9s"]);
        let text = r#"
            cache_dir = "/c"
            stop-timeout = "1m"
            initdb = true
            takeover = false
            initdb-arg = ["--locale=C", "--encoding=UTF8"]
            fuse-threads = 4
        "#;
        let got = config_args("run", text, &given).unwrap();
        let flat: Vec<String> = got
            .iter()
            .flat_map(|(_, t)| t.iter().map(|w| w.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            flat,
            [
                "--cache-dir=/c",
                "--initdb",
                "--initdb-arg=--locale=C",
                "--initdb-arg=--encoding=UTF8",
                "--fuse-threads=4"
            ]
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_key_not_the_value() {
        let err = config_args("run", "aws-secret = \"hunter2\"", &[]).unwrap_err();
        assert!(
            err.contains("aws-secret") && !err.contains("hunter2"),
            "{err}"
        );
        let err = config_args("run", "stop-timeout = [\"1s\"]", &[]).unwrap_err();
        assert!(err.contains("single value"), "{err}");
        let err = config_args("run", "initdb = \"yes\"", &[]).unwrap_err();
        assert!(err.contains("true or false"), "{err}");
        let err = config_args("run", "[table]\nx = 1", &[]).unwrap_err();
        assert!(err.contains("table"), "{err}");
        assert!(config_args("run", "not toml", &[]).is_err());
    }

    /// The settings line names every option given and where it came from, and never a
    /// password: a replica's `--primary-conninfo` usually carries one (libpq's `password=`,
    /// or a URI's `user:password@`).
    #[test]
    fn the_settings_line_shows_no_password() {
        let conninfo = [
            "host=primary.internal user=replicator password=hunter2",
            "postgresql://replicator:hunter2@primary.internal/postgres",
        ];
        for c in conninfo {
            let parsed = parse(args(&[
                "bucketfs",
                "run",
                "--replica",
                "--primary-conninfo",
                c,
                "--stop-timeout",
                "9s",
                "--cache-dir",
                "/c",
                "/m",
                "--",
                "postgres",
            ]))
            .unwrap();
            let line = parsed.settings_line();
            assert!(line.contains("--stop-timeout=9s (flag)"), "{line}");
            assert!(line.contains("--primary-conninfo="), "{line}");
            assert!(!line.contains("hunter2"), "{line}");
        }
    }

    #[test]
    fn the_subcommand_is_found_past_top_level_options() {
        let a = args(&["bucketfs", "--log-format", "json", "run", "/m"]);
        assert_eq!(subcommand_at(&a), Some(3));
        let a = args(&[
            "bucketfs",
            "run",
            "/m",
            "--config",
            "f",
            "--",
            "x",
            "--config=g",
        ]);
        let end = end_of_options(&a, 1);
        assert_eq!(option_value(&a[2..end], "config"), Some("f".into()));
    }
}
