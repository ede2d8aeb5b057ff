"""kopf handlers: unpack, call the reconciler, return. Loaded by `kopf run -m rerank_operator.handlers`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from rerank_operator.kube import KubeClient
from rerank_operator.naming import RETRY_ANNOTATION, retry_token
from rerank_operator.reconciler import reconcile
from rerank_operator.settings import GROUP, PLURAL, VERSION, OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec

# Timers tick at a fixed rate (kopf fixes the interval when the module is imported); each object reconciles
# only when settings.reconcile_interval has passed, so the interval stays a runtime setting.
TIMER_TICK_SECONDS = 1.0
_locks_guard = threading.Lock()


class QuietTimerTicks(logging.Filter):
    """Drops kopf's "Timer ... succeeded." line, logged on every tick (most ticks do nothing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timer 'on_timer' succeeded" not in record.getMessage()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Read the operator's settings once and build the one API client every handler shares."""
    config = OperatorSettings()
    memo.config = config
    memo.kube = KubeClient.from_environment(config.field_manager)
    # Handler progress in annotations: the status belongs to the RerankModel's own schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.ERROR  # kopf's per-handler Events only on errors; ours tell transitions
    settings.watching.server_timeout = 300
    logging.getLogger("kopf.objects").addFilter(QuietTimerTicks())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per pod poll otherwise


def _lock(memo: kopf.Memo) -> threading.Lock:
    # The timer and change handlers of one object may run concurrently in kopf's thread pool.
    with _locks_guard:
        if "lock" not in memo:
            memo.lock = threading.Lock()
        lock: threading.Lock = memo.lock
        return lock


def _run(body: kopf.Body, memo: kopf.Memo, logger: Any) -> None:
    meta = body["metadata"]
    model = ModelIdentity(
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        generation=int(meta.get("generation", 1)),
        retry_token=retry_token((meta.get("annotations") or {}).get(RETRY_ANNOTATION)),
    )
    spec = RerankModelSpec.model_validate(dict(body["spec"]))
    with _lock(memo):
        reconcile(model, spec, dict(body.get("status") or {}), memo.config, memo.kube, logger)
        memo.last_reconcile = time.monotonic()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create, spec change, operator restart: one reconcile."""
    _run(body, memo, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_TICK_SECONDS, initial_delay=TIMER_TICK_SECONDS)
def on_timer(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Periodic reconcile: progress of Jobs and rollouts, servingVersion from the pods, drift repair."""
    if time.monotonic() - memo.get("last_reconcile", 0.0) < memo.config.reconcile_interval:
        return
    _run(body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(logger: Any, **_: Any) -> None:
    """Owned objects go through garbage collection (ownerReferences); no finalizer is needed."""
    logger.info("deleted; owned objects are garbage-collected, the claim follows its delete policy")
