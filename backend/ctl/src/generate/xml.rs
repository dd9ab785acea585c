//! Text for XML: attribute values and element text escaped, comments that cannot end early.
//! XML 1.0 cannot carry most control characters at all (not even as character references), so
//! a string holding one is an error rather than a document a parser would reject.

use super::GenerateError;

/// Whether XML 1.0 allows `c` in a document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `value` escaped for an attribute in single or double quotes: `& < > " '` as entities, and
/// tab, newline and carriage return as character references so that attribute-value
/// normalisation keeps them.
pub fn escape(value: &str) -> Result<String, GenerateError> {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if !is_xml_char(c) {
            return Err(GenerateError::NotXml {
                value: value.to_owned(),
                code: u32::from(c),
            });
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `<!-- text -->`: a comment may not contain `--` nor end in `-`, so every `-` that follows
/// another, and a last one, get a space before them. Characters XML cannot carry become `?`.
pub fn comment(text: &str) -> String {
    let mut out = String::from("<!-- ");
    let mut prev_dash = false;
    for c in text.chars() {
        let c = if is_xml_char(c) { c } else { '?' };
        if c == '-' && prev_dash {
            out.push(' ');
        }
        prev_dash = c == '-';
        out.push(c);
    }
    if prev_dash {
        out.push(' ');
    }
    out.push_str(" -->");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_become_entities() {
        assert_eq!(
            escape(r#"a&b<c>d"e'f"#).expect("escapes"),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f"
        );
        assert_eq!(escape("/run/x.sock").expect("plain"), "/run/x.sock");
        assert_eq!(escape("&amp;").expect("twice"), "&amp;amp;");
        assert_eq!(escape("a\tb\nc\rd").expect("ws"), "a&#9;b&#10;c&#13;d");
        assert_eq!(escape("ünï €").expect("unicode"), "ünï €");
    }

    #[test]
    fn characters_xml_cannot_carry_are_refused() {
        for (s, code) in [
            ("a\u{1}b", 1),
            ("\u{0}", 0),
            ("x\u{1B}[0m", 0x1B),
            ("\u{FFFE}", 0xFFFE),
        ] {
            assert_eq!(
                escape(s),
                Err(GenerateError::NotXml {
                    value: s.to_owned(),
                    code
                })
            );
        }
    }

    #[test]
    fn comments_cannot_be_closed_early() {
        assert_eq!(comment("VM a"), "<!-- VM a -->");
        assert_eq!(comment("a--b"), "<!-- a- -b -->");
        assert_eq!(comment("a-->b"), "<!-- a- ->b -->");
        assert_eq!(comment("end-"), "<!-- end-  -->");
        assert_eq!(comment("x\u{1}"), "<!-- x? -->");
        assert!(!comment("---")
            .trim_start_matches("<!--")
            .trim_end_matches("-->")
            .contains("--"));
    }
}
