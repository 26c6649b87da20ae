"""pipeline_bls's side of Triton's Python backend: reading requests (request.py),
answering them (responses.py), its own metrics (metrics.py), process settings
(process.py), the BLS orchestration (orchestrator.py) and monitoring events sent off the
request path (sender.py). ``pb_utils`` is passed in, so bls.testing's double runs all of
it."""
