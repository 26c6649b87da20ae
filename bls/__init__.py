"""Mask R-CNN on Triton: the pipeline's logic, pipeline_bls's orchestration
(orchestrator.py, events.py), monitoring, and the config and tensor contracts.

Importable without triton_python_backend_utils or torch: ``pb_utils`` is passed in where
Triton is needed, so bls.testing's double can stand in for it; torch only in device.py.
Every model.py in the repository is a thin adapter over this package.
"""
