"""The worker's health file: a file the worker's main process touches while it consumes its queues.

A Celery worker serves no port, so Kubernetes probes it with a command that checks the file's age
(k8s/base/worker/): fresh means the main process's event loop runs and is connected to the broker.
The touch is a timer of that event loop, so a hung loop, or a broker out of reach (the consumer
then waits to reconnect), lets the file go stale. Tasks run in the pool's children and never delay
it. The file is removed when the process starts, so a restarted container is not taken for
healthy on its predecessor's file, and when the worker shuts down.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)

# How often the file is touched; the probes allow several missed touches (k8s/base/worker/).
TOUCH_INTERVAL_SECONDS = 5.0


class HealthFileStep(bootsteps.StartStopStep):
    """A consumer bootstep: started once the worker consumes its queues, stopped when the consumer
    stops (a lost broker connection restarts it) and at shutdown."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path = Path(parent.app.conf.lomas_health_file)
        self.touching: Any = None  # the event loop's repeating timer entry

    def touch(self) -> None:
        try:
            self.path.touch()
        except OSError:
            log.exception("could not touch the health file %s", self.path)

    def start(self, parent: Any) -> None:
        self.touch()
        self.touching = parent.timer.call_repeatedly(TOUCH_INTERVAL_SECONDS, self.touch)

    def stop(self, parent: Any) -> None:
        # The file is left to go stale: a short broker outage must not fail a liveness probe at once.
        if self.touching is not None:
            self.touching.cancel()
            self.touching = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        self.path.unlink(missing_ok=True)


def install_health_file(app: Celery, path: str) -> None:
    """Have `app`'s worker keep `path` fresh while it consumes (nothing when `path` is empty)."""
    if not path:
        return
    Path(path).unlink(missing_ok=True)
    app.conf.lomas_health_file = path
    app.steps["consumer"].add(HealthFileStep)
