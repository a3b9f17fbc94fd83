//! Target `config`: the command line (`proxy::Config::parse`). Any line
//! parses or gives an error that displays; a parsed config displays as a
//! line that parses back to an equal config and displays the same again.

use proxy::Config;

pub fn run(data: &[u8]) {
    let Ok(line) = core::str::from_utf8(data) else {
        return;
    };
    match Config::parse(line) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(cfg) => {
            let shown = cfg.to_string();
            let again = Config::parse(&shown).unwrap_or_else(|e| {
                panic!("{line:?} parsed, but its display {shown:?} does not: {e}")
            });
            assert_eq!(
                again, cfg,
                "{line:?} -> {shown:?} parses to a different config"
            );
            assert_eq!(
                again.to_string(),
                shown,
                "display is not stable for {line:?}"
            );
            assert_eq!(cfg.summary(), shown);
        }
    }
}
