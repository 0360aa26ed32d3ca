"""The site's settings, with one change for the test suite: a fast password hasher.

PBKDF2's million rounds cost about 0.3 s per new user or login on a small machine; the suite
creates and logs in users hundreds of times. Node processes started by the tests use this
module too, so they can check the passwords the tests stored.
"""

from nocobase_site.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

import os  # noqa: E402

# Pacing off unless a test (or a node a test starts) turns it on: the test client's requests would
# otherwise make pressure that paces the same process's in-process jobs (tests/test_pacing.py).
if not os.environ.get("WORKER_MODE_PACING_BUDGET"):
    WORKER_MODE_PACING_BUDGET = 0
