//! How the ban map's capacity is shared, so that files users make can never crowd out the bans
//! that matter.
//!
//! Any user can create files under a scan root (their home, `/tmp`) that a name rule
//! (`appimage`, `globs`) or a tree rule (`path_prefixes`) names: thousands of empty
//! `WeChatLinux_1.AppImage`s cost nothing to make. Every entry therefore has a standing:
//!
//! 1. **Named**: a file a `paths` identifier names. The administrator wrote each of these.
//! 2. **System**: any other file owned by root, such as package, Flatpak or snap files and files
//!    under system trees. Users cannot create these.
//! 3. **User**: a file owned by anyone else, found by walking or scanning a tree.
//!
//! Entries go in by standing (then content matches first, then by identity), until the map is
//! full. User-owned entries are held to a share of the map in all, and to a limit per owner
//! within it, so one user's flood neither fills the map nor crowds out another user's bans. A
//! user-owned file left out is still found when it runs: by the kernel's content check where a
//! content rule names it, by the content watcher otherwise, which kills the process.

use std::collections::{BTreeSet, HashMap};

use blocker_common::BANNED_FILES_CAPACITY;

use crate::resolve::Via;

/// The share of the map user-owned entries may take in all: a quarter.
const USER_SHARE_DIVISOR: usize = 4;

/// Each owner's default limit: 16,384 entries, a sixty-fourth of the map.
pub const DEFAULT_PER_USER: usize = BANNED_FILES_CAPACITY as usize / 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Entries the map holds.
    pub capacity: usize,
    /// Entries all user-owned files may take together.
    pub users: usize,
    /// Entries the files of one owner may take.
    pub per_user: usize,
}

impl Budget {
    /// The kernel map's capacity with `per_user` entries for each owner (at most the users'
    /// share).
    pub fn with_per_user(per_user: usize) -> Self {
        Self::of(BANNED_FILES_CAPACITY as usize, per_user)
    }

    fn of(capacity: usize, per_user: usize) -> Self {
        let users = capacity / USER_SHARE_DIVISOR;
        Self {
            capacity,
            users,
            per_user: per_user.min(users),
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::with_per_user(DEFAULT_PER_USER)
    }
}

/// What an entry counts against; the order is the order of importance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    Named,
    System,
    User(u32),
}

impl Standing {
    pub fn of(via: &Via, owner: u32) -> Self {
        match (via, owner) {
            (Via::Path(_), _) => Standing::Named,
            (_, 0) => Standing::System,
            (_, uid) => Standing::User(uid),
        }
    }
}

/// Files the budget left out of the map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overflow {
    /// Left out because their owner reached the per-user limit or all users the users' share.
    pub over_user_limits: usize,
    /// Left out because the map was full.
    pub over_capacity: usize,
    /// The owners whose files were left out.
    pub owners: BTreeSet<u32>,
}

impl Overflow {
    pub fn total(&self) -> usize {
        self.over_user_limits + self.over_capacity
    }
}

/// The entries admitted so far against a budget, and those left out.
#[derive(Clone, Debug, Default)]
pub struct Spending {
    budget: Budget,
    total: usize,
    users: usize,
    per_user: HashMap<u32, usize>,
    pub overflow: Overflow,
}

impl Spending {
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Takes one entry of `standing` if the budget has room for it; counts it as overflow
    /// otherwise.
    pub fn admit(&mut self, standing: Standing) -> bool {
        if self.total >= self.budget.capacity {
            self.overflow.over_capacity += 1;
            if let Standing::User(uid) = standing {
                self.overflow.owners.insert(uid);
            }
            return false;
        }
        if let Standing::User(uid) = standing {
            let owned = self.per_user.entry(uid).or_default();
            if *owned >= self.budget.per_user || self.users >= self.budget.users {
                self.overflow.over_user_limits += 1;
                self.overflow.owners.insert(uid);
                return false;
            }
            *owned += 1;
            self.users += 1;
        }
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn named_and_system_entries_fill_the_map_and_users_get_a_share() {
        let mut spending = Spending::new(Budget::of(8, 3));
        assert_eq!(spending.budget().users, 2);
        // The users' share (2) caps one user below their own limit (3).
        assert!(spending.admit(Standing::User(1000)));
        assert!(spending.admit(Standing::User(1000)));
        assert!(!spending.admit(Standing::User(1000)));
        assert!(!spending.admit(Standing::User(1001)));
        for _ in 0..6 {
            assert!(spending.admit(Standing::System));
        }
        assert!(!spending.admit(Standing::Named));
        assert_eq!(
            spending.overflow,
            Overflow {
                over_user_limits: 2,
                over_capacity: 1,
                owners: BTreeSet::from([1000, 1001]),
            }
        );
        assert_eq!(spending.overflow.total(), 3);
    }

    #[test]
    fn one_user_cannot_crowd_out_another() {
        let mut spending = Spending::new(Budget::of(100, 5));
        let flood = (0..1000)
            .filter(|_| spending.admit(Standing::User(1000)))
            .count();
        assert_eq!(flood, 5);
        assert!(spending.admit(Standing::User(1001)));
        assert_eq!(spending.overflow.over_user_limits, 995);
    }

    #[test]
    fn standing_comes_from_the_identifier_and_the_owner() {
        let path = Via::Path(PathBuf::from("/home/alice/x"));
        let glob = Via::Glob("/home/*/x".to_owned());
        assert_eq!(Standing::of(&path, 1000), Standing::Named);
        assert_eq!(Standing::of(&glob, 0), Standing::System);
        assert_eq!(Standing::of(&glob, 1000), Standing::User(1000));
        assert!(Standing::Named < Standing::System && Standing::System < Standing::User(0));
    }
}
