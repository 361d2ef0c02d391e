"""GET a URL, retrying while the sidecars start: prints the body, the status to stderr.

    python3 examples/get.py http://127.0.0.1:16001/

Retries a refused connection or a 503 (a sidecar whose upstream is not listening yet)
for up to 30 seconds, so a script can run it right after starting the sidecars in the
background. Exit status 0 for a 2xx answer, else 1. Standard library only.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def get(url: str, patience: float = 30.0) -> int:
    deadline = time.monotonic() + patience
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                sys.stdout.buffer.write(response.read())
                print(response.status, response.reason, file=sys.stderr)
                return 0
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                print(exc.code, exc.reason, file=sys.stderr)
                return 1
        except (ConnectionError, urllib.error.URLError) as exc:
            if time.monotonic() > deadline:
                print(f"no answer from {url}: {exc}", file=sys.stderr)
                return 1
        time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(get(sys.argv[1]))
