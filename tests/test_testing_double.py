"""bls.testing, the triton_python_backend_utils double, against what the real stub
(python_backend r24.10) does: the event loop and its executor, requests released when
execute returns, the response sender's rules, failed sends, an execute that raises,
cancellation, BLS outside execute, the config helpers. Toy models only."""

import asyncio
import json
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from bls.testing import (MODULE_NAME, TRITONSERVER_RESPONSE_COMPLETE_FINAL as FINAL,
                         InferenceResponse, InferenceResponseSender, Logger, RequestReleased,
                         TritonDouble, TritonError, TritonModelException)

BLS_REFUSED = "BLS is only supported during the 'execute' function."


def setup(double, model, decoupled=False):
    config = {"name": "toy"}
    if decoupled:
        config["model_transaction_policy"] = {"decoupled": True}
    return double.initialize(model, config)


def bls(pb, model, **kwargs):
    """A BLS request with the arguments the stub requires (inputs, outputs, model)."""
    return pb.InferenceRequest(**{"inputs": [], "requested_output_names": [],
                                  "model_name": model} | kwargs)


def values(response):
    return {t.name(): t.as_numpy().tolist() for t in response.output_tensors()}


def eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --------------------------------------------------------------------------- threads
def test_plain_execute_and_exec_run_in_the_calling_thread():
    threads = []
    double = TritonDouble({"inc": lambda inputs, _: threads.append(threading.get_ident())
                           or {"y": inputs["x"] + 1}})
    pb = double.module

    class Toy:
        def execute(self, requests):
            threads.append(threading.get_ident())
            return [pb.InferenceResponse(pb.InferenceRequest(
                model_name="inc", inputs=[pb.get_input_tensor_by_name(r, "x")],
                requested_output_names=["y"]).exec().output_tensors()) for r in requests]

    [response] = double.execute(setup(double, Toy()), [double.request({"x": np.array([1])})])
    assert values(response) == {"y": [2]}
    assert threads == [threading.get_ident()] * 2
    assert [c.model_name for c in double.calls] == ["inc"]


def test_async_execute_runs_on_one_persistent_loop_whose_tasks_outlive_execute():
    double = TritonDouble()
    pb = double.module
    seen, gate, finished = [], threading.Event(), threading.Event()

    class Toy:
        async def execute(self, requests):
            loop = asyncio.get_running_loop()
            seen.append((loop, threading.current_thread()))

            async def later():
                await loop.run_in_executor(None, gate.wait, 5)
                finished.set()
            self.task = loop.create_task(later())
            return [pb.InferenceResponse([]) for _ in requests]

    model = setup(double, Toy())
    double.execute(model, [double.request({})])
    assert not finished.is_set()  # still running after execute returned
    double.execute(model, [double.request({})])
    (loop, thread), (loop_again, thread_again) = seen
    assert loop is loop_again and thread is thread_again
    assert thread is not threading.main_thread() and thread.daemon
    gate.set()
    assert finished.wait(5)
    double.close()
    assert not thread.is_alive() and loop.is_closed()


@pytest.mark.parametrize("threads,answered", [(2, False), (3, True)])
def test_async_exec_waits_for_a_thread_of_the_loops_default_executor(threads, answered):
    """Two BLS calls hang: with two executor threads the next call waits for one of
    them, with three it goes through."""
    gate = threading.Event()
    double = TritonDouble({"hang": lambda *_: gate.wait(10) and {"y": np.zeros(1)},
                           "fast": lambda *_: {"y": np.ones(1)}}, executor_threads=threads)
    pb = double.module

    class Toy:
        async def execute(self, requests):
            self.held = [asyncio.ensure_future(bls(pb, "hang")
                                               .async_exec()) for _ in range(2)]
            try:
                await asyncio.wait_for(bls(pb, "fast").async_exec(), 0.5)
                self.answered = True
            except asyncio.TimeoutError:
                self.answered = False
            return [pb.InferenceResponse([]) for _ in requests]

    model = setup(double, Toy())
    try:
        double.execute(model, [double.request({})])
    finally:
        gate.set()
    assert model.answered is answered
    double.close()


