"""Signed webhook delivery: Standard Webhooks signatures, SSRF-guarded HTTP, retries on Celery.

Modules, one concept each:

``signing``   sign bodies the Standard Webhooks way (``webhook-id/-timestamp/-signature``).
``receiver``  verify deliveries on the receiving side (for Python users of batchrender).
``events``    the versioned event envelope, deterministic event ids, the event filter.
``ssrf``      URL and address policy, and an HTTP client pinned to the validated address.
``delivery``  one HTTP attempt and its classification (delivered / retry / gone / dead).
``store``     the Redis delivery log: event records, attempts, indexes, dead letters.
``tasks``     the Celery task, ``enqueue_event`` and ``replay``.
``cli``       ``batchrender webhooks deliveries|replay``.
"""
