//! File contents as chunks: the one place that maps byte ranges onto the
//! `("ino", INO, "data", CHUNK)` keys.
//!
//! Chunk `i` holds bytes `[i * chunk_size, (i + 1) * chunk_size)` of the
//! file with trailing zeros trimmed; a missing chunk is a hole and reads as
//! zeros. Invariant (checked by fsck): no chunk holds bytes at or beyond the
//! file's size, so extending a file never exposes old data, and shrinking it
//! clears or trims every chunk past the new end.

use crate::ctx::Ctx;
use crate::error::{FsError, FsResult};
use crate::kv::{RangeOptions, Transaction};

/// Largest file, in bytes (what ext4 allows with 4 KiB blocks is larger;
/// this keeps every chunk index and offset well inside `i64`).
pub const FILE_BYTES_MAX: u64 = 1 << 50;

fn chunk_size(ctx: &Ctx<'_>) -> u64 {
    ctx.settings.chunk_size
}

/// Bytes `[offset, offset + len)` of `ino`; holes read as zeros. The caller
/// clips the range to the file's size.
pub async fn read_range(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    offset: u64,
    len: u64,
) -> FsResult<Vec<u8>> {
    // Filled in chunk order rather than zeroed first: only holes and the
    // trimmed tails of chunks are written as zeros (a 1 MiB read zeroed
    // its whole buffer before copying over it: 3% of a sequential read's
    // daemon time).
    let mut out = Vec::with_capacity(len as usize);
    if len == 0 {
        return Ok(out);
    }
    let size = chunk_size(ctx);
    let first = offset / size;
    let last = (offset + len - 1) / size;
    let (begin, _) = ctx.keys.chunks_from(ino, first);
    let end = ctx.keys.chunk(ino, last + 1);
    let page = txn.get_range(&begin, &end, RangeOptions::default()).await?;
    for (key, value) in page.kvs {
        let index = ctx
            .keys
            .chunk_index(ino, &key)
            .ok_or_else(|| FsError::Corrupted(format!("chunk key of inode {ino}")))?;
        if value.len() as u64 > size {
            return Err(FsError::Corrupted(format!(
                "chunk {index} of inode {ino} is {} bytes",
                value.len()
            )));
        }
        let chunk_start = index * size;
        // Overlap of [chunk_start, chunk_start + value.len()) with the request.
        let from = offset.max(chunk_start);
        let to = (offset + len).min(chunk_start + value.len() as u64);
        if from < to {
            // Keys come in ascending order, so chunks do.
            let at = (from - offset) as usize;
            if at < out.len() {
                return Err(FsError::Corrupted(format!(
                    "chunk {index} of inode {ino} out of order"
                )));
            }
            out.resize(at, 0);
            out.extend_from_slice(
                &value[(from - chunk_start) as usize..(to - chunk_start) as usize],
            );
        }
    }
    out.resize(len as usize, 0);
    Ok(out)
}

/// Store `data` at `offset`, chunk by chunk. Chunks only partly covered are
/// read and merged; the file's size is the caller's business.
pub async fn write_range(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    offset: u64,
    data: &[u8],
) -> FsResult<()> {
    let size = chunk_size(ctx);
    let mut pos = 0usize;
    while pos < data.len() {
        let at = offset + pos as u64;
        let index = at / size;
        let within = (at % size) as usize;
        let take = (size as usize - within).min(data.len() - pos);
        let piece = &data[pos..pos + take];
        let key = ctx.keys.chunk(ino, index);
        let mut chunk = if within == 0 && take == size as usize {
            Vec::new()
        } else {
            txn.get(&key).await?.unwrap_or_default()
        };
        if chunk.len() < within + take {
            chunk.resize(within + take, 0);
        }
        chunk[within..within + take].copy_from_slice(piece);
        store_chunk(txn, &key, chunk);
        pos += take;
    }
    Ok(())
}

/// Make bytes `[offset, offset + len)` read as zeros: whole chunks are
/// cleared with one range clear, the partial ones at either end rewritten.
pub async fn zero_range(
    txn: &Transaction,
    ctx: &Ctx<'_>,
    ino: u64,
    offset: u64,
    len: u64,
) -> FsResult<()> {
    if len == 0 {
        return Ok(());
    }
    let size = chunk_size(ctx);
    let end = offset + len;
    let first_whole = offset.div_ceil(size);
    let end_whole = end / size;
    if first_whole < end_whole {
        txn.clear_range(
            &ctx.keys.chunk(ino, first_whole),
            &ctx.keys.chunk(ino, end_whole),
        );
    }
    // The partial chunk at the start, and the one at the end if different.
    let mut partial = Vec::new();
    if !offset.is_multiple_of(size) {
        partial.push(offset / size);
    }
    if !end.is_multiple_of(size) && (partial.is_empty() || end / size != offset / size) {
        partial.push(end / size);
    }
    for index in partial {
        let key = ctx.keys.chunk(ino, index);
        let Some(mut chunk) = txn.get(&key).await? else {
            continue;
        };
        let chunk_start = index * size;
        let from = offset.max(chunk_start) - chunk_start;
        let to = (end.min(chunk_start + size) - chunk_start).min(chunk.len() as u64);
        if from < to {
            chunk[from as usize..to as usize].fill(0);
            store_chunk(txn, &key, chunk);
        }
    }
    Ok(())
}

/// Drop every byte at or beyond `new_size` (truncate): later chunks are
/// cleared with one range clear, the chunk holding the new end is trimmed.
pub async fn truncate(txn: &Transaction, ctx: &Ctx<'_>, ino: u64, new_size: u64) -> FsResult<()> {
    let size = chunk_size(ctx);
    let keep = new_size.div_ceil(size);
    let (begin, end) = ctx.keys.chunks_from(ino, keep);
    txn.clear_range(&begin, &end);
    if !new_size.is_multiple_of(size) {
        let key = ctx.keys.chunk(ino, new_size / size);
        if let Some(mut chunk) = txn.get(&key).await? {
            chunk.truncate((new_size % size) as usize);
            store_chunk(txn, &key, chunk);
        }
    }
    Ok(())
}

/// Write a chunk with its trailing zeros trimmed; an all-zero chunk is a hole.
fn store_chunk(txn: &Transaction, key: &[u8], mut chunk: Vec<u8>) {
    let used = chunk.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    chunk.truncate(used);
    if chunk.is_empty() {
        txn.clear(key);
    } else {
        txn.set(key, &chunk);
    }
}
