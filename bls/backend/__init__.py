"""The Triton-facing layer every Python model of this project shares: reading requests
(request.py), answering them (responses.py), metrics (metrics.py), process settings
(process.py) and the model.py adapter (adapter.py). ``pb_utils`` is passed in, so
bls.testing's double runs all of it."""
