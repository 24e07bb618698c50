// CpuRelax(): the spin-wait hint of the CPU (x86 PAUSE, ARM YIELD). Thread-safe.
#pragma once

namespace tern {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace tern
