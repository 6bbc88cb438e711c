//! Extended attributes: one xattr block per inode (names with their namespace prefix).

use super::*;

/// `setxattr` flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

impl Fs {
    fn xattrs(&mut self, d: &Dinode) -> Result<Vec<Xattr>> {
        if d.xattr_block == 0 {
            return Ok(Vec::new());
        }
        Ok(XattrBlock::decode(&self.read_meta(d.xattr_block)?[..], d.xattr_block)?.attrs)
    }

    fn check_xattr_name(name: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::NameTooLong);
        }
        // POSIX ACLs are not supported: let the kernel fall back to the mode bits.
        if name.starts_with(b"system.") {
            return Err(FsError::NotSupported);
        }
        Ok(())
    }

    pub fn getxattr(&mut self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        Self::check_xattr_name(name)?;
        let d = self.dinode(ino)?;
        self.xattrs(&d)?.into_iter().find(|a| a.name == name).map(|a| a.value).ok_or(FsError::NoData)
    }

    /// Names, each followed by a NUL (the `listxattr` format).
    pub fn listxattr(&mut self, ino: u64) -> Result<Vec<u8>> {
        let d = self.dinode(ino)?;
        let mut out = Vec::new();
        for a in self.xattrs(&d)? {
            out.extend_from_slice(&a.name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        Self::check_xattr_name(name)?;
        if value.len() > u16::MAX as usize {
            return Err(FsError::TooBig);
        }
        let mut d = self.dinode(ino)?;
        let mut attrs = self.xattrs(&d)?;
        let pos = attrs.iter().position(|a| a.name == name);
        match (pos, flags & (XATTR_CREATE | XATTR_REPLACE)) {
            (Some(_), XATTR_CREATE) => return Err(FsError::Exists),
            (None, XATTR_REPLACE) => return Err(FsError::NoData),
            _ => {}
        }
        let new = Xattr { name: name.to_vec(), value: value.to_vec() };
        match pos {
            Some(i) => attrs[i] = new,
            None => attrs.push(new),
        }
        if XattrBlock::space(&attrs) > XATTR_SPACE {
            return Err(FsError::NoSpace);
        }
        self.store_xattrs(ino, &mut d, attrs)
    }

    pub fn removexattr(&mut self, ino: u64, name: &[u8]) -> Result<()> {
        Self::check_xattr_name(name)?;
        let mut d = self.dinode(ino)?;
        let mut attrs = self.xattrs(&d)?;
        let before = attrs.len();
        attrs.retain(|a| a.name != name);
        if attrs.len() == before {
            return Err(FsError::NoData);
        }
        self.store_xattrs(ino, &mut d, attrs)
    }

    fn store_xattrs(&mut self, ino: u64, d: &mut Dinode, attrs: Vec<Xattr>) -> Result<()> {
        if attrs.is_empty() {
            if d.xattr_block != 0 {
                self.free_block(d.xattr_block)?;
                d.xattr_block = 0;
                d.blocks -= 1;
            }
        } else {
            if d.xattr_block == 0 {
                d.xattr_block = self.alloc(BlockState::Meta, Some(ino + 1))?;
                d.blocks += 1;
            }
            let b = d.xattr_block;
            self.write_meta(b, XattrBlock { owner: ino, attrs }.encode(b));
        }
        d.ctime = crate::now();
        self.put_dinode(ino, d);
        Ok(())
    }
}
