"""Send N log lines through python-logging-loki's handler (Loki push, JSON).

usage: loki_send.py URL N   (URL like http://127.0.0.1:7650/loki/api/v1/push)
"""
import logging
import sys

import logging_loki

url, n = sys.argv[1], int(sys.argv[2])
handler = logging_loki.LokiHandler(url=url, tags={"job": "billing"}, version="1")
log = logging.getLogger("billing")
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(n):
    log.error("invoice %d failed", i, extra={"tags": {"region": "eu-1"}})
