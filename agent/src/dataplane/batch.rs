//! Many map updates in one `bpf(BPF_MAP_UPDATE_BATCH)` call, and many
//! entries read in one `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+).
//!
//! aya 0.14 has no batch operations, so these are the raw commands on a
//! duplicate of the map's descriptor. Programming 10,000 Services writes
//! over 200,000 entries; one system call each was most of the time. The
//! conntrack collector reads every entry of its maps on each pass.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_UPDATE_BATCH` (linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`. The kernel zero-fills the rest
/// of the union when the size given is smaller.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries per call: the kernel copies each call's keys and values in.
const CHUNK: usize = 8192;

/// The maps are not preallocated, and a burst of inserts can find the
/// kernel's per-CPU element caches empty for a moment (ENOMEM). The rest
/// of the batch is then written again after a short, growing pause.
const ENOMEM_RETRIES: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_micros(500);

/// Writes `entries` (create or replace) into the hash map behind `map`, in
/// order. An error leaves the entries before the failing one written.
pub fn update<K: Pod, V: Pod>(map: &OwnedFd, entries: &[(K, V)]) -> io::Result<()> {
    let fd =
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut done = 0;
        let mut pause = FIRST_PAUSE;
        let mut retries = 0;
        while done < keys.len() {
            match update_once(fd, &keys[done..], &values[done..]) {
                Ok(()) => break,
                Err((written, e)) => {
                    done += written;
                    if e.raw_os_error() != Some(libc::ENOMEM) || retries == ENOMEM_RETRIES {
                        return Err(e);
                    }
                    retries += 1;
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
    }
    Ok(())
}

/// One call; on failure, how many entries it wrote first and the error.
fn update_once<K: Pod, V: Pod>(
    fd: u32,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    let count =
        u32::try_from(keys.len()).map_err(|_| (0, io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at `keys.len()` keys and values of the map's
    // sizes (the typed maps check those sizes when they are opened), which
    // outlive the call; the kernel writes back only `attr.count`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        let written = usize::try_from(attr.count).unwrap_or(0).min(keys.len());
        return Err((written, e));
    }
    Ok(())
}

/// Entries per lookup call.
const READ_CHUNK: u32 = 4096;

/// Calls `visit` with every entry of the hash map behind `map`, a chunk at
/// a time. Entries inserted or removed meanwhile may or may not be seen;
/// none is seen twice.
pub fn for_each<K: Pod, V: Pod>(map: &OwnedFd, mut visit: impl FnMut(&K, &V)) -> io::Result<()> {
    let fd =
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `Pod` types are plain integers: all-zero is a valid value.
    let chunk = READ_CHUNK as usize;
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The position token: a bucket index for hash maps.
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut next = [0u64; 2];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: READ_CHUNK,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `READ_CHUNK` keys and values of
        // the map's sizes (checked when the typed maps were opened), and
        // the tokens 16 bytes (a hash map's is 4); all outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = usize::try_from(attr.count).unwrap_or(0).min(chunk);
        for (k, v) in keys.iter().zip(&values).take(n) {
            visit(k, v);
        }
        match err {
            None => {}
            // ENOENT: no more entries (this call's, if any, were visited).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// `BPF_MAP_GET_NEXT_KEY`.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// The number of keys of the map behind `map` (keys of `key_size` bytes),
/// counted with `BPF_MAP_GET_NEXT_KEY`, whatever its type and layout.
pub fn count_keys(map: std::os::fd::BorrowedFd<'_>, key_size: usize) -> io::Result<u64> {
    let fd =
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut count = 0;
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: both buffers hold a key of the map's key size and outlive
        // the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &raw mut attr,
                size_of::<ElemAttr>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(count),
                _ => Err(e),
            };
        }
        count += 1;
        std::mem::swap(&mut key, &mut next);
        first = false;
    }
}

/// `BPF_MAP_CREATE` and `BPF_MAP_TYPE_HASH`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// The `map_create` member of `union bpf_attr`, as far as it is used.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// A map made with `BPF_MAP_CREATE`: `map_type` as linux/bpf.h numbers it,
/// named `name` (its first 15 bytes).
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    for (to, from) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from;
    }
    let mut attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name,
        ..CreateAttr::default()
    };
    // SAFETY: a valid `map_create` attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw mut attr,
            size_of::<CreateAttr>(),
        )
    };
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Whether this kernel has the batch commands (Linux 5.6): a lookup batch
/// on a small empty hash map made for the probe answers "no entries"
/// rather than "invalid command".
pub fn probe() -> bool {
    create_map(BPF_MAP_TYPE_HASH, 4, 4, 1, "sluice_probe")
        .is_ok_and(|map| for_each::<u32, u32>(&map, |_, _| {}).is_ok())
}
