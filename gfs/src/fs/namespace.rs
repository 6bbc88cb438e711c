//! Namespace operations: creating, linking, unlinking, renaming and looking up names (the
//! directory format itself is in `dir`).

use super::*;

impl Fs {
    /// Creates a file, device node, FIFO or socket (`mode` includes the type bits).
    pub fn mknod(&mut self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32, rdev: u32) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let (ino, d) = self.new_inode(parent, mode, uid, gid, rdev)?;
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, dtype(mode))?;
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let (ino, mut d) = self.new_inode(parent, libc::S_IFDIR | (mode & 0o7777), uid, gid, 0)?;
        let leaf = self.alloc(BlockState::Meta, Some(ino + 1))?;
        self.write_meta(leaf, DirLeaf { owner: ino, depth: 0, prefix: 0, next: 0, entries: vec![] }.encode(leaf));
        d.nlink = 2;
        d.parent = parent;
        d.blocks = 1;
        d.content = Content::DirHash(vec![leaf]);
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, libc::DT_DIR)?;
        self.touch_dir(parent, 1)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        if target.len() > MAX_SYMLINK_LEN || target.is_empty() {
            return Err(FsError::NameTooLong);
        }
        self.check_new_name(parent, name)?;
        let (ino, mut d) = self.new_inode(parent, libc::S_IFLNK | 0o777, uid, gid, 0)?;
        d.size = target.len() as u64;
        d.content = Content::Inline(target.to_vec());
        self.put_dinode(ino, &d);
        self.dir_add(parent, name, ino, libc::DT_LNK)?;
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn readlink(&mut self, ino: u64) -> Result<Vec<u8>> {
        match self.dinode(ino)?.content {
            Content::Inline(v) => Ok(v),
            _ => Err(FsError::Invalid),
        }
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            return Err(FsError::IsDir);
        }
        if d.nlink >= 65000 {
            return Err(FsError::TooManyLinks);
        }
        self.check_new_name(parent, name)?;
        self.dir_add(parent, name, ino, dtype(d.mode))?;
        d.nlink += 1;
        d.ctime = crate::now();
        self.put_dinode(ino, &d);
        self.touch_dir(parent, 0)?;
        Ok(Self::attr_of(ino, &d))
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let (ino, _) = self.lookup_entry(parent, name)?;
        if self.dinode(ino)?.is_dir() {
            return Err(FsError::IsDir);
        }
        self.dir_remove(parent, name)?;
        self.touch_dir(parent, 0)?;
        self.drop_link(ino)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let (ino, _) = self.lookup_entry(parent, name)?;
        let d = self.dinode(ino)?;
        if !d.is_dir() {
            return Err(FsError::NotDir);
        }
        if d.dir_entries != 0 {
            return Err(FsError::NotEmpty);
        }
        self.dir_remove(parent, name)?;
        self.touch_dir(parent, -1)?;
        self.drop_link(ino)
    }

    /// Renames atomically, replacing `newname` if it exists (and is compatible).
    pub fn rename(&mut self, parent: u64, name: &[u8], newparent: u64, newname: &[u8]) -> Result<()> {
        if newname.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        let (ino, _) = self.lookup_entry(parent, name)?;
        let d = self.dinode(ino)?;
        if !self.dinode(newparent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        if d.is_dir() {
            // Refuse to move a directory below itself.
            let mut p = newparent;
            loop {
                if p == ino {
                    return Err(FsError::Invalid);
                }
                let pd = self.dinode(p)?;
                if pd.parent == p || pd.parent == 0 {
                    break;
                }
                p = pd.parent;
            }
        }
        match self.lookup_entry(newparent, newname) {
            Ok((target, _)) => {
                if target == ino {
                    return Ok(());
                }
                let t = self.dinode(target)?;
                match (d.is_dir(), t.is_dir()) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if t.dir_entries != 0 => return Err(FsError::NotEmpty),
                    _ => {}
                }
                self.dir_remove(newparent, newname)?;
                if t.is_dir() {
                    self.touch_dir(newparent, -1)?;
                }
                self.drop_link(target)?;
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.dir_remove(parent, name)?;
        self.dir_add(newparent, newname, ino, dtype(d.mode))?;
        let sub = if d.is_dir() && parent != newparent { 1 } else { 0 };
        self.touch_dir(parent, -sub)?;
        self.touch_dir(newparent, sub)?;
        let mut d = self.dinode(ino)?;
        if d.is_dir() {
            d.parent = newparent;
        }
        d.ctime = crate::now();
        self.put_dinode(ino, &d);
        Ok(())
    }

    pub(super) fn check_new_name(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(FsError::Invalid);
        }
        if !self.dinode(parent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        match self.lookup_entry(parent, name) {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Updates a directory's times (and link count by `nlink_delta` for subdirectories).
    pub(super) fn touch_dir(&mut self, dir: u64, nlink_delta: i32) -> Result<()> {
        let mut d = self.dinode(dir)?;
        let now = crate::now();
        d.mtime = now;
        d.ctime = now;
        d.nlink = (d.nlink as i64 + nlink_delta as i64).max(0) as u32;
        self.put_dinode(dir, &d);
        Ok(())
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            return self.getattr(parent);
        }
        if name == b".." {
            let p = self.dinode(parent)?.parent;
            return self.getattr(p);
        }
        let (ino, _) = self.lookup_entry(parent, name)?;
        self.getattr(ino)
    }
}
