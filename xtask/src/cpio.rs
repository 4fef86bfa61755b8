//! Writes cpio archives in the "newc" format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst in the kernel tree).

use std::io::{self, Write};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

/// Streams entries to `out`. Paths are archive paths; a leading `/` is dropped, as cpio expects.
/// Parents must be written before their children: the kernel creates no missing directories.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
}

/// Who owns an entry and its permission bits (setuid, setgid and sticky included).
#[derive(Clone, Copy)]
pub struct Attributes {
    pub permissions: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attributes {
    pub fn root(permissions: u32) -> Self {
        Self {
            permissions,
            uid: 0,
            gid: 0,
        }
    }
}

/// The header fields that differ between entries.
struct Header<'a> {
    path: &'a str,
    mode: u32,
    owner: (u32, u32),
    links: u32,
    size: usize,
    device: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_inode: 1 }
    }

    pub fn directory(&mut self, path: &str, attributes: Attributes) -> io::Result<()> {
        self.entry(
            Header {
                path,
                mode: S_IFDIR | attributes.permissions,
                owner: (attributes.uid, attributes.gid),
                links: 2,
                size: 0,
                device: (0, 0),
            },
            &[],
        )
    }

    pub fn file(&mut self, path: &str, attributes: Attributes, data: &[u8]) -> io::Result<()> {
        let header = Header {
            path,
            mode: S_IFREG | attributes.permissions,
            owner: (attributes.uid, attributes.gid),
            links: 1,
            size: data.len(),
            device: (0, 0),
        };
        self.entry(header, data)
    }

    pub fn char_device(
        &mut self,
        path: &str,
        attributes: Attributes,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let header = Header {
            path,
            mode: S_IFCHR | attributes.permissions,
            owner: (attributes.uid, attributes.gid),
            links: 1,
            size: 0,
            device: (major, minor),
        };
        self.entry(header, &[])
    }

    /// A symbolic link to `target`, which the archive holds as the link's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let header = Header {
            path,
            mode: S_IFLNK | 0o777,
            owner: (0, 0),
            links: 1,
            size: target.len(),
            device: (0, 0),
        };
        self.entry(header, target.as_bytes())
    }

    /// Ends the archive and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(
            Header {
                path: TRAILER,
                mode: 0,
                owner: (0, 0),
                links: 1,
                size: 0,
                device: (0, 0),
            },
            &[],
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, header: Header, data: &[u8]) -> io::Result<()> {
        let name = header.path.trim_start_matches('/');
        let name_size = name.len() + 1;
        let fields = [
            self.next_inode,
            header.mode,
            header.owner.0,
            header.owner.1,
            header.links,
            0, // mtime: fixed, so that equal inputs give equal archives
            to_u32(header.size, "file size")?,
            0, // major and minor of the device holding the file: none
            0,
            header.device.0,
            header.device.1,
            to_u32(name_size, "path length")?,
            0, // checksum: unused by "newc"
        ];
        self.next_inode += 1;

        let mut head = String::with_capacity(HEADER_LEN);
        head.push_str(MAGIC);
        for field in fields {
            head.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(head.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(HEADER_LEN + name_size)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// Every header and every file's data start at a multiple of four bytes.
    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

fn to_u32(value: usize, what: &str) -> io::Result<u32> {
    u32::try_from(value).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {value} does not fit a cpio header"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 13 header fields of the entry starting at `offset`, and the entry's name.
    fn header_at(archive: &[u8], offset: usize) -> (Vec<u32>, String) {
        let head = std::str::from_utf8(&archive[offset..offset + HEADER_LEN]).unwrap();
        assert_eq!(&head[..6], MAGIC);
        let fields: Vec<u32> = (0..13)
            .map(|i| u32::from_str_radix(&head[6 + 8 * i..14 + 8 * i], 16).unwrap())
            .collect();
        let name_size = fields[11] as usize;
        let name = &archive[offset + HEADER_LEN..offset + HEADER_LEN + name_size];
        assert_eq!(name.last(), Some(&0), "names end with NUL");
        (
            fields,
            String::from_utf8(name[..name_size - 1].to_vec()).unwrap(),
        )
    }

    #[test]
    fn writes_newc_headers_padding_and_trailer() {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.directory("/bin", Attributes::root(0o755)).unwrap();
        cpio.file("/bin/init", Attributes::root(0o755), b"hello")
            .unwrap();
        cpio.char_device("/dev/console", Attributes::root(0o600), 5, 1)
            .unwrap();
        let archive = cpio.finish().unwrap();

        // "bin\0" after the 110-byte header ends at 114, padded to 116.
        let (directory, name) = header_at(&archive, 0);
        assert_eq!(name, "bin");
        assert_eq!(directory, [1, 0o040755, 0, 0, 2, 0, 0, 0, 0, 0, 0, 4, 0]);

        // "bin/init\0" ends at 116 + 119 = 235, padded to 236; 5 bytes of data padded to 8.
        let (file, name) = header_at(&archive, 116);
        assert_eq!(name, "bin/init");
        assert_eq!(file, [2, 0o100755, 0, 0, 1, 0, 5, 0, 0, 0, 0, 9, 0]);
        assert_eq!(&archive[236..244], b"hello\0\0\0");

        // "dev/console\0" ends at 244 + 122 = 366, padded to 368.
        let (device, name) = header_at(&archive, 244);
        assert_eq!(name, "dev/console");
        assert_eq!(device, [3, 0o020600, 0, 0, 1, 0, 0, 0, 0, 5, 1, 12, 0]);

        // "TRAILER!!!\0" ends at 368 + 121 = 489, padded to 492.
        let (trailer, name) = header_at(&archive, 368);
        assert_eq!(name, TRAILER);
        assert_eq!(trailer[1], 0);
        assert_eq!(archive.len(), 492);
    }

    #[test]
    fn writes_owners_and_symbolic_links() {
        let mut cpio = CpioWriter::new(Vec::new());
        let journal = Attributes {
            permissions: 0o2755,
            uid: 0,
            gid: 101,
        };
        cpio.directory("/var/log/journal", journal).unwrap();
        cpio.symlink("/bin", "usr/bin").unwrap();
        let archive = cpio.finish().unwrap();

        // "var/log/journal\0" ends at 110 + 16 = 126, padded to 128.
        let (directory, name) = header_at(&archive, 0);
        assert_eq!(name, "var/log/journal");
        assert_eq!(directory[1..4], [0o042755, 0, 101]);

        // "bin\0" ends at 128 + 114 = 242, padded to 244; the target is the data.
        let (link, name) = header_at(&archive, 128);
        assert_eq!(name, "bin");
        assert_eq!(link[1], 0o120777);
        assert_eq!(link[6], 7);
        assert_eq!(&archive[244..252], b"usr/bin\0");
    }
}
