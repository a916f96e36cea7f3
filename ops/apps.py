from __future__ import annotations

import asyncio
import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        from core import runtime
        from ops import checks  # noqa: F401 - registers the deployment checks

        runtime.on_start(_warm_on_start)


def _warm_on_start(loop: asyncio.AbstractEventLoop) -> None:
    """[ollama] warm_on_start: load the configured model in the background as the server starts."""
    from django.conf import settings

    if settings.OLLAMA_WARM_ON_START:
        loop.create_task(_warm())


async def _warm() -> None:
    from core.errors import ApiError
    from ops.services import warm_model

    try:
        result = await warm_model()
    except ApiError as exc:
        logger.warning("warm_on_start: could not load the model: %s", exc.message)
        return
    logger.info("warm_on_start: %s loaded in %s ms", result["model"], result["elapsed_ms"])
