"""Container health probe: `python -m genai_service.healthcheck` exits 0 when the service is ready.

Used by the image's HEALTHCHECK and Compose; the slim image has no curl, and Python is there.
It asks /health/ready on PORT (default 8000) over loopback.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("PORT", "8000")
    url = os.environ.get("HEALTHCHECK_URL", f"http://127.0.0.1:{port}/health/ready")
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        # `docker inspect` shows this line: the service's own reason (a failed load says how
        # to fix it) beats "HTTP Error 503".
        try:
            reason = json.loads(exc.read()).get("reason")
        except (ValueError, OSError, AttributeError):
            reason = None
        print(f"not ready: {reason or exc}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
