"""The documentation's own client: Python requests, as a user of the service would write it.

    requests_peer.py BASE_URL N     N sequential status reads of one task over one Session

One Session (so the connection is reused), the task id as a query parameter, the answer parsed
with r.json() and its status checked. Prints "wall=<s> cpu=<s> n=<N>".
Run with Debian's /usr/bin/python3 and python3-requests.
"""
import sys
import time

import requests


def main():
    base, n = sys.argv[1], int(sys.argv[2])
    session = requests.Session()
    session.headers.update({"Authorization": "Bearer bench-key", "Accept": "application/json"})
    url = base + "/api/v1/task/get"
    t0, c0 = time.monotonic(), time.process_time()
    for _ in range(n):
        r = session.get(url, params={"task_id": "bench-1"}, timeout=60)
        r.raise_for_status()
        doc = r.json()
        if doc["code"] != 200 or doc["nano_banana_pro_output"]["status"] != "success":
            sys.exit("unexpected answer: %r" % doc)
    print("wall=%.6f cpu=%.6f n=%d" % (time.monotonic() - t0, time.process_time() - c0, n))


if __name__ == "__main__":
    main()
