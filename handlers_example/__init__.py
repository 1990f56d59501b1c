"""Example handlers, served by ``make run`` (``ojs-run handlers_example``).

Importing the package registers everything: one module per kind of work.

* :mod:`.notifications` -- ``email.send``: I/O-bound, async.
* :mod:`.reports` -- ``report.build``: CPU-bound, sync (runs in the pool's thread pool).
* :mod:`.media` -- ``video.transcode``: long-running, reports progress, resumes from a checkpoint.
* :mod:`.webhooks` -- ``webhook.deliver``: fails while the endpoint is "down" and is retried.
* :mod:`.timing` -- an execution middleware that logs each job's duration.

Enqueue a sample of each with ``python -m handlers_example.produce`` (see that module).
"""

from handlers_example import media, notifications, reports, timing, webhooks

__all__ = ["media", "notifications", "reports", "timing", "webhooks"]
