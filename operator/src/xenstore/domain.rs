//! What the toolstack keeps about domains in xenstore, read and changed
//! the way libxl does: a domain's name is /local/domain/ID/name (what
//! `xl list`, `xl domid` and `xl shutdown NAME` look up) and /vm/UUID/name.

use super::{Tx, Xs, XsError};

impl From<XsError> for String {
    fn from(e: XsError) -> String {
        e.to_string()
    }
}

/// The domain named NAME, if there is one (domains still without a name
/// are skipped).
pub fn domid_of(xs: &mut Xs, tx: Tx, name: &str) -> Result<Option<u32>, XsError> {
    for id in xs.directory(tx, "/local/domain")? {
        let Ok(n) = id.parse::<u32>() else {
            continue;
        };
        if xs.read(tx, &format!("/local/domain/{n}/name"))?.as_deref() == Some(name) {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Rename domain ID from OLD to NEW within transaction `tx`, as
/// libxl__domain_rename does (tools/libs/light/libxl_domain.c): NEW must
/// be unused by any other domain, ID must still be named OLD, then both
/// name nodes are written. libxl finds /vm/UUID from the domain's UUID;
/// /local/domain/ID/vm, which libxl writes at create, holds that path.
/// (Stub device-model domains, which libxl renames along, are HVM-only.)
pub fn rename(xs: &mut Xs, tx: Tx, id: u32, old: &str, new: &str) -> Result<(), String> {
    if new.is_empty() {
        return Err("the new name is empty".into());
    }
    if let Some(other) = domid_of(xs, tx, new)? {
        if other != id {
            return Err(format!("domain {other} is already named '{new}'"));
        }
    }
    let home = format!("/local/domain/{id}");
    match xs.read(tx, &format!("{home}/name"))? {
        Some(n) if n == old => {}
        Some(n) => return Err(format!("domain {id} is named '{n}', not '{old}'")),
        None => return Err(format!("domain {id} has no name (is it gone?)")),
    }
    let vm = match xs.read(tx, &format!("{home}/vm"))? {
        Some(vm) if vm.starts_with("/vm/") && vm.len() > 4 && !vm.contains("..") => vm,
        other => {
            return Err(format!(
                "domain {id}'s {home}/vm is {other:?}, not /vm/UUID"
            ))
        }
    };
    xs.write(tx, &format!("{home}/name"), new)?;
    xs.write(tx, &format!("{vm}/name"), new)?;
    Ok(())
}
