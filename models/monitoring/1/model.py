"""monitoring: statistics, drift alerts, sample capture and Prometheus metrics over the
requests pipeline_bls sends it; alert streams for watchers.

Decoupled. An event is checked (bls/monitor.py: a malformed, unknown-reason,
out-of-range or oversized one is answered INVALID_ARG), acknowledged at once (a FINAL
flag, no data) and queued for one worker thread, so the sender never waits on the work;
when the queue holds queue_size events or queue_max_bytes bytes the event is dropped and
counted. A 'stats' command answers one message; 'subscribe' keeps the stream open and
sends alerts as they happen (bls/subscriptions.py; at most max_subscriptions at once,
more are answered UNAVAILABLE); 'reset_reference' starts a new drift reference window.
"""

import json
import threading

import triton_python_backend_utils as pb_utils

from bls.contract import MONITORING_INPUTS, MONITORING_NAME
from bls.errors import InvalidInput, Unavailable
from bls.metadata import ModelMetadata
from bls.metrics import ModelStart
from bls.monitor import EventQueue, Monitor, MonitorSettings, TritonMetrics
from bls.responses import error_response
from bls.subscriptions import Subscribers, Subscription, message_response

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_RESET = object()
RESET_WAIT_S = 5.0  # how long 'reset_reference' waits for room in a full queue


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        settings = MonitorSettings.from_config(config)
        meta = ModelMetadata.from_model_config(config)
        self.started = ModelStart(pb_utils, MONITORING_NAME)
        self.monitor = Monitor(meta.class_names, settings,
                               TritonMetrics(pb_utils, meta.class_names))
        self.subscribers = Subscribers(pb_utils, settings.max_subscriptions)
        self.events = EventQueue(settings.queue_size, settings.queue_max_bytes)
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
        event = self.monitor.parse({k: None if t is None else t.as_numpy()
                                    for k, t in arrays.items()})
        if not self.events.put(event, event.nbytes):
            self.monitor.drop()

    def _command(self, request, command, sender):
        text = command[0].decode() if command.size == 1 and isinstance(command[0], bytes) else None
        if text == "stats":
            waiting, waiting_bytes = self.events.usage()
            stats = {**self.monitor.snapshot(), "subscriptions": len(self.subscribers),
                     "queue": {"events": waiting, "bytes": waiting_bytes}}
            sender.send(message_response(pb_utils, stats), flags=FINAL)
        elif text == "subscribe":
            subscription = Subscription.from_parameters(json.loads(request.parameters() or "{}"))
            self.subscribers.add(sender, subscription)
        elif text == "reset_reference":
            # Through the queue, so events sent before it are counted against the old one.
            if not self.events.put(_RESET, 0, timeout=RESET_WAIT_S):
                raise Unavailable(f"reset_reference not queued: the event queue stayed full "
                                  f"for {RESET_WAIT_S:g} s; try again")
            sender.send(message_response(pb_utils, {"type": "reset_reference"}), flags=FINAL)
        else:
            raise InvalidInput("command", "must be 'stats', 'subscribe' or 'reset_reference', "
                                          f"got {str(command.tolist())[:100]}")

    def _work(self):
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
                pb_utils.Logger.log_error(f"monitoring: event not recorded: {type(e).__name__}: {e}")
            self.subscribers.expire()

    def finalize(self):
        self.events.close()  # the worker records what is queued, then stops
        self.worker.join(timeout=10)
        self.subscribers.close_all("monitoring unloaded")
