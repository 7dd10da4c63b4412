//! A reference model of the filesystem: a plain in-memory tree with the
//! POSIX rules written out directly, independent of the KV, the key schema
//! and the core's code. The proptest in `fs_model.rs` applies the same
//! operations to the core and to this model and compares every result.
//!
//! Inode numbers are the core's: when both sides create, the model adopts
//! the number the core allocated, so later operations can name inodes.

#![allow(dead_code)]

pub mod world;

use std::collections::BTreeMap;

pub const ROOT: u64 = 1;
const NAME_MAX: usize = 255;
const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

/// The identity an operation runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Who {
    fn root(&self) -> bool {
        self.uid == 0
    }
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub data: Vec<u8>,
    pub target: Vec<u8>,
    pub entries: BTreeMap<Vec<u8>, u64>,
    pub parent: u64,
}

/// What the tests compare of an inode (times are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub ino: u64,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
}

pub type Res<T> = Result<T, i32>;

#[derive(Debug, Clone)]
pub struct Model {
    pub nodes: BTreeMap<u64, Node>,
    /// Open handles per inode, over all clients.
    pub opens: BTreeMap<u64, u32>,
}

impl Model {
    pub fn new(root_mode: u32) -> Model {
        let root = Node {
            kind: Kind::Dir,
            mode: root_mode,
            uid: 0,
            gid: 0,
            nlink: 2,
            data: Vec::new(),
            target: Vec::new(),
            entries: BTreeMap::new(),
            parent: ROOT,
        };
        Model {
            nodes: BTreeMap::from([(ROOT, root)]),
            opens: BTreeMap::new(),
        }
    }

    pub fn summary(&self, ino: u64) -> Summary {
        let n = &self.nodes[&ino];
        let size = match n.kind {
            Kind::File => n.data.len() as u64,
            Kind::Symlink => n.target.len() as u64,
            _ => 0,
        };
        Summary {
            ino,
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            nlink: n.nlink,
            size,
        }
    }

    /// Resolve a path of names from the root, without permission checks
    /// (the kernel's walk, not the core's business) and without following
    /// symlinks.
    pub fn resolve(&self, path: &[Vec<u8>]) -> Option<u64> {
        let mut at = ROOT;
        for name in path {
            at = *self.nodes.get(&at)?.entries.get(name)?;
        }
        Some(at)
    }

    fn allowed(&self, ino: u64, who: &Who, mask: u32) -> bool {
        let n = &self.nodes[&ino];
        if who.root() {
            return mask & X == 0 || n.kind == Kind::Dir || n.mode & 0o111 != 0;
        }
        let bits = if who.uid == n.uid {
            n.mode >> 6
        } else if who.in_group(n.gid) {
            n.mode >> 3
        } else {
            n.mode
        } & 7;
        bits & mask == mask
    }

    fn check(&self, ino: u64, who: &Who, mask: u32) -> Res<()> {
        if self.allowed(ino, who, mask) {
            Ok(())
        } else {
            Err(libc::EACCES)
        }
    }

    fn search_dir(&self, ino: u64, who: &Who) -> Res<()> {
        if self.nodes[&ino].kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        self.check(ino, who, X)
    }

    fn check_name(name: &[u8]) -> Res<()> {
        if name.len() > NAME_MAX {
            Err(libc::ENAMETOOLONG)
        } else if name.is_empty() {
            Err(libc::ENOENT)
        } else if name.contains(&b'/') || name.contains(&0) {
            Err(libc::EINVAL)
        } else {
            Ok(())
        }
    }

    fn dots(name: &[u8]) -> bool {
        name == b"." || name == b".."
    }

    /// Write and search on the directory, and the sticky rule.
    fn check_remove(&self, dir: u64, child: u64, who: &Who) -> Res<()> {
        self.check(dir, who, W | X)?;
        let (d, c) = (&self.nodes[&dir], &self.nodes[&child]);
        if d.mode & libc::S_ISVTX != 0 && !who.root() && who.uid != d.uid && who.uid != c.uid {
            return Err(libc::EPERM);
        }
        Ok(())
    }

    fn prepare_new(&self, parent: u64, name: &[u8], who: &Who) -> Res<()> {
        Self::check_name(name)?;
        self.search_dir(parent, who)?;
        if Self::dots(name) || self.nodes[&parent].entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        self.check(parent, who, W)
    }

