//! The paths of the files a resolution names, each directory stored once and each file as its
//! name beside its directory's number: a rule naming a tree of a million files holds a
//! million names, not a million full paths (see docs/PERFORMANCE.md, policy load).

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// A path in a [`PathTable`]: where its record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathRef(u32);

/// Bytes before a name in a record: its directory's number and its length.
const RECORD_HEADER: usize = 4 + 2;

#[derive(Debug, Default)]
pub struct PathTable {
    directories: Vec<PathBuf>,
    numbers: HashMap<PathBuf, u32>,
    /// The directory of the latest insert, which the next one is most likely in (a walk lists
    /// a directory's files together).
    latest: Option<u32>,
    /// One record per path: its directory's number, its name's length (both native-endian),
    /// then the name.
    records: Vec<u8>,
}

impl PathTable {
    /// Adds `path`; `None` once the table holds 4 GiB of names, a bound no real tree reaches.
    pub fn insert(&mut self, path: &Path) -> Option<PathRef> {
        match (path.parent(), path.file_name()) {
            (Some(directory), Some(name)) => self.insert_in(directory, name),
            _ => self.insert_in(path, OsStr::new("")),
        }
    }

    /// Adds the file `name` of `directory`.
    pub fn insert_in(&mut self, directory: &Path, name: &OsStr) -> Option<PathRef> {
        let name = name.as_bytes();
        let start = u32::try_from(self.records.len()).ok()?;
        let end = self.records.len() + RECORD_HEADER + name.len();
        let length = u16::try_from(name.len()).ok()?;
        if u32::try_from(end).is_err() {
            return None;
        }
        let number = self.number_of(directory)?;
        self.records.extend_from_slice(&number.to_ne_bytes());
        self.records.extend_from_slice(&length.to_ne_bytes());
        self.records.extend_from_slice(name);
        Some(PathRef(start))
    }

    fn number_of(&mut self, directory: &Path) -> Option<u32> {
        if let Some(latest) = self.latest {
            if self.directories[latest as usize] == directory {
                return Some(latest);
            }
        }
        let number = match self.numbers.get(directory) {
            Some(&number) => number,
            None => {
                let number = u32::try_from(self.directories.len()).ok()?;
                self.directories.push(directory.to_owned());
                self.numbers.insert(directory.to_owned(), number);
                number
            }
        };
        self.latest = Some(number);
        Some(number)
    }

    /// The path `path` stands for; `path` must come from this table (or one it absorbed, as
    /// [`PathTable::absorb`] rebased it).
    pub fn path(&self, path: PathRef) -> PathBuf {
        let (directory, name) = self.parts(path);
        if name.is_empty() {
            return directory.to_owned();
        }
        directory.join(name)
    }

    fn parts(&self, path: PathRef) -> (&Path, &OsStr) {
        let start = path.0 as usize;
        let header = &self.records[start..start + RECORD_HEADER];
        let number = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes"));
        let length = u16::from_ne_bytes(header[4..].try_into().expect("2 bytes"));
        let name_start = start + RECORD_HEADER;
        let name = &self.records[name_start..name_start + usize::from(length)];
        (&self.directories[number as usize], OsStr::from_bytes(name))
    }

    /// Moves the paths of `other` into this table; returns how to find each of them here
    /// (`None` if this table is full).
    pub fn absorb(&mut self, other: PathTable) -> Option<impl Fn(PathRef) -> PathRef> {
        let base = u32::try_from(self.records.len()).ok()?;
        u32::try_from(self.records.len() + other.records.len()).ok()?;
        let renumbered: Vec<u32> = other
            .directories
            .iter()
            .map(|directory| self.number_of(directory))
            .collect::<Option<_>>()?;
        self.records.reserve_exact(other.records.len());
        let mut start = 0;
        while start < other.records.len() {
            let header = &other.records[start..start + RECORD_HEADER];
            let number = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes"));
            let length = u16::from_ne_bytes(header[4..].try_into().expect("2 bytes"));
            let end = start + RECORD_HEADER + usize::from(length);
            self.records
                .extend_from_slice(&renumbered[number as usize].to_ne_bytes());
            self.records
                .extend_from_slice(&other.records[start + 4..end]);
            start = end;
        }
        Some(move |path: PathRef| PathRef(path.0 + base))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use proptest::prelude::*;

    use super::*;

    fn component() -> impl Strategy<Value = Vec<u8>> {
        // Any bytes but `/` and NUL, as a file name may be.
        proptest::collection::vec(1u8..=255, 1..12)
            .prop_map(|bytes| {
                bytes
                    .into_iter()
                    .filter(|&b| b != b'/')
                    .collect::<Vec<u8>>()
            })
            .prop_filter("not empty", |bytes| {
                !bytes.is_empty() && bytes != b"." && bytes != b".."
            })
    }

    fn absolute_path() -> impl Strategy<Value = PathBuf> {
        proptest::collection::vec(component(), 1..5).prop_map(|components| {
            let mut path = PathBuf::from("/");
            for component in components {
                path.push(std::ffi::OsString::from_vec(component));
            }
            path
        })
    }

    proptest! {
        #[test]
        fn gives_back_every_path(
            first in proptest::collection::vec(absolute_path(), 0..20),
            second in proptest::collection::vec(absolute_path(), 0..20),
        ) {
            let mut table = PathTable::default();
            let refs: Vec<PathRef> = first.iter().map(|path| table.insert(path).unwrap()).collect();
            let mut other = PathTable::default();
            let other_refs: Vec<PathRef> =
                second.iter().map(|path| other.insert(path).unwrap()).collect();
            let rebase = table.absorb(other).unwrap();
            for (path, found) in first.iter().zip(refs) {
                prop_assert_eq!(&table.path(found), path);
            }
            for (path, found) in second.iter().zip(other_refs) {
                prop_assert_eq!(&table.path(rebase(found)), path);
            }
        }
    }

    #[test]
    fn stores_a_directory_once() {
        let mut table = PathTable::default();
        for index in 0..1000 {
            table
                .insert(Path::new(&format!("/opt/a/long/directory/name/f{index}")))
                .unwrap();
        }
        assert_eq!(table.directories.len(), 1);
        assert!(
            table.records.len() < 1000 * 12,
            "{} bytes",
            table.records.len()
        );
    }

    #[test]
    fn keeps_a_path_without_a_name() {
        let mut table = PathTable::default();
        let root = table.insert(Path::new("/")).unwrap();
        assert_eq!(table.path(root), Path::new("/"));
    }
}
