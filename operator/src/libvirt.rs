//! Instances created through libvirt's Xen driver (libxl) instead of xl:
//! the domain XML rendered from xl-configs/template.xml (values
//! XML-escaped), and the `virsh` commands that create, shut down and
//! destroy them. The guest is the same either way; what differs is who
//! holds the domain: a libvirt-created one must be stopped through libvirt
//! (`virsh shutdown`/`destroy`), or libvirtd's view of it goes stale.
//! Which way an instance was made is its record's file name in the run
//! directory: NAME.cfg (xl) or NAME.xml (libvirt).

use crate::env::Env;
use crate::render::{self, Values};
use crate::{bad, fail, Failure};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Which toolstack creates (and so stops) an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Xl,
    Libvirt,
}

impl Via {
    pub fn parse(s: &str) -> Option<Via> {
        match s {
            "xl" => Some(Via::Xl),
            "libvirt" => Some(Via::Libvirt),
            _ => None,
        }
    }

    /// The record's (the rendered config's) file suffix in the run directory.
    pub fn suffix(self) -> &'static str {
        match self {
            Via::Xl => "cfg",
            Via::Libvirt => "xml",
        }
    }

    /// The creating command's output: NAME.xl.log or NAME.virsh.log.
    pub fn log_suffix(self) -> &'static str {
        match self {
            Via::Xl => "xl.log",
            Via::Libvirt => "virsh.log",
        }
    }
}

/// The default for `spawn --via`: MINIPROXY_VIA, else xl.
pub fn via_from_env() -> Result<Via, Failure> {
    match std::env::var("MINIPROXY_VIA") {
        Ok(v) if !v.is_empty() => match Via::parse(&v) {
            Some(via) => Ok(via),
            None => bad(format!("MINIPROXY_VIA must be xl or libvirt, not '{v}'")),
        },
        _ => Ok(Via::Xl),
    }
}

/// The libvirt connection: MINIPROXY_LIBVIRT_URI, default xen:///system.
pub fn uri() -> String {
    std::env::var("MINIPROXY_LIBVIRT_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "xen:///system".into())
}

/// The domain XML template: MINIPROXY_TEMPLATE_XML, REPO/xl-configs/template.xml
/// or /etc/miniproxy/template.xml, the first that exists.
pub fn default_template(env: &Env) -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var("MINIPROXY_TEMPLATE_XML")
        .ok()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(r) = &env.repo_dir {
        c.push(r.join("xl-configs/template.xml"));
    }
    c.push("/etc/miniproxy/template.xml".into());
    c.into_iter().find(|p| p.is_file())
}

/// `s` as XML character data or a quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The domain XML: two processing instructions (where it came from; the
/// record line, read back by `render::read_meta`), then the template with
/// every placeholder outside `<!-- -->` comments replaced by its escaped
/// value. The header is not a comment because a name may hold `--`, which
/// XML forbids in one. A placeholder this tool does not know is an error.
pub fn render(
    template: &str,
    template_path: &str,
    when: &str,
    v: &Values,
) -> Result<String, String> {
    let mut out = format!(
        "<?miniproxy-rendered at {when} from {}?>\n<?miniproxy {}?>\n",
        template_path.replace("?>", "? >"),
        render::meta_pairs(v)
    );
    let subs = render::substitutions(v).map(|(p, value)| (p, escape(&value)));
    let mut in_comment = false;
    for line in template.lines() {
        let mut rest = line;
        loop {
            if in_comment {
                let Some(end) = rest.find("-->") else {
                    out.push_str(rest);
                    break;
                };
                out.push_str(&rest[..end + 3]);
                rest = &rest[end + 3..];
                in_comment = false;
                continue;
            }
            let open = rest.find("<!--");
            let text = &rest[..open.unwrap_or(rest.len())];
            render::substitute(text, &subs, template_path, &mut out)?;
            let Some(open) = open else {
                break;
            };
            out.push_str("<!--");
            rest = &rest[open + 4..];
            in_comment = true;
        }
        out.push('\n');
    }
    Ok(out)
}

