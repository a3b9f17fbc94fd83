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
    format!("# miniproxy: {}", meta_pairs(v))
}

/// The record line's `key=value` pairs.
pub fn meta_pairs(v: &Values) -> String {
    let s = v.spawn;
    format!(
        "name={} mode={} listen={} upstream={} ip={} gw={} memory={} profile={} mac={}",
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
    let subs = substitutions(v);
    for line in template.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            substitute(line, &subs, template_path, &mut out)?;
        }
        out.push('\n');
    }
    Ok(out)
}

/// `text` (outside comments) with its placeholders replaced, onto `out`, in
/// one pass over the template's own text (a value is never rescanned); a
/// placeholder this tool does not know is an error naming it. Both the xl
/// and the libvirt templates go through here.
pub fn substitute(
    text: &str,
    subs: &[(&str, String)],
    template_path: &str,
    out: &mut String,
) -> Result<(), String> {
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some((p, value)) = subs.iter().find(|(p, _)| rest.starts_with(p)) {
            out.push_str(value);
            rest = &rest[p.len()..];
            continue;
        }
        if let Some(unknown) = placeholder_at(rest) {
            return Err(format!(
                "template {template_path} has a placeholder this tool does not know: {unknown}"
            ));
        }
        out.push('@');
        rest = &rest[1..];
    }
    out.push_str(rest);
    Ok(())
}

/// Every placeholder a template may hold, with its value.
pub fn substitutions(v: &Values) -> [(&'static str, String); 7] {
    [
        ("@NAME@", v.spawn.name.clone()),
        ("@KERNEL@", v.kernel.into()),
        ("@MEMORY@", v.spawn.memory.to_string()),
        ("@BRIDGE@", v.bridge.into()),
        ("@MAC@", v.mac.into()),
        ("@VIF_SCRIPT@", v.vif_script.into()),
        ("@EXTRA@", v.spawn.cfgline.clone()),
    ]
}

/// `@NAME_LIKE@` at the start of `s`, if there is one.
pub fn placeholder_at(s: &str) -> Option<&str> {
    let body = &s[1..];
    let end = body.find('@')?;
    let name = &body[..end];
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .then(|| &s[..end + 2])
}

/// The `key=value` pairs of a config's record line (its second line):
/// `# miniproxy: ...` in an xl config, `<?miniproxy ...?>` in a libvirt
/// domain XML (crate::libvirt).
pub fn read_meta(cfg_text: &str) -> Option<Vec<(String, String)>> {
    let second = cfg_text.lines().nth(1)?;
    let line = second.strip_prefix("# miniproxy: ").or_else(|| {
        second
            .strip_prefix("<?miniproxy ")
            .and_then(|l| l.strip_suffix("?>"))
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_spawn;

    fn spawn() -> Spawn {
        let a: Vec<String> = [
            "--name",
            "c1",
            "--mode",
            "transparent",
            "--listen",
            "80",
            "--ip",
            "10.0.0.2/24",
            "--gw",
            "10.0.0.1",
            "--extra",
            "idle_exit=10m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        parse_spawn(&a).unwrap().unwrap()
    }

    fn values(s: &Spawn) -> Values<'_> {
        Values {
            spawn: s,
            kernel: "/k/mp",
            bridge: "br1",
            mac: "00:16:3e:00:00:01",
            vif_script: "vif-x",
        }
    }

    #[test]
    fn every_placeholder_is_replaced_and_comments_are_kept() {
        let s = spawn();
        let t = "# @NAME@ stays in a comment\nname = \"@NAME@\"\nkernel = \"@KERNEL@\"\nmemory = @MEMORY@\n\
                 vif = [ 'bridge=@BRIDGE@,mac=@MAC@,script=@VIF_SCRIPT@' ]\nextra = \"@EXTRA@\"\nx = \"a@b\"\n";
        let out = render(t, "/t.cfg", "2026-01-01T00:00:00Z", &values(&s)).unwrap();
        assert_eq!(
            out,
            "# Rendered by miniproxy spawn at 2026-01-01T00:00:00Z from /t.cfg\n\
             # miniproxy: name=c1 mode=transparent listen=80 upstream=- ip=10.0.0.2/24 gw=10.0.0.1 memory=6 profile=default mac=00:16:3e:00:00:01\n\
             # @NAME@ stays in a comment\nname = \"c1\"\nkernel = \"/k/mp\"\nmemory = 6\n\
             vif = [ 'bridge=br1,mac=00:16:3e:00:00:01,script=vif-x' ]\n\
             extra = \"ip=10.0.0.2/24 gw=10.0.0.1 rule=transparent:80 rx_bufs=64 max_conns=64 idle_exit=10m\"\nx = \"a@b\"\n"
        );
        let meta = read_meta(&out).unwrap();
        assert_eq!(meta_get(&meta, "ip"), Some("10.0.0.2/24"));
        assert_eq!(meta_get(&meta, "mode"), Some("transparent"));
        assert_eq!(meta_get(&meta, "nosuch"), None);
    }

    #[test]
    fn a_value_is_not_rescanned_and_an_unknown_placeholder_is_an_error() {
        let s = spawn();
        let mut v = values(&s);
        v.kernel = "/k/@MEMORY@";
        let out = render("kernel = \"@KERNEL@\"\n", "/t", "w", &v).unwrap();
        assert!(out.ends_with("kernel = \"/k/@MEMORY@\"\n"), "{out}");
        let e = render(
            "name = \"@NAME@\"\ncpus = @CPUS@\n",
            "/t.cfg",
            "w",
            &values(&s),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "template /t.cfg has a placeholder this tool does not know: @CPUS@"
        );
    }

    #[test]
    fn the_shipped_template_renders_completely() {
        let t = include_str!("../../xl-configs/template.cfg");
        let s = spawn();
        let out = render(t, "template.cfg", "w", &values(&s)).unwrap();
        for line in out.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(!line.contains('@'), "{line}");
        }
        assert!(
            out.contains("extra   = \"ip=10.0.0.2/24 gw=10.0.0.1 rule=transparent:80"),
            "{out}"
        );
    }
}
