use std::fmt;
use std::path::{Path, PathBuf};

/// How a plugin call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The plugin returned `Err(message)`.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// A host tensor op the plugin called failed.
    #[error("host op failed: {0}")]
    HostOp(String),
    /// A sandbox limit stopped the call.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The plugin trapped or panicked.
    #[error("trap: {0}")]
    Trap(String),
    /// The plugin returned something the contract does not allow.
    #[error("bad result: {0}")]
    BadResult(String),
    /// Refused at load by the sandbox's policy: a component of another world,
    /// or one importing what the sandbox does not grant.
    #[error("refused: {0}")]
    Refused(String),
}

impl CallError {
    /// The same error with its text cut to one bounded line, so a plugin
    /// cannot make the host hold or print megabytes of error text.
    fn bounded(self) -> Self {
        match self {
            CallError::Plugin(s) => CallError::Plugin(one_line(&s)),
            CallError::HostOp(s) => CallError::HostOp(one_line(&s)),
            CallError::Limit(s) => CallError::Limit(one_line(&s)),
            CallError::Trap(s) => CallError::Trap(one_line(&s)),
            CallError::BadResult(s) => CallError::BadResult(one_line(&s)),
            CallError::Refused(s) => CallError::Refused(one_line(&s)),
        }
    }
}

/// A plugin failure, naming the plugin and the call. Its message is one line
/// of bounded length, whatever the plugin put in it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    pub path: PathBuf,
    pub name: Option<String>,
    pub call: &'static str,
    pub error: Option<CallError>,
    pub message: String,
}

/// Longest plugin-supplied text that reaches a message.
const MAX_TEXT: usize = 400;

/// One line, at most [`MAX_TEXT`] characters, control characters (ANSI
/// escapes) escaped.
pub(crate) fn one_line(s: &str) -> String {
    let flat = super::info::escaped(&s.split_whitespace().collect::<Vec<_>>().join(" "));
    if flat.chars().count() > MAX_TEXT {
        let cut: String = flat.chars().take(MAX_TEXT).collect();
        format!("{cut}… ({} characters in all)", flat.chars().count())
    } else {
        flat
    }
}

impl PluginError {
    pub(crate) fn load(path: &Path, message: String) -> Self {
        Self {
            path: path.to_path_buf(),
            name: None,
            call: "load",
            error: None,
            message: one_line(&message),
        }
    }

    pub(crate) fn call(path: &Path, call: &'static str, error: CallError) -> Self {
        let error = error.bounded();
        let message = one_line(&error.to_string());
        Self {
            path: path.to_path_buf(),
            name: None,
            call,
            error: Some(error),
            message,
        }
    }

    pub(crate) fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// True when a sandbox limit stopped the call.
    pub fn is_limit(&self) -> bool {
        matches!(self.error, Some(CallError::Limit(_)))
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "plugin `{name}` ({})", self.path.display())?,
            None => write!(f, "plugin {}", self.path.display())?,
        }
        write!(f, ", {}: {}", self.call, self.message)
    }
}

impl std::error::Error for PluginError {}
