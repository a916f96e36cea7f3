"""Settings for the test process: the real settings, with this run's own Redis key prefix.

Set before the real settings are read (pytest-django reads them before any conftest), so the test
process and the servers it starts write under one prefix that no other run, and no deployment
sharing the Redis, uses.
"""

import os
import uuid

os.environ.setdefault("REDIS_KEY_PREFIX", f"chatbot-test-{uuid.uuid4().hex[:8]}")
# The suite counts upstream calls of repeated requests to test the cache itself: the rule that turns
# a sampled repeat into a fresh answer (on by default) is off for it, and on in the tests of the rule
# (tests/gateway/test_regenerate.py). Servers the tests start inherit the environment.
os.environ.setdefault("CACHE_REGENERATE_WITHIN_SECONDS", "0")

from chatbot_site.settings import *  # noqa: F403

# Counter increments made by the test process itself are written when read, inside the test's own
# transaction, never by a thread that would outlive the test.
COUNTERS_BACKGROUND_FLUSH = False
