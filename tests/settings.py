"""Settings for the test process: the real settings, with this run's own Redis key prefix.

Set before the real settings are read (pytest-django reads them before any conftest), so the test
process and the servers it starts write under one prefix that no other run, and no deployment
sharing the Redis, uses.
"""

import os
import uuid

os.environ.setdefault("REDIS_KEY_PREFIX", f"chatbot-test-{uuid.uuid4().hex[:8]}")

from chatbot_site.settings import *  # noqa: F403

# Counter increments made by the test process itself are written when read, inside the test's own
# transaction, never by a thread that would outlive the test.
COUNTERS_BACKGROUND_FLUSH = False
