#!/usr/bin/env python3
"""Allocations per request in a callgrind dump: the calls made to the allocator's entry
points (mimalloc's, which slotguard links, and libc's malloc family, which a C or C++
peer uses), over the number of requests the dump covers.

    benches/allocations.py DUMP REQUESTS
"""
import re
import sys

ENTRIES = re.compile(
    r"^(mi_malloc_aligned|mi_zalloc_aligned|mi_realloc_aligned|mi_malloc|mi_zalloc|"
    r"mi_calloc|mi_realloc|malloc|calloc|realloc)$"
)


def main() -> None:
    path, requests = sys.argv[1], int(sys.argv[2])
    names: dict[str, str] = {}
    callee = ""
    calls = 0
    with open(path, errors="replace") as dump:
        for line in dump:
            # Names are compressed: `(id) name` the first time, `(id)` after.
            if line.startswith(("fn=", "cfn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
                if not m:
                    continue
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("cfn="):
                    callee = names.get(m.group(1), "")
            elif line.startswith("calls=") and ENTRIES.match(callee.split("'")[0]):
                calls += int(line[6:].split()[0])
    print(f"{calls / requests:.2f}")


if __name__ == "__main__":
    main()
