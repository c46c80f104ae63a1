"""modelship's local Kubernetes test bed.

Every address the test bed uses is on loopback, so a proxy is never wanted: proxy
variables would route 127.x traffic through it (httpx and the kubernetes client both honour
them). They are dropped for this process and everything it starts.
"""

import os

for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
