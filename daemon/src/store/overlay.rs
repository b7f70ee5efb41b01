//! Copy-on-write view of a store file, used to check a crashed store without modifying it.
//!
//! After an unclean shutdown redb must rewrite the file header (a quick repair) before anything
//! can be read, and its read-only mode refuses such files. To keep the promise that a wrong key,
//! a newer schema or a damaged file never changes a byte on disk, [`super::Store::open`] first
//! opens the store through this backend: reads come from the file, writes land in an in-memory
//! page map (a few pages for a quick repair). Only if the key and schema check out on that view
//! is the real file opened for writing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use redb::StorageBackend;

const BLOCK: u64 = 4096;

/// Read-through, write-to-memory backend over a file opened read-only.
#[derive(Debug)]
pub struct Overlay {
    file: File,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Virtual length.
    len: u64,
    /// File bytes at or beyond this offset read as zero (after a shrink).
    file_valid: u64,
    /// Modified blocks, keyed by block index.
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// Wrap a read-only file handle.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Overlay {
            file,
            state: Mutex::new(State {
                len,
                file_valid: len,
                blocks: BTreeMap::new(),
            }),
        })
    }

    fn base_block(&self, st: &State, idx: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; BLOCK as usize];
        let start = idx * BLOCK;
        if start < st.file_valid {
            let n = (st.file_valid - start).min(BLOCK) as usize;
            self.file.read_exact_at(&mut buf[..n], start)?;
        }
        Ok(buf)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read beyond end of store")
}

impl StorageBackend for Overlay {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let st = self.lock();
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or_else(out_of_range)?;
        if end > st.len {
            return Err(out_of_range());
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            match st.blocks.get(&idx) {
                Some(b) => dst.copy_from_slice(&b[within..within + n]),
                None if pos + n as u64 <= st.file_valid => self.file.read_exact_at(dst, pos)?,
                None => dst.copy_from_slice(&self.base_block(&st, idx)?[within..within + n]),
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        if len < st.len {
            st.file_valid = st.file_valid.min(len);
            let first_gone = len.div_ceil(BLOCK);
            st.blocks.split_off(&first_gone);
            let tail = (len % BLOCK) as usize;
            if tail != 0 {
                let idx = len / BLOCK;
                if let Some(b) = st.blocks.get_mut(&idx) {
                    b[tail..].fill(0);
                }
            }
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(out_of_range)?;
        if end > st.len {
            return Err(out_of_range());
        }
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            if !st.blocks.contains_key(&idx) {
                let base = self.base_block(&st, idx)?;
                st.blocks.insert(idx, base);
            }
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if let Some(b) = st.blocks.get_mut(&idx) {
                b[within..within + n].copy_from_slice(src);
            }
            pos += n as u64;
        }
        Ok(())
    }
}
