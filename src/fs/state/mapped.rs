//! A memory file written through a shared mapping: appending a journal record is a memory
//! copy, not a system call, and a copied byte is in the file at once (a process that holds
//! the file, the service manager's store, finds it there after this one died).
//!
//! Owns the mapping: its size (grown by doubling), replacing it when it grows, unmapping.
//! The file is as long as the mapping; what lies past the last write is zeros, so readers
//! must stop at the first line they cannot decode. It must never write outside the mapping.

use std::ffi::c_void;
use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

const MIN_CAPACITY: usize = 64 << 10;

pub struct Mapped {
    file: File,
    ptr: NonNull<c_void>,
    cap: usize,
}

// SAFETY: the mapping is owned by this value alone and only written through `&mut self`.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps `file` (made at least [`MIN_CAPACITY`] long; its content is kept).
    pub fn new(file: File) -> std::io::Result<Mapped> {
        let cap = (file.metadata()?.len() as usize).max(MIN_CAPACITY);
        let ptr = map(&file, cap)?;
        Ok(Mapped { file, ptr, cap })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Empties the file (all zeros) and makes room for at least `len` bytes.
    pub fn clear(&mut self, len: usize) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.resize(len.max(MIN_CAPACITY))
    }

    /// Copies `bytes` to `offset`, growing the file first if needed.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        let end = offset + bytes.len();
        if end > self.cap {
            self.resize(end.max(self.cap * 2))?;
        }
        // SAFETY: `offset..end` lies inside the mapping of `cap` bytes, which this value
        // owns; the source is a separate slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().cast::<u8>().add(offset),
                bytes.len(),
            );
        }
        Ok(())
    }

    fn resize(&mut self, cap: usize) -> std::io::Result<()> {
        self.file.set_len(cap as u64)?;
        let new = map(&self.file, cap)?;
        // SAFETY: the old mapping is ours and nothing refers into it any more.
        unsafe {
            let _ = munmap(self.ptr, self.cap);
        }
        self.ptr = new;
        self.cap = cap;
        Ok(())
    }
}

fn map(file: &File, cap: usize) -> std::io::Result<NonNull<c_void>> {
    file.set_len((file.metadata()?.len()).max(cap as u64))?;
    let len = NonZeroUsize::new(cap).ok_or(std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a fresh shared mapping of a file we hold, `cap` bytes long (the file is at
    // least that long); only this value writes through it.
    unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file,
            0,
        )
    }
    .map_err(std::io::Error::from)
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and dropped with us.
        unsafe {
            let _ = munmap(self.ptr, self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn writes_reach_the_file_and_growth_keeps_them() {
        let f = tempfile::tempfile().unwrap();
        let reader = f.try_clone().unwrap();
        let mut m = Mapped::new(f).unwrap();
        m.write_at(0, b"hello\n").unwrap();
        let big = vec![b'x'; 3 * MIN_CAPACITY];
        m.write_at(6, &big).unwrap();
        let mut got = vec![0u8; 6];
        reader.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"hello\n");
        let mut tail = vec![0u8; 1];
        reader
            .read_exact_at(&mut tail, 6 + big.len() as u64 - 1)
            .unwrap();
        assert_eq!(tail, b"x");
        m.clear(10).unwrap();
        reader.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, [0u8; 6]);
    }
}
