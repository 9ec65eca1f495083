//! ANSI terminal output to HTML for the console's log view: SGR colour and weight sequences
//! become `<span class="…">`, every other escape sequence (cursor moves, titles) and carriage
//! return is dropped, and all text is HTML-escaped, so a job's output can only ever be text on
//! the page. Pure: text and a running style in, HTML out.

use std::fmt::Write;

/// The SGR state carried from one chunk of output to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Style {
    /// Foreground colour 0-15.
    fg: Option<u8>,
    /// Background colour 0-15.
    bg: Option<u8>,
    bold: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn classes(&self) -> String {
        let mut classes = Vec::new();
        if let Some(fg) = self.fg {
            classes.push(format!("f{fg}"));
        }
        if let Some(bg) = self.bg {
            classes.push(format!("g{bg}"));
        }
        for (on, class) in [(self.bold, "b"), (self.italic, "i"), (self.underline, "u")] {
            if on {
                classes.push(class.to_string());
            }
        }
        classes.join(" ")
    }

    /// Applies one SGR sequence's parameters (`1;31`, `38;5;9`, empty = reset).
    fn apply(&mut self, parameters: &str) {
        let codes: Vec<u16> = if parameters.is_empty() {
            vec![0]
        } else {
            parameters
                .split([';', ':'])
                .map(|code| code.parse().unwrap_or(0))
                .collect()
        };
        let mut codes = codes.into_iter();
        while let Some(code) = codes.next() {
            match code {
                0 => *self = Style::default(),
                1 => self.bold = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => self.bold = false,
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some((code - 30) as u8),
                39 => self.fg = None,
                40..=47 => self.bg = Some((code - 40) as u8),
                49 => self.bg = None,
                90..=97 => self.fg = Some((code - 90 + 8) as u8),
                100..=107 => self.bg = Some((code - 100 + 8) as u8),
                38 | 48 => {
                    let colour = extended_colour(&mut codes);
                    if code == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
        }
    }
}

/// The rest of a `38;…`/`48;…` sequence: a 16-colour index stays, 256-colour and true colour
/// beyond the 16 fall back to the default colour.
fn extended_colour(codes: &mut impl Iterator<Item = u16>) -> Option<u8> {
    match codes.next() {
        Some(5) => codes.next().filter(|n| *n < 16).map(|n| n as u8),
        Some(2) => {
            codes.take(3).for_each(drop);
            None
        }
        _ => None,
    }
}

/// Appends `text` with `<`, `>`, `&`, `"` and `'` escaped.
pub(super) fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// Renders terminal output as escaped HTML, starting in `style` and leaving it where the text
/// ends (the next chunk continues in it). Spans open only around text, so no empty ones.
pub(super) fn to_html(text: &str, style: &mut Style) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut open = false;
    let mut chars = text.chars().peekable();
    let mut plain = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                flush(&mut out, &mut plain, style, &mut open);
                if let Some(parameters) = escape_sequence(&mut chars) {
                    let before = *style;
                    style.apply(&parameters);
                    if *style != before && open {
                        out.push_str("</span>");
                        open = false;
                    }
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => plain.push(c),
        }
    }
    flush(&mut out, &mut plain, style, &mut open);
    if open {
        out.push_str("</span>");
    }
    out
}

/// Writes the pending text, escaped, inside a span of `style` (opened if it is not yet).
fn flush(out: &mut String, plain: &mut String, style: &Style, open: &mut bool) {
    if plain.is_empty() {
        return;
    }
    if !*open {
        let classes = style.classes();
        if !classes.is_empty() {
            let _ = write!(out, "<span class=\"{classes}\">");
            *open = true;
        }
    }
    escape_into(out, plain);
    plain.clear();
}

/// Consumes one escape sequence after ESC; returns its parameters if it is SGR (`ESC [ … m`).
fn escape_sequence(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    match chars.next()? {
        '[' => {
            let mut parameters = String::new();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    return (c == 'm').then_some(parameters);
                }
                parameters.push(c);
            }
            None
        }
        // OSC (window titles, hyperlinks): up to BEL or ESC \.
        ']' => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                    break;
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(text: &str) -> String {
        to_html(text, &mut Style::default())
    }

    #[test]
    fn ansi_renders_colours_and_escapes_text() {
        let cases = [
            ("plain", "plain"),
            (
                "<script>alert('x')</script>",
                "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;",
            ),
            ("a & \"b\"", "a &amp; &quot;b&quot;"),
            (
                "\u{1b}[31mred\u{1b}[0m ok",
                "<span class=\"f1\">red</span> ok",
            ),
            ("\u{1b}[1;92mgo\u{1b}[m", "<span class=\"f10 b\">go</span>"),
            (
                "\u{1b}[38;5;4mblue\u{1b}[39m",
                "<span class=\"f4\">blue</span>",
            ),
            ("\u{1b}[38;2;1;2;3mrgb", "rgb"),
            ("\u{1b}[2K\rprogress", "progress"),
            ("\u{1b}]0;title\u{7}after", "after"),
            (
                "\u{1b}[31m<b>\u{1b}[0m",
                "<span class=\"f1\">&lt;b&gt;</span>",
            ),
            ("bell\u{7}\u{8}", "bell"),
        ];
        for (input, expected) in cases {
            assert_eq!(html(input), expected, "{input:?}");
        }
    }

    #[test]
    fn ansi_style_carries_over_chunks() {
        let mut style = Style::default();
        assert_eq!(
            to_html("\u{1b}[32mon", &mut style),
            "<span class=\"f2\">on</span>"
        );
        assert_eq!(
            to_html("still", &mut style),
            "<span class=\"f2\">still</span>"
        );
        assert_eq!(to_html("\u{1b}[0moff", &mut style), "off");
    }
}
