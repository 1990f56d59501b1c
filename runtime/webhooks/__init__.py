"""Webhooks (ojs-webhooks.md): lifecycle events pushed to subscriber URLs.

``model`` is the wire shape of a subscription and the event filter, ``signing`` the HMAC,
``sender`` one outbound HTTP attempt, ``delivery`` the loop every server process runs. Storage and
the delivery state machine are in :mod:`runtime.broker.webhooks`.
"""
