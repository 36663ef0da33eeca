"""What every part of the azure backend shares: settings, the credential, the SDK clients, the
translation of SDK errors into the BackendError family, and long-running operations that
survive a job retry.

Every client is built here, with the same keyword arguments (``client_kwargs``): production
passes none; the tests pass ``transport=`` (an azure-core ``HttpTransport`` answering like the
Azure REST APIs) and ``polling_interval=0``, so the SDKs' own request building, long-running
operation polling, retries and error mapping run unchanged. The SDK modules are imported only
when a client is first needed (``import azure.ai.ml`` alone costs ~3 s), so only workers pay.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.backends.base import (
    BackendError,
    OperationStore,
    Progress,
    ResourceConflict,
    ResourceNotFound,
    TransientBackendError,
)
from app.pipeline_config import AzureSettings, PipelineConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

CREDENTIAL_HINT = (
    "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service principal), run "
    "the worker with a managed or workload identity, or sign in with `az login` "
    "(docs/azure.md, 'Identities and roles')")


class AzureSetupError(BackendError):
    """The azure backend is not configured enough to start (the message names the setting)."""


@dataclass
class AzureContext:
    """One backend's settings, credential and clients (built lazily, then reused).

    Nothing here touches the network or the credential until a client is asked for, so an
    offline plan works with no subscription, no credential and no network.
    """

    config: PipelineConfig
    subscription_id: str
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tenant_id: str = ""
    _credential: Any = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, config: PipelineConfig, *, credential: Any = None,
              client_kwargs: Mapping[str, Any] | None = None,
              env: Mapping[str, str] = os.environ) -> AzureContext:
        """Settings from the pipeline file (``azure.*``), else ``AZURE_SUBSCRIPTION_ID``;
        the credential is ``DefaultAzureCredential`` (built on first use) unless one is given.
        """
        subscription = config.azure.subscription_id or env.get("AZURE_SUBSCRIPTION_ID", "")
        tenant = config.azure.tenant_id or env.get("AZURE_TENANT_ID", "")
        return cls(config, subscription, dict(client_kwargs or {}), tenant, credential)

    @property
    def credential(self) -> Any:
        """The credential every client signs in with.

        Raises:
            AzureSetupError: azure-identity is not installed.
        """
        if self._credential is None:
            self._credential = default_credential(self.tenant_id or None)
        return self._credential

    # ------------------------------------------------------------------ names

    @property
    def azure(self) -> AzureSettings:
        return self.config.azure

    @property
    def resource_group(self) -> str:
        return self.config.workspace.resource_group

    @property
    def location(self) -> str:
        return self.config.workspace.region

    @property
    def workspace(self) -> str:
        return self.config.workspace.name

    def resource_id(self, provider_path: str) -> str:
        """The ARM id of a resource in the resource group, from ``Provider/type/name…``."""
        return (f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
                f"/providers/{provider_path}")

    # ------------------------------------------------------------------ clients

    def client(self, kind: str) -> Any:
        """The SDK client of one kind: ``resources``, ``network``, ``containers``,
        ``extensions``, ``authorization``, ``apim`` or ``ml``; built once per context.

        Raises:
            AzureSetupError: no subscription is configured.
        """
        if not self.subscription_id:
            raise AzureSetupError("the azure backend needs a subscription: set "
                                  "azure.subscription_id in the pipeline file or "
                                  "AZURE_SUBSCRIPTION_ID")
        if kind not in self._clients:
            self._clients[kind] = _FACTORIES[kind](self)
        return self._clients[kind]

    def _mgmt(self, cls: Any, **extra: Any) -> Any:
        return cls(self.credential, self.subscription_id, **extra, **self.client_kwargs)


def default_credential(tenant_id: str | None = None) -> Any:
    """``DefaultAzureCredential``: environment service principal, workload identity, managed
    identity, then the Azure CLI's sign-in."""
    try:
        from azure.identity import DefaultAzureCredential
    except ModuleNotFoundError:
        raise AzureSetupError("the azure backend needs azure-identity; install it with: "
                              "pip install 'modelgate[azure]'") from None
    kwargs: dict[str, Any] = {"exclude_interactive_browser_credential": True}
    if tenant_id:
        kwargs["additionally_allowed_tenants"] = [tenant_id]
    return DefaultAzureCredential(**kwargs)


