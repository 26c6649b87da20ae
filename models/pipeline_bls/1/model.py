"""pipeline_bls: encoded image -> detections, calling mask_rcnn through BLS.

A thin adapter over bls/orchestration/orchestrator.py PipelineOrchestrator (reading
requests, answering each once, model calls, monitoring events, drained stops).
"""

import triton_python_backend_utils as pb_utils

from bls.backend.adapter import python_model
from bls.orchestration.orchestrator import PipelineOrchestrator

TritonPythonModel = python_model(pb_utils, PipelineOrchestrator)
