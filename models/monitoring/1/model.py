"""monitoring: statistics, drift alerts, sample capture and Prometheus metrics over the
events pipeline_bls sends it; alert streams for watchers. Decoupled.

A thin adapter: the request handling is bls/monitoring/service.py, tested through
bls.testing.
"""

import json

import triton_python_backend_utils as pb_utils

from bls.monitoring.service import MonitoringService


class TritonPythonModel:
    def initialize(self, args):
        self.service = MonitoringService(pb_utils, json.loads(args["model_config"]))

    def execute(self, requests):
        return self.service.execute(requests)  # None: each request answered by its sender

    def finalize(self):
        self.service.finalize()
