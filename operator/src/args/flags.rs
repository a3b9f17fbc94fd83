//! The argument loop `metrics`, `pool` and `serve` share: a command names
//! its flags ([`Flag`]) and matches what [`parse`] hands it, in the order
//! given, so that its own checks of a value or a word come in line with
//! the loop's errors (the first bad argument is the one reported, and
//! nothing after `--help` is looked at).

use crate::{bad, Failure};

/// A flag a command takes.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    /// `None`: a switch. `Some(what)`: it takes a value, the next
    /// argument, whatever it is; `NAME needs WHAT` when there is none.
    value: Option<&'static str>,
    /// The value may also come as `NAME=VALUE`.
    inline: bool,
    /// An empty value counts as one; else as none (and `NAME=` is no
    /// form of the flag).
    empty: bool,
}

impl Flag {
    /// `NAME`, present or not; `NAME=...` is not it.
    pub const fn switch(name: &'static str) -> Flag {
        Flag {
            name,
            value: None,
            inline: false,
            empty: false,
        }
    }

    /// `NAME VALUE` or `NAME=VALUE`, the value possibly empty; `NAME needs
    /// WHAT` when nothing follows.
    pub const fn value(name: &'static str, what: &'static str) -> Flag {
        Flag {
            name,
            value: Some(what),
            inline: true,
            empty: true,
        }
    }

    /// Only as `NAME VALUE`.
    pub const fn separate(self) -> Flag {
        Flag {
            inline: false,
            ..self
        }
    }

    /// An empty value is none.
    pub const fn nonempty(self) -> Flag {
        Flag {
            empty: false,
            ..self
        }
    }
}

/// One argument as the command's flags read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// `-h` or `--help`: the command prints its usage ([`help`]) and stops.
    Help,
    /// A switch, by its name.
    Switch(&'static str),
    /// A flag's name and its value.
    Value(&'static str, &'a str),
    /// An argument that does not start with '-' (only where words are
    /// taken).
    Word(&'a str),
}

/// `argv` read by `flags`, one [`Arg`] at a time, or the error for the
/// first argument that is none of them: `unknown option '...'` in a
/// command that takes `words` (they do not start with '-'), `unknown
/// argument '...'` in one that takes none.
pub fn parse<'a>(
    argv: &'a [String],
    flags: &'a [Flag],
    words: bool,
) -> impl Iterator<Item = Result<Arg<'a>, Failure>> + 'a {
    let mut rest = argv.iter().map(String::as_str);
    std::iter::from_fn(move || {
        let a = rest.next()?;
        Some(one(a, &mut rest, flags, words))
    })
}

fn one<'a>(
    a: &'a str,
    rest: &mut impl Iterator<Item = &'a str>,
    flags: &[Flag],
    words: bool,
) -> Result<Arg<'a>, Failure> {
    if matches!(a, "-h" | "--help") {
        return Ok(Arg::Help);
    }
    for f in flags {
        let Some(what) = f.value else {
            if a == f.name {
                return Ok(Arg::Switch(f.name));
            }
            continue;
        };
        if a == f.name {
            return match rest.next().filter(|v| f.empty || !v.is_empty()) {
                Some(v) => Ok(Arg::Value(f.name, v)),
                None => bad(format!("{} needs {what}", f.name)),
            };
        }
        let inline = a.strip_prefix(f.name).and_then(|r| r.strip_prefix('='));
        if let Some(v) = inline.filter(|v| f.inline && (f.empty || !v.is_empty())) {
            return Ok(Arg::Value(f.name, v));
        }
    }
    if !words {
        bad(format!("unknown argument '{a}'"))
    } else if a.starts_with('-') {
        bad(format!("unknown option '{a}'"))
    } else {
        Ok(Arg::Word(a))
    }
}

/// What a command does with [`Arg::Help`]: print its usage, done.
pub fn help(usage: &str) -> Result<(), Failure> {
    print!("{usage}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag::switch("--json"),
        Flag::value("--dir", "a directory"),
        Flag::value("--path", "a value").nonempty(),
        Flag::value("--mb", "a value").separate(),
    ];

    /// Every argument read, up to and with the first error's message.
    fn read(argv: &[&str], words: bool) -> (Vec<Arg<'static>>, Option<String>) {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        // Leaked: the args borrow it (a test's few bytes).
        let argv: &'static [String] = Vec::leak(argv);
        let mut got = Vec::new();
        for a in parse(argv, FLAGS, words) {
            match a {
                Ok(a) => got.push(a),
                Err(Failure::Bad(msg)) => return (got, Some(msg)),
                Err(e) => panic!("{e:?}"),
            }
        }
        (got, None)
    }

    #[test]
    fn values_come_separate_or_inline_as_each_flag_allows() {
        use Arg::*;
        let (got, err) = read(
            &[
                "--dir",
                "d1",
                "--dir=d2",
                "--dir=",
                "--dir",
                "",
                "--path",
                "p1",
                "--path=p2",
                "--mb",
                "4",
                "--json",
            ],
            false,
        );
        let want = [
            Value("--dir", "d1"),
            Value("--dir", "d2"),
            Value("--dir", ""),
            Value("--dir", ""),
            Value("--path", "p1"),
            Value("--path", "p2"),
            Value("--mb", "4"),
            Switch("--json"),
        ];
        assert_eq!((got, err), (want.to_vec(), None));
        // A value is whatever follows, an option or --help too.
        let (got, _) = read(&["--dir", "--help", "--path", "--json"], false);
        assert_eq!(got, [Value("--dir", "--help"), Value("--path", "--json")]);
    }

    #[test]
    fn a_missing_value_or_a_form_the_flag_lacks_is_the_error() {
        let e = |argv: &[&str]| read(argv, false).1.unwrap();
        assert_eq!(e(&["--dir"]), "--dir needs a directory");
        assert_eq!(e(&["--path"]), "--path needs a value");
        assert_eq!(e(&["--path", ""]), "--path needs a value");
        assert_eq!(e(&["--path="]), "unknown argument '--path='");
        assert_eq!(e(&["--mb=4"]), "unknown argument '--mb=4'");
        assert_eq!(e(&["--json=1"]), "unknown argument '--json=1'");
        assert_eq!(e(&["--dirx"]), "unknown argument '--dirx'");
        assert_eq!(e(&["word"]), "unknown argument 'word'");
        assert_eq!(e(&["-"]), "unknown argument '-'");
    }

    #[test]
    fn a_command_with_words_gets_them_and_calls_an_unknown_flag_an_option() {
        let (got, err) = read(&["w1", "--json", "w2", "-x", "w3"], true);
        assert_eq!(
            got,
            [Arg::Word("w1"), Arg::Switch("--json"), Arg::Word("w2")]
        );
        assert_eq!(err.as_deref(), Some("unknown option '-x'"));
        assert_eq!(read(&["-"], true).1.as_deref(), Some("unknown option '-'"));
    }

    #[test]
    fn arguments_come_in_order_each_read_as_it_is_reached() {
        // --help is one of them: the command stops there (nothing after it
        // is looked at), an error before it is reported instead.
        let (got, err) = read(&["--json", "-h", "--bogus"], false);
        assert_eq!(
            (got, err.as_deref()),
            (
                vec![Arg::Switch("--json"), Arg::Help],
                Some("unknown argument '--bogus'")
            )
        );
        let (got, err) = read(&["--bogus", "--help"], false);
        assert_eq!(
            (got, err.as_deref()),
            (vec![], Some("unknown argument '--bogus'"))
        );
    }
}
