"""The request's tenant (the X-OJS-Tenant header) and the check that keeps a tenant-scoped request
to its own tenant's jobs; the multi-tenancy routes are in runtime/api/tenancy.py."""

from __future__ import annotations

from runtime.api.routing import Request
from runtime.broker.core import Broker
from runtime.broker.tenants import Tenants, checked_tenant
from runtime.errors import NotFound

HEADER = b"x-ojs-tenant"


def request_tenant(request: Request) -> str | None:
    """The tenant the request acts for; a header that is not a tenant id is a 400."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    return checked_tenant(raw.decode("latin-1").strip(), "X-OJS-Tenant")


def check_owner(request: Request, job_id: str, owner: bytes | str | None) -> None:
    """A tenant-scoped request may only reach its own tenant's jobs: any other is not found."""
    tenant = request_tenant(request)
    if tenant is None:
        return
    if isinstance(owner, bytes):
        owner = owner.decode()
    if owner != tenant:
        raise NotFound(f"Job '{job_id}' not found.")


async def guard_job(request: Request, broker: Broker, job_id: str) -> None:
    """check_owner for a handler that does not read the job itself: one read, only when the
    request names a tenant (a job's tenant never changes, so reading first is no race)."""
    if request_tenant(request) is not None:
        check_owner(request, job_id, await Tenants(broker.redis, broker.keys).owner(job_id))


__all__ = ["HEADER", "check_owner", "guard_job", "request_tenant"]
