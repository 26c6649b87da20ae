"""export/weights.py: torchvision's COCO weights from the cache, or downloaded within a
deadline, checked by their SHA-256 prefix; never a long wait on a closed or slow network.
Served from loopback here: no test reaches the network."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from contextlib import contextmanager

from export.weights import coco_weights, sha_prefix

DATA = b"not really a state dict, but bytes with a known digest" * 1000
GOOD_NAME = f"maskrcnn_test-{hashlib.sha256(DATA).hexdigest()[:8]}.pth"


@contextmanager
def serving(trickle_s: float = 0.0):
    """A loopback HTTP server answering every GET with DATA (a byte every ``trickle_s``
    seconds when set: a slow link)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            if not trickle_s:
                self.wfile.write(DATA)
                return
            for i in range(len(DATA)):
                try:
                    self.wfile.write(DATA[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(trickle_s)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_cache_is_used_without_the_network(tmp_path):
    (tmp_path / GOOD_NAME).write_bytes(DATA)
    found = coco_weights(0, url=f"http://127.0.0.1:9/{GOOD_NAME}", cache=tmp_path)
    assert found.path == tmp_path / GOOD_NAME and "from the cache" in found.how
    missing = coco_weights(0, url="http://127.0.0.1:9/other-00000000.pth", cache=tmp_path)
    assert missing.path is None and "not in the cache" in missing.how


def test_a_download_is_checked_and_kept(tmp_path):
    assert sha_prefix(f"http://x/{GOOD_NAME}") == hashlib.sha256(DATA).hexdigest()[:8]
    with serving() as url:
        found = coco_weights(10, url=f"{url}/{GOOD_NAME}", cache=tmp_path)
        assert found.path == tmp_path / GOOD_NAME and found.path.read_bytes() == DATA
        bad = coco_weights(10, url=f"{url}/maskrcnn_test-00000000.pth", cache=tmp_path)
    assert bad.path is None and "SHA-256 does not start with 00000000" in bad.how
    assert sorted(p.name for p in tmp_path.iterdir()) == [GOOD_NAME]  # nothing half-written


def test_a_closed_or_slow_network_is_not_waited_for(tmp_path):
    start = time.monotonic()
    refused = coco_weights(30, url=f"http://127.0.0.1:9/{GOOD_NAME}", cache=tmp_path)
    assert refused.path is None and "cannot be downloaded" in refused.how
    assert time.monotonic() - start < 6  # refused at once; the connect timeout is 5 s
    with serving(trickle_s=0.01) as url:
        start = time.monotonic()
        slow = coco_weights(0.5, url=f"{url}/{GOOD_NAME}", cache=tmp_path)
        took = time.monotonic() - start
    assert slow.path is None and "not downloaded within 0.5 s" in slow.how
    assert took < 3, took
    assert list(tmp_path.iterdir()) == []


def test_the_demo_keeps_a_repository_exported_with_the_same_weights(exported):
    """No COCO weights found: the session's random-weight export is kept, not redone."""
    from demo.walkthrough import expected_weights, exported_weights

    assert exported_weights(exported.model_file) == expected_weights(None) == "random"
    assert expected_weights(exported.model_file.parent / GOOD_NAME) == f"checkpoint {GOOD_NAME}"
