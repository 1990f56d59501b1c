"""Exporting traces over OTLP: the tracer provider of an ``ojs-server`` or of one forked process.

Tracing is on when ``OJS_OTEL_ENABLED`` is true, or when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OJS_OTEL_ENDPOINT``) is set and ``OJS_OTEL_ENABLED`` is not false. It needs the ``otel`` extra
(the OpenTelemetry SDK and its OTLP/HTTP exporter); without it a line says so and nothing else
changes. The provider takes the service name from ``OTEL_SERVICE_NAME`` (default
``ojs-runtime``) and everything else from the standard ``OTEL_*`` variables, which the SDK and
the exporter read themselves (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``...). ``OJS_OTEL_ENDPOINT`` is the collector's base
URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is (``/v1/traces`` is appended).

:func:`start` runs in the process that serves or runs jobs, never in the supervisor before it
forks: the span processor holds a thread and the exporter a connection pool, neither of which
survives a fork. :func:`stop` flushes what is buffered; the forked processes end with
``os._exit``, which would drop it.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from runtime import tracing

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "ojs-runtime"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_provider: Any = None


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether the environment asks for traces to be exported."""
    env = dict(os.environ) if env is None else env
    switch = env.get("OJS_OTEL_ENABLED", "").strip().lower()
    if switch in _FALSE:
        return False
    return switch in _TRUE or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OJS_OTEL_ENDPOINT")
                                   or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def start(role: str) -> bool:
    """Configure the global tracer provider with an OTLP exporter when the environment asks for
    it; True when traces are now exported. `role` (``server``, ``pool``, ``http``) becomes the
    ``ojs.process.role`` resource attribute, to tell a deployment's processes apart."""
    global _provider
    if _provider is not None or not wanted():
        return _provider is not None
    try:
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        sdk_export = importlib.import_module("opentelemetry.sdk.trace.export")
        sdk_resources = importlib.import_module("opentelemetry.sdk.resources")
        otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError as err:
        logger.warning("tracing asked for, but the otel extra is not installed (%s): "
                       "pip install 'ojs-runtime[otel]'", err)
        return False
    endpoint = os.environ.get("OJS_OTEL_ENDPOINT")
    if endpoint and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # read by the exporter, as the standard one
    attributes = {"ojs.process.role": role}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = DEFAULT_SERVICE_NAME  # else the SDK reads the variable
    resource = sdk_resources.Resource.create(attributes)
    provider = sdk_trace.TracerProvider(resource=resource)
    provider.add_span_processor(sdk_export.BatchSpanProcessor(otlp.OTLPSpanExporter()))
    tracing.otel_trace.set_tracer_provider(provider)
    tracing.enable(provider.get_tracer("ojs-runtime"))
    _provider = provider
    logger.info("exporting traces over OTLP as %s", resource.attributes.get("service.name"))
    return True


def stop() -> None:
    """Flush and close the exporter (a no-op when tracing is off)."""
    global _provider
    if _provider is None:
        return
    provider, _provider = _provider, None
    tracing.disable()
    try:
        provider.shutdown()
    except Exception:  # a collector that went away must not turn a clean exit into a crash
        logger.warning("flushing traces failed", exc_info=True)
