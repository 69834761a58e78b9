//! The pagination guard of a run. A list API hands out the cursor of the next page, and a
//! hostile or broken one can hand them out forever: a cycle (A→B→C→A), or ever-new
//! cursors over an endless listing. A run therefore ends with an error at a cursor it has
//! already followed, or past `sync.max_pages` pages; the watermark stays, as for a failed
//! page, so such a provider costs one bounded run, never a task that pages forever.
//!
//! Cursors are remembered by their SHA-256: a provider chooses their length, the run's
//! memory should not depend on it.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// Why a run stopped following the provider's pages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaginationError {
    #[error("the API returned a cursor this run already followed (a pagination cycle)")]
    Cycle,
    #[error("the listing goes on past {0} pages (sync.max_pages)")]
    TooManyPages(u64),
}

/// The cursors a run followed, and how many pages it may read.
pub(crate) struct Pagination {
    seen: HashSet<[u8; 32]>,
    max_pages: u64,
}

impl Pagination {
    /// A run that starts at `start` (a resumed run's stored cursor, else `None`).
    pub(crate) fn new(start: Option<&str>, max_pages: u64) -> Self {
        let mut pagination = Self {
            seen: HashSet::new(),
            max_pages,
        };
        if let Some(start) = start {
            pagination.seen.insert(digest(start));
        }
        pagination
    }

    /// Whether the run may follow `next` after reading `pages` pages.
    pub(crate) fn follow(&mut self, pages: u64, next: &str) -> Result<(), PaginationError> {
        if !self.seen.insert(digest(next)) {
            return Err(PaginationError::Cycle);
        }
        if pages >= self.max_pages {
            return Err(PaginationError::TooManyPages(self.max_pages));
        }
        Ok(())
    }
}

fn digest(cursor: &str) -> [u8; 32] {
    Sha256::digest(cursor.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_of_any_length_is_caught() {
        let mut pages = Pagination::new(None, 100);
        assert_eq!(pages.follow(1, "A"), Ok(()));
        assert_eq!(pages.follow(2, "B"), Ok(()));
        assert_eq!(pages.follow(3, "C"), Ok(()));
        assert_eq!(pages.follow(4, "A"), Err(PaginationError::Cycle));

        let mut same = Pagination::new(None, 100);
        assert_eq!(same.follow(1, "A"), Ok(()));
        assert_eq!(same.follow(2, "A"), Err(PaginationError::Cycle));
    }

    #[test]
    fn a_resumed_run_remembers_its_start() {
        let mut pages = Pagination::new(Some("S"), 100);
        assert_eq!(pages.follow(1, "T"), Ok(()));
        assert_eq!(pages.follow(2, "S"), Err(PaginationError::Cycle));
    }

    #[test]
    fn at_most_max_pages_are_read() {
        let mut pages = Pagination::new(None, 2);
        assert_eq!(pages.follow(1, "A"), Ok(()));
        assert_eq!(pages.follow(2, "B"), Err(PaginationError::TooManyPages(2)));
        assert_eq!(
            PaginationError::TooManyPages(2).to_string(),
            "the listing goes on past 2 pages (sync.max_pages)"
        );
    }
}
