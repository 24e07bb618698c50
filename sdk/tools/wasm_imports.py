#!/usr/bin/env python3
"""Lists a wasm module's imports and exports (no wabt needed).

    python3 sdk/tools/wasm_imports.py build/dev/wasm/*.wasm
    python3 sdk/tools/wasm_imports.py --check build/dev/wasm/*.wasm

--check exits 1 if a module imports anything besides tern_v1.* and the WASI functions
the tern runtime stubs (listed in STUBBED_WASI below).
"""
import sys

STUBBED_WASI = {
    "fd_write", "fd_close", "fd_seek", "fd_fdstat_get", "proc_exit", "environ_get",
    "environ_sizes_get", "args_get", "args_sizes_get", "clock_time_get", "random_get",
}
KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


def uleb(b, i):
    result = shift = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def name(b, i):
    n, i = uleb(b, i)
    return b[i:i + n].decode("utf-8"), i + n


def skip_limits(b, i):
    flags, i = uleb(b, i)
    _, i = uleb(b, i)
    if flags & 1:
        _, i = uleb(b, i)
    return i


def parse(path):
    b = open(path, "rb").read()
    if b[:8] != b"\0asm\x01\0\0\0":
        raise ValueError(f"{path}: not a wasm v1 module")
    imports, exports = [], []
    i = 8
    while i < len(b):
        sid = b[i]
        size, i = uleb(b, i + 1)
        end = i + size
        if sid == 2:  # import section
            count, j = uleb(b, i)
            for _ in range(count):
                mod, j = name(b, j)
                field, j = name(b, j)
                kind = b[j]
                j += 1
                if kind == 0:
                    _, j = uleb(b, j)
                elif kind == 1:
                    j = skip_limits(b, j + 1)
                elif kind == 2:
                    j = skip_limits(b, j)
                elif kind == 3:
                    j += 2
                else:
                    _, j = uleb(b, j + 1)
                imports.append((mod, field, KINDS.get(kind, str(kind))))
        elif sid == 7:  # export section
            count, j = uleb(b, i)
            for _ in range(count):
                field, j = name(b, j)
                kind = b[j]
                _, j = uleb(b, j + 1)
                exports.append((field, KINDS.get(kind, str(kind))))
        i = end
    return len(b), imports, exports


def main(argv):
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    bad = False
    for path in paths:
        size, imports, exports = parse(path)
        print(f"{path}: {size} bytes")
        for mod, field, kind in imports:
            ok = mod == "tern_v1" or (mod == "wasi_snapshot_preview1" and field in STUBBED_WASI)
            bad |= not ok
            print(f"  import {kind:6} {mod}.{field}{'' if ok else '   <-- not provided by tern'}")
        for field, kind in exports:
            print(f"  export {kind:6} {field}")
    return 1 if check and bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
