// CRC32C (Castagnoli, the checksum of iSCSI, ext4 metadata, LevelDB): for the store's log
// and the dataset store's chunks. Uses the SSE4.2 crc32 instruction when the CPU has it
// (interleaved lanes for inputs of 3 KiB or more: ~15 GB/s here, against ~6 for one), a table otherwise; both give the same values.
// Thread-safety: stateless.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tern {

// The CRC32C of data[0, n), continuing from `crc` (the result of an earlier call over the
// bytes before; 0 to start).
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// Crc32c(src, 4096, crc), copying the 4 KiB at `src` to `dst` and, unless it is null,
// to `dst2` in the same pass, with non-temporal stores (x86-64 with SSE4.2 and 16-byte
// aligned destinations; else a checksum, then memcpy): for a migration's pages, which
// are read once from memory and written where nothing reads them soon. The stores are
// weakly ordered: the caller fences (_mm_sfence) before another thread reads them.
uint32_t Crc32cCopyPage(const void* src, void* dst, void* dst2, uint32_t crc);

// The table-driven version, for tests that compare the two.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0);

// The CRC32C of A || B from crc_a = Crc32c(A) and crc_b = Crc32c(B) (each started from
// 0) and len_b = |B|: for a checksum whose prefix is known only after the bytes behind
// it were checksummed (a page batch's head, filled in after its pages were copied and
// checksummed one by one). O(log len_b).
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

}  // namespace tern
