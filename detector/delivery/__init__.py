"""Alert delivery: the last stage of the flow (store outbox → HTTP receivers).

``formats`` renders an outbox payload for one destination format, ``transport`` POSTs it (signed,
with timeouts, secrets redacted from every error), ``policy`` decides retry or dead letter, and
``worker`` runs one asyncio task per webhook that drains the outbox. ``sendtest`` backs
``detector send-test``.
"""
