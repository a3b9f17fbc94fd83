//! What the toolstack keeps about domains in xenstore, read and changed
//! the way libxl does: a domain's name is /local/domain/ID/name (what
//! `xl list`, `xl domid` and `xl shutdown NAME` look up) and /vm/UUID/name.

use super::{Tx, Xs, XsError};

impl From<XsError> for String {
    fn from(e: XsError) -> String {
        e.to_string()
    }
}

/// The domains under /local/domain, and the path of each one's name node
/// (in the same order), for reading every name in one round trip.
pub fn domains_and_name_paths(xs: &mut Xs, tx: Tx) -> Result<(Vec<u32>, Vec<String>), XsError> {
    let ids: Vec<u32> = xs
        .directory(tx, "/local/domain")?
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    let paths = ids
        .iter()
        .map(|n| format!("/local/domain/{n}/name"))
        .collect();
    Ok((ids, paths))
}

/// The domain named NAME, if there is one (domains still without a name
/// are skipped): the list, then every name in one round trip.
pub fn domid_of(xs: &mut Xs, tx: Tx, name: &str) -> Result<Option<u32>, XsError> {
    let (ids, paths) = domains_and_name_paths(xs, tx)?;
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let names = xs.read_many(tx, &refs)?;
    Ok(ids
        .into_iter()
        .zip(names)
        .find(|(_, n)| n.as_deref() == Some(name))
        .map(|(id, _)| id))
}

/// Domain ID's /local/domain/ID/vm as read (libxl writes it at create):
/// the /vm/UUID path a rename writes the name under, or why it is not one.
pub fn vm_path(id: u32, vm: Option<String>) -> Result<String, String> {
    match vm {
        Some(vm) if vm.starts_with("/vm/") && vm.len() > 4 && !vm.contains("..") => Ok(vm),
        other => Err(format!(
            "domain {id}'s /local/domain/{id}/vm is {other:?}, not /vm/UUID"
        )),
    }
}