# --------------------------------------------------------------------------- release
def test_requests_are_unusable_after_execute_returns_but_their_senders_are_not():
    double = TritonDouble()
    pb = double.module

    class Toy:
        def execute(self, requests):
            [self.kept] = requests
            self.sender = self.kept.get_response_sender()
            self.during = (self.kept.request_id(), json.loads(self.kept.parameters()),
                           pb.get_input_tensor_by_name(self.kept, "x").as_numpy().tolist(),
                           self.kept.is_cancelled())
            return [pb.InferenceResponse([])]

    model = setup(double, Toy())
    double.execute(model, [double.request({"x": np.array([5])}, {"k": "v"}, request_id="r7")])
    assert model.during == ("r7", {"k": "v"}, [5], False)
    uses = [("inputs", lambda r: r.inputs()), ("parameters", lambda r: r.parameters()),
            ("is_cancelled", lambda r: r.is_cancelled()),
            ("request_id", lambda r: r.request_id()),
            ("get_response_sender", lambda r: r.get_response_sender()),
            ("inputs", lambda r: pb.get_input_tensor_by_name(r, "x"))]
    for what, use in uses:
        with pytest.raises(RequestReleased, match=f"request r7: {what}\\(\\) used after "
                                                  "execute returned"):
            use(model.kept)
    assert issubclass(RequestReleased, pb.TritonModelException)
    assert model.sender.is_cancelled() is False


def test_a_task_that_reads_its_request_after_execute_returned_leaves_it_unanswered():
    double = TritonDouble()
    pb = double.module

    class Late:
        async def execute(self, requests):
            async def answer(request):
                await asyncio.sleep(0.2)  # execute has returned by then
                try:
                    pb.get_input_tensor_by_name(request, "x")
                except pb.TritonModelException as e:
                    self.error = e
            self.task = asyncio.get_running_loop().create_task(answer(requests[0]))
            return None

    model = setup(double, Late())
    with pytest.raises(AssertionError, match=r"senders not closed after 1 s: request 0: 0 "
                                             r"response\(s\), final flag not sent, sender open"):
        double.execute(model, [double.request({"x": np.array([1])})], timeout=1)
    assert isinstance(model.error, RequestReleased)
    double.close()


# --------------------------------------------------------------------------- senders
def test_the_sender_follows_the_real_rules():
    response = InferenceResponse([])
    sender = InferenceResponseSender(decoupled=False)
    with pytest.raises(TritonModelException, match="^Unable to send response. Non-decoupled "
                       "model cannot send complete final before sending a response.$"):
        sender.send(flags=FINAL)
    with pytest.raises(TritonModelException, match="Unsupported flag provided"):
        sender.send(response, flags=2)
    with pytest.raises(TritonModelException, match="must be provided when the response flags"):
        sender.send(None, 0)
    sender.send(response)
    with pytest.raises(TritonModelException, match="^Unable to send response. Non-decoupled "
                       "model cannot send more than one response.$"):
        sender.send(response)
    sender.send(flags=FINAL)
    assert sender.closed and sender.final_sent and sender.responses == [response]
    with pytest.raises(TritonModelException, match="^Unable to send response. Response "
                       "sender has been closed.$"):
        sender.send(flags=FINAL)
    streaming = InferenceResponseSender(decoupled=True)
    streaming.send(response)
    streaming.send(response)
    streaming.send(flags=FINAL)
    assert streaming.closed and len(streaming.responses) == 2
    with pytest.raises(TritonModelException, match="has been closed"):
        streaming.send(response)


