//! The instance's xl config, rendered from the template, and the record
//! line (`# miniproxy: k=v ...`) this tool reads back from it.

use crate::args::Spawn;

/// Everything a template's placeholders are replaced with.
pub struct Values<'a> {
    pub spawn: &'a Spawn,
    pub kernel: &'a str,
    pub bridge: &'a str,
    pub mac: &'a str,
    pub vif_script: &'a str,
}

/// The record line: the instance's settings, read back by `list`, by the
/// address/MAC clash check and by scripts.
pub fn meta_line(v: &Values) -> String {
    let s = v.spawn;
    format!(
        "# miniproxy: name={} mode={} listen={} upstream={} ip={} gw={} memory={} profile={} mac={}",
        s.name,
        s.mode.name(),
        s.listen,
        s.upstream.as_deref().unwrap_or("-"),
        s.ip,
        s.gw.as_deref().unwrap_or("-"),
        s.memory,
        s.profile,
        v.mac
    )
}

/// The template with every placeholder replaced, after two header lines
/// (where it came from, the record line). A placeholder left outside a
/// comment is a template this tool does not know: an error naming it.
pub fn render(
    template: &str,
    template_path: &str,
    when: &str,
    v: &Values,
) -> Result<String, String> {
    let mut out = format!(
        "# Rendered by miniproxy spawn at {when} from {template_path}\n{}\n",
        meta_line(v)
    );
    let memory = v.spawn.memory.to_string();
    let subs: [(&str, &str); 7] = [
        ("@NAME@", &v.spawn.name),
        ("@KERNEL@", v.kernel),
        ("@MEMORY@", &memory),
        ("@BRIDGE@", v.bridge),
        ("@MAC@", v.mac),
        ("@VIF_SCRIPT@", v.vif_script),
        ("@EXTRA@", &v.spawn.cfgline),
    ];
    for line in template.lines() {
        let is_comment = line.trim_start().starts_with('#');
        // One pass over the template's own text: a value is never rescanned.
        let mut rendered = String::new();
        let mut rest = line;
        while let Some(at) = rest.find('@') {
            rendered.push_str(&rest[..at]);
            rest = &rest[at..];
            match subs.iter().find(|(p, _)| rest.starts_with(p)) {
                Some((p, value)) if !is_comment => {
                    rendered.push_str(value);
                    rest = &rest[p.len()..];
                }
                _ => {
                    if !is_comment {
                        if let Some(unknown) = placeholder_at(rest) {
                            return Err(format!(
                                "template {template_path} has a placeholder this tool does not know: {unknown}"
                            ));
                        }
                    }
                    rendered.push('@');
                    rest = &rest[1..];
                }
            }
        }
        rendered.push_str(rest);
        out.push_str(&rendered);
        out.push('\n');
    }
    Ok(out)
}

/// `@NAME_LIKE@` at the start of `s`, if there is one.
fn placeholder_at(s: &str) -> Option<&str> {
    let body = &s[1..];
    let end = body.find('@')?;
    let name = &body[..end];
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .then(|| &s[..end + 2])
}

/// The `key=value` pairs of a config's record line (its second line).
pub fn read_meta(cfg_text: &str) -> Option<Vec<(String, String)>> {
    let line = cfg_text.lines().nth(1)?.strip_prefix("# miniproxy: ")?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub fn meta_get<'a>(meta: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
