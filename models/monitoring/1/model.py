"""monitoring: statistics, drift alerts, sample capture and Prometheus metrics over the
requests pipeline_bls sends it; alert streams for watchers.

Decoupled. An event is acknowledged at once (a FINAL flag, no data) and queued for one
worker thread, so the sender never waits on the work; when the queue is full the event
is dropped and counted. A 'stats' command answers one message; 'subscribe' keeps the
stream open and sends alerts as they happen (bls/subscriptions.py); 'reset_reference'
starts a new drift reference window.
"""

import json
import queue
import threading

import triton_python_backend_utils as pb_utils

from bls import config as cfg
from bls.contract import MONITORING_INPUTS, MONITORING_NAME
from bls.errors import InvalidInput
from bls.metadata import ModelMetadata
from bls.monitor import Event, Monitor, MonitorSettings, TritonMetrics
from bls.responses import error_response
from bls.subscriptions import Subscribers, Subscription, message_response

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_STOP, _RESET = object(), object()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        settings = MonitorSettings.from_parameters(cfg.parameters(config))
        meta = ModelMetadata.from_model_config(config)
        self.metrics = TritonMetrics(pb_utils)
        self.monitor = Monitor(meta.class_names, settings, self.metrics)
        self.subscribers = Subscribers(pb_utils)
        self.events = queue.Queue(settings.queue_size)
        self.worker = threading.Thread(target=self._work, name="monitoring", daemon=True)
        self.worker.start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                command = pb_utils.get_input_tensor_by_name(request, "command")
                if command is None:
                    self._enqueue(request)
                    sender.send(flags=FINAL)
                else:
                    self._command(request, command.as_numpy().reshape(-1), sender)
            except Exception as e:
                sender.send(error_response(pb_utils, e, MONITORING_NAME), flags=FINAL)
        return None

    def _enqueue(self, request):
        arrays = {spec.name: pb_utils.get_input_tensor_by_name(request, spec.name)
                  for spec in MONITORING_INPUTS}
        event = Event.from_arrays({k: None if t is None else t.as_numpy()
                                   for k, t in arrays.items()})
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.monitor.drop()

    def _command(self, request, command, sender):
        text = command[0].decode() if command.size == 1 and isinstance(command[0], bytes) else None
        if text == "stats":
            sender.send(message_response(pb_utils, self.monitor.snapshot()), flags=FINAL)
        elif text == "subscribe":
            subscription = Subscription.from_parameters(json.loads(request.parameters() or "{}"))
            self.subscribers.add(sender, subscription)
        elif text == "reset_reference":
            # Through the queue, so events sent before it are counted against the old one.
            self.events.put(_RESET, timeout=5)
            sender.send(message_response(pb_utils, {"type": "reset_reference"}), flags=FINAL)
        else:
            raise InvalidInput("command", "must be 'stats', 'subscribe' or 'reset_reference', "
                                          f"got {command.tolist()}")

    def _work(self):
        while True:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                self.subscribers.expire()
                continue
            if event is _STOP:
                return
            if event is _RESET:
                self.monitor.drift.reset()
                continue
            try:
                for alert in self.monitor.record(event):
                    self.subscribers.publish(alert)
            except Exception as e:  # one bad event must not end monitoring
                pb_utils.Logger.log_error(f"monitoring: event not recorded: {type(e).__name__}: {e}")
            self.subscribers.expire()

    def finalize(self):
        try:
            self.events.put(_STOP, timeout=5)
        except queue.Full:
            pass
        self.worker.join(timeout=10)
        self.subscribers.close_all("monitoring unloaded")
