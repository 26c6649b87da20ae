"""monitoring: statistics, drift alerts, sample capture and Prometheus metrics over the
events pipeline_bls sends it; alert streams for watchers. Decoupled.

A thin adapter over bls/monitoring/service.py MonitoringService.
"""

import triton_python_backend_utils as pb_utils

from bls.backend.adapter import python_model
from bls.monitoring.service import MonitoringService

TritonPythonModel = python_model(pb_utils, MonitoringService)
