"""The site's settings, with one change for the test suite: a fast password hasher.

PBKDF2's million rounds cost about 0.3 s per new user or login on a small machine; the suite
creates and logs in users hundreds of times. Node processes started by the tests use this
module too, so they can check the passwords the tests stored.
"""

from nocobase_site.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
