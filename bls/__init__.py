"""Mask R-CNN on Triton: everything the Python models do, importable without Triton.

One subpackage per concept, each depending only on those above it:

- ``bls.errors``: the errors a client can act on, and their Triton codes.
- ``bls.contract``: what is declared once: tensors (tensors.py), the export's model
  metadata (metadata.py) and every parameter (parameters.py).
- ``bls.pipeline``: the image and mask pipeline, pure functions over numpy (or torch on
  a device): prepare -> model call -> finish.
- ``bls.backend``: the Triton-facing layer all the Python models share: request
  parsing, responses, metrics, process settings, the model.py adapter.
- ``bls.monitoring``: the monitoring model: sending policy, event format, statistics,
  drift, capture, metrics, alert streams, and its request handling (service.py).
- ``bls.orchestration``: what runs the pipeline inside Triton: pipeline_bls's BLS
  orchestration (orchestrator.py), its monitoring events sent off the request path
  (sender.py), and the ensemble's two Python steps (ensemble.py).
- ``bls.testing``: a faithful double of ``triton_python_backend_utils`` to test any of
  them (and users' own BLS models) without a server.

``pb_utils`` is passed in where Triton is needed; torch is imported only by
bls/pipeline/device.py (and image.resize_torch). Each models/*/1/model.py is a thin
adapter over this package; docs/architecture.md walks a request through it.
"""
