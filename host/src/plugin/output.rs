//! What a wasm plugin writes to stdout and stderr. Never a fixed pipe that
//! traps when full (one `eprintln!` per call used to kill a run after some
//! thousand calls): the last bytes of the running call are kept for error
//! messages (a panic's text), older ones are dropped and counted, and under
//! `--verbose` (tracing target `amat::plugin` at debug) whole lines are shown,
//! prefixed, escaped and cut.

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of the running call kept for error messages.
const TAIL: usize = 8 * 1024;
/// Characters of one line shown under `--verbose`.
const LINE: usize = 200;
/// Lines shown per call under `--verbose`; the rest are counted.
const LINES_PER_CALL: usize = 20;
/// The tracing target of plugin output.
pub const TARGET: &str = "amat::plugin";

#[derive(Default)]
struct Inner {
    /// The last [`TAIL`] bytes of the running call.
    tail: Vec<u8>,
    /// Bytes of the running call no longer in `tail`.
    dropped: u64,
    /// The line being written (for `--verbose`), at most [`LINE`] * 4 bytes.
    line: Vec<u8>,
    lines_shown: usize,
    lines_hidden: u64,
}

/// One of a plugin's output streams; clones share the same buffer.
#[derive(Clone)]
pub struct PluginOutput {
    prefix: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

impl PluginOutput {
    /// `prefix` names the plugin and the stream in `--verbose` lines.
    pub fn new(prefix: String) -> Self {
        Self {
            prefix: prefix.into(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last bytes the running call wrote.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().tail.clone()
    }

    /// Bytes of the running call dropped from [`Self::contents`].
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Forgets the previous call's output.
    pub fn begin_call(&self) {
        let mut inner = self.lock();
        if inner.lines_hidden > 0 || inner.dropped > 0 {
            tracing::debug!(
                target: TARGET,
                "[{}] ... {} more line(s) not shown; {} byte(s) past the kept {TAIL} dropped",
                self.prefix,
                inner.lines_hidden,
                inner.dropped
            );
        }
        *inner = Inner::default();
    }

    fn push(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        inner.tail.extend_from_slice(bytes);
        if inner.tail.len() > TAIL {
            let excess = inner.tail.len() - TAIL;
            inner.tail.drain(..excess);
            inner.dropped += excess as u64;
        }
        if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            for &b in bytes {
                if b == b'\n' {
                    let line = std::mem::take(&mut inner.line);
                    if inner.lines_shown < LINES_PER_CALL {
                        inner.lines_shown += 1;
                        tracing::debug!(target: TARGET, "[{}] {}", self.prefix, shown(&line));
                    } else {
                        inner.lines_hidden += 1;
                    }
                } else if inner.line.len() < LINE * 4 {
                    inner.line.push(b);
                }
            }
        }
    }
}

/// A line as shown: control characters escaped, cut to [`LINE`] characters.
pub fn shown(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let escaped: String = text
        .chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect();
    if escaped.chars().count() > LINE {
        let cut: String = escaped.chars().take(LINE).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: what does not fit is dropped, never refused.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 asks for this; the sandbox links WASIp2 alone.
        StdoutStream::async_stream(&std::io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_tail_is_dropped_and_counted_never_refused() {
        let mut out = PluginOutput::new("test stderr".into());
        for _ in 0..10_000 {
            out.write(Bytes::from_static(
                b"a line the plugin prints at every call\n",
            ))
            .unwrap();
            assert!(out.check_write().unwrap() > 0);
        }
        assert_eq!(out.contents().len(), TAIL);
        assert_eq!(out.dropped(), 10_000 * 39 - TAIL as u64);
        out.begin_call();
        assert!(out.contents().is_empty());
        assert_eq!(out.dropped(), 0);
    }

    #[test]
    fn shown_lines_are_escaped_and_cut() {
        assert_eq!(shown(b"\x1b[31mred"), "\\u{1b}[31mred");
        let long = shown(&[b'x'; 5000]);
        assert_eq!(long.chars().count(), LINE + 1);
    }
}