    fn new_node(&self, parent: u64, kind: Kind, perm: u32, who: &Who) -> Node {
        let p = &self.nodes[&parent];
        let setgid_parent = p.mode & libc::S_ISGID != 0;
        let gid = if setgid_parent { p.gid } else { who.gid };
        let mut perm = perm & 0o7777;
        if kind == Kind::Dir && setgid_parent {
            perm |= libc::S_ISGID;
        }
        if kind != Kind::Dir && perm & libc::S_ISGID != 0 && !who.root() && !who.in_group(gid) {
            perm &= !libc::S_ISGID;
        }
        Node {
            kind,
            mode: perm,
            uid: who.uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Vec::new(),
            target: Vec::new(),
            entries: BTreeMap::new(),
            parent: if kind == Kind::Dir { parent } else { 0 },
        }
    }

    fn insert(&mut self, parent: u64, name: &[u8], ino: u64, node: Node) -> Summary {
        if node.kind == Kind::Dir {
            self.nodes.get_mut(&parent).unwrap().nlink += 1;
        }
        self.nodes
            .get_mut(&parent)
            .unwrap()
            .entries
            .insert(name.to_vec(), ino);
        self.nodes.insert(ino, node);
        self.summary(ino)
    }

    /// Apply a create whose outcome was decided: `ino` is the core's number.
    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &[u8],
        perm: u32,
        who: &Who,
        ino: u64,
    ) -> Res<Summary> {
        self.prepare_new(parent, name, who)?;
        let node = self.new_node(parent, Kind::Dir, perm, who);
        Ok(self.insert(parent, name, ino, node))
    }

    pub fn mknod_fifo(
        &mut self,
        parent: u64,
        name: &[u8],
        perm: u32,
        who: &Who,
        ino: u64,
    ) -> Res<Summary> {
        self.prepare_new(parent, name, who)?;
        let node = self.new_node(parent, Kind::Fifo, perm, who);
        Ok(self.insert(parent, name, ino, node))
    }

    pub fn symlink(
        &mut self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        who: &Who,
        ino: u64,
    ) -> Res<Summary> {
        if target.is_empty() {
            return Err(libc::ENOENT);
        }
        self.prepare_new(parent, name, who)?;
        let mut node = self.new_node(parent, Kind::Symlink, 0o777, who);
        node.target = target.to_vec();
        Ok(self.insert(parent, name, ino, node))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        perm: u32,
        exclusive: bool,
        access: u32,
        who: &Who,
        ino: u64,
    ) -> Res<Summary> {
        if !exclusive {
            Self::check_name(name)?;
            self.search_dir(parent, who)?;
            if let Some(&existing) = self.nodes[&parent].entries.get(name) {
                if self.nodes[&existing].kind == Kind::Dir {
                    return Err(libc::EISDIR);
                }
                self.check(existing, who, access)?;
                return Ok(self.summary(existing));
            }
        }
        self.prepare_new(parent, name, who)?;
        let node = self.new_node(parent, Kind::File, perm, who);
        Ok(self.insert(parent, name, ino, node))
    }

    pub fn lookup(&self, parent: u64, name: &[u8], who: &Who) -> Res<Summary> {
        if name.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        self.search_dir(parent, who)?;
        match name {
            b"." => return Ok(self.summary(parent)),
            b".." => return Ok(self.summary(self.nodes[&parent].parent)),
            _ => Self::check_name(name)?,
        }
        let ino = *self.nodes[&parent].entries.get(name).ok_or(libc::ENOENT)?;
        Ok(self.summary(ino))
    }

    pub fn readdir(&self, dir: u64, who: &Who) -> Res<Vec<Vec<u8>>> {
        if self.nodes[&dir].kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        self.check(dir, who, R)?;
        Ok(self.nodes[&dir].entries.keys().cloned().collect())
    }

    /// Drop one link; free the inode when none remain and nobody has it open.
    fn drop_link(&mut self, ino: u64) {
        let node = self.nodes.get_mut(&ino).unwrap();
        node.nlink = if node.kind == Kind::Dir {
            0
        } else {
            node.nlink - 1
        };
        if node.nlink == 0 && self.opens.get(&ino).copied().unwrap_or(0) == 0 {
            self.nodes.remove(&ino);
        }
    }

    fn victim(&self, parent: u64, name: &[u8], who: &Who) -> Res<u64> {
        self.search_dir(parent, who)?;
        let child = *self.nodes[&parent].entries.get(name).ok_or(libc::ENOENT)?;
        self.check_remove(parent, child, who)?;
        Ok(child)
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8], who: &Who) -> Res<()> {
        if Self::dots(name) {
            self.search_dir(parent, who)?;
            return Err(libc::EISDIR);
        }
        Self::check_name(name)?;
        let child = self.victim(parent, name, who)?;
        if self.nodes[&child].kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.nodes.get_mut(&parent).unwrap().entries.remove(name);
        self.drop_link(child);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8], who: &Who) -> Res<()> {
        match name {
            b"." => return Err(libc::EINVAL),
            b".." => return Err(libc::ENOTEMPTY),
            _ => Self::check_name(name)?,
        }
        let child = self.victim(parent, name, who)?;
        if self.nodes[&child].kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        if !self.nodes[&child].entries.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        let p = self.nodes.get_mut(&parent).unwrap();
        p.entries.remove(name);
        p.nlink -= 1;
        self.drop_link(child);
        Ok(())
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8], who: &Who) -> Res<Summary> {
        self.prepare_new(parent, name, who)?;
        let node = &self.nodes[&ino];
        if node.kind == Kind::Dir {
            return Err(libc::EPERM);
        }
        if node.nlink == 0 {
            return Err(libc::ENOENT);
        }
        self.nodes.get_mut(&ino).unwrap().nlink += 1;
        self.nodes
            .get_mut(&parent)
            .unwrap()
            .entries
            .insert(name.to_vec(), ino);
        Ok(self.summary(ino))
    }

    /// Whether `moved` is `dir` or one of its ancestors.
    fn contains(&self, moved: u64, dir: u64) -> bool {
        let mut at = dir;
        loop {
            if at == moved {
                return true;
            }
            if at == ROOT {
                return false;
            }
            at = self.nodes[&at].parent;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        who: &Who,
    ) -> Res<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(libc::EINVAL);
        }
        if name.len() > NAME_MAX || new_name.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        self.search_dir(parent, who)?;
        self.search_dir(new_parent, who)?;
        if Self::dots(name) || Self::dots(new_name) {
            return Err(libc::EBUSY);
        }
        Self::check_name(name)?;
        Self::check_name(new_name)?;
        let src = *self.nodes[&parent].entries.get(name).ok_or(libc::ENOENT)?;
        let dst = self.nodes[&new_parent].entries.get(new_name).copied();
        match (dst, noreplace, exchange) {
            (Some(_), true, _) => return Err(libc::EEXIST),
            (None, _, true) => return Err(libc::ENOENT),
            _ => {}
        }
        let is_dir = |m: &Model, ino: u64| m.nodes[&ino].kind == Kind::Dir;
        if parent != new_parent {
            if is_dir(self, src) && self.contains(src, new_parent) {
                return Err(libc::EINVAL);
            }
            if let (true, Some(d)) = (exchange, dst) {
                if is_dir(self, d) && self.contains(d, parent) {
                    return Err(libc::EINVAL);
                }
            }
        }
        if dst == Some(src) {
            return Ok(());
        }
        self.check_remove(parent, src, who)?;
        match dst {
            Some(d) => self.check_remove(new_parent, d, who)?,
            None => self.check(new_parent, who, W | X)?,
        }
        if parent != new_parent {
            if is_dir(self, src) {
                self.check(src, who, W)?;
            }
            if let (true, Some(d)) = (exchange, dst) {
                if is_dir(self, d) {
                    self.check(d, who, W)?;
                }
            }
        }
        if exchange {
            let d = dst.unwrap();
            self.set_entry(new_parent, new_name, src);
            self.set_entry(parent, name, d);
            if parent != new_parent {
                self.reparent(src, parent, new_parent);
                self.reparent(d, new_parent, parent);
            }
            return Ok(());
        }
        if let Some(d) = dst {
            match (is_dir(self, src), is_dir(self, d)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.nodes[&d].entries.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            if is_dir(self, d) {
                self.nodes.get_mut(&new_parent).unwrap().nlink -= 1;
            }
            self.drop_link(d);
        }
        self.nodes.get_mut(&parent).unwrap().entries.remove(name);
        self.set_entry(new_parent, new_name, src);
        if parent != new_parent {
            self.reparent(src, parent, new_parent);
        }
        Ok(())
    }

    fn set_entry(&mut self, dir: u64, name: &[u8], ino: u64) {
        self.nodes
            .get_mut(&dir)
            .unwrap()
            .entries
            .insert(name.to_vec(), ino);
    }

    fn reparent(&mut self, ino: u64, from: u64, to: u64) {
        if self.nodes[&ino].kind != Kind::Dir {
            return;
        }
        self.nodes.get_mut(&ino).unwrap().parent = to;
        self.nodes.get_mut(&from).unwrap().nlink -= 1;
        self.nodes.get_mut(&to).unwrap().nlink += 1;
    }

    pub fn open(&mut self, ino: u64, flags: i32, who: &Who) -> Res<Summary> {
        let mut mask = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => W,
            libc::O_RDWR => R | W,
            _ => R,
        };
        if flags & libc::O_TRUNC != 0 {
            mask |= W;
        }
        if self.nodes[&ino].kind == Kind::Dir && mask & W != 0 {
            return Err(libc::EISDIR);
        }
        self.check(ino, who, mask)?;
        *self.opens.entry(ino).or_default() += 1;
        Ok(self.summary(ino))
    }

    pub fn release(&mut self, ino: u64) {
        let count = self.opens.get_mut(&ino).unwrap();
        *count -= 1;
        if *count == 0 {
            self.opens.remove(&ino);
            if self.nodes[&ino].nlink == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    pub fn read(&self, ino: u64, offset: u64, len: u32) -> Res<Vec<u8>> {
        let n = &self.nodes[&ino];
        match n.kind {
            Kind::File => {}
            Kind::Dir => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        let from = (offset as usize).min(n.data.len());
        let to = (offset as usize + len as usize).min(n.data.len());
        Ok(n.data[from..to].to_vec())
    }

    /// `offset` None appends.
    pub fn write(&mut self, ino: u64, offset: Option<u64>, bytes: &[u8], who: &Who) -> Res<u64> {
        let n = self.nodes.get_mut(&ino).unwrap();
        match n.kind {
            Kind::File => {}
            Kind::Dir => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        if bytes.is_empty() {
            return Ok(0);
        }
        let at = offset.unwrap_or(n.data.len() as u64) as usize;
        if n.data.len() < at + bytes.len() {
            n.data.resize(at + bytes.len(), 0);
        }
        n.data[at..at + bytes.len()].copy_from_slice(bytes);
        Self::kill_privileges(n, who);
        Ok(bytes.len() as u64)
    }

    fn kill_privileges(n: &mut Node, who: &Who) {
        if who.root() {
            return;
        }
        n.mode &= !libc::S_ISUID;
        // Linux 6.2 on: also without group execute, for a non-member.
        if n.mode & libc::S_IXGRP != 0 || !who.in_group(n.gid) {
            n.mode &= !libc::S_ISGID;
        }
    }

    pub fn truncate(&mut self, ino: u64, size: u64, who: &Who) -> Res<Summary> {
        match self.nodes[&ino].kind {
            Kind::File => {}
            Kind::Dir => return Err(libc::EISDIR),
            _ => return Err(libc::EINVAL),
        }
        self.check(ino, who, W)?;
        let n = self.nodes.get_mut(&ino).unwrap();
        n.data.resize(size as usize, 0);
        Self::kill_privileges(n, who);
        Ok(self.summary(ino))
    }

    pub fn chmod(&mut self, ino: u64, mode: u32, who: &Who) -> Res<Summary> {
        // A non-owner who may write the file may clear set-ID bits and
        // change nothing else: the kernel's own change before a truncate
        // or write by such a user.
        let node = &self.nodes[&ino];
        let now = node.mode;
        let killable = if node.kind == Kind::Dir {
            0
        } else if now & libc::S_IXGRP != 0 {
            libc::S_ISUID | libc::S_ISGID
        } else {
            libc::S_ISUID
        };
        let only_kills = mode & !killable & 0o7777 == now & !killable
            && mode & killable & !now == 0
            && now & killable & !mode != 0;
        let writer = only_kills && self.check(ino, who, W).is_ok();
        let n = self.nodes.get_mut(&ino).unwrap();
        if !who.root() && who.uid != n.uid && !writer {
            return Err(libc::EPERM);
        }
        let mut bits = mode & 0o7777;
        if !who.root() && !who.in_group(n.gid) {
            bits &= !libc::S_ISGID;
        }
        n.mode = bits;
        Ok(self.summary(ino))
    }

    pub fn chown(
        &mut self,
        ino: u64,
        uid: Option<u32>,
        gid: Option<u32>,
        who: &Who,
    ) -> Res<Summary> {
        let n = self.nodes.get_mut(&ino).unwrap();
        let owner = who.uid == n.uid;
        if let Some(uid) = uid {
            if !(who.root() || owner && uid == n.uid) {
                return Err(libc::EPERM);
            }
        }
        if let Some(gid) = gid {
            if !who.root() && !(owner && (gid == n.gid || who.in_group(gid))) {
                return Err(libc::EPERM);
            }
        }
        if n.kind != Kind::Dir {
            n.mode &= !libc::S_ISUID;
            // Linux 6.2 on: also without group execute, for a caller outside
            // the group the file had.
            if n.mode & libc::S_IXGRP != 0 || !who.root() && !who.in_group(n.gid) {
                n.mode &= !libc::S_ISGID;
            }
        }
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        Ok(self.summary(ino))
    }
}
