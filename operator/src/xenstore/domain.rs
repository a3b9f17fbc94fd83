//! What the toolstack keeps about domains in xenstore, read and changed
//! the way libxl does: a domain's name is /local/domain/ID/name (what
//! `xl list`, `xl domid` and `xl shutdown NAME` look up) and /vm/UUID/name.

use super::{entries, Req, Tx, Xs, XsError};

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

/// Rename domain ID from OLD to NEW within transaction `tx`, as
/// libxl__domain_rename does (tools/libs/light/libxl_domain.c): NEW must
/// be unused by any other domain, ID must still be named OLD, then both
/// name nodes are written, with the requests `with`, at the commit
/// ([`Xs::at_commit`]: the caller undoes all if the transaction fails).
/// libxl finds /vm/UUID from the domain's UUID; /local/domain/ID/vm, which
/// libxl writes at create, holds that path. (Stub device-model domains,
/// which libxl renames along, are HVM-only.) One round trip reads the
/// domain list and the names of the domains `known` (the caller's own
/// list from just before) and ID's vm; a domain not in `known` costs one
/// more.
pub fn rename(
    xs: &mut Xs,
    tx: Tx,
    (id, old, new): (u32, &str, &str),
    with: &[Req<'_>],
    known: &[u32],
) -> Result<(), String> {
    if new.is_empty() {
        return Err("the new name is empty".into());
    }
    let home = format!("/local/domain/{id}");
    let name_key = |n: u32| format!("/local/domain/{n}/name");
    let mut paths: Vec<String> = known.iter().map(|&n| name_key(n)).collect();
    paths.push(format!("{home}/name"));
    paths.push(format!("{home}/vm"));
    let mut reqs = vec![Req::Directory("/local/domain")];
    reqs.extend(paths.iter().map(|p| Req::Read(p)));
    let mut got = xs.batch(tx, &reqs)?;
    let vm = got.pop().flatten();
    let name = got.pop().flatten();
    let ids: Vec<u32> = entries(got[0].as_deref().unwrap_or(""))
        .iter()
        .filter_map(|d| d.parse().ok())
        .collect();
    let mut names: Vec<(u32, Option<String>)> = known.iter().copied().zip(got.drain(1..)).collect();
    let unknown: Vec<u32> = ids.iter().copied().filter(|n| !known.contains(n)).collect();
    if !unknown.is_empty() {
        let keys: Vec<String> = unknown.iter().map(|&n| name_key(n)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        names.extend(unknown.iter().copied().zip(xs.read_many(tx, &refs)?));
    }
    if let Some((other, _)) = names
        .iter()
        .find(|(n, v)| *n != id && ids.contains(n) && v.as_deref() == Some(new))
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
    let mut writes = with.to_vec();
    writes.push(Req::Write(&name_key, new));
    writes.push(Req::Write(&vm_key, new));
    xs.at_commit(&writes)?;
    Ok(())
}
