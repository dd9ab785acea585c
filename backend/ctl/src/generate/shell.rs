//! Printing an argument list: on one line for a POSIX shell (`eval "qemu-system-x86_64
//! $(sockbypass qemu-args vm1)"`), each argument quoted when it holds anything a shell would
//! interpret; or one raw argument per line for `mapfile -t`.
//!
//! An unquoted `$(...)` splits on blanks and does not remove quotes, so it carries the
//! arguments faithfully only when none needed quoting; `eval` and `mapfile` always do.

use std::borrow::Cow;

use super::GenerateError;

/// Whether `b` means nothing to a POSIX shell anywhere in a word. `=` is included: an argument
/// is never the first word of a command, where `a=b` would be an assignment.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-./,=:@%+".contains(&b)
}

/// `arg` as one shell word: unchanged when every byte is plain, else in single quotes (a
/// single quote inside written as `'\''`).
pub fn quote(arg: &str) -> Cow<'_, str> {
    if !arg.is_empty() && arg.bytes().all(is_plain) {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// `args` as one line of shell words, without a trailing newline.
pub fn join(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `args` one per line, unquoted, each line ending in a newline; an argument holding a newline
/// is an error.
pub fn lines(args: &[String]) -> Result<String, GenerateError> {
    let mut out = String::new();
    for arg in args {
        if arg.contains('\n') {
            return Err(GenerateError::Newline { arg: arg.clone() });
        }
        out.push_str(arg);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn plain_words_stay_as_they_are() {
        assert_eq!(
            quote("socket,id=sbvsock,path=/run/sockbypass/vm-1.sock"),
            "socket,id=sbvsock,path=/run/sockbypass/vm-1.sock"
        );
        assert_eq!(quote("-device"), "-device");
    }

    #[test]
    fn anything_a_shell_reads_is_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("[256,256]"), "'[256,256]'");
        assert_eq!(quote("~/x"), "'~/x'");
        assert_eq!(quote("a*"), "'a*'");
        assert_eq!(quote("\"x\""), "'\"x\"'");
    }

    /// The quoted line, read back by a real shell, gives the same arguments.
    #[test]
    fn a_shell_reads_back_what_was_quoted() {
        let args: Vec<String> = [
            "plain",
            "with space",
            "it's",
            "$(echo injected)",
            "`x`",
            "a\\b",
            "tab\there",
            "new\nline",
            "",
            "ünï",
            "[256,256,256]",
            "*",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let script = format!("for a in {}; do printf '%s\\0' \"$a\"; done", join(&args));
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{out:?}");
        let got: Vec<String> = String::from_utf8(out.stdout)
            .expect("UTF-8")
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(got, args);
    }

    #[test]
    fn one_per_line_is_raw_and_refuses_a_newline() {
        let args = vec!["-chardev".to_owned(), "path=/a b".to_owned()];
        assert_eq!(lines(&args).expect("lines"), "-chardev\npath=/a b\n");
        let bad = vec!["a\nb".to_owned()];
        assert_eq!(
            lines(&bad),
            Err(GenerateError::Newline { arg: "a\nb".into() })
        );
    }
}
