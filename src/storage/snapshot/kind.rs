//! Which of the two files a snapshot is, by its magic.

pub const MAGIC: [u8; 8] = *b"MEMDBSNP";
pub const DELTA_MAGIC: [u8; 8] = *b"MEMDBDLT";

/// Which of the two files a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole table.
    Base,
    /// The words changed since a base.
    Delta,
}

impl Kind {
    pub fn magic(self) -> [u8; 8] {
        match self {
            Kind::Base => MAGIC,
            Kind::Delta => DELTA_MAGIC,
        }
    }

    /// A delta, or a base.
    pub fn of(delta: bool) -> Kind {
        if delta { Kind::Delta } else { Kind::Base }
    }
}
