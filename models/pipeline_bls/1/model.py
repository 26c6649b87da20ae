"""pipeline_bls: encoded image -> detections, calling mask_rcnn through BLS.

A thin adapter: the orchestration (reading requests, answering each once, model calls,
monitoring events, drained stops) is bls/backend/orchestrator.py, tested through bls.testing.
"""

import json

import triton_python_backend_utils as pb_utils

from bls.backend.orchestrator import PipelineOrchestrator


class TritonPythonModel:
    def initialize(self, args):
        self.pipeline = PipelineOrchestrator(pb_utils, json.loads(args["model_config"]))

    def execute(self, requests):
        return self.pipeline.execute(requests)  # None: each request answered by its sender

    def finalize(self):
        self.pipeline.finalize()
