"""The compose stack's example Alertmanager webhook receiver: logs one line per alert of every
notification (status, severity, alert name, summary, runbook) to stdout, answers 200. Replace it
with your pager or chat in production (deploy/alertmanager/alertmanager.yml)."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            note = json.loads(body)
            for alert in note.get("alerts", []):
                labels, notes = alert.get("labels", {}), alert.get("annotations", {})
                print(f"[{self.path.strip('/')}] {alert.get('status')} {labels.get('severity')} "
                      f"{labels.get('alertname')}: {notes.get('summary', '')} ({notes.get('runbook_url', '')})",
                      flush=True)
        except (ValueError, AttributeError):
            print(f"[{self.path.strip('/')}] not an Alertmanager notification ({len(body)} bytes)", flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - health probe
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9099
    HTTPServer(("0.0.0.0", port), Receiver).serve_forever()  # noqa: S104 - inside the compose network
