//! How the log is written and kept.

use std::str::FromStr;

/// How the log is written and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// A segment is closed once it holds at least this many bytes. Default 16 MiB.
    pub segment_bytes: u64,
    /// Segments a snapshot covers are kept, newest first, up to this many bytes, for
    /// replicas to catch up from. Default 256 MiB.
    pub retain_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            fsync: FsyncPolicy::default(),
            segment_bytes: 16 << 20,
            retain_bytes: 256 << 20,
        }
    }
}

/// When a write is acknowledged relative to the log reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Acknowledge a write only once its record is fsynced (group commit).
    Always,
    /// fsync once a second; a crash or power loss may lose about the last second.
    #[default]
    EverySec,
    /// Never fsync; the OS writes the log when it wants (a process crash loses
    /// nothing written, a power loss may lose more).
    No,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            o => Err(format!(
                "unknown fsync policy {o:?}: always, everysec or no"
            )),
        }
    }
}

impl FsyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}
