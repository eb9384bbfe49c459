"""Send N log records through the OpenTelemetry Python SDK's OTLP/HTTP protobuf exporter.

usage: otlp_send.py ENDPOINT N   (ENDPOINT like http://127.0.0.1:7650/v1/logs)
"""
import logging
import sys

from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

endpoint, n = sys.argv[1], int(sys.argv[2])
provider = LoggerProvider(resource=Resource.create({"service.name": "checkout", "host.name": "web-1"}))
set_logger_provider(provider)
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint)))
log = logging.getLogger("shop.payments")
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
for i in range(n):
    log.warning("payment %d declined", i, extra={"order_id": f"o-{i}", "amount": i * 10})
provider.force_flush()
provider.shutdown()
