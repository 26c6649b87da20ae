"""Handle the ``monitoring`` model's requests: events, 'stats', 'subscribe', 'reset_reference'.

``pb_utils`` is passed in, so bls.testing's double runs it exactly as the stub does
(models/monitoring/1/model.py is a thin adapter).

Decoupled. An event is checked (bls/monitoring/event.py: a malformed, unknown-reason,
out-of-range or oversized one is answered INVALID_ARG), acknowledged at once (a FINAL
flag, no data) and queued for one worker thread, so the sender never waits on the work;
when the queue holds queue_size events or queue_max_bytes bytes the event is dropped and
counted. A 'stats' command answers one message; 'subscribe' keeps the stream open and
sends alerts as they happen (bls/monitoring/subscriptions.py; at most max_subscriptions
at once, more are answered UNAVAILABLE); 'reset_reference' starts a new drift reference
window.
"""

from __future__ import annotations

import json
import threading

from bls.backend.adapter import ModelInstance
from bls.backend.metrics import ModelStart
from bls.backend.responses import error_response
from bls.contract.metadata import ModelMetadata
from bls.contract.tensors import MONITORING_INPUTS, MONITORING_NAME
from bls.errors import InvalidInput, Unavailable
from bls.monitoring.aggregate import Monitor, MonitorSettings
from bls.monitoring.metrics import TritonMetrics
from bls.monitoring.queue import EventQueue
from bls.monitoring.subscriptions import Subscribers, Subscription, message_response

_RESET = object()
RESET_WAIT_S = 5.0  # how long 'reset_reference' waits for room in a full queue


class MonitoringService:
    """Run the monitoring model: its ``execute(requests)`` and ``finalize()``.

    Args:
        pb_utils: ``triton_python_backend_utils``, or bls.testing's double.
        model_config: the config as Triton hands it to ``initialize`` (a dict), read
            strictly (bls/contract/parameters.py MONITORING_PARAMETERS).

    Raises:
        ValueError: a config parameter is unknown or malformed (the model fails to load).
    """

    def __init__(self, pb_utils, model_config: dict, instance: ModelInstance | None = None):
        self.pb = pb_utils
        settings = MonitorSettings.from_config(model_config)
        meta = ModelMetadata.from_model_config(model_config)
        self.started = ModelStart(pb_utils, MONITORING_NAME)
        self.monitor = Monitor(meta.class_names, settings,
                               TritonMetrics(pb_utils, meta.class_names))
        self.subscribers = Subscribers(pb_utils, settings.max_subscriptions)
        self.events = EventQueue(settings.queue_size, settings.queue_max_bytes)
        self.worker = threading.Thread(target=self._work, name="monitoring", daemon=True)
        self.worker.start()

    def execute(self, requests) -> None:
        """Answer or acknowledge every request through its response sender; returns None."""
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                command = self.pb.get_input_tensor_by_name(request, "command")
                if command is None:
                    self._enqueue(request)
                    sender.send(flags=final)
                else:
                    self._command(request, command.as_numpy().reshape(-1), sender)
            except Exception as e:
                sender.send(error_response(self.pb, e, MONITORING_NAME), flags=final)
        return None

    def _enqueue(self, request) -> None:
        arrays = {spec.name: self.pb.get_input_tensor_by_name(request, spec.name)
                  for spec in MONITORING_INPUTS}
        event = self.monitor.parse({k: None if t is None else t.as_numpy()
                                    for k, t in arrays.items()})
        if not self.events.put(event, event.nbytes):
            self.monitor.drop()

    def _command(self, request, command, sender) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        text = command[0].decode() if command.size == 1 and isinstance(command[0], bytes) else None
        if text == "stats":
            waiting, waiting_bytes = self.events.usage()
            stats = {**self.monitor.snapshot(), "subscriptions": len(self.subscribers),
                     "queue": {"events": waiting, "bytes": waiting_bytes}}
            sender.send(message_response(self.pb, stats), flags=final)
        elif text == "subscribe":
            subscription = Subscription.from_parameters(json.loads(request.parameters() or "{}"))
            self.subscribers.add(sender, subscription)
        elif text == "reset_reference":
            # Through the queue, so events sent before it are counted against the old one.
            if not self.events.put(_RESET, 0, timeout=RESET_WAIT_S):
                raise Unavailable(f"reset_reference not queued: the event queue stayed full "
                                  f"for {RESET_WAIT_S:g} s; try again")
            sender.send(message_response(self.pb, {"type": "reset_reference"}), flags=final)
        else:
            raise InvalidInput("command", "must be 'stats', 'subscribe' or 'reset_reference', "
                                          f"got {str(command.tolist())[:100]}")

    def _work(self) -> None:
        while True:
            event = self.events.get(timeout=0.5)
            if event is None:
                if self.events.closed:
                    return
                self.subscribers.expire()
                continue
            if event is _RESET:
                self.monitor.reset_reference()
                continue
            try:
                for alert in self.monitor.record(event):
                    self.subscribers.publish(alert)
            except Exception as e:  # one bad event must not end monitoring
                self.pb.Logger.log_error(
                    f"{MONITORING_NAME}: event not recorded: {type(e).__name__}: {e}")
            self.subscribers.expire()

    def finalize(self) -> None:
        """Record what is queued, then stop; end every open alert stream."""
        self.events.close()
        self.worker.join(timeout=10)
        self.subscribers.close_all("monitoring unloaded")
