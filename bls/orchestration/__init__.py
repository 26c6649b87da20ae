"""What runs the pipeline inside Triton: pipeline_bls's BLS orchestration
(orchestrator.py) with its monitoring events sent off the request path (sender.py), and
the ensemble's two Python steps (ensemble.py)."""
