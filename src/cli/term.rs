//! What the terminal on stderr can show: colours and progress bars.
//!
//! Colour follows the conventions clap (through anstream) already applies to
//! yibuild's help and usage errors, so every line of one run agrees:
//! `NO_COLOR` (non-empty) turns colour off, whatever else is set
//! (<https://no-color.org>); otherwise `CLICOLOR_FORCE` (non-empty, not `0`)
//! turns it on even when stderr is not a terminal; otherwise `CLICOLOR=0`
//! turns it off; otherwise a terminal gets colour unless `TERM` is unset or
//! `dumb`. Progress bars move the cursor, so they need a terminal whose `TERM`
//! is not `dumb`; the colour variables do not force them.

use std::io::IsTerminal;

/// Whether output to a stream gets colour, given whether the stream is a
/// terminal and how to read an environment variable.
pub fn color_enabled(is_terminal: bool, var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if set("NO_COLOR").is_some() {
        return false;
    }
    if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    if set("CLICOLOR").is_some_and(|v| v == "0") {
        return false;
    }
    is_terminal && capable_term(&var)
}

/// Whether a `TERM` is set and can move the cursor and draw colours.
fn capable_term(var: &impl Fn(&str) -> Option<String>) -> bool {
    var("TERM").is_some_and(|t| !t.is_empty() && t != "dumb")
}

/// Whether a progress bar may be drawn, given whether the stream is a
/// terminal and how to read an environment variable.
pub fn bars_enabled(is_terminal: bool, var: impl Fn(&str) -> Option<String>) -> bool {
    is_terminal && capable_term(&var)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// [`color_enabled`] for this process's stderr.
pub fn stderr_color() -> bool {
    color_enabled(std::io::stderr().is_terminal(), env)
}

/// [`bars_enabled`] for this process's stderr.
pub fn stderr_bars() -> bool {
    bars_enabled(std::io::stderr().is_terminal(), env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_terminal_gets_colour_unless_told_otherwise() {
        assert!(color_enabled(true, vars(&[("TERM", "xterm-256color")])));
        assert!(!color_enabled(false, vars(&[("TERM", "xterm-256color")])));
        assert!(!color_enabled(true, vars(&[("TERM", "dumb")])));
        assert!(!color_enabled(true, vars(&[])));
        assert!(!color_enabled(
            true,
            vars(&[("TERM", "xterm"), ("NO_COLOR", "1")])
        ));
        assert!(!color_enabled(
            true,
            vars(&[("TERM", "xterm"), ("CLICOLOR", "0")])
        ));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(color_enabled(
            true,
            vars(&[("TERM", "xterm"), ("NO_COLOR", "")])
        ));
    }

    #[test]
    fn clicolor_force_wins_over_everything_but_no_color() {
        assert!(color_enabled(false, vars(&[("CLICOLOR_FORCE", "1")])));
        assert!(color_enabled(
            true,
            vars(&[("CLICOLOR_FORCE", "1"), ("TERM", "dumb"), ("CLICOLOR", "0")])
        ));
        assert!(!color_enabled(false, vars(&[("CLICOLOR_FORCE", "0")])));
        assert!(!color_enabled(
            false,
            vars(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")])
        ));
    }

    #[test]
    fn bars_need_a_terminal_that_is_not_dumb() {
        assert!(bars_enabled(true, vars(&[("TERM", "xterm")])));
        assert!(!bars_enabled(true, vars(&[("TERM", "dumb")])));
        assert!(!bars_enabled(false, vars(&[("TERM", "xterm")])));
        assert!(!bars_enabled(false, vars(&[("CLICOLOR_FORCE", "1")])));
    }
}
