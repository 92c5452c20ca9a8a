#!/usr/bin/env python3
"""Writes a Nix expression for a benchmark closure: PATHS store paths of realistic sizes and contents.

    closure.py PATHS SEED > closure.nix      # then: nix-build closure.nix -A top

Contents are real files of this machine (/usr/bin, /usr/lib, /usr/share), so they compress like real
store paths (binaries, libraries, text), not like random bytes. Sizes follow the shape of a real closure:
most paths small (one to a few files, tens of KiB), a handful large (several MiB up to a few tens).
Path i refers to paths i//2 and i//3 (their store paths are written into it, so Nix records the
references: a shallow graph that builds in parallel), and `top` (a profile, say) refers to every path,
so its closure is PATHS + 1 paths. The choice is deterministic for a given machine,
PATHS and SEED. Prints a summary to stderr.
"""

import os
import random
import sys

# Where small files come from, and how often: mostly programs and libraries, some data and text.
ROOTS = [("/usr/bin", 4), ("/usr/lib/x86_64-linux-gnu", 4), ("/usr/share", 2)]
SMALL_MAX = 512 * 1024
LARGE_MIN, LARGE_MAX = 4 << 20, 16 << 20


def candidates():
    """Regular, readable files under ROOTS with a name safe to quote in Nix and sh: small ones by
    root, and large ones."""
    small, large, seen = {}, [], set()
    for root, _ in ROOTS:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                if not all(c.isalnum() or c in "/._+-" for c in path):
                    continue
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path) or (st.st_dev, st.st_ino) in seen:
                    continue
                if not os.access(path, os.R_OK):
                    continue
                seen.add((st.st_dev, st.st_ino))
                if 0 < st.st_size <= SMALL_MAX:
                    small.setdefault(root, []).append((path, st.st_size))
                elif LARGE_MIN <= st.st_size <= LARGE_MAX:
                    large.append((path, st.st_size))
    return small, large


def main():
    n_paths, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    small, large = candidates()
    # Distinct sizes only among large files: identical builds of one library (Mesa's drivers) would
    # compress and deduplicate unlike a real closure.
    by_size = {}
    for path, size in large:
        by_size.setdefault(size, (path, size))
    large = sorted(by_size.values())
    n_large = max(1, n_paths // 60)
    n_small = sum(len(v) for v in small.values())
    if n_small < n_paths * 4 or len(large) < n_large:
        sys.exit(f"closure.py: too few files on this machine ({n_small} small, {len(large)} large)")
    for files in small.values():
        rng.shuffle(files)
    roots = [root for root, weight in ROOTS for _ in range(weight) if small.get(root)]
    chosen_large = rng.sample(large, n_large)
    large_at = set(rng.sample(range(1, n_paths), n_large))
    paths, total, files = [], 0, 0
    for i in range(n_paths):
        if i in large_at:
            picked = [chosen_large.pop()]
        else:
            # Mostly one to three files, sometimes a dozen (a package with several programs); names
            # distinct within a path (they are copied into one folder).
            count = rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 12])
            picked, names = [], set()
            while len(picked) < count:
                pool = small[rng.choice(roots)]
                if not pool:
                    continue
                path, size = pool.pop()
                if os.path.basename(path) not in names:
                    names.add(os.path.basename(path))
                    picked.append((path, size))
        paths.append(picked)
        total += sum(size for _, size in picked)
        files += len(picked)
    out = ["{ }:", "let", "  mk = i: deps: files: derivation {",
           '    name = "bench-closure-${toString i}"; system = builtins.currentSystem; builder = "/bin/sh";',
           '    args = [ "-c" ("/bin/mkdir $out && /bin/cp " + files + " $out/ && echo " + deps + " > $out/deps") ];',
           "  };"]
    for i, picked in enumerate(paths):
        deps = " ".join(f"${{p{d}}}" for d in sorted({i // 2, i // 3}) if d < i)
        names = " ".join(p for p, _ in picked)
        out.append(f'  p{i} = mk {i} "{deps}" "{names}";')
    every = " ".join(f"${{p{i}}}" for i in range(n_paths))
    out.append(f'in {{ top = mk "top" "{every}" "/usr/bin/env"; }}')
    print("\n".join(out))
    print(f"closure: {n_paths} paths, {files} files, {total / 1e6:.1f} MB before compression, "
          f"{n_large} large", file=sys.stderr)


if __name__ == "__main__":
    main()
