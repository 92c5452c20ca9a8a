#!/usr/bin/env python3
"""Time from process start to the first narinfo answered, and the RSS right then.

    coldstart.py ROUNDS EVICT HASH -- COMMAND...

Starts COMMAND (a `nixcache serve --listen 127.0.0.1:PORT --data-dir DIR ...`), connects to PORT every
millisecond until it accepts, asks GET /HASH.narinfo, and reads the whole answer, which must be 200.
Prints one line per round: `ms=<start to answer> rss_mib=<VmRSS then>`, then stops the process with
SIGTERM. With EVICT=1 the index file (DIR/index.redb) is dropped from the page cache first
(posix_fadvise DONTNEED on that file only), as after a reboot.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time


def arg_after(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def first_answer(port, hash_, proc, deadline):
    request = f"GET /{hash_}.narinfo HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"coldstart.py: nixcache exited with {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.001)
    sys.exit("coldstart.py: no answer within 30 s")


def main():
    rounds, do_evict, hash_ = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    port = int(arg_after(cmd, "--listen").rsplit(":", 1)[1])
    index = os.path.join(arg_after(cmd, "--data-dir"), "index.redb")
    for _ in range(rounds):
        if do_evict:
            evict(index)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data = first_answer(port, hash_, proc, started + 30)
            took = time.monotonic() - started
            with open(f"/proc/{proc.pid}/status") as f:
                rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
            status = data.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status + " ":
                sys.exit(f"coldstart.py: first answer was {status!r}")
            print(f"ms={took * 1000:.1f} rss_mib={rss:.1f}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
