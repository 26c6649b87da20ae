"""bls.testing's double against the real stub: the same toy models (tests/conformance/models:
BYTES inputs, requested outputs, the sender's rules, an execute that raises, BLS refused and
failing, logging, metrics, decoupled responses, answers after execute returned) run once
through the double and once on the embedded server (Triton 2.51, python_backend r24.10),
and give the same outcomes: the same outputs, or the same error code and message. What
the double does not reproduce: bls/testing/README.md, 'What it does not do'."""

import queue
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from bls.backend.responses import code_name
from bls.testing import TritonDouble
from server.launcher import TritonServer

MODELS = Path(__file__).parent / "conformance" / "models"
X = {"x": np.array([5], np.int32)}
CASES = {  # case -> (model, inputs, the outputs the client names: None for none)
    "BYTES reach the model as bytes": ("bytes_echo", {"text": np.array([b"\xff\x00raw"], object)},
                                       None),
    "text sent as BYTES arrives as bytes": ("bytes_echo", {"text": np.array(["é"], object)},
                                            None),
    "no outputs named: every output": ("outputs_echo", X, None),
    "one output named: that one": ("outputs_echo", X, ["other"]),
    "the sender's refusal": ("sender_rules", X, None),
    "an execute that raises": ("raises", X, None),
    "BLS refused and failing": ("bls_calls", X, None),
    "logging levels": ("logging", X, None),
    "metric kinds": ("metrics", X, None),
    "decoupled: three responses": ("decoupled_three", X, None),
    "answered after execute returned": ("answers_later", X, None),
}


def outcome(response_or_error) -> object:
    """Outputs by name as lists, or ("error", code, message): comparable across both sides."""
    if isinstance(response_or_error, tuple):
        return response_or_error
    return {name: value.tolist() for name, value in sorted(response_or_error.items())}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The toy models' repository, served; the double loads the same files."""
    repository = tmp_path_factory.mktemp("conformance") / "repository"
    shutil.copytree(MODELS, repository)
    with TritonServer(repository) as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as client:
        yield repository, client


def on_server(client, model: str, inputs: dict, outputs) -> list:
    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    asked = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    config = client.get_model_config(model).config
    names = [o.name for o in config.output]
    if config.model_transaction_policy.decoupled:
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(model, tensors, outputs=asked)
            got = [answers.get(timeout=30) for _ in range(3)]
        finally:
            client.stop_stream()
        return [outcome({n: r.as_numpy(n) for n in names if r.as_numpy(n) is not None})
                for r, _ in got]
    try:
        result = client.infer(model, tensors, outputs=asked, client_timeout=60)
    except InferenceServerException as e:
        return [outcome(("error", str(e.status()).removeprefix("StatusCode."), e.message()))]
    return [outcome({n: result.as_numpy(n) for n in names if result.as_numpy(n) is not None})]


def in_double(repository: Path, model_name: str, inputs: dict, outputs) -> list:
    double = TritonDouble()
    with double.installed():
        model = double.load_model(repository / model_name)
        request = double.request(inputs, requested_output_names=outputs)
        decoupled = model_name == "decoupled_three"
        answered = double.execute(model, [request])
        if decoupled or answered is None:
            double.wait_closed([request])
            answered = [r for r in request.sender.responses if r.output_tensors()]
        got = []
        for response in answered:
            if response.has_error():
                error = response.error()
                got.append(outcome(("error", code_name(double.module, error.code()),
                                    error.message())))
            else:
                got.append(outcome({t.name(): t.as_numpy() for t in response.output_tensors()}))
        if hasattr(model, "finalize"):
            model.finalize()
        return got


@pytest.mark.server
@pytest.mark.parametrize("case", CASES)
def test_the_double_answers_as_the_server(served, case):
    model, inputs, outputs = CASES[case]
    repository, client = served
    server_side = on_server(client, model, inputs, outputs)
    assert in_double(repository, model, inputs, outputs) == server_side, f"server: {server_side}"


def test_every_toy_model_has_a_case():
    assert {model for model, _, _ in CASES.values()} == {p.name for p in MODELS.iterdir()}
