"""Log lines in logfmt (the Prometheus ecosystem's habit) or JSON, on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": message,
        }
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return json.dumps(
            {
                "ts": record.created,
                "level": record.levelname.lower().replace("warning", "warn"),
                "logger": record.name,
                "msg": message,
            }
        )


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # APScheduler's per-run INFO lines would drown ours; its warnings still show.
    logging.getLogger("apscheduler").setLevel(max(_LEVELS[level], logging.WARNING))
    # httpx logs every request (with its URL) at INFO; ours are enough.
    logging.getLogger("httpx").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(_LEVELS[level], logging.INFO))
