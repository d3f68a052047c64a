"""The engine every primitive is built on.

Pure parsing and validation (``_parse``, ``_validate``), clocks (``_clock``),
the shared view of one object with its compare-and-swap / guarded-patch loop
and watch (``_hub``), expiry judged on the observer's own clock (``_expiry``),
renewals and holders' own deadlines (``_renewal``), grants and their exits
(``_grant``), watch-driven waiting (``_waiting``), a client's runtime
(``_runtime``), and the queued-grant engine shared by semaphore, mutex and
read-write mutex (``_queue_state`` pure transitions, ``_queued`` the waiting
and clean-up). The primitives themselves live in ``konductor._primitives``.
"""