def test_a_failed_send_closes_the_sender_loses_the_response_and_execute_says_so():
    double = TritonDouble()
    pb = double.module

    class Toy:
        def execute(self, requests):
            self.errors = []
            for request in requests:
                sender = request.get_response_sender()
                try:
                    sender.send(pb.InferenceResponse([pb.Tensor("y", np.ones(1))]), FINAL)
                except pb.TritonModelException as e:
                    self.errors.append(str(e))
                    try:  # a retry is refused: the sender counted the failed send
                        sender.send(pb.InferenceResponse([]), FINAL)
                    except pb.TritonModelException as again:
                        self.errors.append(str(again))
            return None

    model = setup(double, Toy())
    requests = [double.request({}), double.request({})]
    double.fail_sends(1)
    with pytest.raises(AssertionError) as info:
        double.execute(model, requests, timeout=1)
    assert "request 0: 0 response(s), final flag not sent, sender closed; lost: a send " \
           "failed with TritonModelException" in str(info.value)
    assert "request 1" not in str(info.value)
    assert model.errors == [
        "the response could not be serialised (TritonDouble.fail_sends)",
        "Unable to send response. Non-decoupled model cannot send more than one response."]
    assert requests[0].sender.closed and requests[0].sender.responses == []
    assert values(requests[1].sender.responses[0]) == {"y": [1.0]}


def test_fail_sends_by_predicate_on_a_decoupled_model():
    double = TritonDouble()
    pb = double.module

    class Stream:
        def execute(self, requests):
            sender = requests[0].get_response_sender()
            sender.send(pb.InferenceResponse([pb.Tensor("y", np.ones(1))]))
            try:
                sender.send(pb.InferenceResponse(error=pb.TritonError("late")), FINAL)
            except RuntimeError as e:
                self.error = str(e)

    double.fail_sends(lambda response, flags: response is not None and response.has_error(),
                      RuntimeError("too big"))
    request, model = double.request({}), setup(double, Stream(), decoupled=True)
    assert double.execute(model, [request]) is None
    double.wait_closed([request], 1)
    assert model.error == "too big"
    assert len(request.sender.responses) == 1 and not request.sender.final_sent
    assert request.sender.closed and [str(e) for e in request.sender.lost] == ["too big"]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("is_async", [False, True])
def test_an_execute_that_raises_answers_every_open_request_with_the_stubs_error(is_async):
    double = TritonDouble()
    pb = double.module

    class Plain:
        def execute(self, requests):
            self.senders = [r.get_response_sender() for r in requests]
            raise ValueError("boom")

    class Async(Plain):
        async def execute(self, requests):
            return super().execute(requests)

    model = setup(double, Async() if is_async else Plain())
    frames = f"  {__file__}({Plain.execute.__code__.co_firstlineno + 2}): execute\n"
    if is_async:  # pybind11 names the frames from the deepest out
        frames += f"  {__file__}({Async.execute.__code__.co_firstlineno + 1}): execute\n"
    for response in double.execute(model, [double.request({}), double.request({})]):
        assert response.error().message() == (  # the stub's words (tests/test_conformance.py)
            "Failed to process the request(s) for model 'toy_0', message: ValueError: boom"
            f"\n\nAt:\n{frames}")
        assert response.error().code() == TritonError.INTERNAL
    with pytest.raises(TritonModelException, match="Response sender has been closed"):
        model.senders[1].send(pb.InferenceResponse([]), FINAL)
    double.close()


def test_returned_responses_are_checked_as_the_stub_does():
    double = TritonDouble()
    pb = double.module
    answer = pb.InferenceResponse([])

    class Toy:
        def execute(self, requests):
            return [answer] * self.count

    model = setup(double, Toy())
    model.count = 1
    [returned] = double.execute(model, [double.request({})])
    assert returned is answer
    model.count = 2
    [refused] = double.execute(model, [double.request({})])
    assert refused.error().message() == (
        "Failed to process the request(s) for model 'toy_0', message: Number of "
        "InferenceResponse objects do not match the number of InferenceRequest objects. "
        "InferenceRequest(s) size is:1, and InferenceResponse(s) size is:2")


def test_a_decoupled_async_execute_runs_in_the_background():
    double = TritonDouble()
    pb = double.module
    gate = threading.Event()

    class Stream:
        async def execute(self, requests):
            sender = requests[0].get_response_sender()
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 5)
            if requests[0].request_id() == "boom":
                raise ValueError("lost in the background")
            sender.send(pb.InferenceResponse([]), FINAL)

    model = setup(double, Stream(), decoupled=True)
    request = double.request({}, request_id="ok")
    assert double.execute(model, [request]) is None
    assert not request.sender.closed  # the double did not wait for it
    gate.set()
    double.wait_closed([request], 5)
    assert len(request.sender.responses) == 1
    eventually(lambda: request.released)
    failing = double.request({}, request_id="boom")
    double.execute(model, [failing])
    eventually(lambda: failing.released)
    assert "ValueError: lost in the background" in double.logged[-1][1]
    with pytest.raises(AssertionError, match="request 0: 0 response"):
        double.wait_closed([failing], 0.1)  # the stub only logs it: the client waits
    double.close()


