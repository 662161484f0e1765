//! How ferry says things to people: an I/O error's cause in words (never
//! "(os error 2)"), and a file name whose control characters would
//! otherwise move the cursor or break a line on the terminal. Machines get
//! the exact bytes elsewhere (JSON); these are for text meant to be read.

use std::fmt::Write as _;
use std::io;

/// The cause of `e` in words: the system's description, lower-cased as
/// the middle of a sentence is, without the "(os error N)" that std
/// appends.
pub fn cause(e: &io::Error) -> String {
    in_words(&e.to_string())
}

/// `text` without any " (os error N)"; the system description each one
/// followed (from the start, or from the last ": " before it) lower-cased
/// ("No such file…" → "no such file…"). The rest is left as it is: a
/// name that starts with a capital keeps it.
pub fn in_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        let after = &rest[at + " (os error ".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || !after[digits..].starts_with(')') {
            out.push_str(&rest[..at + " (os error ".len()]);
            rest = after;
            continue;
        }
        let before = &rest[..at];
        let described = before.rfind(": ").map_or(0, |colon| colon + 2);
        out.push_str(&before[..described]);
        out.push_str(&lower_first(&before[described..]));
        rest = &after[digits + 1..];
    }
    out.push_str(rest);
    out
}

/// "Permission denied" → "permission denied"; "EIO" stays.
fn lower_first(description: &str) -> String {
    let mut chars = description.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_ascii_uppercase() && second.is_lowercase() => {
            first.to_ascii_lowercase().to_string() + &description[1..]
        }
        _ => description.to_owned(),
    }
}

/// `name` for a person: a control character is written as a backslash
/// escape, as `ls -b` does (`\n`, `\t`, `\033` for ESC, `\177` for DEL),
/// and a backslash as `\\`, so that what is shown names one file
/// unambiguously and never moves the cursor. Other text is unchanged.
pub fn escaped(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escaped`] of a path, shown lossily where it is not UTF-8.
pub fn escaped_path(path: &std::path::Path) -> String {
    escaped(&path.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_without_their_number() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(cause(&e), "no such file or directory");
        assert_eq!(
            in_words("/x: cannot open: Permission denied (os error 13); try again"),
            "/x: cannot open: permission denied; try again"
        );
        // A name that starts with a capital is no system description.
        assert_eq!(in_words("Data/x: is gone"), "Data/x: is gone");
        assert_eq!(in_words("EIO (os error x)"), "EIO (os error x)");
    }

    #[test]
    fn control_characters_are_escaped_as_ls_b_does() {
        assert_eq!(escaped("plain name"), "plain name");
        assert_eq!(escaped("a\nb"), "a\\nb");
        assert_eq!(escaped("\x1b[31mred"), "\\033[31mred");
        assert_eq!(escaped("back\\slash"), "back\\\\slash");
        assert_eq!(escaped("del\x7f"), "del\\177");
    }
}
