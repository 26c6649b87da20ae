"""A test double of Triton's Python-backend module ``triton_python_backend_utils``, to
unit-test a BLS model.py without a server (guide: bls/testing/README.md).

    double = TritonDouble({"mask_rcnn": lambda inputs, params: {"boxes": ...}})
    with double.installed():                               # import gives the double
        model = double.load_model(repo / "pipeline_bls")   # initialize() has run
        [response] = double.execute(model, [double.request({"image": array})])
    assert not response.has_error()

It behaves like the python_backend r24.10 stub where a model can tell: one persistent
event loop for ``async def execute`` whose default executor serves ``async_exec``, the
response sender's rules, requests released when ``execute`` returns, BLS refused outside
``execute``, the stub's answer to an ``execute`` that raises.
"""

from bls.testing.api import (TRITON_STRING_TO_NUMPY, TRITONSERVER_MEMORY_CPU,
                             TRITONSERVER_MEMORY_CPU_PINNED, TRITONSERVER_MEMORY_GPU,
                             TRITONSERVER_RESPONSE_COMPLETE_FINAL, InferenceRequest,
                             InferenceResponse, InferenceResponseSender, Logger, LogLevel, Metric,
                             MetricFamily, PreferredMemory, RequestReleased,
                             Tensor, TritonError, TritonModelException,
                             get_input_config_by_name, get_input_tensor_by_name,
                             get_output_config_by_name, get_output_tensor_by_name,
                             triton_string_to_numpy, using_decoupled_model_transaction_policy)
from bls.testing.double import MODULE_NAME, ModelCallable, TritonDouble, model_config_dict

__all__ = [
    "MODULE_NAME", "ModelCallable", "TritonDouble", "model_config_dict",
    "TRITON_STRING_TO_NUMPY", "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_CPU_PINNED",
    "TRITONSERVER_MEMORY_GPU", "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "InferenceRequest",
    "InferenceResponse", "InferenceResponseSender", "Logger", "LogLevel", "Metric",
    "MetricFamily",
    "PreferredMemory", "RequestReleased", "Tensor", "TritonError",
    "TritonModelException", "get_input_config_by_name", "get_input_tensor_by_name",
    "get_output_config_by_name", "get_output_tensor_by_name", "triton_string_to_numpy",
    "using_decoupled_model_transaction_policy",
]
