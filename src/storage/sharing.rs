//! Who may read a data directory's published state: the owner only (the default), or
//! also the members of one group the operator names (`--reader-group`), so that local
//! replicas and embedded readers may run as other users.
//!
//! Shared with a group, the directory is `2750` (owned by the group, which new files
//! inherit), the published snapshot files and `snapshot.checked` are `0640`, and the
//! notification socket `0660`: the group may map the state and follow the leader, and
//! nothing else (the write-ahead log, the raft log and the lock stay `0600`). Owner-only,
//! they are `0700`, `0600` and `0600`. A leader applies its setting at every start, so
//! starting without the flag takes the sharing back.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::snapshot;

/// The id of group `name` (a name, or a number).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this host")),
        Err(e) => Err(format!("looking up group {name:?}: {e}")),
    }
}

/// Applies the sharing to `dir` and the files published in it now: shared with group
/// `gid`, or owner-only with `None`. Sets the mode of the files this process publishes
/// from now on.
pub fn apply(dir: &Path, gid: Option<u32>) -> io::Result<()> {
    crate::fs::share_with_group(gid.is_some());
    let with = |e: io::Error, what: &str, p: &Path| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(|e| {
            with(
                e,
                &format!("giving group {gid} (this user must be a member of it)"),
                dir,
            )
        })?;
    }
    let dir_mode = if gid.is_some() { 0o2750 } else { 0o700 };
    fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))
        .map_err(|e| with(e, "setting the mode of", dir))?;
    let mut names = vec![
        snapshot::FILE_NAME.to_owned(),
        snapshot::DELTA_NAME.to_owned(),
        snapshot::checked::CHECKED_NAME.to_owned(),
    ];
    names.extend(
        snapshot::recents(dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, n)| n),
    );
    for name in names {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&path, None, Some(gid))
                .map_err(|e| with(e, "giving the group", &path))?;
        }
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(crate::fs::published_mode()),
        )
        .map_err(|e| with(e, "setting the mode of", &path))?;
    }
    Ok(())
}