/// `virsh -c URI COMMAND ARGS...` as an argument vector.
pub fn virsh_args(uri: &str, command: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), uri.to_string(), command.to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// `virsh COMMAND ARGS` against uri(), its output thrown away: success?
pub fn virsh_ok(command: &str, args: &[&str]) -> bool {
    Command::new("virsh")
        .args(virsh_args(&uri(), command, args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `virsh create XML`, its output appended to `log`; the exit code. Killed
/// (`None`, and a line in `log` saying so) if it has not returned within
/// `limit`.
pub fn virsh_create(xml: &str, log: &Path, limit: Duration) -> Option<i32> {
    let mut cmd = Command::new("virsh");
    cmd.args(virsh_args(&uri(), "create", &[xml]));
    crate::xen::run_logged_within(cmd, "virsh create", log, limit)
}

/// What in virsh's output says the XML itself is wrong (no retry then).
pub const BAD_CONFIG_WORDS: [&str; 4] = [
    "XML error",
    "unsupported configuration",
    "invalid argument",
    "XML document failed",
];

/// A virsh on PATH (spawn and stop of a libvirt instance need it).
pub fn need_virsh() -> Result<(), Failure> {
    let path = std::env::var("PATH").unwrap_or_default();
    if path
        .split(':')
        .any(|d| Path::new(d).join("virsh").is_file())
    {
        Ok(())
    } else {
        fail("virsh not found (install libvirt-clients; libvirtd with its Xen driver must run)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(extra: &str) -> crate::args::Spawn {
        let more = ["--extra", extra, "--via", "libvirt"];
        crate::args::reverse_spawn("c1--x", "10.0.0.2/24", &more)
    }

    fn values<'a>(s: &'a crate::args::Spawn, kernel: &'a str) -> Values<'a> {
        Values {
            spawn: s,
            kernel,
            bridge: "xenbr0",
            mac: "00:16:3e:00:00:01",
            vif_script: "/etc/xen/scripts/vif-fast",
        }
    }

    #[test]
    fn escaping_covers_the_five_xml_specials() {
        assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
        assert_eq!(escape("plain ip=10.0.0.2/24"), "plain ip=10.0.0.2/24");
        // Already-escaped text is escaped again: a value is data, not markup.
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn the_shipped_template_renders_every_value_escaped() {
        let t = include_str!("../../xl-configs/template.xml");
        let s = spawn("idle_exit=10m");
        let out = render(t, "/p/template.xml", "W", &values(&s, "/k/a&b<c>")).unwrap();
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some("<?miniproxy-rendered at W from /p/template.xml?>")
        );
        assert_eq!(
            lines.next(),
            Some("<?miniproxy name=c1--x mode=reverse listen=80 upstream=10.0.0.1:8080 ip=10.0.0.2/24 gw=- memory=6 profile=default mac=00:16:3e:00:00:01?>")
        );
        let meta = render::read_meta(&out).unwrap();
        assert_eq!(render::meta_get(&meta, "name"), Some("c1--x"));
        assert_eq!(render::meta_get(&meta, "mac"), Some("00:16:3e:00:00:01"));
        for want in [
            "  <name>c1--x</name>",
            "  <memory unit='MiB'>6</memory>",
            "    <type arch='x86_64' machine='xenpv'>linux</type>",
            "    <kernel>/k/a&amp;b&lt;c&gt;</kernel>",
            "    <cmdline>ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=64 max_conns=64 idle_exit=10m</cmdline>",
            "  <on_crash>preserve</on_crash>",
            "      <source bridge='xenbr0'/>",
            "      <mac address='00:16:3e:00:00:01'/>",
            "      <script path='/etc/xen/scripts/vif-fast'/>",
        ] {
            assert!(out.lines().any(|l| l == want), "{want}\n{out}");
        }
        // The comment's placeholders stay; none is left outside comments.
        assert!(out.contains("    @NAME@       domain name"), "{out}");
        let mut body = out.as_str();
        let mut outside = String::new();
        while let Some(i) = body.find("<!--") {
            outside.push_str(&body[..i]);
            body = &body[body[i..].find("-->").unwrap() + i + 3..];
        }
        outside.push_str(body);
        assert!(!outside.contains('@'), "{outside}");
    }

    #[test]
    fn the_cmdline_and_attributes_are_escaped_and_comments_kept_across_lines() {
        let s = spawn("idle_exit=10m");
        let mut v = values(&s, "/k");
        v.bridge = "br'0\"&";
        let t = "<!-- @NAME@ <cmdline>\n  still @CPUS@ in a comment --> <name>@NAME@</name> <!-- @X@ -->\n\
                 <source bridge='@BRIDGE@'/><cmdline>@EXTRA@ a@b</cmdline>\n";
        let out = render(t, "t", "W", &v).unwrap();
        let body: Vec<&str> = out.lines().skip(2).collect();
        assert_eq!(
            body,
            [
                "<!-- @NAME@ <cmdline>",
                "  still @CPUS@ in a comment --> <name>c1--x</name> <!-- @X@ -->",
                "<source bridge='br&apos;0&quot;&amp;'/><cmdline>ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=64 max_conns=64 idle_exit=10m a@b</cmdline>",
            ]
        );
        // A cmdline value with XML specials (the guest's parser would refuse
        // these keys, so the value is set directly here) comes out escaped,
        // and is not rescanned for placeholders.
        let mut s2 = s.clone();
        s2.cfgline = "ip=10.0.0.2/24 x=<a>&@NAME@".into();
        let out = render("<cmdline>@EXTRA@</cmdline>\n", "t", "W", &values(&s2, "/k")).unwrap();
        assert!(
            out.ends_with("<cmdline>ip=10.0.0.2/24 x=&lt;a&gt;&amp;@NAME@</cmdline>\n"),
            "{out}"
        );
    }

    #[test]
    fn an_unknown_placeholder_outside_a_comment_is_an_error() {
        let s = spawn("idle_exit=10m");
        let e = render(
            "<!-- @FINE@ --><vcpu>@CPUS@</vcpu>\n",
            "/t.xml",
            "W",
            &values(&s, "/k"),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "template /t.xml has a placeholder this tool does not know: @CPUS@"
        );
        // A template path with "?>" cannot end the header early.
        let out = render("<a/>\n", "/odd?>dir/t.xml", "W", &values(&s, "/k")).unwrap();
        assert!(out.starts_with("<?miniproxy-rendered at W from /odd? >dir/t.xml?>\n"));
    }

    #[test]
    fn virsh_arguments() {
        assert_eq!(
            virsh_args("xen:///system", "create", &["/run/miniproxy/a.xml"]),
            ["-c", "xen:///system", "create", "/run/miniproxy/a.xml"]
        );
        assert_eq!(
            virsh_args("xen:///system", "shutdown", &["a"]),
            ["-c", "xen:///system", "shutdown", "a"]
        );
        assert_eq!(Via::parse("libvirt"), Some(Via::Libvirt));
        assert_eq!(Via::parse("xl"), Some(Via::Xl));
        assert_eq!(Via::parse("virsh"), None);
        assert_eq!((Via::Xl.suffix(), Via::Libvirt.suffix()), ("cfg", "xml"));
    }
}
