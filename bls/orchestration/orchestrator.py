"""pipeline_bls's orchestration: read each request, answer it once, under load, faults and stops.

``pb_utils`` is passed in, so bls.testing's double tests this exactly as the stub runs it
(models/pipeline_bls/1/model.py is a thin adapter).

Request lifecycle, as Triton's Python backend defines it (its README; Triton 2.51):
Triton releases the requests when ``execute`` returns. So ``execute`` reads everything a
request holds (the image bytes, the parameters, the response sender), answers a malformed
request at once, and hands the rest to a pool as plain data (``Job``), as python_backend's
decoupled example (square_model.py) does. Cancellation is read from the sender, which
stays valid after the release.

``execute`` returns once every request of its batch has its answer. While it has not,
the backend watches this stub: if the stub dies (OOM killer, a native crash), it answers
each request of the batch "Stub process 'pipeline_bls_0_0' is not healthy." within about
a second (measured on 2.51). A request whose ``execute`` had returned would get no answer
at all (the backend forgets it; its client waits for its deadline). Further batches queue
in Triton meanwhile, so more concurrency comes from more instances (instance_group).

Threads (docs/architecture.md draws them):
- Triton's thread runs ``execute``; it hands its batch's jobs to the pool (blocking while
  ``max_in_flight_requests`` are held) and waits for their answers.
- One pool thread carries a job from start to end: prepare, the blocking BLS call to
  mask_rcnn, finish, the send. The pool has a thread per job that can be held, so a job
  never waits for a thread; ``worker_threads`` bounds how many are in the CPU stages
  (prepare, finish) at once.
- With ``mask_rcnn_timeout_us`` set, the BLS call runs on a thread of its own, so the job
  can stop waiting for it.
- Metric counts go to the backend from one thread of their own (bls/backend/metrics.py
  CounterBuffer), monitoring events from another, behind a bounded queue
  (bls/orchestration/sender.py): a hung or dead monitoring model holds nothing an answer
  needs.

A job's IPC round trips to the backend: one cancellation check before the model call, the
BLS call, the send. Every accepted request gets exactly one final response: ``Reply``
sends at most once; a job that fails answers with its error. Stops need no draining:
Triton calls ``finalize`` once ``execute`` has returned, when every request is answered.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from bls.backend.adapter import ModelInstance
from bls.backend.metrics import CounterBuffer, ModelStart, MonitoringCalls, RequestMetrics
from bls.backend.process import configure_process, configured_instances, live_instances
from bls.backend.request import parse_options, request_image
from bls.backend.responses import code_name, error_response, output_response
from bls.contract.metadata import ModelMetadata
from bls.contract.parameters import PIPELINE_PARAMETERS, RequestOptions
from bls.contract.tensors import MODEL_INPUT, MODEL_NAME, PIPELINE_NAME, MaskFormat
from bls.errors import Cancelled, ModelTimeout, Unavailable, model_call_error
from bls.monitoring.policy import MonitoringPolicy
from bls.orchestration.sender import EventSender
from bls.pipeline.answer import build_answer
from bls.pipeline.host import HOST
from bls.pipeline.image import decode_limits
from bls.pipeline.instances import Instances
from bls.pipeline.steps import finish, prepare


class Reply:
    """Send the one final response of one request, through the sender read in ``execute``.

    ``claim()`` once, then ``send``; thread-safe.

    Args:
        sender: the request's response sender.
        unsent_metric: the counter of answers the backend refused to send.
    """

    def __init__(self, pb_utils, sender, unsent_metric):
        self._pb = pb_utils
        self._sender = sender
        self._unsent = unsent_metric
        self._lock = threading.Lock()
        self.claimed = False

    def claim(self) -> bool:
        """True for the first caller only: it must send."""
        with self._lock:
            first, self.claimed = not self.claimed, True
            return first

    def cancelled(self) -> bool:
        """Whether the client cancelled (an IPC round trip); False when the sender cannot tell."""
        try:
            return bool(self._sender.is_cancelled())
        except Exception:  # the sender cannot tell: carry on, the send will say
            return False

    def send(self, response) -> bool:
        """Send ``response`` with the final flag; True if the backend took it.

        A send that fails (the backend marks the sender closed before it serialises, so
        it cannot be retried) is logged and counted: nothing is lost silently."""
        try:
            self._sender.send(response, flags=self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return True
        except Exception as e:
            self._unsent.increment(1)
            try:
                self._pb.Logger.log_error(f"{PIPELINE_NAME}: answer not sent: "
                                          f"{type(e).__name__}: {e}")
            except Exception:
                pass
            return False


@dataclass(eq=False)  # hashed by identity: held in a set
class Job:
    """Hold one accepted request as plain data, valid after Triton released the request.

    Attributes:
        data: the encoded image.
        started: its perf_counter at execute.
        outputs: the outputs the client asked for.
        seconds: wall seconds by stage (bls/backend/metrics.py STAGES).
        cpu_seconds: its thread's CPU seconds by stage (CPU_STAGES).
        model_call: the BLS call's future while it outlives the answer (after a
            timeout), so the job's slot stays taken until mask_rcnn lets go.
    """

    data: bytes
    options: RequestOptions
    reply: Reply
    started: float
    outputs: tuple[str, ...] = ()
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
    def execute(self, requests) -> None:
        """Read every request, answer the malformed ones, start the rest.

        Never raises. If execute raises, the backend answers every request of the batch
        with that error, and for a request whose sender has already sent its final
        response it deletes the response factory a second time: Triton 2.51 then dies
        of a segmentation fault. Each request is handled on its own.

        Returns:
            None, once every request of the batch is answered, each by its own response
            sender (see the module's docstring: why it waits).
        """
        jobs = []
        for request in requests:
            try:
                reply = Reply(self.pb, request.get_response_sender(), self.metrics.unsent)
            except Exception as e:  # no sender: nothing can answer this request
                self._log_error(f"no response sender: {type(e).__name__}: {e}")
                continue
            job = Job(b"", RequestOptions(self.meta.score_threshold), reply,
                      time.perf_counter())
            try:
                job.data, job.options, job.outputs = self._read(request)
                self._start(job)
                jobs.append(job)
            except Exception as e:
                self._conclude(job, None, e)
        with self._cv:  # every job ends answered: _conclude never raises
            self._cv.wait_for(lambda: not any(job in self._held for job in jobs))
        return None

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
        if job.reply.cancelled():
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

    def _probe(self) -> dict:
        """Answer a health probe: empty, from this stub, on a job thread; UNAVAILABLE while
        a stub of another instance is dead (Triton routes a probe to any instance, so
        each answers for all: a dead one fails every request sent to it until reloaded)."""
        live = live_instances()
        self.instances = max(self.instances, live or 0)
        if live is not None and live < self.instances:
            raise Unavailable(f"{self.instances - live} of {self.instances} {PIPELINE_NAME} "
                              f"stub processes are dead (Triton 2.51 restarts none): reload "
                              f"the model or restart the server")
        empty = Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64), None)
        return build_answer(empty, (0, 0), self.meta, MaskFormat.NONE)

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
        """Answer the job once (if nobody has), count it, let its slot go, then offer
        the monitoring event. Never raises (see execute)."""
        try:
            self._conclude_once(job, answer, error)
        except Exception as e:  # a bug here must still not escape into execute
            self._log_error(f"while answering: {type(e).__name__}: {e}")

    def _conclude_once(self, job: Job, answer: dict | None, error: Exception | None) -> None:
        if not job.reply.claim():
            return
        if answer is not None:
            try:
                response = output_response(self.pb, answer, self.batched, job.outputs)
            except Exception as e:  # an answer that cannot be built is a bug: INTERNAL
                answer, error = None, e
        if answer is None:
            response = error_response(self.pb, error, PIPELINE_NAME)
        job.seconds["total"] = time.perf_counter() - job.started
        # in memory (CounterBuffer): no IPC
        self.metrics.record(error, job.seconds, job.cpu_seconds, job.options.probe)
        sent = job.reply.send(response)
        self._let_go(job)
        if sent and answer is not None and self.events is not None and not job.options.probe:
            self._monitor(job, answer)

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
