"""The monitoring model, and what pipeline_bls needs to talk to it.

When to send
(policy.py), what is sent (event.py), what monitoring computes (aggregate.py, drift.py,
capture.py), how it is exported (metrics.py) and streamed (subscriptions.py), and its
request handling (queue.py, service.py)."""
