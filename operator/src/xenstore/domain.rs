//! What the toolstack keeps about domains in xenstore, read and changed
//! the way libxl does: a domain's name is /local/domain/ID/name (what
//! `xl list`, `xl domid` and `xl shutdown NAME` look up) and /vm/UUID/name.

use super::{Req, Tx, Xs, XsError};

impl From<XsError> for String {
    fn from(e: XsError) -> String {
        e.to_string()
    }
}

/// The domain named NAME, if there is one (domains still without a name
/// are skipped): the list, then every name in one round trip.
pub fn domid_of(xs: &mut Xs, tx: Tx, name: &str) -> Result<Option<u32>, XsError> {
    let ids: Vec<u32> = xs
        .directory(tx, "/local/domain")?
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    let paths: Vec<String> = ids
        .iter()
        .map(|n| format!("/local/domain/{n}/name"))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let names = xs.read_many(tx, &refs)?;
    Ok(ids
        .into_iter()
        .zip(names)
        .find(|(_, n)| n.as_deref() == Some(name))
        .map(|(id, _)| id))
}

/// Rename domain ID from OLD to NEW within transaction `tx`, as
/// libxl__domain_rename does (tools/libs/light/libxl_domain.c): NEW must
/// be unused by any other domain, ID must still be named OLD, then both
/// name nodes are written, and the requests `with` sent along with those
/// writes. libxl finds /vm/UUID from the domain's UUID;
/// /local/domain/ID/vm, which libxl writes at create, holds that path.
/// (Stub device-model domains, which libxl renames along, are HVM-only.)
/// Three round trips: the domain list; every name and ID's vm; the writes.
pub fn rename(
    xs: &mut Xs,
    tx: Tx,
    id: u32,
    old: &str,
    new: &str,
    with: &[Req<'_>],
) -> Result<(), String> {
    if new.is_empty() {
        return Err("the new name is empty".into());
    }
    let ids: Vec<u32> = xs
        .directory(tx, "/local/domain")?
        .iter()
        .filter_map(|d| d.parse().ok())
        .collect();
    let home = format!("/local/domain/{id}");
    let mut paths: Vec<String> = ids
        .iter()
        .map(|n| format!("/local/domain/{n}/name"))
        .collect();
    paths.push(format!("{home}/name"));
    paths.push(format!("{home}/vm"));
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut values = xs.read_many(tx, &refs)?;
    let vm = values.pop().flatten();
    let name = values.pop().flatten();
    if let Some((other, _)) = ids
        .iter()
        .zip(&values)
        .find(|(n, v)| **n != id && v.as_deref() == Some(new))
    {
        return Err(format!("domain {other} is already named '{new}'"));
    }
    match name {
        Some(n) if n == old => {}
        Some(n) => return Err(format!("domain {id} is named '{n}', not '{old}'")),
        None => return Err(format!("domain {id} has no name (is it gone?)")),
    }
    let vm = match vm {
        Some(vm) if vm.starts_with("/vm/") && vm.len() > 4 && !vm.contains("..") => vm,
        other => {
            return Err(format!(
                "domain {id}'s {home}/vm is {other:?}, not /vm/UUID"
            ))
        }
    };
    let (name_key, vm_key) = (format!("{home}/name"), format!("{vm}/name"));
    let mut reqs = with.to_vec();
    reqs.push(Req::Write(&name_key, new));
    reqs.push(Req::Write(&vm_key, new));
    xs.batch(tx, &reqs)?;
    Ok(())
}