# --------------------------------------------------------------------------- cancel
def test_cancel_shows_on_the_request_and_on_its_sender():
    double = TritonDouble()
    pb = double.module

    senders, seen = [], []

    class Toy:
        def execute(self, requests):
            for request in requests:
                senders.append(request.get_response_sender())
                seen.append((request.is_cancelled(), senders[-1].is_cancelled()))
            return [pb.InferenceResponse([]) for _ in requests]

    model = setup(double, Toy())
    cancelled, live = double.request({}), double.request({})
    double.cancel(cancelled)
    double.execute(model, [cancelled, live])
    assert seen == [(True, True), (False, False)]
    double.cancel(live)  # after execute returned: the sender still answers
    assert [s.is_cancelled() for s in senders] == [True, True]


# --------------------------------------------------------------------------- BLS
def test_bls_is_refused_in_initialize_and_finalize_and_the_loop_stops_first():
    double = TritonDouble({"echo": lambda inputs, _: {}})
    pb = double.module

    def attempt():
        try:
            bls(pb, "echo").exec()
        except pb.TritonModelException as e:
            return str(e)

    class Toy:
        def initialize(self, args):
            self.in_initialize = attempt()

        async def execute(self, requests):
            self.loop, self.in_execute = asyncio.get_running_loop(), attempt()
            return [pb.InferenceResponse([]) for _ in requests]

        def finalize(self):
            self.loop_running, self.in_finalize = self.loop.is_running(), attempt()

    model = setup(double, Toy())
    double.execute(model, [double.request({})])
    double.finalize(model)
    assert (model.in_initialize, model.in_execute, model.in_finalize) == \
        (BLS_REFUSED, None, BLS_REFUSED)
    assert model.loop_running is False and len(double.calls) == 1
    with pytest.raises(RuntimeError, match=r"double.execute\(toy_0\) after double.finalize"):
        double.execute(model, [double.request({})])
    double.close()


def test_bls_errors_come_back_as_the_real_server_reports_them():
    def broken(inputs, parameters):
        raise RuntimeError(f"bad input {parameters['n']}")

    double = TritonDouble({"broken": broken, "two": lambda *_: {"a": np.ones(1), "b": np.zeros(1)},
                           "slow": lambda *_: time.sleep(0.05) or {"a": np.ones(1)}})
    pb = double.module
    missing = bls(pb, "absent").exec().error()
    assert missing.message() == ("Model absent - Error when running inference: Failed for "
                                 "execute the inference request. Model 'absent' is not ready.")
    assert missing.code() == TritonError.INTERNAL
    raised = bls(pb, "broken", parameters={"n": 3}).exec().error()
    assert (raised.message(), raised.code()) == ("bad input 3", TritonError.INTERNAL)
    unknown = bls(pb, "two", requested_output_names=["c"]).exec().error()
    assert unknown.code() == TritonError.INVALID_ARG and "['c']" in unknown.message()
    picked = bls(pb, "two", requested_output_names=["b"]).exec()
    assert values(picked) == {"b": [0.0]}
    late = bls(pb, "slow", timeout=1).exec()  # 1 us: not enforced
    assert not late.has_error()


def test_decoupled_bls_streams_each_output_dict_then_the_final_flag():
    def stream(inputs, parameters):
        for i in range(parameters["n"]):
            yield {"i": np.array([i])}
        raise RuntimeError("stream broke")

    double = TritonDouble({"list": lambda *_: [{"i": np.array([0])}, {"i": np.array([1])}],
                           "one": lambda *_: {"i": np.array([7])}, "stream": stream})
    pb = double.module
    listed = list(bls(pb, "list").exec(decoupled=True))
    assert [values(r) for r in listed] == [{"i": [0]}, {"i": [1]}, {}]
    [one] = bls(pb, "one").exec(decoupled=True)
    assert values(one) == {"i": [7]}
    streamed = list(bls(pb, "stream", parameters={"n": 2})
                    .exec(decoupled=True))
    assert [values(r) for r in streamed[:2]] == [{"i": [0]}, {"i": [1]}]
    assert streamed[2].error().message() == "stream broke" and len(streamed) == 3


