//! A fake dom0 for the tests that run the operator tool (or scripts that
//! call it): the fake `xl` and `xenstore-*` of tests/fakexen/ first on PATH,
//! their xenstore, the tool's run and console directories in a temp dir.

mod xenstored;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Rig {
    pub dir: PathBuf,
}

impl Rig {
    pub fn new(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("miniproxy-rig-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["xs/local/domain/0", "run", "console"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("xs/local/domain/0/name"), "Domain-0").unwrap();
        std::fs::write(dir.join("kernel"), "ELF").unwrap();
        std::fs::write(dir.join("log"), "").unwrap();
        // The tool talks to xenstored itself: the fake one serves xs/.
        let d = dir.clone();
        xenstored::start(dir.join("xenstored.sock"), dir.join("xs"), move |p| {
            fake_dom0(&d, p)
        });
        Rig { dir }
    }

    /// `program` in the fake dom0's environment.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = fake_dom0(&self.dir, program);
        c.env("XENSTORED_PATH", self.dir.join("xenstored.sock"));
        c
    }

    /// The operator tool with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(env!("CARGO_BIN_EXE_miniproxy-operator"))
            .args(args)
            .output()
            .unwrap()
    }

    /// A reverse instance NAME at IP (A.B.C.D/LEN); asserts it was spawned.
    pub fn spawn(&self, name: &str, ip: &str) {
        let o = self.run(&spawn_args(name, ip, &[]));
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    }

    /// A node of the rig's xenstore (None: absent).
    #[allow(dead_code)] // not every test file reads it
    pub fn xs(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join("xs").join(path.trim_start_matches('/'))).ok()
    }

    /// Every fake xl and xenstore call so far, one per line.
    #[allow(dead_code)] // not every test file reads it
    pub fn xl_calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap()
    }

    /// Domain ID's data/stats, as its guest would write it.
    pub fn set_stats(&self, id: u32, line: &str) {
        std::fs::write(
            self.dir.join(format!("xs/local/domain/{id}/data/stats")),
            line,
        )
        .unwrap();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` with the fake scripts first on PATH and their settings.
fn fake_dom0(dir: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakexen");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xl-configs/template.cfg");
    let mut c = Command::new(program);
    c.env(
        "PATH",
        format!("{}:{}", fake.display(), std::env::var("PATH").unwrap()),
    )
    .env("FAKE_XS", dir.join("xs"))
    .env("FAKE_LOG", dir.join("log"))
    .env("MINIPROXY_RUN_DIR", dir.join("run"))
    .env("MINIPROXY_CONSOLE_DIR", dir.join("console"))
    .env("MINIPROXY_KERNEL", dir.join("kernel"))
    .env("MINIPROXY_TEMPLATE", template)
    .env("MINIPROXY_VIF_SCRIPT", "vif-bridge")
    .env_remove("MINIPROXY_PARALLEL");
    c
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `spawn` of a reverse instance NAME at IP (to the fake upstream
/// 10.0.0.1:8080), with `more` arguments after.
pub fn spawn_args<'a>(name: &'a str, ip: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "spawn",
        "--name",
        name,
        "--mode",
        "reverse",
        "--listen",
        "80",
        "--upstream",
        "10.0.0.1:8080",
        "--ip",
        ip,
    ];
    a.extend_from_slice(more);
    a
}
