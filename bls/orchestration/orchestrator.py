"""pipeline_bls's orchestration: read each request, answer it once, under load, faults and stops.

``pb_utils`` is passed in, so bls.testing's double tests this exactly as the stub runs it
(models/pipeline_bls/1/model.py is a thin adapter).

``execute`` reads what each request holds (image bytes, parameters), answers a malformed
one at once and hands the rest to a pool as plain data (``Job``), as python_backend's
decoupled example (square_model.py) does; then it waits for its batch and returns the
responses. Why it waits, and returns rather than sends (Triton 2.51, measured): while
``execute`` has not returned, the backend answers the batch itself if the stub dies ("Stub
process '...' is not healthy.", within about a second), where a request whose ``execute``
had returned is never answered; and a stub that dies while its threads send responses
through response senders can take tritonserver down with it (a lock_exception in the
backend's send handler), which returned responses never did. Concurrency across batches
comes from instances (instance_group; two by default).

Threads (docs/architecture.md draws them): Triton's runs ``execute``; one pool thread
carries a job through prepare, the blocking BLS call to mask_rcnn and finish
(``worker_threads`` of them in prepare or finish at once); a model call runs on a thread of
its own only when ``mask_rcnn_timeout_us`` is set. Metric counts reach the backend from
their own thread (bls/backend/metrics.py CounterBuffer), monitoring events from another
behind a bounded queue (bls/orchestration/sender.py). A job's IPC round trips: one
cancellation check and the BLS call; the answers go back with ``execute``'s return.
``finalize`` comes after ``execute`` returned, when nothing is left to answer.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable

from bls.backend.adapter import ModelInstance
from bls.backend.metrics import CounterBuffer, ModelStart, MonitoringCalls, RequestMetrics
from bls.backend.process import configure_process, configured_instances, live_instances
from bls.backend.request import parse_options, request_image
from bls.backend.responses import code_name, error_response, output_response
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import PIPELINE_PARAMETERS, RequestOptions
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME
from bls.errors import Cancelled, ModelTimeout, Unavailable, model_call_error
from bls.monitoring.policy import MonitoringPolicy
from bls.orchestration.sender import EventSender
from bls.pipeline.answer import empty_answer
from bls.pipeline.host import HOST
from bls.pipeline.image import decode_limits
from bls.pipeline.steps import finish, prepare


@dataclass(eq=False)  # hashed by identity: held in a set
class Job:
    """Hold one accepted request as plain data, and its response once answered.

    Attributes:
        data: the encoded image.
        cancelled: the request's ``is_cancelled`` (an IPC round trip; valid while
            ``execute`` waits for the job).
        started: its perf_counter at execute.
        outputs: the outputs the client asked for.
        response: its InferenceResponse, once answered.
        seconds: wall seconds by stage (bls/backend/metrics.py STAGES).
        cpu_seconds: its thread's CPU seconds by stage (CPU_STAGES).
        model_call: the BLS call's future while it outlives the answer (after a
            timeout), so the job's slot stays taken until mask_rcnn lets go.
    """

    data: bytes
    options: RequestOptions
    cancelled: Callable[[], bool]
    started: float
    outputs: tuple[str, ...] = ()
    response: Any = None
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    model_call: Future | None = None


class PipelineOrchestrator:
    """Run pipeline_bls: its ``execute(requests)`` and ``finalize()``.

    Args:
        pb_utils: ``triton_python_backend_utils``, or bls.testing's double.
        model_config: the config as Triton hands it to ``initialize`` (a dict); its
            parameters are read strictly (bls/contract/parameters.py PIPELINE_PARAMETERS).
        instance: which instance this is; ``device: cuda`` means its GPU.

    Raises:
        InvalidInput: a config parameter is unknown or malformed (the model fails to load).
    """

    def __init__(self, pb_utils, model_config: dict, instance: ModelInstance | None = None):
        self.pb = pb_utils
        values = PIPELINE_PARAMETERS.read_config(model_config)
        self.meta = ModelMetadata.from_model_config(model_config)
        configure_process(values)  # before the threads start
        self.limits = decode_limits(values)
        self.resize = values["resize"]
        self.max_answer_bytes = values["max_answer_bytes"]
        self.timeout_us = values["mask_rcnn_timeout_us"]
        self.forwarded_headers = values["header_forward_pattern"]
        self.policy = MonitoringPolicy.from_json(values["monitoring_policy"])
        batch = model_config.get("max_batch_size", 0)
        self.batched = batch > 0
        self.max_in_flight_requests = values["max_in_flight_requests"] or 2 * max(batch, 1)
        self.output_names = [spec.name for spec in self.meta.outputs]
        # How many stubs a probe expects alive (the most seen, at least the config's).
        self.instances = configured_instances(model_config) or 1
        self.ops = HOST  # where the image and mask work runs (bls/pipeline/host.py)
        on_thread_start = None
        if values["device"]:
            from bls.pipeline.device import DeviceOps, parse_device, use_device  # torch

            device = parse_device(values["device"], instance or ModelInstance())
            self.ops = DeviceOps(device)
            on_thread_start = lambda: use_device(device)  # noqa: E731
        self.counters = CounterBuffer(on_error=self._log_error)
        self.metrics = RequestMetrics(pb_utils, self.counters)
        self.started = ModelStart(pb_utils, PIPELINE_NAME)
        self.monitoring_calls = MonitoringCalls(pb_utils, self.counters)
        self.events = (EventSender(pb_utils, self.policy, self.monitoring_calls)
                       if self.policy.enabled else None)
        self.cpu_slots = threading.BoundedSemaphore(values["worker_threads"])
        self.jobs = ThreadPoolExecutor(self.max_in_flight_requests, f"{PIPELINE_NAME}-job",
                                       on_thread_start)
        self.model_calls = (ThreadPoolExecutor(self.max_in_flight_requests,
                                               f"{PIPELINE_NAME}-model-call", on_thread_start)
                            if self.timeout_us else None)
        self._cv = threading.Condition()
        self._slots = 0  # jobs started and not let go (answered and model call ended)
        self._held: set[Job] = set()  # jobs not answered yet

    # ------------------------------------------------------------------ execute
    def execute(self, requests) -> list:
        """Read every request, answer the malformed ones, run the rest; return the answers.

        Never raises: the backend would answer every request of the batch with that
        error. Each request is answered on its own.

        Returns:
            One response per request, in order, once every job of the batch is answered.
        """
        jobs = []
        for request in requests:
            job = Job(b"", RequestOptions(self.meta.score_threshold), lambda: False,
                      time.perf_counter())
            jobs.append(job)
            try:
                job.data, job.options, job.outputs = self._read(request)
                job.cancelled = request.is_cancelled
                self._start(job)
            except Exception as e:
                self._conclude(job, None, e)
        with self._cv:  # every job ends answered: _conclude never raises
            self._cv.wait_for(lambda: not any(job in self._held for job in jobs))
        return [job.response for job in jobs]

    def _log_error(self, message: str) -> None:
        try:
            self.pb.Logger.log_error(f"{PIPELINE_NAME}: {message}")
        except Exception:  # logging must not be what breaks an answer
            pass

    def _read(self, request) -> tuple[bytes, RequestOptions, tuple[str, ...]]:
        data = request_image(self.pb, request)
        options = parse_options(request.parameters(), self.meta.score_threshold,
                                self.forwarded_headers)
        # The answer carries only these: with Python 3.12's stub, a response holding an
        # output the client did not ask for kills the stub (Triton 2.51).
        return data, options, tuple(request.requested_output_names())

    def _start(self, job: Job) -> None:
        """Take a slot (waiting while max_in_flight_requests are taken: a model call that
        outlived its timeout keeps its slot) and run the job."""
        with self._cv:
            self._cv.wait_for(lambda: self._slots < self.max_in_flight_requests)
            self._slots += 1
            self._held.add(job)
        self.jobs.submit(self._run, job)

    # ------------------------------------------------------------------ one job
    def _run(self, job: Job) -> None:
        """Carry one job from its image to its answer, on this one thread. Never raises."""
        try:
            answer = self._compute_answer(job)
        except Exception as e:
            self._conclude(job, None, e)
        else:
            self._conclude(job, answer, None)

    def _compute_answer(self, job: Job) -> dict:
        """The pipeline's answer arrays for one job; each stage's wall time goes into
        ``job.seconds``, the CPU stages' thread time into ``job.cpu_seconds``
        (bls/backend/metrics.py)."""
        if job.options.probe:
            return self._probe()
        mark = time.perf_counter()
        with self.cpu_slots:
            cpu = time.thread_time()
            prepared = prepare(job.data, self.meta, self.limits, self.resize, self.ops)
            job.cpu_seconds["prepare"] = time.thread_time() - cpu
        job.seconds["prepare"], mark = time.perf_counter() - mark, time.perf_counter()
        # A cancelled (or disconnected) client's request goes no further: the model call
        # is the expensive part. The one cancellation check of a job (an IPC round trip).
        if self._cancelled(job):
            raise Cancelled(f"before the {MODEL_NAME} call")
        outputs = self._call_model(job, prepared.model_input)
        job.seconds["model"], mark = time.perf_counter() - mark, time.perf_counter()
        with self.cpu_slots:
            cpu = time.thread_time()
            answer = finish(outputs, prepared.original_size, self.meta, job.options,
                            self.max_answer_bytes, self.ops)
            job.cpu_seconds["finish"] = time.thread_time() - cpu
        job.seconds["finish"] = time.perf_counter() - mark
        return answer

    @staticmethod
    def _cancelled(job: Job) -> bool:
        try:
            return bool(job.cancelled())
        except Exception:  # it cannot tell: carry on
            return False

    def _probe(self) -> dict:
        """Answer a health probe (client/probe.py): empty; UNAVAILABLE while the stub of
        another instance is dead (Triton routes a probe to any instance, so each answers
        for all: a dead one fails every request routed to it until it is reloaded)."""
        live = live_instances()
        self.instances = max(self.instances, live or 0)
        if live is not None and live < self.instances:
            raise Unavailable(f"{self.instances - live} of {self.instances} {PIPELINE_NAME} "
                              f"stub processes are dead (Triton 2.51 restarts none): reload "
                              f"the model or restart the server")
        return empty_answer(self.meta)

    def _call_model(self, job: Job, model_input) -> dict:
        """Call mask_rcnn through BLS: numpy in and out on the host; or, on a device, torch
        tensors both ways by DLPack (on a GPU nothing crosses to the host). Raises what
        the client should see (bls/errors.py model_call_error)."""
        pb, ops = self.pb, self.ops
        request = pb.InferenceRequest(
            model_name=MODEL_NAME, requested_output_names=self.output_names,
            inputs=[ops.model_tensor(pb, MODEL_INPUT.name, model_input)],
            timeout=self.timeout_us, preferred_memory=ops.preferred_memory(pb))
        try:
            if self.model_calls is None:
                response = request.exec()
            else:
                # Triton 2.51 does not enforce a BLS timeout on a model without dynamic
                # batching, so it is enforced here.
                call = self.model_calls.submit(request.exec)
                try:
                    response = call.result(timeout=self.timeout_us / 1e6)
                except FutureTimeout:
                    job.model_call = call
                    raise ModelTimeout(f"{MODEL_NAME} did not answer within "
                                       f"mask_rcnn_timeout_us={self.timeout_us}") from None
        except ModelTimeout:
            raise
        except Exception as e:  # the call itself failed: its IPC failed
            raise model_call_error(MODEL_NAME, "INTERNAL", f"{type(e).__name__}: {e}") from None
        if response.has_error():
            error = response.error()
            raise model_call_error(MODEL_NAME, code_name(pb, error.code()), error.message())
        return {name: ops.from_model(pb.get_output_tensor_by_name(response, name))
                for name in self.output_names}

    def _conclude(self, job: Job, answer: dict | None, error: Exception | None) -> None:
        """Answer the job, count it, let its slot go, then offer the monitoring event.
        Never raises (see execute)."""
        try:
            if answer is not None:
                try:
                    job.response = output_response(self.pb, answer, self.batched, job.outputs)
                except Exception as e:  # an answer that cannot be built is a bug: INTERNAL
                    answer, error = None, e
            if answer is None:
                job.response = error_response(self.pb, error, PIPELINE_NAME)
            job.seconds["total"] = time.perf_counter() - job.started
            self.metrics.record(error, job.seconds, job.cpu_seconds, job.options.probe)
            self._let_go(job)
            if answer is not None and self.events is not None and not job.options.probe:
                self._monitor(job, answer)
        except Exception as e:  # a bug here must still not escape into execute
            self._log_error(f"while answering: {type(e).__name__}: {e}")
            if job.response is None:
                job.response = self.pb.InferenceResponse(error=self.pb.TritonError(
                    f"{PIPELINE_NAME}: {type(e).__name__}: {e}"))
            self._let_go(job)

    def _let_go(self, job: Job) -> None:
        """The job is answered; its slot is free once its model call has ended too."""
        with self._cv:
            if job not in self._held:  # never started (answered from execute)
                return
            self._held.discard(job)
            self._cv.notify_all()
        if job.model_call is not None:
            job.model_call.add_done_callback(lambda _: self._free_slot())
        else:
            self._free_slot()

    def _free_slot(self) -> None:
        with self._cv:
            self._slots -= 1
            self._cv.notify_all()

    def _monitor(self, job: Job, answer: dict) -> None:
        """Offer the event the policy asks for; never blocks, never raises."""
        try:
            latency_ms = job.seconds["total"] * 1000
            names = [n.decode() for n in answer["class_names"]]
            reasons = self.policy.reasons(answer["scores"], names, latency_ms, random.random())
            if reasons:
                image = job.data if self.policy.captures(reasons) else None
                self.events.offer(reasons, answer, latency_ms, image)
        except Exception as e:  # monitoring never breaks an answer
            self.monitoring_calls.count("failed")
            self._log_error(f"monitoring event not sent: {e}")

    # ------------------------------------------------------------------ stop
    def finalize(self) -> None:
        """Stop the model's threads.

        Triton calls it once ``execute`` has returned, so every request is answered by
        then. What is left: a model call that outlived its timeout (its request answered
        UNAVAILABLE long ago), the monitoring events still queued (counted ``abandoned``),
        the counts not yet flushed (flushed now)."""
        if self.events is not None:
            self.events.close()
        self.counters.close()
        self.jobs.shutdown(wait=False, cancel_futures=True)
        if self.model_calls is not None:
            self.model_calls.shutdown(wait=False, cancel_futures=True)

    def held(self) -> int:
        """The number of jobs accepted and not answered yet."""
        with self._cv:
            return len(self._held)