# --------------------------------------------------------------------------- module
def test_config_helpers_and_error_codes_match_the_real_module():
    pb = TritonDouble().module
    config = {"name": "m", "input": [{"name": "a", "data_type": "TYPE_FP32"}],
              "output": [{"name": "b", "data_type": "TYPE_STRING"}],
              "model_transaction_policy": {"decoupled": True}}
    assert pb.get_input_config_by_name(config, "a")["data_type"] == "TYPE_FP32"
    assert pb.get_input_config_by_name(config, "b") is None
    assert pb.get_output_config_by_name(config, "b")["data_type"] == "TYPE_STRING"
    assert pb.get_output_config_by_name({"name": "m"}, "b") is None
    assert pb.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb.triton_string_to_numpy("TYPE_BOOL") is bool
    with pytest.raises(KeyError):
        pb.triton_string_to_numpy("TYPE_BF16")
    assert pb.using_decoupled_model_transaction_policy(config) is True
    assert pb.using_decoupled_model_transaction_policy({"name": "m"}) is False
    E = pb.TritonError
    assert [E.UNKNOWN, E.INTERNAL, E.NOT_FOUND, E.INVALID_ARG, E.UNAVAILABLE, E.UNSUPPORTED,
            E.ALREADY_EXISTS, E.CANCELLED] == list(range(8))
    assert E("x").code() == E.INTERNAL and E("x", E.NOT_FOUND).code() == 2


def test_metrics_follow_the_stubs_rules_and_are_read_back_by_family_and_labels():
    """As measured on 2.51: a gauge also takes increment. Every other mistake can kill
    tritonserver: set or observe of a counter (the refusal aborted it in 1 of 19 and 3 of
    12 runs), a negative increment of a counter, an operation on a metric whose family
    object was collected (by the timing of the collection): refused here as the crashes
    they can be."""
    double = TritonDouble()
    pb = double.module
    family = pb.MetricFamily
    counters, gauges = family("calls", "calls", family.COUNTER), family("g", "g", family.GAUGE)
    counters.Metric({"outcome": "ok"}).increment(2)
    again = family("calls", "calls", family.COUNTER)
    again.Metric({"outcome": "ok"}).increment(1)  # same name and labels: the same metric
    histograms = family("ms", "ms", family.HISTOGRAM)
    histograms.Metric({}, [1, 10]).observe(3)
    gauge = gauges.Metric({})
    gauge.set(-3)
    gauge.increment(1)
    assert double.metric("calls", outcome="ok") == 3 and double.metric("calls") == 0
    assert double.metric("ms") == 1 and double.metric("g") == -2
    with pytest.raises(AssertionError, match=r"^calls: set of a counter: Triton 2.51 refuses "
                       r"it \('TRITONSERVER_METRIC_KIND_COUNTER does not support Set'\) or dies"):
        counters.Metric({"outcome": "ok"}).set(5)
    with pytest.raises(AssertionError, match=r"^ms: set of a histogram"):
        histograms.Metric({}, [1, 10]).set(5)
    with pytest.raises(AssertionError, match="dies of it"):
        counters.Metric({"outcome": "ok"}).increment(-1)
    with pytest.raises(AssertionError, match=r"^calls: observe of a counter: .* a histogram observe$"):
        counters.Metric({"outcome": "ok"}).observe(1)
    with pytest.raises(AssertionError, match=r"^g: observe of a gauge"):
        gauge.observe(1)
    orphan = family("orphan", "orphan", family.COUNTER).Metric({})  # its family is collected
    with pytest.raises(AssertionError, match="'MetricFamily' has been deleted"):
        orphan.increment(1)


def test_load_model_imports_model_py_with_its_folder_and_reads_the_config(tmp_path):
    version = tmp_path / "toy" / "1"
    version.mkdir(parents=True)
    (tmp_path / "toy" / "config.pbtxt").write_text(textwrap.dedent("""
        name: "toy"
        backend: "python"
        input [{ name: "x", data_type: TYPE_INT64, dims: [1] }]
        output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]
        model_transaction_policy { decoupled: true }
    """))
    (version / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    (version / "model.py").write_text(textwrap.dedent("""
        import json
        import triton_python_backend_utils as pb_utils
        from helper import twice

        class TritonPythonModel:
            def initialize(self, args):
                config = json.loads(args["model_config"])
                self.dtype = pb_utils.triton_string_to_numpy(
                    pb_utils.get_output_config_by_name(config, "y")["data_type"])
                self.name = args["model_instance_name"]

            def execute(self, requests):
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                    sender = request.get_response_sender()
                    for _ in range(2):
                        sender.send(pb_utils.InferenceResponse(
                            [pb_utils.Tensor("y", twice(x).astype(self.dtype))]))
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """))
    double = TritonDouble()
    with double.installed():
        assert sys.modules[MODULE_NAME] is double.module
        model = double.load_model(tmp_path / "toy")
        request = double.request({"x": np.array([3])})
        assert double.execute(model, [request]) is None
        double.wait_closed([request], 1)
    assert MODULE_NAME not in sys.modules or sys.modules[MODULE_NAME] is not double.module
    assert model.name == "toy_0" and model.dtype is np.float32
    assert [values(r) for r in request.sender.responses] == [{"y": [6.0]}, {"y": [6.0]}]
    assert request.sender.final_sent


def test_execute_raising_after_a_final_response_is_the_crash_it_is_on_the_server():
    """Measured on 2.51: a non-decoupled execute that sends a final response, then raises,
    makes tritonserver die of SIGSEGV. The double refuses it loudly."""
    class SendsThenRaises:
        def execute(self, requests):
            for request in requests:
                request.get_response_sender().send(InferenceResponse([]), flags=FINAL)
            raise RuntimeError("a bug after the answers")

    double = TritonDouble()
    with double.installed():
        model = double.initialize(SendsThenRaises(), {"name": "toy"})
        with pytest.raises(AssertionError, match="segmentation fault"):
            double.execute(model, [double.request({})])


# --------------------------------------------------------------------------- as the stub
def test_bls_requests_take_the_stubs_arguments_and_nothing_else():
    pb = TritonDouble().module
    with pytest.raises(TypeError):
        pb.InferenceRequest(model_name="hang")  # inputs and outputs are required
    with pytest.raises(TypeError):
        bls(pb, "m", timout=5)  # a misspelt keyword is an error, not ignored


def test_what_crosses_the_backend_arrives_as_the_stub_delivers_it():
    """BYTES as bytes (text in UTF-8), and a copy: the caller's array is not shared."""
    seen = {}
    double = TritonDouble({"m": lambda inputs, _: seen.update(inputs) or {"y": inputs["t"]}})
    pb = double.module
    sent = np.array(["é", b"\xff"], dtype=object)
    answer = bls(pb, "m", inputs=[pb.Tensor("t", sent)]).exec()
    assert seen["t"].tolist() == ["é".encode(), b"\xff"]
    assert values(answer) == {"y": ["é".encode(), b"\xff"]}
    original = np.array([1, 2])
    request = double.request({"x": original})
    request.inputs()[0].as_numpy()[0] = 9  # the model's copy, not the test's
    assert original.tolist() == [1, 2]
    with pytest.raises(TypeError, match="must be bytes or str, got int"):
        double.request({"t": np.array([3], dtype=object)})


def test_each_double_keeps_its_own_log_and_the_stubs_levels():
    first, second = TritonDouble(), TritonDouble()
    first.module.Logger.log("one", first.module.Logger.LogLevel.WARNING)
    first.module.Logger.log_error("two")
    assert [(level.name, text) for level, text in first.logged] == [("WARNING", "one"),
                                                                   ("ERROR", "two")]
    assert second.logged == [] and Logger.messages == []
    with pytest.raises(TypeError):
        second.module.Logger.log("text level", "warn")