def _resources(ctx: AzureContext) -> Any:
    # v26 moved the client: the top-level azure.mgmt.resource import no longer has it
    from azure.mgmt.resource.resources import ResourceManagementClient

    return ctx._mgmt(ResourceManagementClient)


def _network(ctx: AzureContext) -> Any:
    from azure.mgmt.network import NetworkManagementClient

    return ctx._mgmt(NetworkManagementClient)


def _containers(ctx: AzureContext) -> Any:
    from azure.mgmt.containerservice import ContainerServiceClient

    return ctx._mgmt(ContainerServiceClient)


def _extensions(ctx: AzureContext) -> Any:
    from azure.mgmt.kubernetesconfiguration import SourceControlConfigurationClient

    return ctx._mgmt(SourceControlConfigurationClient)


def _authorization(ctx: AzureContext) -> Any:
    from azure.mgmt.authorization import AuthorizationManagementClient

    return ctx._mgmt(AuthorizationManagementClient)


def _apim(ctx: AzureContext) -> Any:
    from azure.mgmt.apimanagement import ApiManagementClient

    return ctx._mgmt(ApiManagementClient)


def _ml(ctx: AzureContext) -> Any:
    from azure.ai.ml import MLClient

    # MLClient forwards its keyword arguments (transport, polling_interval) to its clients.
    return MLClient(ctx.credential, ctx.subscription_id, ctx.resource_group, ctx.workspace,
                    enable_telemetry=False, show_progress=False, **ctx.client_kwargs)


_FACTORIES: dict[str, Callable[[AzureContext], Any]] = {
    "resources": _resources, "network": _network, "containers": _containers,
    "extensions": _extensions, "authorization": _authorization, "apim": _apim, "ml": _ml,
}


# --------------------------------------------------------------------------- errors

# ARM error codes a user can act on, with what to do (the service's own message follows).
_ACTIONABLE: dict[str, str] = {
    "QuotaExceeded": "the subscription's quota is exhausted in this region: request more "
                     "quota or choose a smaller size (azure.*_size) or another region",
    "OperationNotAllowed": "Azure refused the operation (often a quota: request more or "
                           "choose a smaller size)",
    "SkuNotAvailable": "the region does not offer this size: choose another size or region",
    "LocationNotAvailableForResourceType": "the region does not offer this resource: choose "
                                           "another workspace.region",
    "ServiceAlreadyExists": "the API Management name is taken (names are global): choose "
                            "another azure.apim_name",
    "ServiceNameNotAvailable": "the API Management name is taken or soft-deleted: choose "
                               "another azure.apim_name, or purge the deleted service "
                               "(docs/azure.md, 'Teardown')",
    "AuthorizationFailed": "the worker's identity lacks a role: grant it Contributor on the "
                           "resource group (docs/azure.md, 'Identities and roles')",
    "RequestDisallowedByPolicy": "an Azure Policy of the subscription forbids it",
}


def translate(action: str, exc: Exception) -> BackendError:
    """An SDK exception as a BackendError whose message says what failed and what to do."""
    from azure.core import exceptions as az

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, az.ClientAuthenticationError) or _is_credential_error(exc):
        return BackendError(f"{action}: Azure sign-in failed; {CREDENTIAL_HINT}")
    if isinstance(exc, az.ServiceRequestError | az.ServiceResponseError):
        return TransientBackendError(f"{action}: Azure did not answer ({type(exc).__name__}); "
                                     "will retry")
    if isinstance(exc, az.HttpResponseError):
        status = exc.status_code or 0
        code, message = _error_code(exc)
        detail = f"{code}: {message}" if code else message
        hint = _ACTIONABLE.get(code, "")
        if hint:
            return BackendError(f"{action}: {hint} ({detail})")
        if isinstance(exc, az.ResourceNotFoundError) or status == 404:
            return ResourceNotFound(f"{action}: not found ({detail})")
        if isinstance(exc, az.ResourceExistsError) or status == 409:
            return ResourceConflict(f"{action}: conflict ({detail})")
        if status == 429 or status >= 500:
            return TransientBackendError(f"{action}: Azure answered {status} ({detail}); "
                                         "will retry")
        return BackendError(f"{action}: Azure answered {status} ({detail})")
    ml_error = _ml_error(action, exc)
    if ml_error is not None:
        return ml_error
    return BackendError(f"{action}: {type(exc).__name__}: {exc}")


def _ml_error(action: str, exc: Exception) -> BackendError | None:
    """azure.ai.ml's own exceptions (client-side validation, an asset that does not exist,
    a job that cannot be parsed…) as BackendErrors; None for any other exception.

    Only when azure.ai.ml is already imported (it raised the exception, then): the panel
    process never imports it, and importing it costs seconds.
    """
    if "azure.ai.ml" not in sys.modules:
        return None
    from azure.ai.ml.exceptions import MlException, ValidationErrorType, ValidationException

    if not isinstance(exc, MlException):
        return None
    # The SDK reraises its validation errors as an MlException with a formatted (coloured,
    # multi-line) message; the original, with its plain message and type, is the context.
    original = exc
    while not isinstance(original, ValidationException) and \
            isinstance(original.__context__, MlException):
        original = original.__context__
    message = _first_line(str(getattr(original, "message", "") or original)) or \
        type(exc).__name__
    if isinstance(original, ValidationException) and \
            original.error_type == ValidationErrorType.RESOURCE_NOT_FOUND:
        return ResourceNotFound(f"{action}: not found ({message})")
    return BackendError(f"{action}: {message}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(text: str) -> str:
    """The first meaningful line of an azure.ai.ml message: colours dropped and, in the
    formatted ones, the first line under ``Details:`` without its ``(x)`` mark."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    if "Details:" in lines:
        lines = lines[lines.index("Details:") + 1:]
    return lines[0].removeprefix("(x) ") if lines else ""


def _is_credential_error(exc: Exception) -> bool:
    try:
        from azure.identity import CredentialUnavailableError
    except ModuleNotFoundError:
        return False
    return isinstance(exc, CredentialUnavailableError)


def _error_code(exc: Any) -> tuple[str, str]:
    """(code, message) of an ARM error body, or ("", the exception's first line)."""
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "")
    message = str(getattr(error, "message", "") or "")
    if not message:
        message = str(getattr(exc, "message", "") or exc).splitlines()[0]
    return code, message


@contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Translate SDK exceptions raised inside the block (BackendErrors and the caller's own
    exceptions, such as a cancellation raised by a progress callback, pass through)."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except BackendError:
        raise
    except AzureError as exc:
        raise translate(action, exc) from None
    except Exception as exc:
        if _is_credential_error(exc):
            raise translate(action, exc) from None
        raise


# --------------------------------------------------------------------------- long operations


@dataclass
class LongOperation:
    """How to start, and how to resume, one long-running operation.

    ``begin(continuation_token)`` calls the SDK's ``begin_…`` method, with
    ``continuation_token=`` when one is given (the SDK then only polls, GETs only).
    """

    key: str
    label: str
    begin: Callable[[str | None], Any]
    timeout: float = 3600.0


def run_long_operation(op: LongOperation, operations: OperationStore, progress: Progress,
                       percent: int, *, poll_seconds: float = 15.0) -> Any:
    """Start (or resume from the token the store holds) and wait for one operation.

    The continuation token is stored before the first wait, so a job killed while waiting
    resumes polling on its next attempt instead of creating again; it is forgotten once the
    operation is done. Progress is reported at ``percent`` with the elapsed minutes.

    Raises:
        TransientBackendError: the operation did not finish within ``op.timeout`` (the token
            stays stored: the retry resumes it).
        BackendError: the operation failed (the resource's own message).
    """
    token = operations.get(op.key)
    with azure_errors(op.label):
        if token:
            progress(percent, f"{op.label}: resuming the operation already under way")
            try:
                poller = op.begin(token)
            except ValueError:  # a token from another SDK version or operation
                logger.warning("%s: stored continuation token unusable; starting again",
                               op.label)
                operations.put(op.key, None)
                poller = op.begin(None)
        else:
            poller = op.begin(None)
        operations.put(op.key, poller.continuation_token())
        started = time.monotonic()
        while not poller.done():
            elapsed = time.monotonic() - started
            if elapsed > op.timeout:
                raise TransientBackendError(f"{op.label}: still running after "
                                            f"{elapsed / 60:.0f} min; the retry resumes it")
            progress(percent, f"{op.label}: {poller.status()} ({elapsed / 60:.0f} min)")
            poller.wait(timeout=poll_seconds)
        result = poller.result()
    operations.put(op.key, None)
    return result
