//! Just enough of the BTF format (Documentation/bpf/btf.rst) to find where struct members sit in
//! the running kernel, so one eBPF object reads the right bytes on every kernel.

use std::{collections::HashMap, path::Path};

use anyhow::{bail, ensure, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const POINTER_SIZE: u32 = 8;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// Size in bytes for INT/STRUCT/UNION/ENUM, referenced type id for PTR/TYPEDEF/modifiers,
    /// the prototype's id for FUNC, the element type's id for ARRAY.
    size_or_type: u32,
    /// Elements of an ARRAY; 0 for other kinds.
    elements: u32,
    /// Members of a STRUCT or UNION, parameters of a FUNC_PROTO (offset 0).
    members: Vec<Member>,
}

/// A member's place in its struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    /// Index 0 is the implicit `void`.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
    functions_by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("parsing BTF of {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(bytes.len() >= HEADER_LEN, "shorter than a BTF header");
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        ensure!(
            magic == BTF_MAGIC,
            "bad magic {magic:#x} (only little-endian BTF is supported)"
        );
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let header_len = word(4) as usize;
        let (type_off, type_len, str_off, str_len) = (
            word(8) as usize,
            word(12) as usize,
            word(16) as usize,
            word(20) as usize,
        );
        let types_at = header_len + type_off;
        let strings_at = header_len + str_off;
        ensure!(
            types_at + type_len <= bytes.len() && strings_at + str_len <= bytes.len(),
            "sections run past the end of the data"
        );
        let strings = &bytes[strings_at..strings_at + str_len];
        let mut reader = Reader {
            data: &bytes[types_at..types_at + type_len],
            at: 0,
        };

        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            size_or_type: 0,
            elements: 0,
            members: Vec::new(),
        }];
        let mut structs_by_name = HashMap::new();
        let mut functions_by_name = HashMap::new();
        while !reader.done() {
            let name = string_at(strings, reader.u32()?)?;
            let info = reader.u32()?;
            let mut size_or_type = reader.u32()?;
            let mut elements = 0;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfield_offsets = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => reader.skip(4)?,
                KIND_ARRAY => {
                    size_or_type = reader.u32()?;
                    let _index_type = reader.u32()?;
                    elements = reader.u32()?;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let name = string_at(strings, reader.u32()?)?;
                        let type_id = reader.u32()?;
                        let offset = reader.u32()?;
                        let bit_offset = if bitfield_offsets {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        };
                        members.push(Member {
                            name,
                            type_id,
                            bit_offset,
                        });
                    }
                }
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        let name = string_at(strings, reader.u32()?)?;
                        let type_id = reader.u32()?;
                        members.push(Member {
                            name,
                            type_id,
                            bit_offset: 0,
                        });
                    }
                }
                KIND_ENUM => reader.skip(8 * vlen)?,
                KIND_DATASEC | KIND_ENUM64 => reader.skip(12 * vlen)?,
                _ => {}
            }
            if kind == KIND_STRUCT && !name.is_empty() {
                // Forward declarations come without members; keep the full definition.
                structs_by_name
                    .entry(name.clone())
                    .or_insert(types.len() as u32);
            }
            if kind == KIND_FUNC {
                functions_by_name.insert(name.clone(), types.len() as u32);
            }
            types.push(Type {
                kind,
                name,
                size_or_type,
                elements,
                members,
            });
        }
        Ok(Self {
            types,
            structs_by_name,
            functions_by_name,
        })
    }

    /// Offset and size in bytes of `member` in `struct struct_name`, looking through anonymous
    /// structs and unions the way C does.
    pub fn field(&self, struct_name: &str, member: &str) -> Result<Field> {
        let Some(&id) = self.structs_by_name.get(struct_name) else {
            bail!("the kernel's BTF has no struct {struct_name}");
        };
        let Some((bit_offset, type_id)) = self.find_member(id, member) else {
            bail!("struct {struct_name} has no member {member} in the kernel's BTF");
        };
        ensure!(
            bit_offset % 8 == 0,
            "{struct_name}.{member} is a bitfield (bit offset {bit_offset})"
        );
        Ok(Field {
            offset: bit_offset / 8,
            size: self.size_of(type_id)?,
        })
    }

    /// The parameter names of function `name`, in order; `None` if the BTF has no such
    /// function.
    pub fn function_parameters(&self, name: &str) -> Option<Vec<&str>> {
        let function = self
            .types
            .get(*self.functions_by_name.get(name)? as usize)?;
        let prototype = self.types.get(function.size_or_type as usize)?;
        (prototype.kind == KIND_FUNC_PROTO).then(|| {
            prototype
                .members
                .iter()
                .map(|parameter| parameter.name.as_str())
                .collect()
        })
    }

    fn find_member(&self, struct_id: u32, member: &str) -> Option<(u32, u32)> {
        let container = self.types.get(struct_id as usize)?;
        for candidate in &container.members {
            if candidate.name == member {
                return Some((candidate.bit_offset, candidate.type_id));
            }
            if candidate.name.is_empty() {
                let inner = self.strip_modifiers(candidate.type_id);
                if let Some((offset, type_id)) = self.find_member(inner, member) {
                    return Some((candidate.bit_offset + offset, type_id));
                }
            }
        }
        None
    }

    fn strip_modifiers(&self, mut id: u32) -> u32 {
        while let Some(t) = self.types.get(id as usize) {
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    fn size_of(&self, id: u32) -> Result<u32> {
        let resolved = self.strip_modifiers(id);
        let t = self
            .types
            .get(resolved as usize)
            .with_context(|| format!("type id {resolved} out of range"))?;
        match t.kind {
            KIND_PTR => Ok(POINTER_SIZE),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Ok(t.size_or_type),
            KIND_ARRAY => Ok(self.size_of(t.size_or_type)? * t.elements),
            kind => bail!("size of BTF kind {kind} ({}) is not needed here", t.name),
        }
    }
}

fn string_at(strings: &[u8], offset: u32) -> Result<String> {
    let tail = strings
        .get(offset as usize..)
        .context("string offset past the string section")?;
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn u32(&mut self) -> Result<u32> {
        let bytes = self
            .data
            .get(self.at..self.at + 4)
            .context("type section ends inside a type")?;
        self.at += 4;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap()))
    }

    fn skip(&mut self, len: usize) -> Result<()> {
        ensure!(
            self.at + len <= self.data.len(),
            "type section ends inside a type"
        );
        self.at += len;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests: types are added in order, ids start at 1.
    #[derive(Default)]
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Self::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            offset
        }

        fn header(&mut self, name: &str, kind: u32, vlen: usize, size_or_type: u32) -> u32 {
            let name = self.string(name);
            for word in [name, (kind << 24) | vlen as u32, size_or_type] {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub(crate) fn pointer(&mut self, to: u32) -> u32 {
            self.header("", KIND_PTR, 0, to)
        }

        pub(crate) fn structure(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            self.aggregate(KIND_STRUCT, name, size, members)
        }

        pub(crate) fn union(&mut self, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.aggregate(KIND_UNION, "", size, members)
        }

        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.header(name, kind, members.len(), size);
            for &(member, type_id, byte_offset) in members {
                let member = self.string(member);
                for word in [member, type_id, byte_offset * 8] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
            id
        }

        /// A function and its prototype (returning `int`-sized `returns`), with these
        /// parameters.
        pub(crate) fn function(&mut self, name: &str, returns: u32, parameters: &[(&str, u32)]) {
            let prototype = self.header("", KIND_FUNC_PROTO, parameters.len(), returns);
            for &(parameter, type_id) in parameters {
                let parameter = self.string(parameter);
                for word in [parameter, type_id] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
            self.header(name, KIND_FUNC, 0, prototype);
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            blob.extend_from_slice(&[1, 0]);
            let type_len = self.types.len() as u32;
            for word in [
                HEADER_LEN as u32,
                0,
                type_len,
                type_len,
                self.strings.len() as u32,
            ] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let mut b = BtfBuilder::new();
        let u32_ = b.int("unsigned int", 4);
        let u64_ = b.int("long unsigned int", 8);
        let anon = b.union(8, &[("i_ino", u64_, 0), ("other", u32_, 0)]);
        let ptr = b.pointer(u32_);
        b.structure(
            "inode",
            64,
            &[("i_mode", u32_, 0), ("", anon, 16), ("i_sb", ptr, 40)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.field("inode", "i_mode").unwrap(),
            Field { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.field("inode", "i_ino").unwrap(),
            Field {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.field("inode", "i_sb").unwrap(),
            Field {
                offset: 40,
                size: 8
            }
        );
        assert!(btf.field("inode", "i_missing").is_err());
        assert!(btf.field("dentry", "d_inode").is_err());
    }

    #[test]
    fn reads_function_parameters() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let ptr = b.pointer(int);
        b.function(
            "bpf_lsm_inode_setattr",
            int,
            &[("idmap", ptr), ("dentry", ptr), ("attr", ptr)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            btf.function_parameters("bpf_lsm_inode_setattr"),
            Some(vec!["idmap", "dentry", "attr"])
        );
        assert_eq!(btf.function_parameters("bpf_lsm_file_open"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0; 10]).is_err());
        assert!(Btf::parse(&[0; 64]).is_err());
        let mut blob = BtfBuilder::new().build();
        blob[12] = 0xff; // type_len past the end
        assert!(Btf::parse(&blob).is_err());
    }
}
