"""mask_rcnn/1/model.py of a stand-in repository (benchmarks/standin.py): answers each
request after ``latency_ms`` with synthetic detections, under the real contract."""

import json
import time

import triton_python_backend_utils as pb_utils

from standin import StandIn


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        values = json.loads(config["parameters"]["standin"]["string_value"])
        self.latency_s = float(values["latency_ms"]) / 1000
        self.input_name = config["input"][0]["name"]
        names = [o["name"] for o in config["output"]]
        masks = [o for o in config["output"] if o["name"].startswith("masks__")]
        resolution = int(masks[0]["dims"][-1]) if masks else None
        self.standin = StandIn(names, int(values["detections"]), resolution)

    def execute(self, requests):
        responses = []
        for request in requests:
            started = time.perf_counter()
            shape = pb_utils.get_input_tensor_by_name(request, self.input_name).shape()
            outputs = self.standin(int(shape[-2]), int(shape[-1]))
            left = self.latency_s - (time.perf_counter() - started)
            if left > 0:
                time.sleep(left)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses
