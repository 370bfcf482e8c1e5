"""Reading what the API server answered: Status bodies, RBAC denials (which permission is missing),
PodSecurity admission rejections, and the handshake failures of an exec stream. Pure functions; the
kubernetes client is never imported here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from iptrace.collect.kubeconfig import status_message

# The permissions `collect --via api` uses (README "Collecting through the Kubernetes API" has the RBAC).
README_RBAC = "see the README's RBAC for `collect --via api`"

_RBAC = re.compile(r'User "(?P<user>[^"]*)" cannot (?P<verb>[\w-]+) resource "(?P<resource>[^"]+)" in API group '
                   r'"(?P<group>[^"]*)"(?: in the namespace "(?P<namespace>[^"]+)"| at the cluster scope)?')


@dataclass(frozen=True, slots=True)
class ApiFailure:
    """One failed API call: HTTP status (0 when none came back), the Status body's message and reason."""

    status: int
    message: str
    reason: str = ""

    @classmethod
    def from_exception(cls, error: Any) -> ApiFailure:
        """From a kubernetes ApiException (its body is a Status when the server wrote one)."""
        body = getattr(error, "body", None)
        message = status_message(body) or str(getattr(error, "reason", "") or error)
        reason = ""
        if isinstance(body, bytes | str):
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
                reason = parsed["reason"]
        return cls(int(getattr(error, "status", 0) or 0), message, reason)

    @classmethod
    def from_handshake(cls, text: str) -> ApiFailure | None:
        """websocket-client's "Handshake status 403 Forbidden -+-+- {headers} -+-+- {body}" (what an exec that
        the server refused looks like through the kubernetes client: an ApiException with status 0)."""
        match = re.search(r"Handshake status (\d+)\s*([^-]*)", text)
        if match is None:
            return None
        body = text.rsplit("-+-+- ", 1)[-1] if "-+-+- " in text else ""
        message = status_message(body) if body and body != "None" else None
        reason = ""
        try:
            parsed = json.loads(body) if body else None
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            reason = parsed["reason"]
        return cls(int(match.group(1)), message or f"{match.group(1)} {match.group(2).strip()}", reason)

    @property
    def pod_security(self) -> bool:
        return self.status == 403 and "violates PodSecurity" in self.message

    @property
    def forbidden(self) -> bool:
        return self.status == 403 and not self.pod_security


def missing_permission(message: str) -> str | None:
    """`create pods/exec in namespace kube-system` from an RBAC denial's message, None if it is no such one."""
    match = _RBAC.search(message)
    if match is None:
        return None
    resource = match["resource"] if not match["group"] else f"{match['resource']}.{match['group']}"
    scope = f"in namespace {match['namespace']}" if match["namespace"] else "at cluster scope"
    return f"{match['verb']} {resource} {scope} (user {match['user']})"


def forbidden_text(failure: ApiFailure, fallback: str) -> str:
    """One line for a 403. An RBAC denial (or a bare 403 without a body): the permission that is missing, and where
    the needed RBAC is written. Anything else that answers 403 (a ResourceQuota, an admission webhook such as
    Kyverno or Gatekeeper) is no missing permission: its own words, on one line."""
    permission = missing_permission(failure.message)
    if permission is None and not _BARE_FORBIDDEN.fullmatch(failure.message.strip()):
        return f"forbidden: {' '.join(failure.message.split())[:500]}"
    return f"forbidden: missing permission {permission or fallback}; {README_RBAC}"


# What a 403 without a Status body says (the exec handshake's "403 Forbidden", an empty reason).
_BARE_FORBIDDEN = re.compile(r"(?:\d{3}\s*)?(?:forbidden)?\.?", re.IGNORECASE)


def pod_security_text(failure: ApiFailure, namespace: str, offer_exec: bool) -> str:
    """One line for a PodSecurity admission rejection: the admission's own words, and the fix. `offer_exec`:
    whether exec into kube-proxy's pod is an untried way (--api-method pod); after auto's exec failed, it is none."""
    why = failure.message.split(" is forbidden: ", 1)[-1]
    return (f"PodSecurity admission rejected the collector pod in namespace {namespace} ({why}); the pod must "
            "be privileged: pass --pod-namespace with a namespace whose PodSecurity level is privileged (e.g. "
            "`kubectl create namespace iptrace && kubectl label namespace iptrace "
            "pod-security.kubernetes.io/enforce=privileged`)" + (", or use --api-method exec" if offer_exec else ""))
