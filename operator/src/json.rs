//! Just enough JSON for one object per line: string escaping and a builder.

use std::fmt::Write;

/// One JSON object, built field by field, in insertion order.
#[derive(Default)]
pub struct Object {
    body: String,
}

impl Object {
    fn key(&mut self, key: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        push_str(&mut self.body, key);
        self.body.push(':');
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_str(&mut self.body, value);
        self
    }

    pub fn num(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.body, "{value}");
        self
    }

    /// A number, or `null` when there is none (e.g. no domain id yet).
    pub fn opt_num(mut self, key: &str, value: Option<u64>) -> Self {
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.body, "{v}");
            }
            None => self.body.push_str("null"),
        }
        self
    }

    pub fn object(mut self, key: &str, value: Object) -> Self {
        self.key(key);
        self.body.push_str(&value.finish());
        self
    }

    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.body.push_str("null");
        self
    }

    pub fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

/// `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_orders_fields() {
        let o = Object::default()
            .str("name", "a\"b\\c\n\u{1}")
            .num("domid", 7)
            .opt_num("x", None)
            .object("stats", Object::default().num("px_accepted", 3));
        assert_eq!(
            o.finish(),
            r#"{"name":"a\"b\\c\n\u0001","domid":7,"x":null,"stats":{"px_accepted":3}}"#
        );
    }
}
