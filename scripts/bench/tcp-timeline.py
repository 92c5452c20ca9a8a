#!/usr/bin/env python3
"""Where the time of an HTTP/1.1 client's session goes, from the outside.

Reads the text of `tcpdump -i lo -tt -nn -A -s 200 'tcp port PORT'` and, per connection, splits the time
into "server" (from the first byte of a request to the last byte of its answer) and "client" (from that
last byte to the client's next request), summed by kind (narinfo, NAR, other), and lists the slowest
answers. Used to take apart a cold `nix copy --from` (docs/benchmarks.md, "The cold closure copy"):

    tcpdump -i lo -tt -nn -A -s 200 'tcp port 37515' > cap.txt &   # then the copy, then stop tcpdump
    scripts/bench/tcp-timeline.py cap.txt 37515
"""
import collections
import re
import sys

HEADER = re.compile(r"(\d+\.\d+) IP [\d.]+\.(\d+) > [\d.]+\.(\d+): .* length (\d+)")
REQUEST = re.compile(r"(GET|HEAD|PUT|POST) (\S+)")


def main(path, port):
    conns = collections.defaultdict(list)
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                t, sport, dport, n = float(m[1]), m[2], m[3], int(m[4])
                current = None
                if n == 0:
                    continue
                if dport == port:
                    conns[sport].append(["req", t, ""])
                    current = conns[sport][-1]
                elif sport == port:
                    conns[dport].append(["resp", t, ""])
                continue
            if current is not None and not current[2]:
                r = REQUEST.search(line)
                if r:
                    current[2] = f"{r[1]} {r[2]}"
    server = collections.Counter()
    client = 0.0
    count = collections.Counter()
    answers = []
    for events in conns.values():
        request, last = None, None
        for kind, t, what in events + [["req", None, ""]]:
            if kind == "resp":
                last = t
                continue
            if request is not None and last is not None:
                k = "nar" if "/nar/" in request[2] else "narinfo" if ".narinfo" in request[2] else "other"
                server[k] += last - request[1]
                count[k] += 1
                answers.append((last - request[1], request[2]))
                if t is not None:
                    client += t - last
            request, last = ([kind, t, what] if t is not None else None), None
    print(f"connections {len(conns)}, answers {sum(count.values())}")
    for k in sorted(server):
        print(f"server {k}: {count[k]} answers, {server[k]:.3f} s")
    print(f"server total {sum(server.values()):.3f} s, client (last byte to next request) {client:.3f} s")
    for d, what in sorted(answers, reverse=True)[:10]:
        print(f"  {d * 1000:7.1f} ms  {what[:90]}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
