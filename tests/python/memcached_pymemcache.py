#!/usr/bin/env python3
"""restmq's memcached door driven by pymemcache, a real memcached client.

Usage: memcached_pymemcache.py HOST PORT HTTP_URL

Exits non-zero on any failure. When pymemcache cannot be imported, it prints
a notice and exits 0, unless the environment variable CI is set: then it fails.
"""

import json
import os
import sys
import urllib.parse
import urllib.request

try:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheClientError, MemcacheServerError
except ImportError as missing:
    if os.environ.get("CI"):
        print(f"pymemcache is required under CI: {missing}", file=sys.stderr)
        sys.exit(1)
    print(f"skipping: pymemcache is not installed ({missing})")
    sys.exit(0)


def http_pop(base, queue):
    """GET /q/<queue>: (key, value), or None when empty (204)."""
    url = f"{base}/q/{urllib.parse.quote(queue, safe='')}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        if answer.status == 204:
            return None
        body = json.loads(answer.read().decode())
        return body["key"], body["value"]


def http_publish(base, queue, value):
    """POST /q/<queue> value=…: the key."""
    url = f"{base}/q/{urllib.parse.quote(queue, safe='')}"
    data = urllib.parse.urlencode({"value": value}).encode()
    with urllib.request.urlopen(url, data=data, timeout=10) as answer:
        assert answer.status == 200, answer.status
        return answer.read().decode().strip()


def raises(kind, call):
    """Asserts that call() raises kind."""
    try:
        call()
    except kind:
        return
    raise AssertionError(f"expected {kind.__name__}")


def main():
    host, port, base = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
    client = Client((host, port), connect_timeout=10, timeout=10)

    # set enqueues, get dequeues, in order.
    assert client.set("py", "hello", noreply=False) is True
    assert client.set("py", "world", noreply=False) is True
    assert client.set("py", b"third")  # noreply, pymemcache's default
    assert client.get("py") == b"hello"
    assert client.get("py") == b"world"
    assert client.get("py") == b"third"
    assert client.get("py") is None

    # get_many: one value per queue, missing queues left out.
    client.set("pa", "1", noreply=False)
    client.set("pb", "2", noreply=False)
    assert client.get_many(["pa", "pb", "pnone"]) == {"pa": b"1", "pb": b"2"}

    # gets: the cas unique is the message's number; peek leaves the head.
    client.set("pg", "v", noreply=False)
    assert client.get("pg/peek") == b"v"
    value, cas = client.gets("pg")
    assert value == b"v" and cas == b"1", (value, cas)

    # UTF-8 text round trip, and a value with CRLF inside.
    client.set("pu", "h\u00e9llo \u2713".encode(), noreply=False)
    assert client.get("pu").decode() == "h\u00e9llo \u2713"
    client.set("pu", b"a\r\nb", noreply=False)
    assert client.get("pu") == b"a\r\nb"

    # add enqueues like set; the others are refused.
    assert client.add("padd", "x", noreply=False) is True
    assert client.get("padd") == b"x"
    raises(MemcacheClientError, lambda: client.replace("padd", "y", noreply=False))
    raises(MemcacheClientError, lambda: client.append("padd", "y", noreply=False))
    raises(MemcacheClientError, lambda: client.prepend("padd", "y", noreply=False))
    raises(MemcacheClientError, lambda: client.cas("padd", "y", b"1", noreply=False))
    raises(MemcacheClientError, lambda: client.incr("padd", 1, noreply=False))
    raises(MemcacheClientError, lambda: client.flush_all(noreply=False))
    assert client.get("padd") is None

    # Too large (the default --max-body is 1 MiB): refused, the connection in step.
    raises(MemcacheServerError, lambda: client.set("pbig", "x" * (1024 * 1024 + 1), noreply=False))
    assert client.get("pbig") is None
    # Not UTF-8.
    raises(MemcacheClientError, lambda: client.set("pbin", b"\xff\xfe", noreply=False))

    # delete purges: True when there were messages.
    client.set("pdel", "1", noreply=False)
    client.set("pdel", "2", noreply=False)
    assert client.delete("pdel", noreply=False) is True
    assert client.delete("pdel", noreply=False) is False
    assert client.get("pdel") is None

    # Interop with HTTP, both ways.
    client.set("pinterop", "to http", noreply=False)
    assert http_pop(base, "pinterop") == ("pinterop:1", "to http")
    assert http_publish(base, "pinterop", "from http") == "pinterop:2"
    assert client.get("pinterop") == b"from http"

    # version and stats.
    version = client.version()
    assert version and version[0:1].isdigit(), version
    stats = client.stats()
    assert stats[b"cmd_set"] >= 10, stats
    assert stats[b"curr_connections"] >= 1, stats
    assert b"queue_pa_items" in stats, stats

    client.quit()
    print("pymemcache: every check passed")


if __name__ == "__main__":
    main()
