//! Writes cpio archives in the "newc" format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst in the kernel tree).

use std::io::{self, Write};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Streams entries to `out`. Paths are archive paths; a leading `/` is dropped, as cpio expects.
/// Parents must be written before their children: the kernel creates no missing directories.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
}

/// The header fields that differ between entries.
struct Header<'a> {
    path: &'a str,
    mode: u32,
    links: u32,
    size: usize,
    device: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_inode: 1 }
    }

    pub fn directory(&mut self, path: &str, permissions: u32) -> io::Result<()> {
        self.entry(
            Header {
                path,
                mode: S_IFDIR | permissions,
                links: 2,
                size: 0,
                device: (0, 0),
            },
            &[],
        )
    }

    pub fn file(&mut self, path: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        let header = Header {
            path,
            mode: S_IFREG | permissions,
            links: 1,
            size: data.len(),
            device: (0, 0),
        };
        self.entry(header, data)
    }

    pub fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let header = Header {
            path,
            mode: S_IFCHR | permissions,
            links: 1,
            size: 0,
            device: (major, minor),
        };
        self.entry(header, &[])
    }

    /// Ends the archive and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(
            Header {
                path: TRAILER,
                mode: 0,
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
            0, // uid: root
            0, // gid: root
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
        cpio.directory("/bin", 0o755).unwrap();
        cpio.file("/bin/init", 0o755, b"hello").unwrap();
        cpio.char_device("/dev/console", 0o600, 5, 1).unwrap();
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
}
